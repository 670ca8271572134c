"""llama.cpp's own memory figures for a plan, without allocating: a dry run (``no_alloc``).

llama.cpp (0.3.36) loads a model with ``no_alloc`` from its metadata only and simulates every
allocation; a context made on it reserves its compute graphs and logs the compute buffer each
device would get ("sched_reserve: CUDA0 compute buffer size = ... MiB"). The planner's compute
estimate cannot know the graph allocator's reuse; this asks llama.cpp. Needs a load mode without
mmap (llama.cpp asserts that a dry run maps nothing).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

import llama_cpp

from g4cli.chat.runtime.llama_log import LOG

if TYPE_CHECKING:
    from g4cli.chat.runtime.devices import Device
    from g4cli.chat.runtime.offload import Plan

COMPUTE = re.compile(r"sched_reserve: +(\S+) compute buffer size = +([\d.]+) MiB")


def compute_buffers(
    gguf: Path,
    plan: Plan,
    devices: list[Device],
    *,
    n_ctx: int,
    n_seq: int,
    n_ubatch: int,
    flash_attn: str,
    kv_type: str,
) -> dict[str, int]:
    """Device name -> the compute buffer llama.cpp reserves there for ``plan`` ({} if it cannot say)."""
    from g4cli.chat.runtime.ggml_api import backend_init
    from g4cli.chat.runtime.model import KV_TYPES, Model

    LOG.install()
    backend_init()
    mp = llama_cpp.llama_model_default_params()
    mp.n_gpu_layers = plan.n_gpu_layers
    keep = plan.apply(mp)  # noqa: F841  -- the tensor_split array must outlive the load
    mp.no_alloc = True
    mp.load_mode = llama_cpp.LLAMA_LOAD_MODE_NONE
    mp.lazy_mode = llama_cpp.LLAMA_LAZY_MODE_ON  # as Model loads it
    model = llama_cpp.llama_model_load_from_file(os.fsencode(gguf), mp)
    if not model:
        return {}
    try:
        cp = llama_cpp.llama_context_default_params()
        cp.n_ctx, cp.n_seq_max = n_ctx, n_seq
        cp.n_batch = cp.n_ubatch = n_ubatch
        cp.flash_attn_type = Model._flash_attn(flash_attn, kv_type, plan.n_gpu_layers)
        cp.type_k = cp.type_v = KV_TYPES[kv_type]
        LOG.lines.clear()
        ctx = llama_cpp.llama_init_from_model(model, cp)
        if not ctx:
            return {}
        llama_cpp.llama_free(ctx)
    finally:
        llama_cpp.llama_model_free(model)
    out: dict[str, int] = {}
    for line in LOG.lines:
        m = COMPUTE.search(line)
        if m is None:
            continue
        name = _device(m.group(1), devices)
        if name is not None:
            out[name] = out.get(name, 0) + int(float(m.group(2)) * 2**20) + 2**14  # the log rounds to 0.01 MiB
    return out


def _device(buffer: str, devices: list[Device]) -> str | None:
    """The device a buffer type belongs to: "RPC0[host:port]" by its server, "CUDA0" by name."""
    for d in devices:
        if d.rpc and f"[{d.description}]" in buffer:
            return d.name
        rest = buffer[len(d.name) :]
        if not d.rpc and buffer.startswith(d.name) and not rest[:1].isdigit() and "_Host" not in rest:
            return d.name
    return None
