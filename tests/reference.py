"""The reference side of parity tests: transformers 5.23's Gemma 4 on the same checkpoint files.

Test-only (torch is never needed by the product). llama.cpp is driven through llama-cpp-python.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np

REL_TOL = 5e-3  # issue: ||llama - ref|| / ||ref|| at every position
AGREE_MIN = 0.97  # issue: argmax agreement


@dataclass
class Parity:
    max_rel: float
    mean_rel: float
    agreement: float

    @property
    def ok(self) -> bool:
        return self.max_rel <= REL_TOL and self.agreement >= AGREE_MIN

    def __str__(self) -> str:
        return f"max rel {self.max_rel:.2e}, mean {self.mean_rel:.2e}, argmax agreement {self.agreement:.1%}"


def compare(logits: np.ndarray, ref: np.ndarray) -> Parity:
    rel = np.linalg.norm(logits - ref, axis=-1) / np.linalg.norm(ref, axis=-1)
    agree = float((logits.argmax(-1) == ref.argmax(-1)).mean())
    return Parity(float(rel.max()), float(rel.mean()), agree)


def sample_tokens(n: int = 48, seed: int = 1, low: int = 114, high: int = 1024) -> list[int]:
    """<bos> then random ordinary tokens (ids above the specials of the tiny vocabulary)."""
    rng = np.random.default_rng(seed)
    return [2, *(int(t) for t in rng.integers(low, high, n - 1))]


@cache
def _model(checkpoint: str):
    import torch
    from transformers import Gemma4ForConditionalGeneration

    torch.manual_seed(0)
    model = Gemma4ForConditionalGeneration.from_pretrained(checkpoint, attn_implementation="eager", dtype=torch.float32)
    return model.eval()


def reference_logits(checkpoint: Path, ids: list[int]) -> np.ndarray:
    import torch

    with torch.no_grad():
        return _model(str(checkpoint))(torch.tensor([ids])).logits[0].float().numpy()


def llama_logits(gguf: Path, ids: list[int], *, one_by_one: bool = False, f32_kv: bool = False) -> np.ndarray:
    """Logits for every position, from one batch or from one decode call per token."""
    import llama_cpp

    kv_type = 0 if f32_kv else None  # GGML_TYPE_F32; default F16
    llm = llama_cpp.Llama(
        str(gguf), n_ctx=256, n_batch=256, logits_all=True, verbose=False, type_k=kv_type, type_v=kv_type
    )
    try:
        if one_by_one:
            for t in ids:
                llm.eval([t])
        else:
            llm.eval(ids)
        return np.array(llm.scores[: len(ids)], dtype=np.float32)
    finally:
        llm.close()
