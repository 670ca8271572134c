"""Quantization through llama.cpp's own quantizer (``llama_model_quantize`` in llama-cpp-python).

llama.cpp picks the per-tensor types itself (e.g. Q6_K for the token and PLE embeddings under
Q4_K_M, F32 for norms and the router). Its per-tensor log lines (``[  3/ 120] name ...``) are
the only progress signal it gives, so a log callback turns them into progress by bytes.
"""

from __future__ import annotations

import ctypes
import difflib
import os
import re
from collections.abc import Callable
from pathlib import Path

from g4cli.errors import QuantizeError, UsageError
from g4cli.fsutil import atomic_output

# name -> llama_ftype (llama.h). No i-quants that need an importance matrix.
QUANT_TYPES: dict[str, int] = {
    "Q2_K": 10,
    "Q3_K_S": 11,
    "Q3_K_M": 12,
    "Q3_K_L": 13,
    "Q4_0": 2,
    "Q4_1": 3,
    "Q4_K_S": 14,
    "Q4_K_M": 15,
    "Q5_0": 8,
    "Q5_1": 9,
    "Q5_K_S": 16,
    "Q5_K_M": 17,
    "Q6_K": 18,
    "Q8_0": 7,
    "IQ4_NL": 25,
    "IQ4_XS": 30,
    "MXFP4_MOE": 38,  # MoE (26B-A4B)
}
FLOAT_TYPES = ("F32", "F16", "BF16")
# written by g4's converter, not llama.cpp's quantizer alone: type -> the llama.cpp type it is
QAT_TYPES = {"Q4_0_QAT": "Q4_0"}  # QAT-aware Q4_0 (quantize/qat.py), for Google's QAT checkpoints
GGML_TYPE_IDS = {"Q4_0": 2, "Q8_0": 8, "Q6_K": 14}  # ggml_type (ggml.h) for the per-tensor overrides
DEFAULT_QUANT = "Q4_K_M"
LOG_TENSOR = re.compile(r"\[\s*(\d+)/\s*(\d+)\]\s+(\S+)")


def all_types() -> list[str]:
    return [*QUANT_TYPES, *QAT_TYPES, *FLOAT_TYPES]


def parse_type(name: str) -> str:
    """Normalise a user-given type (``q4_k_m``, ``Q8_0``, ``bf16``); unknown -> one clear error."""
    norm = name.strip().upper().replace("-", "_")
    if norm in QUANT_TYPES or norm in FLOAT_TYPES or norm in QAT_TYPES:
        return norm
    close = difflib.get_close_matches(norm, all_types(), n=1)
    hint = f"did you mean {close[0].lower()}? " if close else ""
    raise UsageError(
        f"unknown quantization type {name!r}; valid types: {', '.join(t.lower() for t in all_types())}",
        hint=f"{hint}the default is {DEFAULT_QUANT.lower()}",
    )


def _tensor_sizes(path: Path) -> dict[str, int]:
    from gguf import GGUFReader

    return {t.name: int(t.n_bytes) for t in GGUFReader(path).tensors}


def quantize(
    src: Path,
    dst: Path,
    qtype: str = DEFAULT_QUANT,
    *,
    threads: int | None = None,
    on_progress: Callable[[int, int], None] | None = None,
    pure: bool = False,
    embeddings: str | None = None,
) -> Path:
    """Quantize GGUF ``src`` into ``dst`` with llama.cpp (written beside ``dst``, then renamed).

    ``pure``: every quantizable tensor at ``qtype`` (no per-layer mix); ``embeddings``: the type
    of the token embeddings, the PLE table and an untied output (llama.cpp's ``--pure
    --token-embedding-type T --output-tensor-type T``). A tensor already of its target type is
    copied unchanged (how QAT-aware Q4_0 blocks pass through).
    """
    qtype = parse_type(qtype)
    if qtype in FLOAT_TYPES:
        raise UsageError(f"{qtype.lower()} is not a quantized type; convert with that output type instead")
    if qtype in QAT_TYPES:
        raise UsageError(f"{qtype.lower()} is written from the checkpoint: use convert (g4 convert --quant)")
    src, dst = Path(src), Path(dst)
    if not src.is_file():
        raise QuantizeError(f"{src}: no such GGUF file")
    sizes = _tensor_sizes(src)
    total = sum(sizes.values()) or 1
    import llama_cpp
    from llama_cpp import _logger

    state = {"done": 0, "last": ""}
    errors: list[str] = []

    @llama_cpp.llama_log_callback
    def on_log(level: int, text: bytes, _user: ctypes.c_void_p) -> None:
        line = text.decode("utf-8", "replace")
        if level == 3:  # GGML_LOG_LEVEL_ERROR
            errors.append(line.strip())
        m = LOG_TENSOR.search(line)
        if m and m.group(3) != state["last"]:
            state["last"] = m.group(3)
            if on_progress:
                on_progress(state["done"], total)
            state["done"] += sizes.get(m.group(3), 0)

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = QUANT_TYPES[qtype]
    params.nthread = threads or os.cpu_count() or 1
    params.max_buf_size = 256 * 1024 * 1024  # keep the 5 GiB PLE table from being buffered whole
    params.pure = pure
    if embeddings:
        params.token_embedding_type = params.output_tensor_type = GGML_TYPE_IDS[embeddings]
    with atomic_output(dst) as tmp:
        llama_cpp.llama_log_set(on_log, ctypes.c_void_p(0))
        try:
            rc = llama_cpp.llama_model_quantize(os.fsencode(src), os.fsencode(tmp), ctypes.byref(params))
        finally:
            llama_cpp.llama_log_set(_logger.llama_log_callback, ctypes.c_void_p(0))
        if rc != 0:
            detail = next((e for e in reversed(errors) if e), "see llama.cpp's log")
            raise QuantizeError(f"llama.cpp failed to quantize {src.name} to {qtype}: {detail}")
    if on_progress:
        on_progress(total, total)
    return dst
