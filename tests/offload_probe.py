"""Run in a subprocess by test_offload.py: plan a split for fake free memory on real RPC devices,
load the model with it, and print the plan beside llama.cpp's own report of what it allocated.

    python -m tests.offload_probe MODEL.gguf HOST:PORT,HOST:PORT FREE_MB,FREE_MB [CTX]

On a GPU machine, FREE_MB "real" (and no RPC servers: "-") plans with the devices' real free memory.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import llama_cpp  # noqa: F401  -- before numpy

from g4cli.chat.runtime import dryrun, offload, rpc
from g4cli.chat.runtime.devices import offload_devices
from g4cli.chat.runtime.llama_log import LOG
from g4cli.chat.runtime.model import Model

BUFFER = re.compile(r"(\S+) (model|KV|compute) buffer size = +([\d.]+) MiB")


def main() -> None:
    model, servers, free_mb = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
    ctx = int(sys.argv[4]) if len(sys.argv) > 4 else 4096
    if servers != "-":
        rpc.connect(rpc.parse_endpoints(servers))
    devices = offload_devices()
    free = [d.free for d in devices] if free_mb == "real" else [int(x) * 2**20 for x in free_mb.split(",")]
    shape = offload.shape_from_gguf(model)
    named = [(d.name, f) for d, f in zip(devices, free, strict=True)]
    estimate = offload.plan(shape, named, ctx=ctx, n_ubatch=512)

    def make(measured: dict[str, int]) -> offload.Plan:
        return offload.plan(shape, named, ctx=ctx, n_ubatch=512, measured=measured)

    def measure(p: offload.Plan) -> dict[str, int]:
        return dryrun.compute_buffers(
            model, p, devices, n_ctx=ctx, n_seq=1, n_ubatch=512, flash_attn="on", kv_type="f16"
        )

    p = offload.refine(make, measure)
    LOG.lines.clear()
    with Model(model, n_ctx=ctx, n_gpu_layers=p.n_gpu_layers, n_ubatch=512, offload=p, flash_attn="on"):
        pass
    by_endpoint = {d.description: d.name for d in devices}
    report: dict[str, dict[str, float]] = {}
    for line in LOG.lines:
        m = BUFFER.search(line)
        if m:
            where = m.group(1)
            inside = re.search(r"\[(.+)\]", where)
            name = by_endpoint.get(inside.group(1), where) if inside else where
            report.setdefault(name, {}).setdefault(m.group(2), 0.0)
            report[name][m.group(2)] += float(m.group(3))
    offloaded = next((line for line in LOG.lines if "offloaded" in line and "layers to GPU" in line), "")
    print(
        json.dumps(
            {
                "plan": {"n_gpu_layers": p.n_gpu_layers, "units": p.units, "summary": p.summary()},
                "estimate": {"n_gpu_layers": estimate.n_gpu_layers},
                "devices": [
                    {"name": d.name, "units": d.units, "weights": d.weights, "kv": d.kv, "compute": d.compute}
                    for d in p.devices
                ],
                "llama": report,
                "offloaded": offloaded.strip(),
            }
        )
    )


if __name__ == "__main__":
    main()
