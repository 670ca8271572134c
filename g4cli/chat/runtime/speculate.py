"""The draft-and-verify loop: the same answer as ``answer_turns``' plain loop, fewer target passes.

Each round the drafter proposes up to ``n_max`` tokens after the last sampled one (greedily,
all at one position: ``draft.Drafter.draft``); the target evaluates that token and the drafts
in one batch, with logits on every row; the answer's own ``Decoder`` (its sampler chain,
penalties, grammar, limits) samples row after row, and a draft is kept only while it is the
token the chain picked. The first mismatch is the next token, and the target's KV cache is cut
back to what was kept (``llama_memory_seq_rm`` through ``Sequence.keep``; the drafter's cache
mirrors the target's and holds nothing of its own).

Why nothing changes: every kept token was sampled by the same chain from the target's logits
for the same history, in the same order, so greedy output is the same token for token, and a
seeded chain draws the same random numbers. At temperature > 0 this is speculative sampling's
acceptance rule (accept draft d with probability min(1, p(d)/q(d)), else sample from
norm(max(p - q, 0))) for a drafter whose proposal q is one-hot on its argmax: the chain's draw
t ~ p equals d with probability p(d), and when it does not, t is distributed as p without d —
exactly the residual. (llama.cpp's common_sampler_sample_and_accept_n, common/sampling.cpp:678-719.)
Media chunks are evaluated by the prompt as always; drafting starts with the answer's text.

Whether drafting pays depends on the machine: a verify batch of k+1 tokens costs little more
than one token where decoding waits on memory (a GPU), up to k+1 times as much where it waits on
arithmetic (measured on a 2-core CPU: 3.0x for 4 tokens, so drafting loses even at 90 %
acceptance). With ``--draft auto`` (``Model.draft_paced``) each answer is paced by ``Pace``: its
first rounds decode plainly and are timed, then drafted rounds are; if they yield fewer tokens a
second, drafting stops, for this answer and the model's later ones (``Model.draft_pays``).
``--draft on`` drafts every round.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from g4cli.chat.conversation import Event, Stats

if TYPE_CHECKING:
    from g4cli.chat.runtime.cache import Sequence
    from g4cli.chat.runtime.draft import Drafter
    from g4cli.chat.runtime.generate import Decoder
    from g4cli.chat.runtime.model import Model

DEFAULT_DRAFT_MAX = 3  # llama.cpp's n_max (common/common.h:328), what its users settle on
PLAIN_ROUNDS = 4  # --draft auto: plain rounds timed first
DRAFTED_ROUNDS = 8  # then drafted rounds timed before deciding


@dataclass
class Pace:
    """Whether this answer drafts its next round: always (``paced`` false), else after
    ``PLAIN_ROUNDS`` timed plain rounds, until ``DRAFTED_ROUNDS`` drafted rounds turn out to
    yield fewer tokens a second than the plain ones."""

    paced: bool
    pays: bool | None = None  # decided (or known from an earlier answer)
    plain_s: float = 0.0
    plain_n: int = 0
    drafted_s: float = 0.0
    drafted_n: int = 0
    drafted_rounds: int = 0

    def wants_drafts(self) -> bool:
        if not self.paced:
            return True
        return self.pays is not False and (self.pays or self.plain_n >= PLAIN_ROUNDS)

    def record(self, seconds: float, tokens: int, drafted: bool) -> None:
        """One round: its wall time (the answer's own work, not its rendering) and tokens."""
        if drafted:
            self.drafted_s += seconds
            self.drafted_n += tokens
            self.drafted_rounds += 1
        else:
            self.plain_s += seconds
            self.plain_n += tokens
        if self.paced and self.pays is None and self.drafted_rounds >= DRAFTED_ROUNDS:
            self.pays = self.tps(drafted=True) >= self.tps(drafted=False)

    def tps(self, *, drafted: bool) -> float:
        n, s = (self.drafted_n, self.drafted_s) if drafted else (self.plain_n, self.plain_s)
        return n / s if s > 0 else 0.0

    def report(self, stats: Stats) -> None:
        """Its figures so far into an answer's stats (``--verbose``, ``/stats``, ``--json``, usage)."""
        stats.plain_tps, stats.drafted_tps = self.tps(drafted=False), self.tps(drafted=True)
        stats.draft_paused = self.pays is False


def propose(drafter: Drafter, decoder: Decoder, seq: Sequence, tok: int, n_max: int) -> list[int]:
    """The drafts to verify after ``tok`` this round: up to ``n_max``, never past the answer's
    token limit or the sequence's context."""
    room = min(n_max, decoder.limit - decoder.stats.gen_tokens - 1, decoder.n_ctx - seq.n_past - 1)
    return drafter.draft(tok, seq.n_past, room, seq.seq_id) if room > 0 else []


def accept(
    decoder: Decoder, seq: Sequence, drafts: list[int], row0: int, pos0: int
) -> tuple[list[Event], int | None, int]:
    """Sample the verify rows of one sequence (``row0`` on: the last token's, then each draft's),
    keeping each draft while it is the token the chain picked; cut the cache back to what was
    kept. (events, the next token or None when the answer is over, drafts accepted)."""
    out: list[Event] = []
    j = 0
    while True:  # row j predicts the token after tok + drafts[:j]
        events, tok = decoder.step(row=row0 + j, n_past=pos0 + j + 1)
        out += events
        if tok is None or j == len(drafts) or tok != drafts[j]:
            break
        j += 1
    decoder.stats.draft_tokens += len(drafts)
    decoder.stats.draft_accepted += j
    if j < len(drafts):  # roll the target's cache back to tok + the accepted drafts
        seq.keep(len(seq.units) - (len(drafts) - j))
    return out, tok, j


def speculate(model: Model, seq: Sequence, decoder: Decoder, drafter: Drafter, n_max: int) -> Iterator[Event]:
    """Stream the answer ``decoder`` samples, drafting up to ``n_max`` tokens a round."""
    from g4cli.chat.runtime.batch import StepBatch

    stats = decoder.stats
    stats.drafting = True
    pace = Pace(model.draft_paced, model.draft_pays if model.draft_paced else None)
    events, tok = decoder.step()  # from the prompt's logits, as without a drafter
    yield from events
    ready = False  # the drafter holds the target's hidden state of the token before ``tok``
    with StepBatch(n_max + 1) as verify:
        while tok is not None:
            t0 = time.perf_counter()
            pos0 = seq.n_past
            drafts = propose(drafter, decoder, seq, tok, n_max) if ready and pace.wants_drafts() else []
            verify.decode(model, [(seq, [tok, *drafts])])
            events, tok, j = accept(decoder, seq, drafts, 0, pos0)
            if pace.pays is not False:
                drafter.take_hidden(j, seq.seq_id)
            ready = True
            pace.record(time.perf_counter() - t0, j + 1, bool(drafts))
            pace.report(stats)
            if model.draft_paced and pace.pays is not None:
                model.draft_pays = pace.pays
            yield from events
