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
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from g4cli.chat.conversation import Event

if TYPE_CHECKING:
    from g4cli.chat.runtime.cache import Sequence
    from g4cli.chat.runtime.draft import Drafter
    from g4cli.chat.runtime.generate import Decoder
    from g4cli.chat.runtime.model import Model

DEFAULT_DRAFT_MAX = 3  # llama.cpp's n_max (common/common.h:328), what its users settle on


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

    decoder.stats.drafting = True
    events, tok = decoder.step()  # from the prompt's logits, as without a drafter
    yield from events
    ready = False  # the drafter holds the target's hidden state of the token before ``tok``
    with StepBatch(n_max + 1) as verify:
        while tok is not None:
            pos0 = seq.n_past
            drafts = propose(drafter, decoder, seq, tok, n_max) if ready else []
            verify.decode(model, [(seq, [tok, *drafts])])
            events, tok, j = accept(decoder, seq, drafts, 0, pos0)
            drafter.take_hidden(j, seq.seq_id)
            ready = True
            yield from events
