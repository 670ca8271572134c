"""Option aliases shared by commands (one definition, the same help everywhere)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

QuantOpt = Annotated[
    str,
    typer.Option(
        "--quant",
        "-q",
        help=(
            "Quantization type: q4_k_m (default), q4_k_s, q4_0, q5_k_m, q6_k, q8_0, ..., "
            "q4_0_qat (QAT-aware, for Google's QAT checkpoints) or f16/bf16/f32."
        ),
    ),
]
ThreadsOpt = Annotated[
    int | None, typer.Option("--threads", "-t", min=1, help="CPU threads for quantizing (default: all CPUs).")
]
ModelArg = Annotated[
    str,
    typer.Argument(
        metavar="MODEL",
        help="e2b, e4b, 12b, 26b-a4b (26b), 31b, optionally with a :quant tag (e4b:q8_0); an org/repo id; a directory.",
        show_default=False,
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON on stdout instead of text.")]

# Loading a model for chat (g4 chat, g4 serve): one definition, the same help in both.
GpuLayersOpt = Annotated[
    str,
    typer.Option(
        "--gpu-layers",
        metavar="auto|N",
        help="Layers on GPUs/RPC servers: auto (as many as their free memory holds) or a number (needs a GPU build).",
    ),
]
SplitModeOpt = Annotated[
    str, typer.Option("--split-mode", help="Several GPUs: layer (whole layers each), row (CUDA: rows of each), none.")
]
TensorSplitOpt = Annotated[
    str | None,
    typer.Option(
        "--tensor-split",
        metavar="3,1",
        help="Share of the layers per GPU (default: by free memory).",
        show_default=False,
    ),
]
MainGpuOpt = Annotated[int, typer.Option("--main-gpu", help="The GPU for --split-mode none (and row's small tensors).")]
ChatThreadsOpt = Annotated[
    int | None, typer.Option("--threads", "-t", help="CPU threads (default: the physical cores, as llama.cpp).")
]
FlashAttnOpt = Annotated[str, typer.Option("--flash-attn", help="Flash attention: auto (the measured best), on, off.")]
KvTypeOpt = Annotated[
    str, typer.Option("--kv-type", help="KV cache type: f16, q8_0, q4_0 (quantized needs flash attention).")
]
ImageTokensOpt = Annotated[
    int | None,
    typer.Option(
        "--image-tokens",
        metavar="N",
        help="Most tokens per image, 70-1120 (default 1120: full detail, to read text; small images stay small).",
    ),
]
RpcOpt = Annotated[
    str | None,
    typer.Option(
        "--rpc",
        metavar="HOST:PORT[,HOST:PORT]",
        help="Put layers on these g4 rpc-server machines too (G4_RPC_TIMEOUT: seconds one may be silent, default 120).",
        show_default=False,
    ),
]
# Drafting with an assistant drafter (g4 chat, g4 serve): see g4cli/chat/runtime/speculate.py
DraftOpt = Annotated[
    str,
    typer.Option(
        "--draft",
        help="Draft tokens with the model's assistant: auto (when there is one, while it is measured to be "
        "faster), on (required, every round), off.",
    ),
]
DraftMaxOpt = Annotated[int, typer.Option("--draft-max", min=1, max=16, help="Most tokens drafted a round.")]
BatchInvariantOpt = Annotated[
    bool,
    typer.Option(
        "--batch-invariant",
        help="Compute every token as a row of a batch, as drafting's verify batches do: answers with and "
        "without the drafter then match bit for bit (decoding without a drafter gets slower).",
    ),
]
DrafterOpt = Annotated[
    Path | None,
    typer.Option("--drafter", help="A drafter GGUF (arch gemma4-assistant); default: the one beside the model."),
]
