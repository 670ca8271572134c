"""Downloads from the Hugging Face Hub into the standard HF cache, resumable across runs.

g4 leaves to huggingface_hub what it does well: URL resolution (``HF_ENDPOINT``), auth
(``HF_TOKEN``, ``hf auth login``), offline mode (``HF_HUB_OFFLINE``), repo metadata including each
LFS file's sha256, the cache layout (``HF_HOME``, ``HF_HUB_CACHE``: ``blobs/``, ``snapshots/<commit>/``,
``refs/``) and its per-blob locks. Small files go through ``hf_hub_download`` unchanged.

What it lacks (huggingface_hub 2.4) is added for the LFS files, the multi-GB weights: it resumes
a cut transfer only inside one process, from a 10 MiB boundary; a process that dies deletes its
``<etag>.<random>.incomplete`` file (or, killed, leaves it behind for good), so the next run
starts over; and it checks sizes, never sha256. Here an LFS file is downloaded to
``blobs/<sha256>.g4-partial``, a name that stays put when the transfer is cut or g4 is killed
(it is the resumable state, not litter: the next ``g4 pull`` hashes the bytes already there and
asks for the rest with ``Range: bytes=N-``). Only when the whole file's sha256 equals the
Hub's does it become ``blobs/<sha256>`` with ``snapshots/<commit>/<file>`` linked to it, exactly
where ``hf_hub_download`` would put it; a mismatch deletes the bytes. Orphaned ``.incomplete``
files of the repo (whose blob lock nobody holds) are deleted. The HTTP requests themselves use
huggingface_hub's session, headers (auth, user agent) and error mapping.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from g4cli import fsutil
from g4cli.errors import (
    AuthError,
    CheckpointError,
    DownloadError,
    IntegrityError,
    ModelNotFound,
    OutputError,
    describe_os_error,
)
from g4cli.fsutil import PARTIAL_SUFFIX as PARTIAL
from g4cli.models import catalog
from g4cli.models.store import flock, sha256_file
from g4cli.render import human_bytes

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
RETRIES = 3  # attempts in a row that bring no new byte before giving up (the next run resumes)
TRANSIENT = (408, 429, 500, 502, 503, 504)  # HTTP statuses retried like a dropped connection


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
        return [f for f in self.files if f.path.endswith(".safetensors")]

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
    import httpx2
    from huggingface_hub import errors as hf

    try:
        yield
    except (hf.HfHubHTTPError, hf.LocalEntryNotFoundError, hf.OfflineModeIsEnabled, httpx2.TransportError) as e:
        raise _translate(e, repo, revision) from None


def _translate(e: Exception, repo: str, revision: str) -> DownloadError | ModelNotFound:
    import httpx2
    from huggingface_hub import errors as hf

    if isinstance(e, hf.LocalEntryNotFoundError) and isinstance(e.__cause__, (hf.HfHubHTTPError, httpx2.HTTPError)):
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
        raise CheckpointError(f"{repo} has no config.json and .safetensors weights: not a checkpoint g4 can convert")
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


def _write_ref(snap: Snapshot) -> None:
    """refs/<revision> -> commit, as hf_hub_download records it (so offline mode finds the commit)."""
    if snap.revision == snap.commit or snap.offline:
        return
    ref = snap.storage / "refs" / snap.revision
    ref.parent.mkdir(parents=True, exist_ok=True)
    if ref.is_file() and ref.read_text(encoding="ascii") == snap.commit:
        return
    fsutil.write_text(ref, snap.commit)


def _link(blob: Path, pointer: Path) -> None:
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


# --- downloading ----------------------------------------------------------------------------


def download(snap: Snapshot, files: list[RemoteFile], on_progress: Progress | None = None) -> int:
    """Bring ``files`` into the cache (LFS files resumable and sha256-checked); returns bytes fetched."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.utils import disable_progress_bars

    todo = sorted(snap.missing(files), key=lambda f: f.sha256 is not None)  # the small files first
    if not todo or snap.offline:
        return 0
    disable_progress_bars()  # g4 draws its own bars
    _write_ref(snap)
    total = sum(f.size for f in todo)
    state = {"done": 0}
    if on_progress:
        on_progress("total", 0, total)

    def report(f: RemoteFile, done: int, added: int) -> None:
        state["done"] += added
        if on_progress:
            on_progress(f.path, done, f.size)
            on_progress("total", state["done"], total)

    fetched = 0
    try:
        with hub_errors(snap.repo, snap.revision):
            for f in todo:
                if f.sha256 is None:  # a small git file: the library's own download is all it needs
                    hf_hub_download(snap.repo, f.path, revision=snap.commit)
                    report(f, f.size, f.size)
                    fetched += f.size
                else:
                    fetched += _download_lfs(snap, f, report)
    except OSError as e:  # the disk, not the Hub (hub_errors has turned Hub errors into G4Errors)
        raise OutputError(describe_os_error(e, str(snap.storage))) from None
    return fetched


def _download_lfs(snap: Snapshot, f: RemoteFile, report: Callable[[RemoteFile, int, int], None]) -> int:
    from huggingface_hub.utils import WeakFileLock

    blob, partial = snap.blob(f), snap.partial(f)
    blob.parent.mkdir(parents=True, exist_ok=True)
    snap.lock_path(str(f.sha256)).parent.mkdir(parents=True, exist_ok=True)
    fetched = 0
    with WeakFileLock(snap.lock_path(str(f.sha256))):  # the lock hf_hub_download takes for this blob
        if not blob.is_file():
            fetched = _transfer(snap, f, partial, report)
            os.replace(partial, blob)
            snap.verified.add(f.path)
        else:
            report(f, f.size, f.size)
        _link(blob, snap.pointer(f))
    return fetched


def _hash_prefix(path: Path, size: int) -> Any:
    """sha256 state after the first ``size`` bytes of ``path`` (what a resumed download starts from)."""
    h = hashlib.sha256()
    with open(path, "rb", buffering=0) as src:
        left = size
        while left and (chunk := src.read(min(8 << 20, left))):
            h.update(chunk)
            left -= len(chunk)
    return h


def _transfer(snap: Snapshot, f: RemoteFile, partial: Path, report: Callable[[RemoteFile, int, int], None]) -> int:
    """Download ``f`` into ``partial``, continuing what is there; verify its sha256. Returns new bytes."""
    import httpx2
    from huggingface_hub import constants, hf_hub_url
    from huggingface_hub.errors import HfHubHTTPError
    from huggingface_hub.utils import build_hf_headers, get_session, hf_raise_for_status

    url = hf_hub_url(snap.repo, f.path, revision=snap.commit)
    headers = {**build_hf_headers(), "Accept-Encoding": "identity"}
    have = partial.stat().st_size if partial.is_file() else 0
    if have > f.size:
        partial.unlink()
        have = 0
    h = _hash_prefix(partial, have) if have else hashlib.sha256()
    start = have
    report(f, have, have)
    failures = 0
    while have < f.size:
        before = have
        try:
            ranged = {"Range": f"bytes={have}-"} if have else {}
            with get_session().stream(
                "GET", url, headers={**headers, **ranged}, timeout=constants.HF_HUB_DOWNLOAD_TIMEOUT
            ) as r:
                if r.status_code >= 400:
                    r.read()
                if r.status_code == 416:
                    raise DownloadError(f"{f.path}: the server has fewer bytes than the {f.size} the Hub lists")
                hf_raise_for_status(r)
                if have and (r.status_code != 206 or not _range_starts_at(r, have)):  # Range ignored
                    have, h = 0, hashlib.sha256()
                    partial.unlink(missing_ok=True)
                with open(partial, "ab", buffering=0) as out:  # unbuffered: on disk as soon as received
                    for chunk in r.iter_bytes():
                        if have + len(chunk) > f.size:
                            raise DownloadError(f"{f.path}: the server sent more than the {f.size} bytes listed")
                        out.write(chunk)
                        h.update(chunk)
                        have += len(chunk)
                        report(f, have, len(chunk))
        except (httpx2.TransportError, HfHubHTTPError) as e:
            status = getattr(getattr(e, "response", None), "status_code", None)
            if isinstance(e, HfHubHTTPError) and status not in TRANSIENT:
                raise
            failures = 0 if have > before else failures + 1
            on_disk = partial.stat().st_size if partial.is_file() else 0
            if on_disk != have:  # a write cut short: hash what is really there
                have, h = on_disk, _hash_prefix(partial, on_disk)
            if failures >= RETRIES:
                raise DownloadError(
                    f"download of {f.path} interrupted at {human_bytes(have)} of {human_bytes(f.size)} "
                    f"({f'HTTP {status}' if status else type(e).__name__}); the bytes so far are kept",
                    hint="run the same g4 pull again to continue from there",
                ) from None
            time.sleep(0.5 * failures)
    if h.hexdigest() != f.sha256:
        partial.unlink(missing_ok=True)
        raise IntegrityError(
            f"{f.path} from {snap.repo} is corrupt: sha256 {h.hexdigest()[:12]}… instead of {str(f.sha256)[:12]}…; "
            "the download was deleted",
            hint="run g4 pull again to download it afresh",
        )
    with open(partial, "rb") as done:
        os.fsync(done.fileno())
    return have - start


def _range_starts_at(r, offset: int) -> bool:
    m = re.match(r"bytes (\d+)-", r.headers.get("Content-Range", ""))
    return bool(m) and int(m.group(1)) == offset


def verify(snap: Snapshot, on_progress: Progress | None = None) -> None:
    """Check the sha256 of every LFS file not downloaded (and checked) by this run.

    Files found in the cache were put there by an earlier g4 (checked then) or by another tool
    (huggingface_hub checks sizes only). A bad one is deleted, so the next pull fetches it again.
    """
    for f in snap.files:
        pointer = snap.pointer(f)
        if f.path in snap.verified or not pointer.is_symlink():
            continue
        blob = pointer.resolve()
        if not blob.is_file():
            continue
        expected = f.sha256 or (blob.name if SHA256.match(blob.name) else None)
        if expected is None:  # a small git file: its etag is a git hash, nothing to compare
            continue
        got = sha256_file(blob, (lambda d, t, p=f.path: on_progress(f"verify {p}", d, t)) if on_progress else None)
        if got != expected:
            pointer.unlink(missing_ok=True)
            blob.unlink(missing_ok=True)
            raise IntegrityError(
                f"{f.path} in the Hugging Face cache is corrupt (sha256 {got[:12]}… instead of {expected[:12]}…); "
                "it was deleted",
                hint="run g4 pull again to download it afresh",
            )
        snap.verified.add(f.path)


def remove_weights(snap: Snapshot) -> int:
    """Delete the snapshot's safetensors from the cache (blobs other snapshots use stay); bytes freed."""
    freed = 0
    snapshots = snap.storage / "snapshots"
    for f in snap.weights:
        pointer = snap.pointer(f)
        if not pointer.is_symlink():
            continue
        blob = pointer.resolve()
        pointer.unlink()
        users = (p for p in snapshots.glob("*/*") if p.is_symlink() and p.resolve() == blob)
        if blob.is_file() and next(users, None) is None:
            freed += blob.stat().st_size
            blob.unlink()
    return freed
