"""One target decode for several sequences at once (continuous batching, drafting's verify rows).

Each entry is a sequence and the tokens it adds: a running answer's last sampled token, followed,
when a drafter proposed some, by the drafts (their positions one after another). One
``llama_decode`` computes logits for every row, in entry order: ``decode`` returns where each
entry's rows begin.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import llama_cpp

from g4cli.chat.runtime.handle import Handle
from g4cli.errors import RuntimeFailure

if TYPE_CHECKING:
    from g4cli.chat.runtime.cache import Sequence
    from g4cli.chat.runtime.model import Model


class StepBatch(Handle):
    """A llama.cpp batch of at most ``capacity`` rows, logits on each."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        # one row more: Model.submit's batch_invariant pads a lone row with a copy
        self.batch = llama_cpp.llama_batch_init(max(capacity, 2), 0, 1)

    def decode(self, model: Model, entries: list[tuple[Sequence, list[int]]]) -> list[int]:
        """Evaluate each entry's tokens into its sequence; the first output row of each entry."""
        n = sum(len(tokens) for _, tokens in entries)
        if n > self.capacity:
            raise RuntimeFailure(f"{n} tokens in one step, the batch holds {self.capacity}")
        if not n:
            return []
        b = self.batch
        b.n_tokens = n
        starts, i = [], 0
        for seq, tokens in entries:
            starts.append(i)
            for j, tok in enumerate(tokens):
                b.token[i], b.pos[i], b.n_seq_id[i], b.logits[i] = tok, seq.n_past + j, 1, True
                b.seq_id[i][0] = seq.seq_id
                i += 1
        model.submit(b)
        for seq, tokens in entries:
            seq.added(tokens, len(tokens))
        return starts

    def close(self) -> None:
        if self.batch is not None:
            llama_cpp.llama_batch_free(self.batch)
            self.batch = None
