"""Test media made by real encoders: a camera-style JPEG with EXIF rotation, PNG with alpha,
WebP, GIF, BMP; speech from espeak-ng written as WAV (several sample formats and rates), MP3,
FLAC, OGG/Vorbis and M4A/AAC; a 70-second clip with pauses; and broken files."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np

SENTENCE = "The quick brown fox jumps over the lazy dog. Gemma listens to this sentence."


def photo(path: Path, w: int = 4032, h: int = 3024) -> Path:
    """A large camera-style JPEG, stored landscape with EXIF orientation 6 (display: portrait).

    A red block marks the stored top-left corner; after rotation it must be at the top right.
    """
    from PIL import Image

    yy, xx = np.mgrid[0:h, 0:w]
    rng = np.random.default_rng(0)
    base = np.stack([(xx * 255 // w), (yy * 255 // h), ((xx + yy) * 255 // (w + h))], axis=-1).astype(np.int16)
    base += rng.integers(-12, 12, base.shape, dtype=np.int16)
    rgb = np.clip(base, 0, 255).astype(np.uint8)
    rgb[: h // 8, : w // 8] = (230, 20, 20)
    img = Image.fromarray(rgb)
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90° clockwise to display
    exif[0x010F] = "g4-test-camera"  # Make
    exif[0x0110] = "TinyCam 1"  # Model
    img.save(path, "JPEG", quality=88, exif=exif.tobytes())
    return path


def png_with_alpha(path: Path) -> Path:
    from PIL import Image

    rgba = np.zeros((480, 640, 4), np.uint8)
    rgba[..., 0] = 40
    rgba[..., 3] = 255
    rgba[:, 320:, 3] = 0  # right half fully transparent
    Image.fromarray(rgba, "RGBA").save(path)
    return path


def small_images(directory: Path) -> dict[str, Path]:
    from PIL import Image

    out = {}
    img = Image.fromarray(np.full((300, 400, 3), (10, 200, 30), np.uint8))
    for fmt, suffix in (("WEBP", ".webp"), ("BMP", ".bmp"), ("PNG", ".png")):
        out[suffix] = directory / f"small{suffix}"
        img.save(out[suffix], fmt)
    frames = [Image.new("RGB", (200, 150), c) for c in ((255, 0, 0), (0, 0, 255))]
    out[".gif"] = directory / "anim.gif"
    frames[0].save(out[".gif"], save_all=True, append_images=frames[1:], duration=100, loop=0)
    out["aligned"] = directory / "aligned768.png"
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 256, (768, 768, 3), dtype=np.uint8)).save(out["aligned"])
    return out


def aligned_png(path: Path, w: int, h: int, seed: int = 1) -> Path:
    """Random pixels at a size both sides keep as it is (multiples of 48 px, within the budget
    the test sets): no resize, so no resampling differences."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
    return path


def speech(path: Path, text: str = SENTENCE) -> Path:
    """espeak-ng's voice as a 22.05 kHz WAV."""
    subprocess.run(["espeak-ng", "-w", str(path), text], check=True, capture_output=True)
    return path


def read_wav(path: Path) -> tuple[np.ndarray, int]:
    import soundfile

    x, rate = soundfile.read(path, dtype="float32", always_2d=True)
    return x[:, 0], rate


def resample(x: np.ndarray, rate: int, target: int) -> np.ndarray:
    import soxr

    return soxr.resample(x, rate, target).astype(np.float32)


def audio_set(directory: Path) -> dict[str, Path]:
    """The spoken sentence in many containers, rates, channel counts and sample formats."""
    import soundfile

    src, rate = read_wav(speech(directory / "speech.wav"))
    out = {"speech": directory / "speech.wav"}
    x48 = resample(src, rate, 48000)
    out["wav48"] = directory / "speech48k.wav"
    soundfile.write(out["wav48"], x48, 48000, subtype="PCM_16")
    x44 = resample(src, rate, 44100)
    stereo = np.stack([x44, 0.5 * x44], axis=1)
    out["mp3"] = directory / "speech44k-stereo.mp3"
    soundfile.write(out["mp3"], stereo, 44100, format="MP3")
    for subtype in ("PCM_U8", "PCM_16", "PCM_24", "PCM_32", "FLOAT"):
        out[f"wav-{subtype}"] = directory / f"speech-{subtype}.wav"
        soundfile.write(out[f"wav-{subtype}"], x48, 48000, subtype=subtype)
    out["flac"] = directory / "speech.flac"
    soundfile.write(out["flac"], x44, 44100)
    out["ogg"] = directory / "speech.ogg"
    soundfile.write(out["ogg"], stereo, 44100, format="OGG", subtype="VORBIS")
    out["m4a"] = m4a(directory / "speech.m4a", x44, 44100)
    return out


def m4a(path: Path, x: np.ndarray, rate: int) -> Path:
    """AAC in an MP4 container (FFmpeg through PyAV): a format libsndfile does not read."""
    import av

    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("aac", rate=rate)
        stream.layout = "mono"
        frame_size = 1024
        for start in range(0, len(x), frame_size):
            chunk = x[start : start + frame_size]
            frame = av.AudioFrame.from_ndarray(chunk.reshape(1, -1), format="flt", layout="mono")
            frame.sample_rate = rate
            frame.pts = start
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return path


def long_clip(directory: Path, speech_wav: Path, seconds: float = 70.0) -> tuple[Path, list[float]]:
    """Speech separated by 1.5 s pauses, ``seconds`` long, as 16 kHz WAV; and the pauses' centres."""
    import soundfile

    src, rate = read_wav(speech_wav)
    voice = resample(src, rate, 16000)
    gap = np.zeros(int(1.5 * 16000), np.float32)
    parts, pauses, t = [], [], 0.0
    while t < seconds:
        parts += [voice, gap]
        t += len(voice) / 16000
        pauses.append(t + 0.75)
        t += len(gap) / 16000
    x = np.concatenate(parts)[: int(seconds * 16000)]
    path = directory / "long70s.wav"
    soundfile.write(path, x, 16000)
    return path, pauses


def audio_tokens(n_samples: int) -> int:
    """gemma4a: 20 ms frames every 10 ms on a semicausally padded signal (as transformers frames
    it: windows of 321 samples after 160 samples of left padding), then two stride-2 convs."""
    frames = (n_samples + 160 - 321) // 160 + 1
    half = (frames + 1) // 2
    return (half + 1) // 2


def image_tokens(w: int, h: int, align: int = 48, lo: int = 70, hi: int = 1120) -> int:
    """llama.cpp's gemma4v sizing: keep the aspect ratio, align to 48 px, 70-1120 tokens."""
    import math

    def round_by(x: float) -> int:  # std::round: halves away from zero
        return math.floor(x / align + 0.5) * align

    w_bar, h_bar = max(align, round_by(w)), max(align, round_by(h))
    max_px, min_px = hi * align * align, lo * align * align
    if w_bar * h_bar > max_px:
        beta = math.sqrt(w * h / max_px)
        w_bar, h_bar = (
            max(align, math.floor(w / beta / align) * align),
            max(align, math.floor(h / beta / align) * align),
        )
    elif w_bar * h_bar < min_px:
        beta = math.sqrt(min_px / (w * h))
        w_bar, h_bar = math.ceil(w * beta / align) * align, math.ceil(h * beta / align) * align
    return (w_bar // align) * (h_bar // align)
