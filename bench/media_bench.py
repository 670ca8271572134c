"""Benchmark: encoding an image and 30 s of audio, g4's path vs llama.cpp's own mtmd helper path.

For towers of the tiny test shapes and of the real E2B shapes (random weights, F16 projector),
both paths run in the same process on the same mtmd context, interleaved, ``--repeat`` times:

  g4        g4cli.chat.media.load (Pillow / libsndfile + libsoxr) -> bitmap -> mtmd tokenize + encode
  llama.cpp mtmd_helper_bitmap_init_from_buf (stb_image / miniaudio) -> tokenize + encode

Inputs: an 896×896 JPEG and a 30 s 44.1 kHz stereo WAV. Prints median seconds and the ratio
g4 / llama.cpp (1.0 = no overhead; the tower's compute dominates).

    python bench/media_bench.py [--repeat 3] [--shapes tiny,e2b]
"""

from __future__ import annotations

import argparse
import ctypes
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import llama_cpp.mtmd_cpp as mtmd  # noqa: E402
import numpy as np  # noqa: E402

from g4cli.chat import media  # noqa: E402
from g4cli.chat.runtime.model import MARKER, Model  # noqa: E402


def make_inputs(d: Path) -> tuple[Path, Path]:
    import soundfile
    from PIL import Image

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:896, 0:896]
    img = np.stack([xx % 256, yy % 256, (xx + yy) % 256], -1).astype(np.uint8)
    Image.fromarray(np.clip(img + rng.integers(0, 20, img.shape), 0, 255).astype(np.uint8)).save(
        d / "img.jpg", quality=90
    )
    t = np.arange(44100 * 30) / 44100
    tone = 0.2 * np.sin(2 * np.pi * 220 * t) * (1 + np.sin(2 * np.pi * 0.5 * t))
    soundfile.write(d / "clip.wav", np.stack([tone, tone], 1).astype(np.float32), 44100, subtype="PCM_16")
    return d / "img.jpg", d / "clip.wav"


def ours(model: Model, path: Path) -> float:
    t0 = time.perf_counter()
    model.encode_media(media.load(path))
    return time.perf_counter() - t0


def helper_path(model: Model, path: Path) -> float:
    """llama.cpp's own path: its decoders (stb_image, miniaudio) inside mtmd_helper."""
    t0 = time.perf_counter()
    data = path.read_bytes()
    ctx = model._mtmd
    bmp = mtmd.mtmd_helper_bitmap_init_from_buf(
        ctx, (ctypes.c_ubyte * len(data)).from_buffer_copy(data), len(data), False
    )
    chunks = mtmd.mtmd_input_chunks_init()
    text = mtmd.mtmd_input_text()
    marker = MARKER.encode()
    text.text, text.text_len, text.add_special, text.parse_special = marker, len(marker), False, True
    arr = (mtmd.mtmd_bitmap_p_ctypes * 1)(bmp)
    if mtmd.mtmd_tokenize(ctx, chunks, ctypes.byref(text), arr, 1) != 0:
        raise SystemExit("mtmd_tokenize failed")
    for i in range(mtmd.mtmd_input_chunks_size(chunks)):
        chunk = mtmd.mtmd_input_chunks_get(chunks, i)
        if mtmd.mtmd_input_chunk_get_type(chunk) != 0 and mtmd.mtmd_encode_chunk(ctx, chunk) != 0:
            raise SystemExit("mtmd_encode_chunk failed")
    mtmd.mtmd_input_chunks_free(chunks)
    mtmd.mtmd_bitmap_free(bmp)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--shapes", default="tiny,e2b")
    args = ap.parse_args()

    from quantize.converter import convert
    from quantize.tiny import make_checkpoint

    with tempfile.TemporaryDirectory(prefix="g4-media-bench-") as tmp:
        d = Path(tmp)
        image, clip = make_inputs(d)
        print(f"{'towers':8} {'input':18} {'g4 s':>8} {'llama.cpp s':>12} {'ratio':>6}")
        for shapes in args.shapes.split(","):
            ckpt = make_checkpoint(d / f"ckpt-{shapes}", "e2b", towers=None if shapes == "tiny" else shapes)
            result = convert(ckpt, d / f"{shapes}.gguf", quant="Q8_0")
            with Model(result.text, result.mmproj, n_ctx=4096) as model:
                for label, path in (("image 896x896", image), ("audio 30 s", clip)):
                    ours(model, path), helper_path(model, path)  # warm-up (graph allocation)
                    a, b = [], []
                    for _ in range(args.repeat):
                        a.append(ours(model, path))
                        b.append(helper_path(model, path))
                    ma, mb = statistics.median(a), statistics.median(b)
                    print(f"{shapes:8} {label:18} {ma:8.3f} {mb:12.3f} {ma / mb:6.2f}")


if __name__ == "__main__":
    main()
