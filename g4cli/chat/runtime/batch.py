"""One decode step for several sequences at once (continuous batching).

Each running answer contributes its last sampled token at its own position and sequence; one
``llama_decode`` computes the next logits of all of them, output row ``i`` for entry ``i``.
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
    """A llama.cpp batch of one token per sequence (at most ``capacity`` sequences)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.batch = llama_cpp.llama_batch_init(capacity, 0, 1)

    def decode(self, model: Model, entries: list[tuple[Sequence, int]]) -> None:
        """Evaluate ``token`` into ``seq`` for each entry; logits row ``i`` belongs to entry ``i``."""
        if not entries:
            return
        if len(entries) > self.capacity:
            raise RuntimeFailure(f"{len(entries)} sequences in one step, the batch holds {self.capacity}")
        b = self.batch
        b.n_tokens = len(entries)
        for i, (seq, tok) in enumerate(entries):
            b.token[i] = tok
            b.pos[i] = seq.n_past
            b.n_seq_id[i] = 1
            b.seq_id[i][0] = seq.seq_id
            b.logits[i] = True
        model.submit(b)
        for seq, tok in entries:
            seq.added([tok], 1)

    def close(self) -> None:
        if self.batch is not None:
            llama_cpp.llama_batch_free(self.batch)
            self.batch = None
