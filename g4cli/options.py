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
ThreadsOpt = Annotated[
    int | None, typer.Option("--threads", "-t", min=1, help="CPU threads for quantizing (default: all CPUs).")
]
ModelArg = Annotated[
    str,
    typer.Argument(
        metavar="MODEL",
        help="e2b, e4b, 26b-a4b (26b), 31b with an optional :quant tag (e4b:q8_0); an org/repo id; a checkpoint dir.",
        show_default=False,
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON on stdout instead of text.")]
