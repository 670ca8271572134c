"""``g4 pull``: a model name -> quantized GGUFs in g4's store (download, convert, quantize)."""

from __future__ import annotations

from typing import Annotated

import typer

from g4cli.options import ModelArg, ThreadsOpt


def pull(
    model: ModelArg,
    quant: Annotated[
        str | None,
        typer.Option("--quant", "-q", help="Quantization type (default: the :tag, else q4_k_m).", show_default=False),
    ] = None,
    revision: Annotated[
        str | None, typer.Option("--revision", help="Branch, tag or commit on the Hub (default: main).")
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Go ahead even when the disk looks too small.")] = False,
    keep_source: Annotated[
        bool, typer.Option("--keep-source", help="Keep the unquantized GGUF beside the quantized one.")
    ] = False,
    remove_download: Annotated[
        bool,
        typer.Option("--remove-download", help="Delete the safetensors from the Hugging Face cache once converted."),
    ] = False,
    name: Annotated[
        str | None, typer.Option("--name", help="Store name for a checkpoint directory (default: its name).")
    ] = None,
    threads: ThreadsOpt = None,
    report: Annotated[
        bool,
        typer.Option(
            "--report",
            help="Then compare it with the unquantized model (KLD, same top-1, perplexity; implies --keep-source).",
        ),
    ] = False,
    no_draft: Annotated[
        bool, typer.Option("--no-draft", help="Do not fetch the model's assistant drafter (<repo>-assistant).")
    ] = False,
) -> None:
    """Download a Gemma 4 model from Hugging Face and quantize it into g4's store.

    Before downloading, prints the download size, the disk space needed and the memory the
    model needs at the default context, and refuses a disk that is too small (--force to try
    anyway). Downloads go to the Hugging Face cache (HF_HOME, HF_HUB_CACHE; HF_TOKEN,
    HF_ENDPOINT and HF_HUB_OFFLINE=1 are honoured), every weight file checked against the
    Hub's sha256; an interrupted download continues where it stopped on the next g4 pull.
    Models go to $G4_HOME (default ~/.local/share/g4), with the model's assistant drafter
    (<repo>-assistant, for g4 chat's drafting) beside it unless --no-draft. Prints the GGUF path
    on stdout; pulling a model that is already there does nothing.

    Google's QAT checkpoints (e4b-qat, ...: google/gemma-4-*-it-qat-q4_0-unquantized) become
    QAT-aware Q4_0 (q4_0_qat) by default. A repo of ready GGUF files (hf.co/ORG/REPO[:QUANT], or
    ORG/REPO:QUANT when the repo's name says GGUF) is downloaded, not converted: the file for the
    tag (default Q4_K_M), its splits and the repo's F16 mmproj, each checked against the Hub's
    sha256 and its header checked (Gemma 4, tensors inside the file) before it is stored.

    Examples:

    \b
      g4 pull e4b                          # google/gemma-4-E4B-it -> Q4_K_M, + its drafter
      g4 pull e2b --no-draft               # without google/gemma-4-E2B-it-assistant
      g4 pull 26b:q8_0
      g4 pull e4b-qat                      # QAT checkpoint -> QAT-aware Q4_0
      g4 pull hf.co/ggml-org/gemma-4-E4B-it-GGUF:Q8_0
      g4 pull unsloth/gemma-4-E4B-it-GGUF:UD-Q4_K_XL
      g4 pull google/gemma-4-31B-it --revision main --remove-download
      g4 pull ./my-finetune --name tuned -q q5_k_m
      g4 pull e4b-qat --report             # and how close Q4_0_QAT is to BF16
    """
    from g4cli.models.pull import pull as run_pull
    from g4cli.render import info, out

    result = run_pull(
        model,
        quant=quant,
        revision=revision,
        force=force,
        keep_source=keep_source or report,  # the report's reference: the unquantized GGUF
        remove_download=remove_download,
        threads=threads,
        name=name,
        draft=not no_draft,
    )
    if result.already:
        info(f"{result.entry.tag} is already pulled ({result.entry.dir})")
    if report:
        _report(result.entry, threads)
    out(f"{result.entry.gguf}\n")


def _report(entry, threads: int | None) -> None:  # entry: store.ModelEntry
    """The quality report on stderr (stdout carries the path), against the unquantized model."""
    from g4cli.commands.quality import reference
    from g4cli.errors import ModelNotFound
    from g4cli.models import quality
    from g4cli.render import info, warn

    for kind in ("bf16", "f16", "f32"):
        try:
            ref = reference(entry, kind)
            break
        except ModelNotFound:
            continue
    else:
        warn(f"no unquantized {entry.name} to compare with: g4 pull {entry.name}:bf16, then g4 quality {entry.tag}")
        return
    r = quality.compare(entry.gguf, ref, threads=threads)
    for k, v in quality.lines(r, entry.tag, str(ref)):
        info(f"{k:<12}{v}")
