"""``g4 quality``: how close a quantized model is to its unquantized one (KLD, top-1, perplexity)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from g4cli.options import ChatThreadsOpt, JsonOpt

if TYPE_CHECKING:
    from g4cli.models.store import ModelEntry

AgainstOpt = Annotated[
    str,
    typer.Option(
        "--against",
        help="The reference: a type of the same model (bf16, f16, f32, q8_0), a pulled model or a GGUF path.",
    ),
]


def quality(
    model: Annotated[str, typer.Argument(metavar="MODEL", help="A pulled model (e4b-qat, org/repo:q4_k_m) or a GGUF.")],
    against: AgainstOpt = "bf16",
    json: JsonOpt = False,
    threads: ChatThreadsOpt = None,
    text: Annotated[
        Path | None, typer.Option("--text", help="Calibration text file (default: the one g4 ships).")
    ] = None,
) -> None:
    """Compare a quantized model with its unquantized one on a shipped calibration text.

    Both GGUFs are evaluated by llama.cpp on the same tokens (the opening of Alice's
    Adventures in Wonderland, public domain): the KL divergence of the quantized model's
    next-token distribution from the reference's (mean, median, 99th percentile, in nats), how
    often both rank the same token first, and the perplexity of each. What users compare
    quantizations by (unsloth's KLD and "flips"). The reference for --against bf16 (the
    default) is the model's kept source GGUF (g4 pull --keep-source or --report) or the same
    model pulled as bf16.

    Examples:

    \b
      g4 quality e4b-qat                          # QAT-aware Q4_0 against its BF16 source
      g4 quality e4b:q4_k_m --against e4b:q8_0
      g4 quality model-Q4_0.gguf --against model-BF16.gguf --json --text my-text.txt
    """
    import json as jsonlib

    from g4cli.models import quality as q
    from g4cli.models import store
    from g4cli.render import info, out

    entry = store.resolve(model)
    ref = reference(entry, against)
    info(f"evaluating {entry.gguf.name} and {ref.name} on the calibration text…")
    calibration = text.read_text(encoding="utf-8") if text else None
    report = q.compare(entry.gguf, ref, text=calibration, threads=threads)
    if json:
        out(jsonlib.dumps(report.as_dict(), indent=2) + "\n")
        return
    out("".join(f"{k:<12}{v}\n" for k, v in q.lines(report, entry.tag, str(ref))))


def reference(entry: ModelEntry, against: str) -> Path:
    """The reference GGUF: the model's kept source of that type, the same model at that type, or
    a named model or path."""
    from g4cli.errors import ModelNotFound
    from g4cli.models import store
    from quantize.llama_quant import FLOAT_TYPES, all_types

    kind = against.strip().upper()
    if kind not in all_types():
        return store.resolve(against).gguf
    source = entry.manifest.get("files", {}).get("source")
    if source and kind in FLOAT_TYPES and Path(source["name"]).stem.upper().endswith(kind):
        return entry.dir / source["name"]
    if entry.quant:
        found = store.find(entry.name, kind)
        if found:
            return found[0].gguf
    raise ModelNotFound(
        f"no {kind.lower()} reference for {entry.tag}",
        hint=f"g4 pull {entry.name}:{kind.lower()}, or pull with --keep-source; or --against PATH.gguf",
    )
