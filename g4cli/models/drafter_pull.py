"""``g4 pull``'s drafter: a catalog model's assistant, fetched and converted beside the model.

Google publishes one per size as ``<model repo>-assistant`` (``google/gemma-4-E4B-it-assistant``:
4 layers reading the model's KV cache). It is downloaded like the model (resumable, sha256
checked, into the HF cache) and converted with the model's quantization to ``drafter.gguf`` in
the model's directory, where ``g4 chat`` finds it (``g4cli.chat.drafting``). A repo that is
missing or unreachable is one warning: the model is pulled without it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from g4cli.errors import G4Error
from g4cli.models import catalog
from g4cli.render import human_bytes, info, warn

if TYPE_CHECKING:
    from g4cli.models.fit import DiskNeed
    from g4cli.models.hub import Snapshot

SUFFIX = "-assistant"  # google/gemma-4-E2B-it -> google/gemma-4-E2B-it-assistant
FILE = "drafter.gguf"  # g4cli.chat.drafting.DRAFTER_FILE


@dataclass
class DrafterPlan:
    snap: Snapshot
    download: int  # bytes still to fetch
    file: int  # the estimated drafter GGUF


def drafter_repo(ref: catalog.Ref) -> str | None:
    """The assistant's repo for a catalog model pulled from its own repo (None otherwise)."""
    model = catalog.lookup(ref.name)
    return model.repo + SUFFIX if model is not None and ref.repo == model.repo else None


def plan(ref: catalog.Ref, quant: str) -> DrafterPlan | None:
    """Open the drafter's snapshot and estimate its file (None, with a warning, when there is none)."""
    from g4cli.models import download, fit, hub
    from quantize.checkpoint import read_json

    repo = drafter_repo(ref)
    if repo is None:
        return None
    try:
        snap = hub.open_snapshot(repo, "main")
        download.download(snap, [f for f in snap.files if f.path == "config.json"])
        weights = sum(f.size for f in snap.weights)
        est = fit.estimate(read_json(snap.dir / "config.json"), quant=quant, source_bytes=weights)
    except G4Error as e:
        warn(f"no drafter ({repo}): {e}; pulling the model without it")
        return None
    return DrafterPlan(snap, snap.remaining_bytes(), est.text)


def add_needs(p: DrafterPlan, needs: list[DiskNeed]) -> None:
    """The drafter's download and file, on top of the model's disk needs (same file systems)."""
    info(f"  drafter  {human_bytes(p.file):>9}  ({p.snap.repo}, download {human_bytes(p.download)})")
    needs[0].need += p.download + (p.file if len(needs) == 1 else 0)
    if len(needs) > 1:
        needs[-1].need += p.file


def fetch(p: DrafterPlan, directory: Path, quant: str, threads: int | None, update) -> Path:
    """Download, verify and convert the drafter to ``directory/drafter.gguf``."""
    from g4cli.models import download
    from quantize.converter import convert

    download.download(p.snap, p.snap.files, update)
    download.verify(p.snap, update)
    out = directory / FILE
    convert(p.snap.dir, out, quant=quant, mmproj_type=None, threads=threads, on_progress=update)
    return out
