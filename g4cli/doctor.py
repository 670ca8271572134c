"""``g4 doctor``: check this install end to end without downloading anything.

A tiny random Gemma 4 checkpoint (E2B layout, with vision and audio towers) is written, converted,
quantized to Q4_K_M by llama.cpp, loaded, and asked about an image and an audio clip; then
llama.cpp's build, the audio input devices, disk and memory are reported.
"""

from __future__ import annotations

import os
import platform
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Check:
    name: str
    ok: bool
    detail: str


def _timed(name: str, fn: Callable[[], str]) -> Check:
    t0 = time.perf_counter()
    try:
        detail = fn()
    except Exception as e:  # a doctor reports failures, it does not stop at them
        return Check(name, False, f"{type(e).__name__}: {e}")
    return Check(name, True, f"{detail} ({time.perf_counter() - t0:.1f} s)")


def _llama_build() -> str:
    import llama_cpp

    info = llama_cpp.llama_print_system_info().decode(errors="replace")
    features = [part.split("=")[0].split(":")[-1].strip() for part in info.split("|") if part.strip().endswith("= 1")]
    from g4cli.chat.runtime.devices import backends

    gpu = [b for b in backends() if b not in ("CPU", "RPC", "BLAS")]
    gpu = f"GPU backends: {', '.join(gpu)}" if gpu else "CPU only (no GPU backend)"
    gpu += "; RPC (g4 rpc-server, --rpc)" if llama_cpp.llama_supports_rpc() else ""
    from g4cli.chat.runtime.ggml_api import backend_init, cpu_extra_buffer_types

    off = backend_init()
    bufts = f"CPU weight buffers: {', '.join(cpu_extra_buffer_types()) or 'plain'}"
    bufts += f" ({', '.join(off)} off: its kernels crash in this llama.cpp)" if off else ""
    return f"llama-cpp-python {llama_cpp.__version__}; {gpu}; CPU features: {', '.join(features) or 'none'}; {bufts}"


def gpu_check() -> Check:
    """Backends, devices and the machine's GPUs; not ok when a GPU is there that the build cannot use."""
    from g4cli.gpu_report import report

    try:
        line, advice = report()
    except Exception as e:  # a doctor reports failures, it does not stop at them
        return Check("GPU", False, f"{type(e).__name__}: {e}")
    return Check("GPU", not advice, "; ".join([line, *advice]))


def _audio_devices() -> str:
    try:
        import sounddevice as sd

        devices = [d for d in sd.query_devices() if d["max_input_channels"] > 0]
    except OSError as e:
        return f"PortAudio unavailable ({e})"
    if not devices:
        return "no input device"
    default = sd.default.device[0]
    names = [f"{d['name']} ({int(d['default_samplerate'])} Hz, {d['max_input_channels']} ch)" for d in devices]
    return f"{len(devices)} input device(s), default #{default}: " + "; ".join(names[:4])


def _resources() -> str:
    from g4cli.models.store import store_root

    root = store_root()
    root.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(root).free
    mem = "?"
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                mem = f"{int(line.split()[1]) / 1e6:.1f} GB"
    except OSError:
        pass
    return f"store {root}: {free / 1e9:.1f} GB free; memory available: {mem}; {os.cpu_count()} CPU threads"


def run(keep: Path | None = None) -> list[Check]:
    """All checks, in order; the pipeline stops at its first failure, the reports do not."""
    checks = [Check("platform", True, f"{platform.platform()}, Python {platform.python_version()}")]
    checks.append(_timed("llama.cpp", _llama_build))
    checks.append(gpu_check())
    work = Path(tempfile.mkdtemp(prefix="g4-doctor-"))
    try:
        checks += _pipeline(work)
    finally:
        if keep is None:
            shutil.rmtree(work, ignore_errors=True)
    checks.append(_timed("microphone", _audio_devices))
    checks.append(_timed("disk and memory", _resources))
    return checks


def _pipeline(work: Path) -> list[Check]:
    import numpy as np

    from g4cli.chat import media
    from g4cli.chat.conversation import Turn
    from g4cli.chat.settings import Sampling
    from quantize.converter import convert
    from quantize.tiny import make_checkpoint

    out: list[Check] = []
    state: dict = {}

    def build() -> str:
        state["ckpt"] = make_checkpoint(work / "tiny-gemma4", "e2b")
        return "tiny E2B-layout checkpoint with vision and audio towers"

    def quantize() -> str:
        r = convert(state["ckpt"], work / "tiny-Q4_K_M.gguf", quant="Q4_K_M")
        state["result"] = r
        return f"Q4_K_M {r.text.stat().st_size / 1e6:.1f} MB + projector {r.mmproj.stat().st_size / 1e6:.1f} MB"

    def chat() -> str:
        from g4cli.chat.runtime.model import Model

        rng = np.random.default_rng(0)
        image = media.Media("image", "doctor.png", "0" * 64, pixels=rng.integers(0, 255, (480, 640, 3), dtype=np.uint8))
        tone = (0.2 * np.sin(2 * np.pi * 440 * np.arange(16000 * 2) / 16000)).astype(np.float32)
        clip = media.from_pcm("doctor.wav", tone)
        r = state["result"]
        with Model(r.text, r.mmproj, n_ctx=2048) as model:
            events = list(model.generate([Turn("user", "Describe both.", [image, clip])], Sampling(max_tokens=8)))
        stats = events[-1].stats
        return f"image + audio -> {stats.prompt_tokens} prompt tokens, {stats.gen_tokens} generated"

    for name, step in (("checkpoint", build), ("convert + quantize", quantize), ("chat", chat)):
        check = _timed(name, step)
        out.append(check)
        if not check.ok:
            break
    return out
