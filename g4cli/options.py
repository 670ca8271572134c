"""Option aliases shared by commands (one definition, the same help everywhere)."""

from __future__ import annotations

from typing import Annotated

import typer

QuantOpt = Annotated[
    str,
    typer.Option(
        "--quant",
        "-q",
        help="Quantization type: q4_k_m (default), q4_k_s, q4_0, q5_k_m, q6_k, q8_0, ... or f16/bf16/f32.",
    ),
]
ThreadsOpt = Annotated[int | None, typer.Option("--threads", "-t", min=1, help="CPU threads (default: all cores).")]
