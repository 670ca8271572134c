"""``g4 list``: the pulled models."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from g4cli.options import JsonOpt

if TYPE_CHECKING:
    from g4cli.models.store import ModelEntry


def list(json: JsonOpt = False) -> None:
    """List the pulled models: name, quantization, size, capabilities and path.

    Examples:

    \b
      g4 list
      g4 list --json | jq '.[].path'
    """
    import json as jsonlib

    from g4cli.models import catalog, store
    from g4cli.render import human_bytes, info, out

    models = store.list_models()
    if json:
        out(jsonlib.dumps([row(e) for e in models], indent=2) + "\n")
        return
    if not models:
        known = ", ".join(f"{m.name} ({m.about})" for m in catalog.MODELS)
        info(f"no models in {store.store_root()} yet; g4 pull one of: {known}")
        return
    table = [("NAME", "QUANT", "SIZE", "CAPABILITIES", "PATH")]
    for e in models:
        caps = [*e.capabilities, *(["draft"] if drafter(e) else [])]  # draft: a drafter beside it
        table.append((e.name, e.quant.lower(), human_bytes(e.size), " ".join(caps) or "-", str(e.gguf)))
    widths = [max(len(r[i]) for r in table) for i in range(4)]
    out("".join("  ".join(c.ljust(w) for c, w in zip(r, widths)) + f"  {r[4]}\n" for r in table))


def drafter(e: ModelEntry) -> Path | None:
    """The assistant drafter pulled beside the model (manifest role "drafter"), if any."""
    f = e.manifest.get("files", {}).get("drafter")
    return e.dir / f["name"] if f else None


def row(e: ModelEntry) -> dict:
    """One model as JSON (``g4 list --json``)."""
    return {
        "name": e.name,
        "quant": e.quant,
        "tag": e.tag,
        "size": e.size,
        "capabilities": e.capabilities,
        "path": str(e.gguf),
        "mmproj": str(e.mmproj) if e.mmproj else None,
        "drafter": str(drafter(e)) if drafter(e) else None,
        "source": e.manifest.get("source", {}),
    }
