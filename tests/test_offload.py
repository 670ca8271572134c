"""``--gpu-layers auto``: the planner's split against the fit estimate's arithmetic at real shapes,
and against what llama.cpp allocates when it loads a tiny model with that split.

The GPU is faked only through the free-memory input of the planner; the devices llama.cpp
loads onto are real: two ``g4 rpc-server`` processes on 127.0.0.1 (non-CPU devices to llama.cpp).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import llama_cpp
import pytest

from g4cli.chat.runtime import offload
from g4cli.errors import RuntimeFailure
from g4cli.models import fit
from quantize.gemma4 import text_params
from tests.conftest import ROOT
from tests.rpc_servers import servers_fixture  # noqa: F401  -- the servers fixture

REAL = Path("/work/shared/real-configs")
GB = 10**9
FAMILIES = ["e2b", "e4b", "12b", "26b-a4b", "31b"]
UBATCH = {"e2b": 512, "e4b": 512}  # the others read each image whole: a 1120-token ubatch


def real(family: str) -> tuple[object, offload.Shape]:
    config = json.loads((REAL / family / "config.json").read_text())
    hp = text_params(config)
    return hp, offload.shape_from_layout(hp, "Q4_K_M")


@pytest.mark.parametrize("family", FAMILIES)
def test_shape_is_the_fit_estimate(family: str) -> None:
    """Weights by unit add up to the estimate's text weights, KV by unit to its KV cache."""
    hp, shape = real(family)
    sizes = fit.text_bytes(hp, "Q4_K_M", "BF16")
    tied = sizes["embeddings"] if hp.tied else 0
    weights = sum(shape.layers) + shape.output + shape.host
    assert weights == pytest.approx(sizes["total"] - hp.vocab_size * fit.VOCAB_METADATA - sizes["ple"] + tied, abs=64)
    for kv_type, fa in (("f16", True), ("q8_0", True), ("f16", False)):
        kv = sum(shape.kv_bytes(u, 8192, kv_type, fa) for u in range(shape.units))
        assert kv == fit.kv_cache_bytes(hp, 8192, kv_type, flash_attn=fa)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("gb", [4, 8, 12, 24])
def test_one_device_gets_the_most_units_that_fit(family: str, gb: int) -> None:
    _, shape = real(family)
    ub = UBATCH.get(family, 1120)
    p = offload.plan(shape, [("CUDA0", gb * GB)], ctx=8192, n_ubatch=ub)
    n, d = p.n_gpu_layers, p.devices[0]
    start = shape.units - n
    want_w = sum(shape.unit_weights(u) for u in range(start, shape.units))
    want_kv = sum(shape.kv_bytes(u, 8192, "f16", True) for u in range(start, shape.units))
    assert (d.units, d.weights, d.kv) == (n, want_w, want_kv)
    if n:
        assert d.compute == shape.compute(ub, holds_output=True)  # the output unit is offloaded first
        assert d.used + offload.RESERVE <= gb * GB
    if n < shape.units:  # one more unit would not fit
        u = start - 1
        more = d.used + shape.unit_weights(u) + shape.kv_bytes(u, 8192, "f16", True)
        more += 0 if n else shape.compute(ub, holds_output=True)
        assert more + offload.RESERVE > gb * GB
    assert p.cpu == shape.host + sum(shape.unit_weights(u) + shape.kv_bytes(u, 8192, "f16", True) for u in range(start))


def test_table_at_real_shapes() -> None:
    """What auto gives at Q4_K_M, 8192 context (llama.cpp's count: layers + the output layer).
    By hand: E2B's 1.8 GB of resident weights fit 4 GB; E4B's 3.0 GB + 0.5 GB of logits do
    not quite; 31B's 18.7 GB + 6.6 GB of full-size sliding KV do not fit 24 GB."""
    got = {}
    for family in FAMILIES:
        _, shape = real(family)
        got[family] = [
            offload.plan(shape, [("CUDA0", gb * GB)], ctx=8192, n_ubatch=UBATCH.get(family, 1120)).n_gpu_layers
            == shape.units
            for gb in (4, 8, 12, 24)
        ]
    assert got == {
        "e2b": [True, True, True, True],
        "e4b": [False, True, True, True],
        "12b": [False, False, True, True],
        "26b-a4b": [False, False, False, True],
        "31b": [False, False, False, False],
    }


def test_two_devices_spread_by_free_memory() -> None:
    _, shape = real("e4b")
    p = offload.plan(shape, [("CUDA0", 24 * GB), ("CUDA1", 12 * GB)], ctx=8192)
    assert p.n_gpu_layers == shape.units
    assert [d.units for d in p.devices] == offload.assign(shape.units, [24 * GB, 12 * GB])
    assert p.devices[0].units == 2 * p.devices[1].units + 1  # 29 + 14 of 43, llama.cpp's own rounding
    assert p.devices[1].compute > p.devices[0].compute  # the logits are where the output layer is


def test_assign_is_llamas_rule() -> None:
    assert offload.assign(10, [1, 1]) == [5, 5]
    assert offload.assign(7, [3, 1]) == [6, 1]  # j/7 < 0.75 for j = 0..5
    assert offload.assign(4, [0, 1]) == [0, 4]
    assert offload.assign(0, [1, 1]) == [0, 0]


def test_split_mode_none_uses_the_main_gpu_only() -> None:
    _, shape = real("e2b")
    p = offload.plan(shape, [("CUDA0", 24 * GB), ("CUDA1", 24 * GB)], ctx=8192, split_mode="none", main_gpu=1)
    assert [d.name for d in p.devices] == ["CUDA1"] and p.n_gpu_layers == shape.units


def test_ctx_unset_picks_the_largest_that_fits_and_explicit_ctx_is_an_error() -> None:
    _, shape = real("31b")
    devices = [("CUDA0", 24 * GB)]
    p = offload.choose(shape, devices, ctx=None, default_ctx=8192, host_free=2 * GB, n_ubatch=1120)
    assert p.ctx < 8192 and offload.cpu_need(p, shape, {"n_ubatch": 1120}) <= 2 * GB
    bigger = offload.plan(shape, devices, ctx=p.ctx * 2, n_ubatch=1120)
    assert offload.cpu_need(bigger, shape, {"n_ubatch": 1120}) > 2 * GB
    with pytest.raises(RuntimeFailure) as e:
        offload.choose(shape, devices, ctx=8192, default_ctx=8192, host_free=2 * GB, n_ubatch=1120)
    assert "--ctx 8192 does not fit" in e.value.message and e.value.hint == f"--ctx {p.ctx} fits"


def test_no_device_means_nothing_changes(gguf: Callable) -> None:
    from g4cli.chat.load import plan_offload
    from g4cli.chat.select import Choice
    from g4cli.chat.settings import LoadOptions

    model = gguf("e2b", "Q8_0")
    choice = Choice(name="e2b", gguf=model, mmproj=None, entry=None)
    assert plan_offload(choice, LoadOptions()) is None  # this machine: CPU only, no RPC registered here


def test_show_says_cpu_only_here(gguf: Callable) -> None:
    from types import SimpleNamespace

    from g4cli.commands.show import offload_line

    entry = SimpleNamespace(tag="e2b:q8_0", gguf=gguf("e2b", "Q8_0"), mmproj=None)
    assert offload_line(entry) == "CPU only (no GPU or RPC device in this llama.cpp build)"


def _probe(model: Path, endpoints: str, free_mb: list[int]) -> dict:
    r = subprocess.run(
        [sys.executable, "-m", "tests.offload_probe", str(model), endpoints, ",".join(map(str, free_mb))],
        capture_output=True,
        cwd=ROOT,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr.decode()[-2000:]
    return json.loads(r.stdout)


@pytest.mark.skipif(not llama_cpp.llama_supports_rpc(), reason="llama.cpp built without RPC")
@pytest.mark.parametrize("family", ["e2b", "31b"])
def test_llama_allocates_what_the_plan_says(family: str, gguf: Callable, servers) -> None:
    """Free memory for two or three units on one device, one or two on the other: llama.cpp's
    model and KV buffers on each RPC device are the plan's to the byte (its log has 0.01 MiB),
    its offloaded count is the plan's, and so is its compute buffer: the estimate's, corrected by
    llama.cpp's dry run (no_alloc) until it covers what llama.cpp reserves; with the correction the
    plan holds fewer units than the estimate alone would have put there."""
    model = gguf(family, "Q8_0")
    shape = offload.shape_from_gguf(model)
    top = [shape.units - 1 - i for i in range(4)]  # the units offloaded first: the output, the last layers
    need = [shape.unit_weights(u) + shape.kv_bytes(u, 4096, "f16", True) for u in top]
    compute = shape.compute(512, holds_output=True)
    mib = 2**20
    free = [(offload.RESERVE + compute + sum(need[:3])) // mib + 1, (offload.RESERVE + compute + need[0]) // mib + 1]
    servers_spec = ",".join(s.endpoint for s in servers)
    out = _probe(model, servers_spec, free)
    plan = out["plan"]
    assert 0 < plan["n_gpu_layers"] < plan["units"]
    assert plan["n_gpu_layers"] < out["estimate"]["n_gpu_layers"]  # the tiny model's graphs outgrow the estimate
    assert out["offloaded"].endswith(f"offloaded {plan['n_gpu_layers']}/{plan['units']} layers to GPU")
    for d in out["devices"]:
        if not d["units"]:
            assert d["name"] not in out["llama"]
            continue
        got = out["llama"][d["name"]]
        assert got["model"] == pytest.approx(d["weights"] / mib, abs=0.006)
        assert got.get("KV", 0.0) == pytest.approx(d["kv"] / mib, abs=0.006)
        assert got["compute"] <= d["compute"] / mib + 0.02  # covered: the estimate or the dry run's figure
    everything = _probe(model, servers_spec, [4096, 4096])
    assert everything["plan"]["n_gpu_layers"] == everything["plan"]["units"]
    weights = {d["name"]: d["weights"] / mib for d in everything["devices"]}
    assert {k: v["model"] for k, v in everything["llama"].items() if k in weights} == pytest.approx(weights, abs=0.006)
