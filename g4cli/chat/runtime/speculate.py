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

import llama_cpp

from g4cli.chat.conversation import Event
from g4cli.chat.runtime.handle import Handle

if TYPE_CHECKING:
    from g4cli.chat.runtime.cache import Sequence
    from g4cli.chat.runtime.draft import Drafter
    from g4cli.chat.runtime.generate import Decoder
    from g4cli.chat.runtime.model import Model

DEFAULT_DRAFT_MAX = 3  # llama.cpp's n_max (common/common.h:328), what its users settle on


class VerifyBatch(Handle):
    """The target batch of one round: the last token and the drafts, logits on every row."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.batch = llama_cpp.llama_batch_init(capacity, 0, 1)

    def decode(self, model: Model, seq: Sequence, tokens: list[int]) -> None:
        b = self.batch
        b.n_tokens = len(tokens)
        for j, tok in enumerate(tokens):
            b.token[j], b.pos[j], b.n_seq_id[j], b.logits[j] = tok, seq.n_past + j, 1, True
            b.seq_id[j][0] = seq.seq_id
        model.submit(b)
        seq.added(tokens, len(tokens))

    def close(self) -> None:
        if self.batch is not None:
            llama_cpp.llama_batch_free(self.batch)
            self.batch = None


def speculate(model: Model, seq: Sequence, decoder: Decoder, drafter: Drafter, n_max: int) -> Iterator[Event]:
    """Stream the answer ``decoder`` samples, drafting up to ``n_max`` tokens a round."""
    stats = decoder.stats
    stats.drafting = True
    events, tok = decoder.step()  # from the prompt's logits, as without a drafter
    yield from events
    ready = False  # drafter.h holds the target's hidden state of the token before ``tok``
    with VerifyBatch(n_max + 1) as verify:
        while tok is not None:
            pos0 = seq.n_past
            room = min(n_max, decoder.limit - stats.gen_tokens - 1, decoder.n_ctx - pos0 - 1)
            drafts = drafter.draft(tok, pos0, room, seq.seq_id) if ready and room > 0 else []
            verify.decode(model, seq, [tok, *drafts])
            out: list[Event] = []
            j = 0
            while True:  # row j predicts the token after tok + drafts[:j]
                events, tok = decoder.step(row=j, n_past=pos0 + j + 1)
                out += events
                if tok is None or j == len(drafts) or tok != drafts[j]:
                    break
                j += 1
            stats.draft_tokens += len(drafts)
            stats.draft_accepted += j
            if j < len(drafts):  # roll the target's cache back to tok + the accepted drafts
                seq.keep(len(seq.units) - (len(drafts) - j))
            drafter.take_hidden(j)
            ready = True
            yield from out
