"""g4's own model store: quantized GGUFs with a manifest, apart from the Hugging Face cache.

Layout (the root is ``$G4_HOME``, else ``$XDG_DATA_HOME/g4``, else ``~/.local/share/g4``)::

    models/<name>/<QUANT>/model.gguf       the quantized text model
    models/<name>/<QUANT>/mmproj.gguf      the vision/audio projector, when the model has one
    models/<name>/<QUANT>/manifest.json    written last: a directory without it is not a model
    locks/<name>@<QUANT>.lock              flock: exclusive while pulling or removing, shared while in use

``<name>`` is a catalog name (``e4b``), a repo id with ``/`` written ``--`` (``org--repo``) or a
local checkpoint's name; names are validated so that none can point outside the store. Every
file is written beside its destination and renamed into place.

The API the other commands use: ``store_root()``, ``resolve(name_or_path) -> ModelEntry``,
``list_models()``, ``remove(name)``, ``using(entry)`` (hold a model so ``g4 rm`` waits).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from g4cli.errors import ModelBusy, ModelNotFound, UsageError
from g4cli.models import catalog

MANIFEST = "manifest.json"
MODEL_FILE = "model.gguf"
MMPROJ_FILE = "mmproj.gguf"
MANIFEST_FORMAT = 1


def store_root() -> Path:
    """Where g4 keeps its models: ``$G4_HOME``, else the XDG data dir (``~/.local/share/g4``)."""
    home = os.environ.get("G4_HOME")
    if home:
        return Path(home).expanduser()
    xdg = os.environ.get("XDG_DATA_HOME")
    base = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".local" / "share"  # XDG: relative = unset
    return base / "g4"


def _dirname(name: str) -> str:
    return catalog.check_name(name).replace("/", "--")


def _check_quant(quant: str) -> str:
    if not quant or not all(c.isalnum() or c in "_-" for c in quant) or quant.startswith("-"):  # "-": UD-Q4_K_XL
        raise UsageError(f"invalid quantization tag {quant!r}")
    return quant


def model_dir(name: str, quant: str) -> Path:
    return store_root() / "models" / _dirname(name) / _check_quant(quant)


@dataclass
class ModelEntry:
    """A model ready to load: the text GGUF, the projector if any, and what the manifest says."""

    name: str
    quant: str  # "Q4_K_M"; "" for a bare GGUF path given to resolve()
    gguf: Path
    mmproj: Path | None = None
    manifest: dict[str, Any] = field(default_factory=dict)

    @property
    def dir(self) -> Path:
        return self.gguf.parent

    @property
    def tag(self) -> str:
        return f"{self.name}:{self.quant.lower()}" if self.quant else self.name

    @property
    def size(self) -> int:
        return sum(int(f.get("size", 0)) for f in self.manifest.get("files", {}).values())

    @property
    def capabilities(self) -> list[str]:
        return [k for k, v in self.manifest.get("capabilities", {}).items() if v]


def _entry(directory: Path) -> ModelEntry | None:
    """The model in ``directory``, or None when it has no readable manifest (not a finished pull)."""
    try:
        manifest = json.loads((directory / MANIFEST).read_text(encoding="utf-8"))
        files = manifest["files"]
        gguf = directory / Path(files["model"]["name"]).name
        mmproj = directory / Path(files["mmproj"]["name"]).name if "mmproj" in files else None
        return ModelEntry(manifest["name"], manifest["quant"], gguf, mmproj, manifest)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def list_models() -> list[ModelEntry]:
    """Every pulled model, sorted by name then quantization."""
    models = store_root() / "models"
    found = (_entry(m.parent) for m in models.glob(f"*/*/{MANIFEST}")) if models.is_dir() else ()
    return sorted((e for e in found if e is not None), key=lambda e: (e.name, e.quant))


def find(name: str, quant: str | None = None) -> list[ModelEntry]:
    """The pulled quantizations of ``name`` (just ``quant`` when given)."""
    directory = store_root() / "models" / _dirname(name)
    if quant:
        entry = _entry(directory / _check_quant(quant))
        return [entry] if entry else []
    found = (_entry(d) for d in sorted(directory.iterdir()) if d.is_dir()) if directory.is_dir() else ()
    return [e for e in found if e is not None]


def entry(name: str, quant: str) -> ModelEntry | None:
    found = find(name, quant)
    return found[0] if found else None


def _parse_name(text: str) -> tuple[str, str | None]:
    """``e4b:q8_0`` / ``google/gemma-4-E4B-it`` / ``my-local`` -> (store name, quant or None)."""
    base, quant = catalog.split_tag(text.strip())
    model = catalog.lookup(base)
    return (model.name if model else catalog.check_name(base)), quant


def _closest_hint(text: str) -> str | None:
    """ "did you mean ...?" with the pulled name or tag closest to ``text``, if one is close."""
    models = list_models()
    close = catalog.suggest(text, sorted({e.name for e in models} | {e.tag for e in models}))
    return f"did you mean {close}?" if close else ("g4 list shows what is pulled" if models else None)


def resolve(name_or_path: str | Path) -> ModelEntry:
    """A pulled model by name (``e4b``, ``e4b:q8_0``, ``org/repo``), a model directory or a GGUF path.

    Without a quantization tag the default (Q4_K_M) is taken if pulled, else the only one.
    """
    text = str(name_or_path)
    path = Path(text).expanduser()
    if text.endswith(".gguf") or _is_gguf(path):
        if not path.is_file():
            raise ModelNotFound(f"{path}: no such GGUF file")
        return ModelEntry(path.stem, "", path)
    if path.is_dir() and (path / MANIFEST).is_file():
        found = _entry(path)
        if found is None:
            raise ModelNotFound(f"{path}: unreadable {MANIFEST}", hint="pull it again (g4 rm, then g4 pull)")
        return found
    return resolve_name(text)


def resolve_name(text: str) -> ModelEntry:
    """A pulled model by name only, never a path (what a server takes from a request)."""
    name, quant = _parse_name(text)
    found = find(name, quant)
    if not found:
        raise ModelNotFound(f"{text} is not pulled: run g4 pull {text}", hint=_closest_hint(text))
    if len(found) > 1:
        default = [e for e in found if e.quant == catalog.DEFAULT_QUANT]
        if not default:
            tags = ", ".join(e.tag for e in found)
            raise UsageError(f"{name} is pulled in several quantizations ({tags}); say which, e.g. {found[0].tag}")
        found = default
    if not found[0].gguf.is_file():
        raise ModelNotFound(f"{found[0].tag}: {found[0].gguf} is missing", hint=f"g4 rm {found[0].tag}, then pull it")
    return found[0]


def _is_gguf(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"GGUF"
    except OSError:
        return False


@contextlib.contextmanager
def flock(path: Path, *, shared: bool = False, wait: bool = True) -> Iterator[bool]:
    """Hold an flock on ``path`` (created if need be). With ``wait=False`` a lock held elsewhere
    yields False (and nothing is held) instead of blocking. Closing the file releases it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o664)
    try:
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)


@contextlib.contextmanager
def lock(name: str, quant: str, *, shared: bool = False, wait: bool = True) -> Iterator[None]:
    """Hold ``name:quant``: exclusive for pull and rm, shared while a model is in use.

    With ``wait=False`` a held lock raises ``ModelBusy`` instead of blocking.
    """
    path = store_root() / "locks" / f"{_dirname(name)}@{_check_quant(quant)}.lock"
    with flock(path, shared=shared, wait=wait) as held:
        if not held:
            raise ModelBusy(
                f"{name}:{quant.lower()} is in use by another g4 process (a pull, a chat or a removal)",
                hint="try again when it has finished",
            )
        yield


def using(model: ModelEntry) -> contextlib.AbstractContextManager[None]:
    """Hold a pulled model while it is loaded, so that ``g4 rm`` refuses to delete it meanwhile."""
    if not model.quant:
        return contextlib.nullcontext()
    return lock(model.name, model.quant, shared=True)


def matching(name: str) -> list[ModelEntry]:
    """The pulled models ``name`` designates (every quantization without a tag); none is an error."""
    base, quant = _parse_name(name)
    found = find(base, quant)
    if not found:
        raise ModelNotFound(f"no pulled model named {name!r}", hint=_closest_hint(name))
    return found


def remove(name: str) -> list[ModelEntry]:
    """Delete a pulled model (every quantization unless the name has a tag); returns what went.

    Each one under its lock, without waiting: a model being pulled or used raises ``ModelBusy``.
    """
    found = matching(name)
    for e in found:
        with lock(e.name, e.quant, wait=False):
            (e.dir / MANIFEST).unlink(missing_ok=True)  # first: from here on it is not a model any more
            shutil.rmtree(e.dir, ignore_errors=True)
    with contextlib.suppress(OSError):
        found[0].dir.parent.rmdir()  # the name's directory, once its last quantization is gone
    return found


def clear(directory: Path) -> None:
    """Empty a model directory before pulling into it (call with the model's lock held).

    Whatever is there is a finished model being replaced or what an interrupted pull left
    (partial files, a projector without its text model). The manifest goes first.
    """
    if not directory.is_dir():
        return
    (directory / MANIFEST).unlink(missing_ok=True)
    for p in directory.iterdir():
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)


def write_manifest(directory: Path, manifest: dict[str, Any]) -> None:
    from g4cli import fsutil

    fsutil.write_json(directory / MANIFEST, manifest)


def sha256_file(path: Path, on_progress: Callable[[int, int], None] | None = None) -> str:
    """The sha256 of a file, read in 8 MiB pieces (``on_progress(done, total)`` as it goes)."""
    h = hashlib.sha256()
    total = path.stat().st_size
    done = 0
    with open(path, "rb", buffering=0) as f:
        while chunk := f.read(8 << 20):
            h.update(chunk)
            done += len(chunk)
            if on_progress:
                on_progress(done, total)
    return h.hexdigest()
