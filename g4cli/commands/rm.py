"""``g4 rm``: delete a pulled model from g4's store."""

from __future__ import annotations

import sys
from typing import Annotated

import typer


def rm(
    name: Annotated[str, typer.Argument(metavar="NAME", help="A pulled model: e4b (every quantization) or e4b:q8_0.")],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
) -> None:
    """Delete a pulled model (its GGUFs and manifest) from g4's store.

    Without a :quant tag every quantization of the name goes. Asks first on a terminal;
    elsewhere (a script, a pipe) --yes is required. The Hugging Face cache is left alone
    (`hf cache rm` manages it). A model in use by another g4 process is not removed.

    Examples:

    \b
      g4 rm e4b:q8_0
      g4 rm 31b --yes
    """
    from g4cli.errors import UsageError
    from g4cli.models import store
    from g4cli.render import human_bytes, info

    found = store.matching(name)
    what = ", ".join(f"{e.tag} ({human_bytes(e.size)})" for e in found)
    if not yes:
        if not sys.stdin.isatty():
            raise UsageError(f"not removing {what} without confirmation", hint="add --yes")
        if not typer.confirm(f"Remove {what}?", err=True):
            info("nothing removed")
            raise typer.Exit(1)
    for e in store.remove(name):
        info(f"removed {e.tag} ({human_bytes(e.size)})")
