"""g4's converter: Gemma 4 Hugging Face checkpoints -> GGUF files for llama.cpp.

Library API (imported lazily so that ``import quantize`` stays cheap)::

    from quantize import convert, quantize
    convert("gemma-4-E2B-it/", "e2b-Q4_K_M.gguf", quant="q4_k_m")
    quantize("e2b-BF16.gguf", "e2b-Q8_0.gguf", "q8_0")
"""

from __future__ import annotations

from typing import Any

__all__ = ["convert", "quantize"]


def __getattr__(name: str) -> Any:
    if name == "convert":
        from quantize.converter import convert

        return convert
    if name == "quantize":
        from quantize.llama_quant import quantize

        return quantize
    raise AttributeError(name)
