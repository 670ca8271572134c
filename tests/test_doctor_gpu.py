"""``g4 doctor``'s GPU report: a CPU-only build, and the advice when a GPU is there that the build
cannot use (the machine's GPU faked: a fake nvidia-smi on PATH, a fake /sys/class/drm tree)."""

from __future__ import annotations

import os
import stat
import sys
from collections.abc import Callable
from pathlib import Path

import llama_cpp
import pytest

from g4cli import gpu_report

CUDA_ADVICE = (
    "an NVIDIA GPU is present but llama.cpp was built without CUDA: reinstall with "
    'CMAKE_ARGS="-DGGML_CUDA=on" pip install --force-reinstall --no-cache-dir llama-cpp-python==0.3.36'
)


def fake_nvidia_smi(bin_dir: Path) -> dict:
    bin_dir.mkdir(exist_ok=True)
    exe = bin_dir / "nvidia-smi"
    exe.write_text('#!/bin/sh\necho "NVIDIA GeForce RTX 4090, 24564 MiB"\n')
    exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    return {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}


def fake_drm(root: Path, vendors: list[str]) -> Path:
    for i, vendor in enumerate(vendors):
        d = root / f"renderD{128 + i}" / "device"
        d.mkdir(parents=True)
        (d / "vendor").write_text(vendor + "\n")
    return root


@pytest.mark.skipif(bool(gpu_report.machine_gpus()), reason="this machine has a GPU")
def test_cpu_only_build_on_a_machine_without_gpu(run_g4: Callable) -> None:
    r = run_g4("doctor")
    assert r.returncode == 0, r.out
    lines = {line.split()[1]: line for line in r.out.splitlines()}
    rpc = llama_cpp.llama_supports_rpc()  # CI builds with it (tests/run)
    assert "CPU only (no GPU backend)" + ("; RPC (g4 rpc-server, --rpc)" if rpc else "") in lines["llama.cpp"]
    assert lines["GPU"].split(None, 2)[2] == (
        f"backends: {'RPC, ' if rpc else ''}CPU; llama.cpp devices: none (CPU only); machine GPUs: none found"
    )


def test_nvidia_gpu_with_a_cpu_build_gets_the_reinstall_command(run_g4: Callable, tmp_path: Path) -> None:
    r = run_g4("doctor", env=fake_nvidia_smi(tmp_path / "bin"))
    assert r.returncode == 1  # the doctor fails on it: the GPU sits unused
    gpu = next(line for line in r.out.splitlines() if line.split()[1] == "GPU")
    assert gpu.startswith("FAIL")
    assert "machine GPUs: NVIDIA GeForce RTX 4090, 24564 MiB (nvidia-smi)" in gpu
    assert gpu.endswith(CUDA_ADVICE)


def test_amd_and_intel_render_nodes(tmp_path: Path) -> None:
    gpus = gpu_report.dri(fake_drm(tmp_path, ["0x1002", "0x8086", "0x1af4"]))
    assert [g.vendor for g in gpus] == ["AMD", "Intel", "0x1af4"]  # a virtual GPU: no advice
    lines = gpu_report.advice(["CPU"], [], gpus)
    assert lines == [
        "an AMD GPU is present but llama.cpp was built without ROCm (HIP): reinstall with "
        'CMAKE_ARGS="-DGGML_HIP=on -DGPU_TARGETS=<gfx arch, e.g. gfx1100>" pip install --force-reinstall '
        "--no-cache-dir llama-cpp-python==0.3.36",
        "an Intel GPU is present but llama.cpp was built without Vulkan: reinstall with "
        'CMAKE_ARGS="-DGGML_VULKAN=on" pip install --force-reinstall --no-cache-dir llama-cpp-python==0.3.36',
    ]
    assert gpu_report.advice(["Vulkan", "CPU"], ["Vulkan0"], gpus) == []  # Vulkan serves both


def test_a_matching_build_gets_no_advice_and_a_deviceless_one_a_driver_hint() -> None:
    nvidia = [gpu_report.GpuHint("NVIDIA", "RTX 4090", "nvidia-smi")]
    assert gpu_report.advice(["CUDA", "CPU"], ["CUDA0"], nvidia) == []
    assert gpu_report.advice(["CUDA", "CPU"], [], nvidia) == [
        "llama.cpp has CUDA but sees no device: check the driver (nvidia-smi, vulkaninfo)"
    ]


def test_apple_silicon_without_metal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "platform", "darwin")
    monkeypatch.setattr(gpu_report.platform, "machine", lambda: "arm64")
    lines = gpu_report.advice(["CPU"], [], gpu_report.apple())
    assert lines == [
        "an Apple GPU is present but llama.cpp was built without Metal: reinstall with "
        'CMAKE_ARGS="-DGGML_METAL=on" pip install --force-reinstall --no-cache-dir llama-cpp-python==0.3.36'
    ]


def test_a_build_without_rpc_says_so_in_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    """What --rpc and rpc-server say on a llama-cpp-python built without -DGGML_RPC=on (faked)."""
    from g4cli.chat.runtime import rpc
    from g4cli.errors import RuntimeFailure

    monkeypatch.setattr(llama_cpp, "llama_supports_rpc", lambda: False)
    with pytest.raises(RuntimeFailure) as e:
        rpc.connect(rpc.parse_endpoints("127.0.0.1:50052"))
    assert e.value.message == "this llama-cpp-python was built without RPC support"
    assert e.value.hint == rpc.REBUILD_HINT and "-DGGML_RPC=on" in e.value.hint
