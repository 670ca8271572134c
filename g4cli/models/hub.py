"""The Hugging Face Hub side of ``g4 pull``: which files a snapshot has, where they go in the
standard HF cache, and Hub errors as one line each.

g4 leaves to huggingface_hub what it does well: URL resolution (``HF_ENDPOINT``), auth
(``HF_TOKEN``, ``hf auth login``), offline mode (``HF_HUB_OFFLINE``), repo metadata including each
LFS file's sha256, the cache layout (``HF_HOME``, ``HF_HUB_CACHE``: ``blobs/``, ``snapshots/<commit>/``,
``refs/``) and its per-blob locks. ``g4cli.models.download`` brings the files in, resumably.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from g4cli import fsutil
from g4cli.errors import (
    AuthError,
    CheckpointError,
    DownloadError,
    ModelNotFound,
)
from g4cli.fsutil import PARTIAL_SUFFIX as PARTIAL
from g4cli.models import catalog
from g4cli.models.store import flock

Progress = Callable[[str, int, int], None]  # (what, done, total), as render.ByteProgress.update

INDEX = "model.safetensors.index.json"
# what the converter and the projector read; the weights are every top-level *.safetensors
NEEDED = frozenset(
    {
        "config.json",
        "generation_config.json",
        INDEX,
        "tokenizer.json",
        "tokenizer_config.json",
        "tokenizer.model",
        "special_tokens_map.json",
        "chat_template.jinja",
        "chat_template.json",
        "processor_config.json",
        "preprocessor_config.json",
    }
)
SHA256 = re.compile(r"^[0-9a-f]{64}$")


def wanted(path: str) -> bool:
    return "/" not in path and (path in NEEDED or path.endswith(".safetensors"))


@dataclass(frozen=True)
class RemoteFile:
    path: str
    size: int
    sha256: str | None = None  # LFS files: the content hash the Hub advertises (and the blob's name)


@dataclass
class Snapshot:
    """One commit of a repo: the files g4 needs and where they go in the HF cache."""

    repo: str
    revision: str
    commit: str
    files: list[RemoteFile]
    offline: str | None = None  # why it was read from the cache without asking the Hub
    verified: set[str] = field(default_factory=set)  # LFS files whose sha256 was checked in this run

    @property
    def storage(self) -> Path:
        from huggingface_hub import constants
        from huggingface_hub.file_download import repo_folder_name

        return Path(constants.HF_HUB_CACHE) / repo_folder_name(repo_id=self.repo, repo_type="model")

    @property
    def dir(self) -> Path:
        return self.storage / "snapshots" / self.commit

    @property
    def weights(self) -> list[RemoteFile]:
        return [f for f in self.files if f.path.endswith((".safetensors", ".gguf"))]  # .gguf: GGUF repos

    def file(self, path: str) -> RemoteFile | None:
        return next((f for f in self.files if f.path == path), None)

    def pointer(self, f: RemoteFile) -> Path:
        return self.dir / f.path

    def blob(self, f: RemoteFile) -> Path:
        return self.storage / "blobs" / str(f.sha256)

    def partial(self, f: RemoteFile) -> Path:
        return self.storage / "blobs" / f"{f.sha256}{PARTIAL}"

    def lock_path(self, etag: str) -> Path:
        from huggingface_hub import constants

        return Path(constants.HF_HUB_CACHE) / ".locks" / self.storage.name / f"{etag}.lock"

    def missing(self, files: list[RemoteFile] | None = None) -> list[RemoteFile]:
        return [f for f in (self.files if files is None else files) if not self.pointer(f).exists()]

    def remaining_bytes(self) -> int:
        """Bytes still to download: missing files minus what their partial files already hold."""
        left = 0
        for f in self.missing():
            have = self.partial(f).stat().st_size if f.sha256 and self.partial(f).is_file() else 0
            left += max(f.size - have, 0)
        return left


# --- errors ---------------------------------------------------------------------------------


class Unreachable(DownloadError):
    """No connection to the Hub (a cached copy may still do)."""


def _endpoint() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT


def _auth_hint() -> str:
    return "run `hf auth login` or set HF_TOKEN to a token of an account that has accepted it"


@contextlib.contextmanager
def hub_errors(repo: str, revision: str) -> Iterator[None]:
    """Turn huggingface_hub and HTTP errors into one-line g4 errors. No token is ever in them."""
    from huggingface_hub import errors as hf
    from huggingface_hub.utils import httpx

    try:
        yield
    except (hf.HfHubHTTPError, hf.LocalEntryNotFoundError, hf.OfflineModeIsEnabled, httpx.TransportError) as e:
        raise _translate(e, repo, revision) from None


def _translate(e: Exception, repo: str, revision: str) -> DownloadError | ModelNotFound:
    from huggingface_hub import errors as hf
    from huggingface_hub.utils import httpx

    if isinstance(e, hf.LocalEntryNotFoundError) and isinstance(e.__cause__, (hf.HfHubHTTPError, httpx.HTTPError)):
        e = e.__cause__  # hf_hub_download wraps what went wrong with its HEAD request
    page = f"{_endpoint()}/{repo}"
    response = getattr(e, "response", None)
    status = response.status_code if response is not None else 0
    if isinstance(e, hf.GatedRepoError):
        return AuthError(f"{repo} is gated (HTTP {status}): accept its licence on {page} while logged in", _auth_hint())
    if isinstance(e, hf.RepositoryNotFoundError) and status in (401, 403):
        return AuthError(
            f"{repo} was not found, or it is private or gated and needs a login (HTTP {status})",
            hint=f"check the name; for a gated model accept the licence on {page}, then {_auth_hint()}",
        )
    if isinstance(e, hf.RepositoryNotFoundError):
        close = catalog.suggest(repo, [m.repo for m in catalog.MODELS])
        model = catalog.lookup(close) if close else None
        hint = f"did you mean {close} (g4 pull {model.name})?" if model else "check the org/repo id"
        return ModelNotFound(f"{repo} does not exist on {_endpoint()}", hint=hint)
    if isinstance(e, hf.RevisionNotFoundError):
        return ModelNotFound(f"{repo} has no revision {revision!r}", hint="check --revision")
    if isinstance(e, hf.RemoteEntryNotFoundError):
        return DownloadError(f"{repo}@{revision}: a file the listing names is missing on the Hub")
    if status in (401, 403):
        return AuthError(
            f"access to {repo} refused (HTTP {status}): accept its licence on {page} with the account of your token",
            hint=_auth_hint(),
        )
    if isinstance(e, hf.HfHubHTTPError):
        return DownloadError(f"the Hub answered HTTP {status} for {repo}", hint="try again later")
    if isinstance(e, hf.OfflineModeIsEnabled):
        return DownloadError(f"{repo} is needed from the Hub but HF_HUB_OFFLINE is set", hint="unset it to download")
    reason = str(e.__cause__ or e).splitlines()[0] or type(e).__name__
    return Unreachable(
        f"cannot reach {_endpoint()}: {reason}",
        hint="check the connection (or HF_ENDPOINT); HF_HUB_OFFLINE=1 uses the cache only",
    )


# --- the snapshot ---------------------------------------------------------------------------


def open_snapshot(repo: str, revision: str) -> Snapshot:
    """The files of ``repo`` at ``revision`` g4 needs: from the Hub, or from the cache when offline."""
    from huggingface_hub import HfApi, constants

    if constants.is_offline_mode():
        return cached_snapshot(repo, revision, "HF_HUB_OFFLINE is set")
    try:
        with hub_errors(repo, revision):
            info = HfApi().model_info(repo, revision=revision, files_metadata=True)
    except Unreachable as e:
        try:
            return cached_snapshot(repo, revision, "the Hub is unreachable")
        except DownloadError:
            raise e from None
    files = [
        RemoteFile(s.rfilename, int(s.lfs.size if s.lfs else s.size or 0), s.lfs.sha256 if s.lfs else None)
        for s in info.siblings or []
        if wanted(s.rfilename)
    ]
    if not info.sha:
        raise DownloadError(f"the Hub sent no commit for {repo}@{revision}")
    if not any(f.path.endswith(".safetensors") for f in files) or not any(f.path == "config.json" for f in files):
        raise CheckpointError(
            f"{repo} has no config.json and .safetensors weights: not a checkpoint g4 can convert",
            hint=f"a repo of GGUF files? g4 pull hf.co/{repo}:QUANT",
        )
    return Snapshot(repo, revision, info.sha, files)


def cached_snapshot(repo: str, revision: str, why: str) -> Snapshot:
    """The snapshot already in the HF cache; it must be complete (every shard of its index)."""
    from huggingface_hub import constants

    snap = Snapshot(repo, revision, "", [], offline=why)
    commit = revision if catalog.COMMIT.match(revision) else None
    ref = snap.storage / "refs" / revision
    if commit is None and ref.is_file():
        commit = ref.read_text(encoding="ascii").strip()
    snap.commit = commit or ""
    if not commit or not snap.dir.is_dir():
        raise DownloadError(
            f"{repo}@{revision} is not in the Hugging Face cache ({constants.HF_HUB_CACHE}) and {why}",
            hint="connect and run g4 pull again (without HF_HUB_OFFLINE=1)",
        )
    snap.files = [
        RemoteFile(p.name, p.stat().st_size) for p in sorted(snap.dir.iterdir()) if wanted(p.name) and p.exists()
    ]
    shards = {"model.safetensors"}
    if (snap.dir / INDEX).is_file():
        weight_map = json.loads((snap.dir / INDEX).read_text(encoding="utf-8")).get("weight_map") or {}
        shards = {str(v) for v in weight_map.values()}
    absent = sorted(shards - {f.path for f in snap.files}) + ([] if snap.file("config.json") else ["config.json"])
    if absent:
        raise DownloadError(
            f"{repo}@{commit[:7]} is only partly in the Hugging Face cache (no {absent[0]}) and {why}",
            hint="connect and run g4 pull again to finish the download",
        )
    return snap


def write_ref(snap: Snapshot) -> None:
    """refs/<revision> -> commit, as hf_hub_download records it (so offline mode finds the commit)."""
    if snap.revision == snap.commit or snap.offline:
        return
    ref = snap.storage / "refs" / snap.revision
    ref.parent.mkdir(parents=True, exist_ok=True)
    if ref.is_file() and ref.read_text(encoding="ascii") == snap.commit:
        return
    fsutil.write_text(ref, snap.commit)


def link_blob(blob: Path, pointer: Path) -> None:
    """snapshots/<commit>/<file> -> ../../blobs/<etag>, a relative symlink like the library's
    (made under the blob's lock, as hf_hub_download makes it)."""
    pointer.parent.mkdir(parents=True, exist_ok=True)
    target = os.path.relpath(blob, pointer.parent)
    if pointer.is_symlink() and os.readlink(pointer) == target:
        return
    pointer.unlink(missing_ok=True)
    os.symlink(target, pointer)


def clean_orphans(snap: Snapshot) -> list[Path]:
    """Delete ``blobs/*.incomplete`` left by a killed huggingface_hub (their blob lock is free)
    and a ``refs/`` temp file of a killed g4 (its process is gone)."""
    blobs, refs = snap.storage / "blobs", snap.storage / "refs"
    removed = []
    for p in sorted(blobs.glob("*.incomplete")) if blobs.is_dir() else []:
        with flock(snap.lock_path(p.name.split(".", 1)[0]), wait=False) as free:
            if free:  # held while deleting: no download of this blob can start meanwhile
                p.unlink(missing_ok=True)
                removed.append(p)
    for p in refs.rglob(f"*{PARTIAL}") if refs.is_dir() else []:
        pid = fsutil.partial_pid(p)
        if pid is not None and not _alive(pid):
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
