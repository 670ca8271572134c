"""ggml's device list: what llama.cpp can put layers on, with each device's free memory."""

from __future__ import annotations

import ctypes
from dataclasses import dataclass

from g4cli.chat.runtime import ggml_api as g
from g4cli.errors import UsageError


@dataclass(frozen=True)
class Device:
    name: str  # ggml's name: CPU, CUDA0, Metal, Vulkan0, RPC0, ...
    description: str  # the card's name; for an RPC device, its server's host:port
    kind: str  # CPU, GPU, iGPU, accelerator
    backend: str  # the registry it comes from: CPU, CUDA, Metal, Vulkan, RPC, ...
    free: int  # bytes
    total: int
    handle: int = 0  # ggml_backend_dev_t

    @property
    def rpc(self) -> bool:
        return self.backend == "RPC"


def list_devices() -> list[Device]:
    """Every device of every registered backend, in ggml's order (CPU last is not guaranteed)."""
    out = []
    for i in range(g.ggml.ggml_backend_dev_count()):
        dev = g.ggml.ggml_backend_dev_get(i)
        free, total = ctypes.c_size_t(0), ctypes.c_size_t(0)
        g.base.ggml_backend_dev_memory(dev, ctypes.byref(free), ctypes.byref(total))
        reg = g.base.ggml_backend_dev_backend_reg(dev)
        out.append(
            Device(
                name=(g.base.ggml_backend_dev_name(dev) or b"?").decode(),
                description=(g.base.ggml_backend_dev_description(dev) or b"").decode(errors="replace"),
                kind=g.DEV_TYPE_NAMES.get(g.base.ggml_backend_dev_type(dev), "?"),
                backend=(g.base.ggml_backend_reg_name(reg) or b"?").decode() if reg else "?",
                free=free.value,
                total=total.value,
                handle=dev,
            )
        )
    return out


def backends() -> list[str]:
    """The backends this build registered (CPU, RPC, CUDA, Metal, Vulkan, ...)."""
    return [(g.base.ggml_backend_reg_name(g.ggml.ggml_backend_reg_get(i)) or b"?").decode()
            for i in range(g.ggml.ggml_backend_reg_count())]  # fmt: skip


def offload_devices(devices: list[Device] | None = None) -> list[Device]:
    """The devices llama.cpp offloads to, in its order: RPC servers first, then GPUs, then iGPUs
    only when there is no discrete GPU (llama.cpp's llama_prepare_model_devices)."""
    devices = list_devices() if devices is None else devices
    rpc = [d for d in devices if d.rpc]
    gpus = [d for d in devices if d.kind == "GPU" and not d.rpc]
    igpus = [d for d in devices if d.kind == "iGPU"]
    return rpc + gpus + ([] if gpus else igpus)


def pick_server_devices(devices: list[Device], names: list[str]) -> list[Device]:
    """What ``g4 rpc-server`` serves: the named devices, else every GPU, else the CPU (as
    llama.cpp's rpc-server chooses). RPC devices of this process are never re-served."""
    local = [d for d in devices if not d.rpc]
    if names:
        by_name = {d.name.lower(): d for d in local}
        missing = [n for n in names if n.lower() not in by_name]
        if missing:
            have = ", ".join(d.name for d in local)
            raise UsageError(f"--device {', '.join(missing)}: no such device (this machine has {have})")
        return [by_name[n.lower()] for n in names]
    gpus = [d for d in local if d.kind not in ("CPU", "accelerator")]
    return gpus or [d for d in local if d.kind == "CPU"][:1]
