"""QAT-aware Q4_0: Google's ``…-qat-q4_0-unquantized`` weights written as the Q4_0 blocks they were trained as.

Quantization-aware training leaves every 32-weight block of a trained linear layer on a grid
``s * q`` with a BF16 scale ``s`` and integer codes ``q`` in [-8, 7] (stored as BF16, so each
weight is ``bf16(s * q)``). llama.cpp's Q4_0 quantizer does not look for that grid: it takes
the block's largest-magnitude weight as code -8 (``d = max / -8``), so any block whose codes do
not reach -8 is put on another grid and rounded again. Here the grid is recovered per block:

- the largest-magnitude weight ``w_m`` has code ``±k`` for some k in 1..8 (-8 only when negative);
- each candidate scale ``bf16(|w_m| / k)`` is tried, the largest k first, then (for the blocks
  left) its BF16 neighbours (``bf16(s*q)`` is rounded, so the quotient can miss ``s`` by an ulp);
- a candidate holds when every code ``rint(w / s)`` lies in [-8, 7] and ``bf16(s * q) == w`` for
  all 32 weights.

The block is written as ``f16(s)`` and ``q + 8`` (a BF16 value in F16's normal range is exact
in F16, so the dequantized weights are the QAT weights up to F16 rounding of ``s`` below 6.1e-5
and BF16 rounding of ``s * q``). A block on no grid gets the best of a few scales (llama.cpp's
among them) by squared error, and is counted: ``Q4_0Encoder.off_grid``.

Block layout (ggml ``block_q4_0``, as gguf-py's ``quants.Q4_0``): F16 ``d``, then 16 bytes whose
low nibbles are weights 0..15 and high nibbles weights 16..31, each ``q + 8``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from quantize.gguf_out import F32_ALWAYS, OutTensor
from quantize.safetensors_io import f32_to_bf16

BLOCK = 32
BLOCK_BYTES = 18
# tensors QAT did not train, or that llama.cpp never quantizes: left to llama.cpp's quantizer
# (token and PLE embeddings -> Q6_K) or kept as they are (per_layer_model_proj, norms, router: F32)
UNTRAINED = re.compile(r"^(token_embd|per_layer_token_embd|output|per_layer_model_proj)\.weight$")
CANDIDATE_CODES = (8, 7, 6, 5, 4, 3, 2, 1)
ULP_STEPS = (0, -1, 1, -2, 2)
PIECE = 1 << 15  # blocks searched at once (1 Mi weights)
FALLBACK_DIVISORS = np.array([-8.0, -7.5, -7.0, 6.5, 7.0, 7.5, 8.0], dtype=np.float32)


def bf16(x: np.ndarray) -> np.ndarray:
    """Round float32 values to BF16 (round to nearest even), kept as float32."""
    bits = f32_to_bf16(np.ascontiguousarray(x, dtype=np.float32).reshape(-1)).astype(np.uint32) << 16
    return bits.view(np.float32).reshape(np.shape(x))


def _bf16_fast(x: np.ndarray) -> np.ndarray:
    """``bf16`` for finite values (the search's hot path: no NaN handling, no reshapes)."""
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    return ((bits + (0x7FFF + ((bits >> 16) & 1))) & np.uint32(0xFFFF0000)).view(np.float32)


def _bf16_step(s: np.ndarray, steps: int) -> np.ndarray:
    """``s`` (positive BF16 values) moved by ``steps`` BF16 ulps."""
    bits = (s.view(np.uint32) >> 16).astype(np.int64) + steps
    return (np.clip(bits, 0, 0x7F7F).astype(np.uint32) << 16).view(np.float32)


def find_grid(blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(scale, codes, found) per block of ``blocks`` (n, 32): the QAT grid each lies on, if any."""
    n = blocks.shape[0]
    scale = np.zeros(n, dtype=np.float32)
    codes = np.zeros((n, BLOCK), dtype=np.int8)
    found = ~blocks.any(axis=1)  # an all-zero block: scale 0
    amax = np.abs(blocks).max(axis=1)
    negative = np.take_along_axis(blocks, np.abs(blocks).argmax(axis=1)[:, None], axis=1)[:, 0] < 0
    # every code with the quotient as it is first (most blocks), then the BF16 neighbours
    for step in ULP_STEPS:
        for k in CANDIDATE_CODES:
            todo = np.flatnonzero(~found & (negative | (k < 8)))  # +8 is not a code
            if not todo.size:
                return scale, codes, found
            s = _bf16_step(bf16(amax[todo] / k), step)
            with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
                q = np.rint(blocks[todo] / s[:, None])
            ok = (s > 0) & np.all((q >= -8) & (q <= 7), axis=1)
            ok &= np.all(_bf16_fast(s[:, None] * q) == blocks[todo], axis=1)
            hit = todo[ok]
            scale[hit], codes[hit], found[hit] = s[ok], q[ok].astype(np.int8), True
    return scale, codes, found


def best_q4_0(blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(F16 scale, codes) minimizing each block's squared error over a few scales ``w_m / c``
    (``c = -8`` is llama.cpp's choice), computed with the F16 scale actually written."""
    n = blocks.shape[0]
    wm = np.take_along_axis(blocks, np.abs(blocks).argmax(axis=1)[:, None], axis=1)[:, 0]
    best_err = np.full(n, np.inf, dtype=np.float32)
    best_d = np.zeros(n, dtype=np.float32)
    best_q = np.zeros((n, BLOCK), dtype=np.int8)
    for c in FALLBACK_DIVISORS:
        d = (wm / c).astype(np.float16).astype(np.float32)
        with np.errstate(divide="ignore", invalid="ignore"):
            q = np.clip(np.rint(np.where(d[:, None] == 0, 0, blocks / d[:, None])), -8, 7)
        err = ((q * d[:, None] - blocks) ** 2).sum(axis=1)
        better = err < best_err
        best_err[better], best_d[better], best_q[better] = err[better], d[better], q[better].astype(np.int8)
    return best_d, best_q


def pack(scale: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Q4_0 blocks (n, 18) as uint8: F16 scale, then the nibbles ``q + 8``."""
    u = (codes.astype(np.int16) + 8).astype(np.uint8)
    qs = u[:, : BLOCK // 2] | (u[:, BLOCK // 2 :] << np.uint8(4))
    d = scale.astype(np.float16).view(np.uint8).reshape(-1, 2)
    return np.concatenate([d, qs], axis=1)


@dataclass
class Q4_0Encoder:
    """Encodes chunks of a tensor (float32, whole blocks) to QAT-aware Q4_0 bytes; counts as it goes."""

    blocks: int = 0
    off_grid: int = 0

    def __call__(self, chunk: np.ndarray) -> np.ndarray:
        blocks = np.ascontiguousarray(chunk, dtype=np.float32).reshape(-1, BLOCK)
        out = np.empty((len(blocks), BLOCK_BYTES), dtype=np.uint8)
        for start in range(0, len(blocks), PIECE):  # bounds the search's temporaries (~10 arrays of a piece)
            piece = blocks[start : start + PIECE]
            scale, codes, found = find_grid(piece)
            if not found.all():
                miss = ~found
                scale[miss], codes[miss] = best_q4_0(piece[miss])
            out[start : start + PIECE] = pack(scale, codes)
            self.off_grid += int((~found).sum())
        self.blocks += len(blocks)
        return out.reshape(-1)


def summary(encoder: Q4_0Encoder) -> str:
    """One line for stderr: how many blocks were on a QAT grid."""
    share = encoder.off_grid / encoder.blocks if encoder.blocks else 0.0
    line = f"QAT-aware Q4_0: {encoder.blocks - encoder.off_grid:,} of {encoder.blocks:,} blocks on their QAT grid"
    if encoder.off_grid:
        line += f"; {encoder.off_grid:,} ({share:.1%}) on none, given the best Q4_0 of a few scales"
        if share > 0.5:
            line += " (was this checkpoint quantization-aware trained for Q4_0?)"
    return line


def qat_trained(t: OutTensor) -> bool:
    """Whether a planned text tensor is one QAT trained for Q4_0: a linear layer's weight that
    llama.cpp's Q4_0 would quantize (2-D or 3-D, rows of whole blocks), not an embedding."""
    return (
        len(t.shape) >= 2
        and t.shape[-1] % BLOCK == 0
        and t.name.endswith(".weight")
        and not F32_ALWAYS.search(t.name)
        and not UNTRAINED.match(t.name)
        and t.source is not None
        and t.data is None
        and t.transform is None
    )


def apply(tensors: list[OutTensor], encoder: Q4_0Encoder) -> Q4_0Encoder:
    """Turn the QAT-trained tensors of a text plan into Q4_0 (in place), all counted by ``encoder``."""
    for t in tensors:
        if qat_trained(t):
            t.dtype, t.encode = "Q4_0", encoder
    return encoder
