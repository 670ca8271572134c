"""Which model a chat uses: a pulled name, a GGUF path (projector beside it), or the default."""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from g4cli.errors import ModelNotFound, UsageError


@dataclass
class Choice:
    name: str
    gguf: Path
    mmproj: Path | None
    entry: object | None = None  # the store entry, when the model came from the store


def config_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "g4" / "config.json"


def configured_default() -> str | None:
    """``G4_MODEL`` or ``default_model`` in the config file."""
    if os.environ.get("G4_MODEL"):
        return os.environ["G4_MODEL"]
    try:
        data = json.loads(config_path().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    value = data.get("default_model") if isinstance(data, dict) else None
    return value if isinstance(value, str) and value else None


def projector_beside(gguf: Path) -> Path | None:
    """``mmproj-<name>.gguf`` next to a GGUF, or the only ``mmproj*.gguf`` in its directory."""
    exact = gguf.with_name(f"mmproj-{gguf.name}")
    if exact.is_file():
        return exact
    candidates = sorted(p for p in gguf.parent.glob("mmproj*.gguf") if p.is_file() and p != gguf)
    return candidates[0] if len(candidates) == 1 else None


def split_args(model: str | None, prompt: str | None) -> tuple[str | None, str | None]:
    """``g4 chat [MODEL] [PROMPT]``: (the model's name, the prompt). A lone argument that names
    no model is the prompt, for the default model (``g4 chat "question"``)."""
    if model is None or prompt is not None or _surely_a_model(model):
        return model, prompt
    if any(c.isspace() for c in model) or len(model) > 100:
        return None, model
    from g4cli.models import store

    try:
        store.resolve(model)
        return model, None
    except (ModelNotFound, UsageError):
        return None, model


def default_name() -> str | None:
    """The model a chat without MODEL uses, by name: G4_MODEL / the config, else the latest pull."""
    name = configured_default()
    if name is None:
        from g4cli.models import store

        pulled = store.list_models()
        with contextlib.suppress(OSError):
            pulled.sort(key=lambda e: (e.dir / "manifest.json").stat().st_mtime)
        name = pulled[-1].tag if pulled else None
    return name


def _surely_a_model(text: str) -> bool:
    """A GGUF path, an existing file, or a catalog name (``e4b:q8_0``): a model, pulled or not."""
    if text.endswith(".gguf") or Path(text).expanduser().is_file():
        return True
    from g4cli.models import catalog

    return catalog.lookup(text.split(":", 1)[0]) is not None


def choose(name: str | None, mmproj: Path | None = None) -> Choice:
    """The model a chat uses: ``name`` (pulled name or GGUF path), else the configured default,
    else the most recently pulled model."""
    from g4cli.models import store

    if name is None:
        name = default_name()
    if name is None:
        raise ModelNotFound("no model is pulled yet", hint="run g4 pull e4b (or give a GGUF path)")
    entry = store.resolve(name)
    projector = mmproj or entry.mmproj
    if projector is None and not entry.quant:  # a bare GGUF path
        projector = projector_beside(entry.gguf)
    if projector is not None and not Path(projector).is_file():
        raise ModelNotFound(f"{projector}: no such projector file")
    return Choice(entry.tag if entry.quant else str(entry.gguf), entry.gguf, projector, entry if entry.quant else None)
