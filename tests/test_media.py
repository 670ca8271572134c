"""Decoding attachments: every common format, orientation, alpha, resampling, splitting, bad input."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from media_files import SENTENCE, long_clip, read_wav, resample

from g4cli.chat import media
from g4cli.errors import MediaError


def test_camera_jpeg_is_turned_upright_by_its_exif(media_dir) -> None:
    m = media.load(media_dir["photo"])
    assert m.kind == "image" and m.pixels.shape == (4032, 3024, 3)  # portrait after rotation
    top_right = m.pixels[:200, -200:].mean(axis=(0, 1))
    top_left = m.pixels[:200, :200].mean(axis=(0, 1))
    assert top_right[0] > 200 and top_right[1] < 60  # the red block, stored top-left
    assert top_left[0] < 150


def test_alpha_is_composited_on_white(media_dir) -> None:
    px = media.load(media_dir["alpha"]).pixels
    assert px.shape == (480, 640, 3)
    assert tuple(px[10, 600]) == (255, 255, 255) and tuple(px[10, 10]) == (40, 0, 0)


@pytest.mark.parametrize("suffix", [".webp", ".bmp", ".png"])
def test_other_image_formats(media_dir, suffix: str) -> None:
    px = media.load(media_dir[suffix]).pixels
    assert px.shape == (300, 400, 3) and abs(int(px[5, 5, 1]) - 200) <= 3


def test_gif_gives_its_first_frame(media_dir) -> None:
    px = media.load(media_dir[".gif"]).pixels
    assert tuple(px[0, 0]) == (255, 0, 0)


def _speech_16k(media_dir) -> np.ndarray:
    x, rate = read_wav(media_dir["speech"])
    return resample(x, rate, 16000)


def _aligned_corr(a: np.ndarray, b: np.ndarray) -> float:
    n = min(len(a), len(b))
    a, b = a[:n] - a[:n].mean(), b[:n] - b[:n].mean()
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.mark.parametrize(
    "key",
    ["wav48", "mp3", "wav-PCM_U8", "wav-PCM_16", "wav-PCM_24", "wav-PCM_32", "wav-FLOAT", "flac", "ogg", "m4a"],
)
def test_audio_formats_become_16k_mono_float32(media_dir, key: str) -> None:
    m = media.load(media_dir[key])
    assert m.kind == "audio" and len(m.pieces) == 1
    pcm = m.pieces[0]
    assert pcm.dtype == np.float32 and pcm.ndim == 1
    ref = _speech_16k(media_dir)
    assert abs(len(pcm) - len(ref)) < 0.1 * 16000 + (2048 if key == "m4a" else 0)  # codec padding
    if key == "m4a":  # AAC adds a priming delay: align before comparing
        lag = int(np.argmax(np.correlate(pcm[:16000], ref[:4000], mode="valid")))
        pcm = pcm[lag:]
    scale = 0.75 if key in ("mp3", "ogg") else 1.0  # stereo (1, 0.5) mixed down
    assert _aligned_corr(pcm, ref) > (0.9 if key in ("mp3", "ogg", "m4a") else 0.99)
    assert np.abs(pcm).max() == pytest.approx(np.abs(ref).max() * scale, rel=0.2)


def test_long_clip_is_split_at_pauses(media_dir, tmp_path: Path) -> None:
    path, _ = long_clip(tmp_path, media_dir["speech"], 70.0)
    m = media.load(path)
    assert len(m.pieces) == 3 and abs(m.seconds - 70.0) < 0.01
    assert all(len(p) <= 30 * 16000 for p in m.pieces)
    signal = np.concatenate(m.pieces)
    cut = 0
    for piece in m.pieces[:-1]:
        cut += len(piece)
        around = signal[cut - 1600 : cut + 1600]  # 100 ms either side of the cut
        assert np.sqrt(np.mean(around**2)) < 1e-3, f"cut at {cut / 16000:.2f} s is not in a pause"
        assert len(piece) / 16000 > 20.0  # it used most of the 30 s allowed


def test_split_keeps_every_sample() -> None:
    x = np.random.default_rng(0).standard_normal(16000 * 95).astype(np.float32)
    pieces = media.split_at_silence(x)
    np.testing.assert_array_equal(np.concatenate(pieces), x)
    assert len(pieces) == 4 and max(map(len, pieces)) <= 30 * 16000


def test_stdin_attachment(media_dir) -> None:
    data = media_dir["alpha"].read_bytes()
    m = media.load("-", stdin=data)
    assert m.name == "<stdin>" and m.kind == "image"


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: d / "missing.png", "no such file"),
        (lambda d: d, "is a directory"),
        (lambda d: _write(d / "empty.wav", b""), "empty file"),
        (lambda d: _write(d / "notes.txt", SENTENCE.encode() * 20), "not an image or audio file"),
        (lambda d: _write(d / "random.bin", np.random.default_rng(0).bytes(5000)), "not an image or audio file"),
        (lambda d: _truncated_jpeg(d), "truncated or corrupt image"),
        (lambda d: _huge_png(d), "megapixels"),
        (lambda d: _two_hour_wav(d), "2:00:00 long"),
    ],
    ids=["missing", "directory", "empty", "text", "random", "truncated-jpeg", "100-megapixel", "2-hour-audio"],
)
def test_bad_attachments_are_one_clear_error_naming_the_file(tmp_path: Path, make, message: str) -> None:
    path = make(tmp_path)
    with pytest.raises(MediaError) as e:
        media.load(path)
    text = str(e.value)
    assert message in text and str(path) in text and "\n" not in text


def test_kind_mismatch_is_refused(media_dir) -> None:
    with pytest.raises(MediaError, match="is an audio file, not image"):
        media.load(media_dir["mp3"], kind="image")


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _truncated_jpeg(d: Path) -> Path:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (600, 800, 3), dtype=np.uint8)).save(buf, "JPEG")
    return _write(d / "cut.jpg", buf.getvalue()[: len(buf.getvalue()) // 2])


def _huge_png(d: Path) -> Path:
    """A real 10000×10000 PNG (100 megapixels) that compresses to almost nothing."""
    import struct
    import zlib

    w = h = 10000
    row = b"\0" + b"\0" * (w * 3)
    comp = zlib.compressobj(9)
    body = b"".join(comp.compress(row) for _ in range(h)) + comp.flush()

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
    png += chunk(b"IDAT", body) + chunk(b"IEND", b"")
    return _write(d / "huge.png", png)


def _two_hour_wav(d: Path) -> Path:
    """A WAV header that declares two hours of 8 kHz 8-bit audio (the data is really there)."""
    import soundfile

    path = d / "two-hours.wav"
    with soundfile.SoundFile(path, "w", samplerate=8000, channels=1, subtype="PCM_U8") as f:
        block = np.zeros(8000 * 60, np.float32)
        for _ in range(120):
            f.write(block)
    return path
