"""What the KV cache holds: per sequence, the prompt units in order (text tokens and media chunks).

A unit is a token id or a ``MediaUnit`` (an image or an audio piece, identified by its content
hash), so that a new prompt can reuse the longest prefix already evaluated: a follow-up
question about an image evaluates only the new text. ``Sequence.keep`` drops what follows the
reused prefix from llama.cpp's cache.
"""

from __future__ import annotations

from collections.abc import Sequence as Seq
from dataclasses import dataclass, field
from typing import Any

import llama_cpp


@dataclass(frozen=True)
class MediaUnit:
    """A media chunk in the KV cache, identified by content (sha256 + piece)."""

    key: str
    n_tokens: int
    n_pos: int


Unit = int | MediaUnit


def n_pos(units: Seq[Unit]) -> int:
    """Positions a run of units takes in the cache."""
    return sum(u.n_pos if isinstance(u, MediaUnit) else 1 for u in units)


def common_prefix(a: Seq[Unit], b: Seq[Unit]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


@dataclass
class Sequence:
    """One sequence of a context's KV cache: which units it holds, and the next free position."""

    ctx: Any  # llama_context_p
    seq_id: int = 0
    units: list[Unit] = field(default_factory=list)
    n_past: int = 0

    def reuse(self, units: Seq[Unit]) -> int:
        """Keep the longest prefix of ``units`` already cached (at least one unit is left to
        evaluate, for fresh logits); returns how many units are kept."""
        keep = common_prefix(self.units, units)
        if keep == len(units):
            keep -= 1
        self.keep(keep)
        return keep

    def keep(self, n_units: int) -> None:
        """Drop everything after the first ``n_units`` units from the KV cache."""
        self.units = self.units[:n_units]
        self.truncate(n_pos(self.units))

    def truncate(self, position: int) -> None:
        """Drop every cell from ``position`` on (units already trimmed by the caller)."""
        mem = llama_cpp.llama_get_memory(self.ctx)
        if not llama_cpp.llama_memory_seq_rm(mem, self.seq_id, position, -1):
            llama_cpp.llama_memory_seq_rm(mem, self.seq_id, 0, -1)  # partial removal refused: start over
            self.units, position = [], 0
        self.n_past = position

    def clear(self) -> None:
        llama_cpp.llama_memory_seq_rm(llama_cpp.llama_get_memory(self.ctx), self.seq_id, 0, -1)
        self.units, self.n_past = [], 0

    def added(self, units: Seq[Unit], n_positions: int) -> None:
        """Record units just evaluated into this sequence."""
        self.units.extend(units)
        self.n_past += n_positions
