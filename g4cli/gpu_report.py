"""What ``g4 doctor`` says about GPUs: the backends this llama.cpp build has, the GPUs the
machine has (ggml's device list; ``nvidia-smi``, /dev/dri and macOS as hints), and what to do
when they disagree. Backend names are ggml's registry names (ggml-cuda.h: CUDA, ROCm, MUSA;
ggml-metal.cpp: MTL; ggml-vulkan.h: Vulkan; SYCL; RPC)."""

from __future__ import annotations

import platform
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REINSTALL = 'CMAKE_ARGS="{flags}" pip install --force-reinstall --no-cache-dir llama-cpp-python==0.3.36'
FLAGS = {  # checked against the vendored ggml/CMakeLists.txt options
    "CUDA": "-DGGML_CUDA=on",
    "ROCm": "-DGGML_HIP=on -DGPU_TARGETS=<gfx arch, e.g. gfx1100>",
    "Vulkan": "-DGGML_VULKAN=on",
    "MTL": "-DGGML_METAL=on",
}
PCI_VENDORS = {"0x10de": "NVIDIA", "0x1002": "AMD", "0x8086": "Intel"}
BACKEND_FOR = {"NVIDIA": ["CUDA", "Vulkan"], "AMD": ["ROCm", "Vulkan"], "Intel": ["Vulkan", "SYCL"], "Apple": ["MTL"]}


@dataclass(frozen=True)
class GpuHint:
    vendor: str  # NVIDIA, AMD, Intel, Apple
    name: str
    source: str  # nvidia-smi, /dev/dri, macOS


def nvidia_smi() -> list[GpuHint]:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return []
    try:
        out = subprocess.run(
            [exe, "--query-gpu=name,memory.total", "--format=csv,noheader"], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return []
    if out.returncode != 0:
        return []
    return [GpuHint("NVIDIA", line.strip(), "nvidia-smi") for line in out.stdout.splitlines() if line.strip()]


def dri(root: Path = Path("/sys/class/drm")) -> list[GpuHint]:
    """Linux render nodes and their PCI vendors (what Vulkan, ROCm and CUDA drivers sit on)."""
    out = []
    for node in sorted(root.glob("renderD*")):
        try:
            vendor = (node / "device" / "vendor").read_text().strip()
        except OSError:
            continue
        out.append(GpuHint(PCI_VENDORS.get(vendor, vendor), f"/dev/dri/{node.name}", "/dev/dri"))
    return out


def apple() -> list[GpuHint]:
    if sys.platform == "darwin" and platform.machine() == "arm64":
        return [GpuHint("Apple", "Apple Silicon GPU", "macOS")]
    return []


def machine_gpus() -> list[GpuHint]:
    smi = nvidia_smi()
    rest = [g for g in dri() if not (smi and g.vendor == "NVIDIA")]  # nvidia-smi names them better
    return smi + rest + apple()


def advice(backends: list[str], gpu_devices: list[str], gpus: list[GpuHint]) -> list[str]:
    """One line per GPU vendor present that this build cannot use, with the reinstall command."""
    lines = []
    for vendor in dict.fromkeys(g.vendor for g in gpus):
        wanted = BACKEND_FOR.get(vendor, [])
        if not wanted or any(b in backends for b in wanted):
            continue
        flag = FLAGS.get(wanted[0], FLAGS["Vulkan"])
        kind = {"MTL": "Metal", "ROCm": "ROCm (HIP)"}.get(wanted[0], wanted[0])
        lines.append(
            f"an {vendor} GPU is present but llama.cpp was built without {kind}: reinstall with "
            + REINSTALL.format(flags=flag)
        )
    gpu_backends = [b for b in backends if b not in ("CPU", "RPC", "BLAS")]
    if gpu_backends and not gpu_devices:
        lines.append(
            f"llama.cpp has {', '.join(gpu_backends)} but sees no device: check the driver (nvidia-smi, vulkaninfo)"
        )
    return lines


def report() -> tuple[str, list[str]]:
    """(one line: backends, devices, GPUs seen; advice lines)."""
    from g4cli.chat.runtime.devices import backends, list_devices

    have = backends()
    devices = [d for d in list_devices() if d.kind in ("GPU", "iGPU") and not d.rpc]
    gpus = machine_gpus()
    seen = "; ".join(f"{d.name} {d.description} ({d.free / 1e9:.1f} of {d.total / 1e9:.1f} GB free)" for d in devices)
    hints = "; ".join(f"{g.name} ({g.source})" for g in gpus)
    line = f"backends: {', '.join(have)}; llama.cpp devices: {seen or 'none (CPU only)'}"
    line += f"; machine GPUs: {hints or 'none found'}"
    return line, advice(have, [d.name for d in devices], gpus)
