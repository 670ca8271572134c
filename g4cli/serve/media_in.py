"""Images and audio arriving in requests: data URIs and base64 (always), files under
``--allow-files DIR`` (only there), http(s) URLs (only with ``--allow-remote-media``).

Everything is untrusted: base64 is decoded strictly, sizes are bounded before decoding, a file
path must resolve inside the allowed directory, and the decoders are g4's own (Pillow,
libsndfile/FFmpeg) with their limits.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from pathlib import Path

from g4cli.chat import media
from g4cli.errors import MediaError, UsageError

MAX_MEDIA_BYTES = 48 << 20  # one attachment, decoded
DATA_URI = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[\w.+-]+=[\w.+-]+)*)(?P<b64>;base64)?,", re.I)


@dataclass
class MediaPolicy:
    allow_files: Path | None = None  # a directory whose files requests may name
    allow_remote: bool = False  # fetch http(s) URLs
    max_bytes: int = MAX_MEDIA_BYTES


def b64decode(text: str, what: str, limit: int) -> bytes:
    if not isinstance(text, str):
        raise UsageError(f"{what}: expected a base64 string")
    if len(text) > limit * 4 // 3 + 16:
        raise MediaError(f"{what}: larger than the {limit >> 20} MB limit")
    try:
        data = base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        raise UsageError(f"{what}: not valid base64") from None
    if not data:
        raise MediaError(f"{what}: empty")
    return data


def from_reference(ref: str, kind: media.Kind | None, policy: MediaPolicy, what: str) -> media.Media:
    """A data URI, an allowed file path (or file: URL), or an allowed http(s) URL."""
    if not isinstance(ref, str) or not ref:
        raise UsageError(f"{what}: expected a URL string")
    m = DATA_URI.match(ref)
    if m:
        if not m.group("b64"):
            raise UsageError(f"{what}: only base64 data URIs are supported")
        return media.decode(what, b64decode(ref[m.end() :], what, policy.max_bytes), kind)
    if ref.startswith(("http://", "https://")):
        if not policy.allow_remote:
            raise UsageError(f"{what}: remote URLs are not fetched (start g4 serve with --allow-remote-media)")
        return media.decode(what, _fetch(ref, policy.max_bytes, what), kind)
    path = ref.removeprefix("file://")
    if policy.allow_files is None:
        raise UsageError(f"{what}: give the media as a data URI (file paths need g4 serve --allow-files DIR)")
    root = policy.allow_files.resolve()
    target = (root / path).resolve() if not Path(path).is_absolute() else Path(path).resolve()
    if not target.is_relative_to(root):
        raise UsageError(f"{what}: {path} is outside the allowed directory")
    name, data = media.read_source(target)
    if len(data) > policy.max_bytes:
        raise MediaError(f"{what}: larger than the {policy.max_bytes >> 20} MB limit")
    return media.decode(name, data, kind)


def _fetch(url: str, limit: int, what: str) -> bytes:
    from huggingface_hub.utils import httpx

    try:
        with httpx.stream("GET", url, timeout=20.0, follow_redirects=False) as r:
            if r.status_code != 200:
                raise MediaError(f"{what}: {url} answered HTTP {r.status_code}")
            out = bytearray()
            for chunk in r.iter_bytes():
                out += chunk
                if len(out) > limit:
                    raise MediaError(f"{what}: larger than the {limit >> 20} MB limit")
            return bytes(out)
    except httpx.HTTPError as e:
        raise MediaError(f"{what}: cannot fetch {url} ({type(e).__name__})") from None
