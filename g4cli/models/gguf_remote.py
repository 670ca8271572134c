"""A GGUF's header before its download: the first bytes of the file, by HTTP Range requests.

``g4 pull hf.co/ORG/REPO`` estimates the memory a model needs before it downloads the weights,
as a converted pull does from config.json. A GGUF's header (metadata, then the tensor table) is
at the start of the file; how long it is shows only while parsing it (a Gemma 4 header, with
its 262k-token vocabulary, is 10-15 MB), so growing prefixes are read, each request asking for
the bytes after the last, until it parses, up to ``LIMIT``. The bytes are untrusted: the same
checks as for the downloaded file (``gguf_check``), against the file size the Hub lists. Bytes
already in the HF cache (the file, or a resumable partial download) are read from there. The
requests use huggingface_hub's URL, session and headers (auth, user agent) and error mapping.
"""

from __future__ import annotations

from pathlib import Path

from g4cli.errors import DownloadError
from g4cli.models import ggufmeta
from g4cli.models.download import range_starts_at
from g4cli.models.gguf_check import Header, _refuse, arch_values, check_parts, check_projector_header, checked
from g4cli.models.hub import RemoteFile, Snapshot, hub_errors

FIRST = 1 << 20  # the first request; each next one doubles what has been read
LIMIT = 64 << 20  # no header g4 takes is longer (Gemma 4's: ~15 MB)


def read_header(snap: Snapshot, f: RemoteFile) -> tuple[Header, bytes]:
    """The checked header of ``f`` and the bytes it was read from (the prefix of the file)."""
    name = Path(f.path)
    data = b""
    while True:
        want = min(max(FIRST, 2 * len(data)), LIMIT, f.size)
        if want > len(data):
            data += _fetch(snap, f, len(data), want)
        try:
            parsed = ggufmeta.read_header(data)
            break
        except ggufmeta.Truncated:
            if len(data) >= min(LIMIT, f.size):
                what = "the file" if f.size <= LIMIT else f"its first {LIMIT >> 20} MiB"
                raise _refuse(name, f"the GGUF header does not end within {what}") from None
        except ValueError as e:
            raise _refuse(name, f"unreadable GGUF header ({e})") from None
    return checked(name, *parsed, f.size), data


def _fetch(snap: Snapshot, f: RemoteFile, start: int, stop: int) -> bytes:
    """Bytes ``start:stop`` of ``f``: from the HF cache when they are there (the file, or the part
    an interrupted download left: checked as any header is, and by sha256 once whole), else one
    Range request (read no further than ``stop`` even if the server sends the whole file)."""
    from huggingface_hub import constants, hf_hub_url
    from huggingface_hub.utils import build_hf_headers, get_session, hf_raise_for_status

    for cached in (snap.pointer(f), snap.partial(f)):
        if cached.is_file() and cached.stat().st_size >= stop:
            with open(cached, "rb") as src:
                src.seek(start)
                return src.read(stop - start)
    url = hf_hub_url(snap.repo, f.path, revision=snap.commit)
    headers = {**build_hf_headers(), "Accept-Encoding": "identity", "Range": f"bytes={start}-{stop - 1}"}
    got = bytearray()
    with hub_errors(snap.repo, snap.revision):
        with get_session().stream("GET", url, headers=headers, timeout=constants.HF_HUB_DOWNLOAD_TIMEOUT) as r:
            if r.status_code >= 400:
                r.read()
            hf_raise_for_status(r)
            if r.status_code == 206 and not range_starts_at(r, start):
                raise DownloadError(f"{f.path}: the Hub answered bytes={start}- with {r.headers.get('Content-Range')}")
            skip = 0 if r.status_code == 206 else start  # 200: the Range was ignored, the body is the file
            for chunk in r.iter_bytes():
                got += chunk
                if len(got) >= skip + stop - start:
                    break
    got = got[skip : skip + stop - start]
    if len(got) != stop - start:
        raise DownloadError(f"{f.path}: the Hub sent {len(got)} bytes of its header, not {stop - start}")
    return bytes(got)


def check_ahead(snap: Snapshot, parts: list[RemoteFile], mmproj: RemoteFile | None) -> tuple[list[Header], dict]:
    """Before the download: the text model's headers (every split's: the tensors the estimate
    needs may be in any) and its ``gemma4.*`` values, and the projector's header, checked as
    ``gguf_check`` checks the downloaded files."""
    read = [read_header(snap, f) for f in parts]
    headers = check_parts([h for h, _ in read])
    values = arch_values(read[0][1])
    if mmproj is not None:
        check_projector_header(read_header(snap, mmproj)[0], int(values.get("embedding_length", 0)))
    return headers, values
