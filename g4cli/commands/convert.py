"""``g4 convert``: a Hugging Face Gemma 4 checkpoint directory -> quantized GGUF."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from g4cli.options import QuantOpt, ThreadsOpt


def convert(
    checkpoint: Annotated[
        Path,
        typer.Argument(
            metavar="CHECKPOINT_DIR", help="Hugging Face checkpoint directory (config.json, *.safetensors, tokenizer)."
        ),
    ],
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Output GGUF path. Default: ./<dir>-<QUANT>.gguf"),
    ] = None,
    quant: QuantOpt = "q4_k_m",
    mmproj: Annotated[
        str,
        typer.Option("--mmproj", help="Projector (vision/audio towers) type: f16, f32, q8_0, or none."),
    ] = "f16",
    threads: ThreadsOpt = None,
) -> None:
    """Convert a Gemma 4 checkpoint to GGUF and quantize it with llama.cpp.

    Reads config.json, the *.safetensors shards and the tokenizer; writes a text GGUF that
    llama.cpp loads (per-layer embeddings, KV sharing, experts and K=V layers intact) and,
    when the checkpoint has vision/audio towers, the projector beside it (mmproj-<name>.gguf).
    The path of each file written is printed on stdout; progress goes to stderr.

    Examples:

    \b
      g4 convert ./gemma-4-E4B-it
      g4 convert ./gemma-4-31B-it --quant q8_0 -o 31b-q8.gguf
      g4 convert ./gemma-4-E2B-it --quant bf16     # no quantization
      g4 convert ./gemma-4-E4B-it-qat-q4_0-unquantized --quant q4_0_qat   # QAT-aware Q4_0
    """
    from g4cli.render import ByteProgress, human_bytes, info, out
    from quantize.converter import convert as run_convert
    from quantize.llama_quant import parse_type

    qtype = parse_type(quant)
    progress = ByteProgress()
    with progress.running():
        result = run_convert(
            checkpoint,
            output,
            quant=qtype,
            mmproj_type=None if mmproj.lower() == "none" else mmproj,
            threads=threads,
            on_progress=progress.update,
        )
    if result.qat is not None:
        from quantize.qat import summary

        info(summary(result.qat))
    size = result.text.stat().st_size
    info(f"wrote {result.text} ({qtype}, {human_bytes(size)}, {result.n_tensors} tensors)")
    if result.mmproj is not None:
        info(f"wrote {result.mmproj} (projector, {human_bytes(result.mmproj.stat().st_size)})")
    out(f"{result.text}\n" + (f"{result.mmproj}\n" if result.mmproj else ""))
