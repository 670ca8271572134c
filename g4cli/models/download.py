"""Downloads into the standard HF cache, resumable across runs and sha256-checked.

Small files go through ``hf_hub_download`` unchanged. What huggingface_hub lacks (2.4) is added
for the LFS files, the multi-GB weights: it resumes a cut transfer only inside one process, from
a 10 MiB boundary; a process that dies deletes its ``<etag>.<random>.incomplete`` file (or,
killed, leaves it behind for good), so the next run starts over; and it checks sizes, never
sha256. Here an LFS file is downloaded to ``blobs/<sha256>.g4-partial``, a name that stays put
when the transfer is cut or g4 is killed (it is the resumable state, not litter: the next
``g4 pull`` hashes the bytes already there and asks for the rest with ``Range: bytes=N-``). Only
when the whole file's sha256 equals the Hub's does it become ``blobs/<sha256>`` with
``snapshots/<commit>/<file>`` linked to it, exactly where ``hf_hub_download`` would put it; a
mismatch deletes the bytes. The HTTP requests themselves use huggingface_hub's session, headers
(auth, user agent) and error mapping.
"""

from __future__ import annotations

import hashlib
import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from g4cli.errors import DownloadError, IntegrityError, OutputError, describe_os_error
from g4cli.fsutil import fsync_file
from g4cli.models.hub import SHA256, Progress, RemoteFile, Snapshot, hub_errors, link_blob, write_ref
from g4cli.models.store import sha256_file
from g4cli.render import human_bytes

RETRIES = 3  # attempts in a row that bring no new byte before giving up (the next run resumes)
TRANSIENT = (408, 429, 500, 502, 503, 504)  # HTTP statuses retried like a dropped connection


def download(snap: Snapshot, files: list[RemoteFile], on_progress: Progress | None = None) -> int:
    """Bring ``files`` into the cache (LFS files resumable and sha256-checked); returns bytes fetched."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.utils import disable_progress_bars

    todo = sorted(snap.missing(files), key=lambda f: f.sha256 is not None)  # the small files first
    if not todo or snap.offline:
        return 0
    disable_progress_bars()  # g4 draws its own bars
    write_ref(snap)
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
        link_blob(blob, snap.pointer(f))
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


class _Partial:
    """The bytes of one LFS file received so far (``blobs/<sha256>.g4-partial``) and their hash."""

    def __init__(self, path: Path, size: int) -> None:
        self.path, self.size = path, size
        have = path.stat().st_size if path.is_file() else 0
        if have > size:
            path.unlink()
            have = 0
        self.have, self.hash = have, _hash_prefix(path, have) if have else hashlib.sha256()

    def restart(self) -> None:
        self.path.unlink(missing_ok=True)
        self.have, self.hash = 0, hashlib.sha256()

    def resync(self) -> None:
        """After a failure: trust what is on disk (a write may have been cut short)."""
        on_disk = self.path.stat().st_size if self.path.is_file() else 0
        if on_disk != self.have:
            self.have, self.hash = on_disk, _hash_prefix(self.path, on_disk)


def _receive(url: str, headers: dict[str, str], f: RemoteFile, part: _Partial, report: Callable) -> None:
    """One GET, from where ``part`` ends (a Range request), appended to it as it arrives."""
    from huggingface_hub import constants
    from huggingface_hub.utils import get_session, hf_raise_for_status

    ranged = {"Range": f"bytes={part.have}-"} if part.have else {}
    with get_session().stream(
        "GET", url, headers={**headers, **ranged}, timeout=constants.HF_HUB_DOWNLOAD_TIMEOUT
    ) as r:
        if r.status_code >= 400:
            r.read()
        if r.status_code == 416:
            raise DownloadError(f"{f.path}: the server has fewer bytes than the {f.size} the Hub lists")
        hf_raise_for_status(r)
        if part.have and (r.status_code != 206 or not range_starts_at(r, part.have)):  # Range ignored
            part.restart()
        with open(part.path, "ab", buffering=0) as out:  # unbuffered: on disk as soon as received
            for chunk in r.iter_bytes():
                if part.have + len(chunk) > f.size:
                    raise DownloadError(f"{f.path}: the server sent more than the {f.size} bytes listed")
                out.write(chunk)
                part.hash.update(chunk)
                part.have += len(chunk)
                report(f, part.have, len(chunk))


def _transfer(snap: Snapshot, f: RemoteFile, partial: Path, report: Callable[[RemoteFile, int, int], None]) -> int:
    """Download ``f`` into ``partial``, continuing what is there; verify its sha256. Returns new bytes."""
    from huggingface_hub import hf_hub_url
    from huggingface_hub.errors import HfHubHTTPError
    from huggingface_hub.utils import build_hf_headers, httpx

    url = hf_hub_url(snap.repo, f.path, revision=snap.commit)
    headers = {**build_hf_headers(), "Accept-Encoding": "identity"}
    part = _Partial(partial, f.size)
    start = part.have
    report(f, part.have, part.have)
    failures = 0
    while part.have < f.size:
        before = part.have
        try:
            _receive(url, headers, f, part, report)
        except (httpx.TransportError, HfHubHTTPError) as e:
            status = getattr(getattr(e, "response", None), "status_code", None)
            if isinstance(e, HfHubHTTPError) and status not in TRANSIENT:
                raise
            failures = 0 if part.have > before else failures + 1
            part.resync()
            if failures >= RETRIES:
                raise DownloadError(
                    f"download of {f.path} interrupted at {human_bytes(part.have)} of {human_bytes(f.size)} "
                    f"({f'HTTP {status}' if status else type(e).__name__}); the bytes so far are kept",
                    hint="run the same g4 pull again to continue from there",
                ) from None
            time.sleep(0.5 * failures)
    if part.hash.hexdigest() != f.sha256:
        partial.unlink(missing_ok=True)
        raise IntegrityError(
            f"{f.path} from {snap.repo} is corrupt: sha256 {part.hash.hexdigest()[:12]}… instead of "
            f"{str(f.sha256)[:12]}…; the download was deleted",
            hint="run g4 pull again to download it afresh",
        )
    fsync_file(partial)
    return part.have - start


def range_starts_at(r, offset: int) -> bool:
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
