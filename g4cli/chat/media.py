"""Images and audio in any common format -> what llama.cpp's mtmd takes.

Images (Pillow): JPEG, PNG, WebP, GIF (first frame), BMP, TIFF...; EXIF orientation applied;
alpha composited on white; RGB uint8. Audio: libsndfile (WAV of any rate and sample format,
FLAC, OGG/Vorbis, Opus, MP3) and, for anything else (M4A/AAC, WebM, MP4 audio), FFmpeg through
PyAV; mixed down to mono and resampled to 16 kHz float32 with libsoxr; clips longer than 30 s
are split at their quietest points. Every failure is one ``MediaError`` line naming the file.
"""

from __future__ import annotations

import hashlib
import io
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from g4cli.errors import MediaError

SAMPLE_RATE = 16000
MAX_PIECE_SECONDS = 30.0  # the longest clip Gemma 4's audio encoder takes in one piece
MAX_AUDIO_SECONDS = 10 * 60.0
MAX_IMAGE_PIXELS = 50_000_000
MAX_FILE_BYTES = 1 << 30
AUDIO_TOKENS_PER_SECOND = 25  # gemma4a: 40 ms per token

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"}
AUDIO_SUFFIXES = {".wav", ".mp3", ".flac", ".ogg", ".oga", ".opus", ".m4a", ".aac", ".webm", ".aiff", ".aif"}
Kind = Literal["image", "audio"]


@dataclass(frozen=True)
class Media:
    """One decoded attachment."""

    kind: Kind
    name: str  # the path as given, or "<stdin>"
    sha256: str  # of the file's bytes: identifies it in saved conversations and the KV cache
    pixels: np.ndarray | None = None  # image: (H, W, 3) uint8
    pieces: tuple[np.ndarray, ...] = field(default_factory=tuple)  # audio: 16 kHz mono float32, <= 30 s each

    @property
    def seconds(self) -> float:
        return sum(len(p) for p in self.pieces) / SAMPLE_RATE

    def describe(self) -> str:
        if self.kind == "image":
            h, w = self.pixels.shape[:2]
            return f"image {Path(self.name).name} ({w}×{h})"
        extra = f", {len(self.pieces)} pieces" if len(self.pieces) > 1 else ""
        return f"audio {Path(self.name).name} ({self.seconds:.1f} s{extra})"


def read_source(source: str | Path, stdin: bytes | None = None) -> tuple[str, bytes]:
    """(display name, bytes) of an attachment path; ``-`` reads standard input."""
    if str(source) == "-":
        data = stdin if stdin is not None else sys.stdin.buffer.read()
        name = "<stdin>"
    else:
        path = Path(source).expanduser()
        name = str(source)
        if not path.exists():
            raise MediaError(f"{name}: no such file")
        if path.is_dir():
            raise MediaError(f"{name}: is a directory, not an image or audio file")
        try:
            size = path.stat().st_size
            if size > MAX_FILE_BYTES:
                raise MediaError(f"{name}: {size / 1e9:.1f} GB is too large for an attachment")
            data = path.read_bytes()
        except OSError as e:
            raise MediaError(f"{name}: cannot read ({e.strerror or e})") from e
    if not data:
        raise MediaError(f"{name}: empty file")
    return name, data


def guess_kind(name: str, data: bytes) -> Kind | None:
    """Sniff the content (magic bytes first, then the suffix)."""
    head = data[:16]
    if head.startswith((b"\xff\xd8\xff", b"\x89PNG", b"GIF8", b"BM")) or (
        head[:4] == b"RIFF" and head[8:12] == b"WEBP"
    ):
        return "image"
    if head[:2] in (b"II", b"MM") and head[2:4] in (b"*\0", b"\0*"):
        return "image"
    if (head[:4] == b"RIFF" and head[8:12] == b"WAVE") or head.startswith((b"fLaC", b"OggS", b"ID3", b"FORM")):
        return "audio"
    if len(head) > 1 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0:  # MPEG audio frame sync
        return "audio"
    suffix = Path(name).suffix.lower()
    if suffix in IMAGE_SUFFIXES:
        return "image"
    if suffix in AUDIO_SUFFIXES or head[4:8] == b"ftyp" or head.startswith(b"\x1a\x45\xdf\xa3"):
        return "audio"  # MP4/M4A, Matroska/WebM: FFmpeg decides
    return None


def load(source: str | Path, kind: Kind | None = None, stdin: bytes | None = None) -> Media:
    """Read and decode an attachment; ``kind`` forces image or audio, otherwise it is sniffed."""
    return decode(*read_source(source, stdin), kind)


def decode(name: str, data: bytes, kind: Kind | None = None) -> Media:
    """Decode an attachment's bytes (``kind`` forces image or audio, otherwise it is sniffed)."""
    found = guess_kind(name, data)
    if kind is not None and found is not None and found != kind:
        raise MediaError(f"{name}: is an {found} file, not {kind}")
    kind = kind or found
    if kind == "image":
        return load_image(name, data)
    if kind == "audio":
        return load_audio(name, data)
    raise MediaError(f"{name}: not an image or audio file")


# --- images ----------------------------------------------------------------------------------


def load_image(name: str, data: bytes) -> Media:
    from PIL import Image, ImageOps, UnidentifiedImageError

    Image.MAX_IMAGE_PIXELS = None  # we check the size ourselves, before decoding anything
    try:
        img = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise MediaError(f"{name}: not an image Pillow can read") from None
    except OSError as e:
        raise MediaError(f"{name}: cannot read image ({e})") from None
    w, h = img.size
    if w * h > MAX_IMAGE_PIXELS:
        raise MediaError(
            f"{name}: image is {w}×{h} ({w * h / 1e6:.0f} megapixels); the limit is {MAX_IMAGE_PIXELS / 1e6:.0f}"
        )
    try:
        img.seek(0)  # GIF/APNG/WebP animations: the first frame
        img.load()
        img = ImageOps.exif_transpose(img)
        if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
            rgba = img.convert("RGBA")
            canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            canvas.alpha_composite(rgba)
            img = canvas
        rgb = np.asarray(img.convert("RGB"), dtype=np.uint8)
    except (OSError, SyntaxError, ValueError) as e:
        raise MediaError(f"{name}: truncated or corrupt image ({e})") from None
    if rgb.ndim != 3 or min(rgb.shape[:2]) < 1:
        raise MediaError(f"{name}: image has no pixels")
    return Media("image", name, hashlib.sha256(data).hexdigest(), pixels=np.ascontiguousarray(rgb))


# --- audio -----------------------------------------------------------------------------------


def _decode_sndfile(name: str, data: bytes) -> tuple[np.ndarray, int] | None:
    import soundfile

    try:
        with soundfile.SoundFile(io.BytesIO(data)) as f:
            if f.frames / f.samplerate > MAX_AUDIO_SECONDS:
                raise MediaError(_too_long(name, f.frames / f.samplerate))
            samples = f.read(dtype="float32", always_2d=True)
            return samples, f.samplerate
    except MediaError:
        raise
    except (RuntimeError, TypeError, ValueError, soundfile.LibsndfileError):
        return None


def _decode_ffmpeg(name: str, data: bytes) -> tuple[np.ndarray, int]:
    try:
        import av
    except ImportError:
        raise MediaError(f"{name}: not an audio format libsndfile reads (install PyAV for more)") from None
    try:
        with av.open(io.BytesIO(data)) as container:
            streams = [s for s in container.streams if s.type == "audio"]
            if not streams:
                raise MediaError(f"{name}: not an image or audio file")
            stream = streams[0]
            if stream.duration and stream.time_base and float(stream.duration * stream.time_base) > MAX_AUDIO_SECONDS:
                raise MediaError(_too_long(name, float(stream.duration * stream.time_base)))
            rate = stream.codec_context.sample_rate or SAMPLE_RATE
            resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
            parts, total = [], 0
            for frame in container.decode(stream):
                for out in resampler.resample(frame):
                    arr = out.to_ndarray().reshape(-1)
                    parts.append(arr)
                    total += len(arr)
                    if total / rate > MAX_AUDIO_SECONDS:
                        raise MediaError(_too_long(name, total / rate))
            for out in resampler.resample(None):
                parts.append(out.to_ndarray().reshape(-1))
    except MediaError:
        raise
    except (av.error.FFmpegError, ValueError, OSError) as e:
        raise MediaError(f"{name}: not an image or audio file ({type(e).__name__})") from None
    if not parts:
        raise MediaError(f"{name}: audio has no samples")
    return np.concatenate(parts).astype(np.float32)[:, None], rate


def _too_long(name: str, seconds: float) -> str:
    return f"{name}: audio is {_clock(seconds)} long; the limit is {_clock(MAX_AUDIO_SECONDS)}"


def _clock(seconds: float) -> str:
    s = round(seconds)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def to_16k_mono(samples: np.ndarray, rate: int) -> np.ndarray:
    """(frames, channels) at ``rate`` -> mono float32 at 16 kHz (libsoxr, high quality)."""
    import soxr

    mono = samples.mean(axis=1) if samples.ndim == 2 else samples
    mono = np.ascontiguousarray(mono, dtype=np.float32)
    if rate != SAMPLE_RATE:
        mono = soxr.resample(mono, rate, SAMPLE_RATE, quality="HQ").astype(np.float32)
    return mono


def split_at_silence(
    x: np.ndarray, max_seconds: float = MAX_PIECE_SECONDS, search_seconds: float = 10.0
) -> list[np.ndarray]:
    """Pieces of at most ``max_seconds``, each cut in the quietest stretch of its last ``search_seconds``.

    Energy is measured in 50 ms frames and smoothed over 250 ms, so a real pause wins over the
    brief silence inside a word; among equally quiet places the latest one (longest piece) wins.
    """
    limit = int(max_seconds * SAMPLE_RATE)
    frame = SAMPLE_RATE // 20
    pieces, start = [], 0
    while len(x) - start > limit:
        lo = start + max(frame, limit - int(search_seconds * SAMPLE_RATE))
        region = x[lo : start + limit]
        n = len(region) // frame
        energy = (region[: n * frame].reshape(n, frame).astype(np.float64) ** 2).mean(axis=1)
        smooth = np.convolve(energy, np.ones(5) / 5, mode="same")
        best = int(np.flatnonzero(smooth <= smooth.min() * (1 + 1e-9) + 1e-12)[-1])
        cut = lo + best * frame + frame // 2
        pieces.append(x[start:cut])
        start = cut
    pieces.append(x[start:])
    return [p for p in pieces if len(p)]


def load_audio(name: str, data: bytes) -> Media:
    decoded = _decode_sndfile(name, data) or _decode_ffmpeg(name, data)
    samples, rate = decoded
    if samples.size == 0 or rate <= 0:
        raise MediaError(f"{name}: audio has no samples")
    if samples.shape[0] / rate > MAX_AUDIO_SECONDS:
        raise MediaError(_too_long(name, samples.shape[0] / rate))
    mono = to_16k_mono(samples, rate)
    if not np.isfinite(mono).all():
        raise MediaError(f"{name}: audio contains invalid samples")
    return Media("audio", name, hashlib.sha256(data).hexdigest(), pieces=tuple(split_at_silence(mono)))


def from_pcm(name: str, pcm: np.ndarray) -> Media:
    """Media from 16 kHz mono float32 PCM (the microphone)."""
    pcm = np.ascontiguousarray(pcm, dtype=np.float32)
    return Media("audio", name, hashlib.sha256(pcm.tobytes()).hexdigest(), pieces=tuple(split_at_silence(pcm)))
