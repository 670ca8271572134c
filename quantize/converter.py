"""Orchestration: checkpoint dir -> text GGUF (and projector) -> llama.cpp quantization."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from gguf import GGUFValueType, Keys, LlamaFileType

from g4cli.errors import CheckpointError, UsageError
from g4cli.fsutil import partial_path
from quantize import gemma4, mmproj
from quantize.checkpoint import Checkpoint, open_checkpoint, read_json
from quantize.gguf_out import KV, write_gguf
from quantize.llama_quant import DEFAULT_QUANT, FLOAT_TYPES, QAT_TYPES, parse_type, quantize
from quantize.qat import Q4_0Encoder
from quantize.vocab import Vocab, load_vocab

Progress = Callable[[str, int, int], None]  # (phase, done, total)
FILE_TYPES = {"F32": LlamaFileType.ALL_F32, "F16": LlamaFileType.MOSTLY_F16, "BF16": LlamaFileType.MOSTLY_BF16}
STR, U32, BOOL, F32 = GGUFValueType.STRING, GGUFValueType.UINT32, GGUFValueType.BOOL, GGUFValueType.FLOAT32
ARR = GGUFValueType.ARRAY
# not in PyPI gguf 0.19.0 (vendored gguf-py constants.py:345); llama.cpp's loader takes INT32 only
SUPPRESS_TOKENS = "tokenizer.ggml.suppress_tokens"


@dataclass
class ConvertResult:
    text: Path
    quant: str
    mmproj: Path | None = None
    dropped: list[tuple[str, str]] = field(default_factory=list)
    n_tensors: int = 0
    qat: Q4_0Encoder | None = None  # Q4_0_QAT: blocks written, and how many were on no QAT grid


def vocab_kv(v: Vocab) -> list[KV]:
    T = Keys.Tokenizer
    kv: list[KV] = [
        (T.MODEL, "gemma4", STR, None),  # llama.cpp derives pre-tokenizer "gemma4" from this
        (T.LIST, v.tokens, ARR, STR),
        (T.SCORES, v.scores, ARR, F32),
        (T.TOKEN_TYPE, v.types, ARR, GGUFValueType.INT32),
        (T.MERGES, v.merges, ARR, STR),  # mandatory: llama.cpp refuses a gemma4 vocab without
        (T.ADD_BOS, v.add_bos, BOOL, None),
        (T.ADD_EOS, v.add_eos, BOOL, None),
        (T.ADD_PREFIX, False, BOOL, None),
    ]
    for role, key in (("bos", T.BOS_ID), ("eos", T.EOS_ID), ("unk", T.UNK_ID), ("pad", T.PAD_ID), ("mask", T.MASK_ID)):
        if role in v.special_ids:
            kv.append((key, v.special_ids[role], U32, None))
    if v.chat_template:
        kv.append((T.CHAT_TEMPLATE, v.chat_template, STR, None))
    return kv


def text_kv(ckpt: Checkpoint, hp: gemma4.TextParams, vocab: Vocab, outtype: str) -> list[KV]:
    G = Keys.General
    name = ckpt.root.resolve().name or "gemma4"
    return [
        (G.TYPE, "model", STR, None),
        (G.NAME, name, STR, None),
        (G.FILE_TYPE, int(FILE_TYPES[outtype]), U32, None),
        (G.QUANTIZATION_VERSION, 2, U32, None),
        *gemma4.gguf_kv(hp),
        *vocab_kv(vocab),
        *suppress_kv(suppress_tokens(ckpt.root, len(vocab))),
    ]


def suppress_tokens(root: Path, n_vocab: int) -> list[int]:
    """generation_config.json's ``suppress_tokens`` (the 12B has them): ids generation never picks.

    transformers bans them in ``generate``; llama.cpp reads them from the GGUF (and bans them in
    its common/ sampling code, which g4's sampler does itself). Ids outside the vocabulary are
    left out, as llama.cpp's loader drops them."""
    path = root / "generation_config.json"
    if not path.is_file():
        return []
    config = read_json(path)
    ids = config.get("suppress_tokens") if isinstance(config, dict) else None
    if ids is None:
        return []
    if not isinstance(ids, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in ids):
        raise CheckpointError("generation_config.json: suppress_tokens must be a list of token ids")
    return [t for t in dict.fromkeys(ids) if 0 <= t < n_vocab]


def suppress_kv(ids: list[int]) -> list[KV]:
    return [(SUPPRESS_TOKENS, ids, ARR, GGUFValueType.INT32)] if ids else []


def default_output(checkpoint: Path, quant: str, directory: Path | None = None) -> Path:
    return (directory or Path.cwd()) / f"{Path(checkpoint).resolve().name}-{quant}.gguf"


def write_text_gguf(
    ckpt: Checkpoint,
    out: Path,
    outtype: str,
    on_progress: Progress | None = None,
    *,
    durable: bool = True,
    qat: Q4_0Encoder | None = None,
) -> tuple[int, list[tuple[str, str]]]:
    """The text model as an unquantized GGUF; returns (tensor count, dropped tensors).

    ``durable=False``: no fsync, for the intermediate that llama.cpp quantizes and g4 deletes.
    ``qat``: the QAT-trained tensors written as QAT-aware Q4_0 blocks (counted by it), the rest
    at ``outtype``.
    """
    from quantize import qat as qat_blocks

    hp = gemma4.text_params(ckpt.config)
    vocab = load_vocab(ckpt.root, ckpt.config)
    plan = gemma4.plan_text(hp, ckpt.tensors, len(vocab), outtype)
    if qat is not None:
        qat_blocks.apply(plan.tensors, qat)
    kv = text_kv(ckpt, hp, vocab, outtype)
    del vocab  # write_gguf drops the KV data once written: the vocabulary need not outlive it
    write_gguf(
        out,
        hp.arch,
        kv,
        plan.tensors,
        (lambda done, total: on_progress("convert", done, total)) if on_progress else None,
        durable=durable,
    )
    return len(plan.tensors), plan.dropped


def mmproj_output(text_out: Path) -> Path:
    """Where the projector goes: ``mmproj-<name>.gguf`` beside the text GGUF."""
    return text_out.with_name(f"mmproj-{text_out.stem}.gguf")


def write_mmproj(ckpt: Checkpoint, out: Path, outtype: str = "F16", on_progress: Progress | None = None) -> int:
    """The vision/audio projector GGUF (arch clip); returns the tensor count."""
    plan = mmproj.plan_mmproj(ckpt, outtype)
    write_gguf(
        out,
        "clip",
        mmproj.mmproj_kv(ckpt, outtype),
        plan.tensors,
        (lambda done, total: on_progress("projector", done, total)) if on_progress else None,
    )
    return len(plan.tensors)


def convert(
    checkpoint: Path | str,
    out: Path | str | None = None,
    *,
    quant: str = DEFAULT_QUANT,
    mmproj_type: str | None = "F16",
    threads: int | None = None,
    on_progress: Progress | None = None,
) -> ConvertResult:
    """Convert a Gemma 4 checkpoint directory to a GGUF of type ``quant``, plus its projector.

    ``quant`` is a llama.cpp quantization type (default Q4_K_M) or F32/F16/BF16 for an
    unquantized file. Quantized outputs go through an unquantized intermediate in the source's
    own dtype, deleted afterwards. When the checkpoint has vision/audio towers, the projector
    is written beside the text file (``mmproj-<name>.gguf``, type ``mmproj_type``: F16, F32 or
    Q8_0; None skips it).
    """
    quant = parse_type(quant)
    mm_type = mmproj_type.upper() if mmproj_type else None
    if mm_type is not None and mm_type not in mmproj.MMPROJ_TYPES:
        raise UsageError(f"projector type {mmproj_type!r} is not one of f16, f32, q8_0")
    ckpt = open_checkpoint(checkpoint)
    out = Path(out) if out is not None else default_output(ckpt.root, quant)
    result = ConvertResult(text=out, quant=quant)
    mm_partial = None
    if mm_type is not None and mmproj.has_towers(ckpt.config):
        gemma4.text_params(ckpt.config)  # a bad config fails before the projector is written
        # written under a temporary name first: both files appear together, or neither does
        mm_partial = partial_path(mmproj_output(out), ".mmproj")
        write_mmproj(ckpt, mm_partial, mm_type, on_progress)
    try:
        _convert_text(ckpt, out, quant, result, threads, on_progress)
        if mm_partial is not None:
            result.mmproj = mmproj_output(out)
            os.replace(mm_partial, result.mmproj)
    finally:
        if mm_partial is not None:
            mm_partial.unlink(missing_ok=True)
    return result


def _convert_text(
    ckpt: Checkpoint, out: Path, quant: str, result: ConvertResult, threads: int | None, on_progress: Progress | None
) -> None:
    if quant in FLOAT_TYPES:
        result.n_tensors, result.dropped = write_text_gguf(ckpt, out, quant, on_progress)
        return
    source_type = ckpt.source_dtype if ckpt.source_dtype in FLOAT_TYPES else "F32"
    intermediate = partial_path(out, f".{source_type}")
    # Q4_0_QAT: our Q4_0 blocks in the intermediate, which llama.cpp's "pure" Q4_0 copies as they
    # are; it quantizes only the embeddings (Q6_K, or Q8_0 for rows not of 256) and keeps the rest
    result.qat = Q4_0Encoder() if quant in QAT_TYPES else None
    try:
        result.n_tensors, result.dropped = write_text_gguf(
            ckpt, intermediate, source_type, on_progress, durable=False, qat=result.qat
        )
        quantize(
            intermediate,
            out,
            QAT_TYPES.get(quant, quant),
            threads=threads,
            on_progress=(lambda done, total: on_progress("quantize", done, total)) if on_progress else None,
            pure=result.qat is not None,
            embeddings="Q6_K" if result.qat is not None else None,
        )
    finally:
        intermediate.unlink(missing_ok=True)
