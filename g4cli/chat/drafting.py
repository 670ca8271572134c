"""Which assistant drafter a chat uses (``--draft auto|on|off``, ``--drafter``), and the fallback.

The drafter is the one ``g4 pull`` stored beside the model (``drafter.gguf``), or for a model
given as a path ``drafter-<stem>.gguf`` beside it (as its projector is ``mmproj-<stem>.gguf``),
or ``--drafter FILE``. A drafter that is not one, or is for another model, is an error before
anything is generated; one that cannot be loaded here (memory, llama-cpp-python's version) is one
notice with ``--draft auto``, and the chat decodes without it.
"""

from __future__ import annotations

from pathlib import Path

from g4cli.chat.runtime.model import Model
from g4cli.chat.select import Choice
from g4cli.chat.settings import LoadOptions
from g4cli.errors import DraftError, DraftUnavailable

DRAFTER_FILE = "drafter.gguf"  # in the store, beside model.gguf


def drafter_beside(gguf: Path) -> Path | None:
    """The drafter stored beside a model file, if there is one."""
    for path in (gguf.with_name(DRAFTER_FILE), gguf.with_name(f"drafter-{gguf.stem}.gguf")):
        if path.is_file():
            return path
    return None


def attach_for(model: Model, choice: Choice, options: LoadOptions) -> None:
    """Attach the chat's drafter to ``model`` as ``options`` say (nothing with ``--draft off``)."""
    from g4cli import render
    from g4cli.chat.runtime.draft import attach

    if options.draft == "off":
        return
    path = options.drafter or drafter_beside(choice.gguf)
    if path is None:
        if options.draft == "on":
            raise DraftError(
                f"--draft on: {choice.name} has no drafter",
                hint="pull it again to fetch its drafter, or use --draft auto",
            )
        return
    if not path.is_file():
        raise DraftError(f"{path}: no such drafter file")
    try:
        attach(model, path, options.draft_max)
        model.draft_paced = options.draft == "auto"
    except DraftUnavailable as e:
        if options.draft == "on":
            raise
        render.info(f"[dim]drafting off: {e}[/]")
