"""QAT-aware Q4_0: a tiny checkpoint built on a QAT grid (BF16 scales x int4 codes per 32-block)
comes out of ``--quant q4_0_qat`` as the weights it was trained as; llama.cpp's own Q4_0 does not."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType, GGUFReader
from gguf.quants import dequantize

from quantize import qat
from quantize.converter import convert


@pytest.fixture(scope="module")
def qat_checkpoint(tiny) -> Path:
    return tiny("e2b", dtype="BF16", qat=True, vision=False, audio=False)


@pytest.fixture(scope="module")
def converted(qat_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("qat")
    out = {q: d / f"{q}.gguf" for q in ("BF16", "Q4_0_QAT", "Q4_0")}
    for q, path in list(out.items()):
        result = convert(qat_checkpoint, path, quant=q, mmproj_type=None)
        if q == "Q4_0_QAT":
            assert result.qat is not None and result.qat.blocks > 0
            out["off_grid"] = result.qat.off_grid  # type: ignore[assignment]
    return out


def exactness(quantized: Path, reference: Path) -> tuple[float, int, int]:
    """(max |dequantized - BF16 weight|, weights beyond F16 rounding of their block's scale, Q4_0 weights).

    The allowance per weight: 8 codes x half an F16 ulp of the block's scale (the scale rounded to
    F16) plus half a BF16 ulp of the weight (the checkpoint holds ``bf16(s * q)``, the file ``s * q``)."""
    ref = {t.name: t for t in GGUFReader(reference).tensors}
    worst, bad, total = 0.0, 0, 0
    for t in GGUFReader(quantized).tensors:
        if t.tensor_type != GGMLQuantizationType.Q4_0:
            continue
        blocks = np.asarray(t.data).reshape(-1, 18)
        w = dequantize(np.asarray(ref[t.name].data), GGMLQuantizationType.BF16).reshape(-1, 32)
        got = dequantize(blocks, GGMLQuantizationType.Q4_0).reshape(-1, 32)
        scale = np.abs(blocks[:, :2].copy().view(np.float16)).astype(np.float32)  # (n, 1)
        allowed = 8 * np.spacing(scale.astype(np.float16)).astype(np.float32) / 2 + np.spacing(np.abs(w)) * 2**15
        err = np.abs(got - w)
        worst = max(worst, float(err.max()))
        bad += int((err > allowed).sum())
        total += err.size
    return worst, bad, total


def test_qat_aware_q4_0_reproduces_the_trained_weights(converted: dict) -> None:
    worst, bad, total = exactness(converted["Q4_0_QAT"], converted["BF16"])
    naive_worst, naive_bad, naive_total = exactness(converted["Q4_0"], converted["BF16"])
    print(f"\nq4_0_qat: max error {worst:.3g}, {bad} of {total} weights beyond F16 rounding of the scale")
    print(f"q4_0 (llama.cpp): max error {naive_worst:.3g}, {naive_bad} of {naive_total} weights beyond it")
    assert total == naive_total > 0
    assert converted["off_grid"] == 0  # every block of the QAT checkpoint was on its grid
    assert bad == 0
    assert naive_bad > total // 100  # llama.cpp's d = max/-8 misses the grid of blocks without code -8
    assert worst < naive_worst / 10


def test_the_rest_keeps_google_s_types(converted: dict) -> None:
    types = {t.name: t.tensor_type.name for t in GGUFReader(converted["Q4_0_QAT"]).tensors}
    assert types["token_embd.weight"] == types["per_layer_token_embd.weight"] == "Q6_K"
    assert types["per_layer_model_proj.weight"] == "BF16"  # llama.cpp never quantizes it
    assert types["output_norm.weight"] == types["blk.0.attn_norm.weight"] == "F32"
    assert types["blk.0.ffn_down.weight"] == types["blk.0.attn_v.weight"] == "Q4_0"  # no per-layer mix


def test_it_loads_and_generates(converted: dict) -> None:
    import llama_cpp

    llm = llama_cpp.Llama(str(converted["Q4_0_QAT"]), n_ctx=64, verbose=False)
    out = llm("The cat", max_tokens=8, temperature=0.0)
    assert out["usage"]["completion_tokens"] > 0


def test_blocks_on_no_grid_fall_back_and_are_counted(tiny, tmp_path: Path) -> None:
    """A checkpoint that was not QAT-trained: every block falls back, is counted, the file loads."""
    plain = tiny("e2b", dtype="BF16", vision=False, audio=False)
    result = convert(plain, tmp_path / "plain.gguf", quant="q4_0_qat", mmproj_type=None)
    assert result.qat is not None and result.qat.off_grid > 0.99 * result.qat.blocks


def test_grid_search_unit() -> None:
    """Blocks built on a grid are recovered exactly (codes and BF16 scale); one off the grid is not."""
    rng = np.random.default_rng(0)
    s = qat.bf16(rng.uniform(1e-3, 5e-2, 200).astype(np.float32))
    q = np.clip(np.rint(rng.normal(0, 2.5, (200, 32))), -8, 7).astype(np.float32)
    q[:, 0] = np.where(q[:, 0] == 0, 1, q[:, 0])  # no all-zero block
    w = qat.bf16(s[:, None] * q)
    scale, codes, found = qat.find_grid(w)
    assert found.all()
    assert np.array_equal(qat.bf16(scale[:, None] * codes), w)
    off = w.copy()
    off[0, 5] = np.nextafter(off[0, 5], np.float32(1)) * 1.01
    assert not qat.find_grid(off[:1])[2][0]


def test_an_injected_bug_fails_the_exactness_check(
    qat_checkpoint: Path, tmp_path: Path, monkeypatch, converted
) -> None:
    """Without the BF16-neighbour search (the quotient |w_m|/k taken as the scale as it is), blocks
    whose largest weight was rounded fall back: the exactness check above catches it."""
    monkeypatch.setattr(qat, "ULP_STEPS", (0,))  # ~11 % of this checkpoint's blocks need a neighbour
    out = tmp_path / "broken.gguf"
    result = convert(qat_checkpoint, out, quant="q4_0_qat", mmproj_type=None)
    assert result.qat is not None and result.qat.off_grid > 0
    assert exactness(out, converted["BF16"])[1] > 0


def test_pull_of_a_qat_repo_defaults_to_qat_aware_q4_0(qat_checkpoint: Path, run_g4, monkeypatch) -> None:
    from hub_server import HubServer

    server = HubServer()
    server.add_repo("google/gemma-4-E4B-it-qat-q4_0-unquantized", qat_checkpoint)
    try:
        r = run_g4("pull", "e4b-qat", env={"HF_ENDPOINT": server.url})
    finally:
        server.close()
    assert r.returncode == 0, r.err
    assert "QAT-aware Q4_0: " in r.err and "on their QAT grid" in r.err and "on none" not in r.err
    model = Path(r.out.strip())
    assert model.parent.name == "Q4_0_QAT" and model.parent.parent.name == "e4b-qat"
    r = run_g4("show", "e4b-qat", "--json")
    assert r.returncode == 0, r.err
    assert '"Q4_0"' in r.out


@pytest.mark.parametrize("family", ["e4b", "12b", "26b-a4b", "31b"])
def test_every_family_on_its_grid_loads_and_generates(tiny, tmp_path: Path, family: str) -> None:
    """PLE, the 12B's unified layout, MoE experts (3-D, QAT-aware too), K=V layers."""
    import llama_cpp

    ckpt = tiny(family, dtype="BF16", qat=True, vision=False, audio=False)
    result = convert(ckpt, tmp_path / "m.gguf", quant="q4_0_qat", mmproj_type=None)
    assert result.qat is not None and result.qat.blocks > 0 and result.qat.off_grid == 0
    types = {t.name: t.tensor_type.name for t in GGUFReader(tmp_path / "m.gguf").tensors}
    assert "Q4_0" in types.values()
    if family == "26b-a4b":
        assert types["blk.0.ffn_gate_up_exps.weight"] == types["blk.0.ffn_down_exps.weight"] == "Q4_0"
        assert types["blk.0.ffn_gate_inp.weight"] == "F32"  # the router
    llm = llama_cpp.Llama(str(tmp_path / "m.gguf"), n_ctx=64, verbose=False)
    assert llm("The cat", max_tokens=4, temperature=0.0)["usage"]["completion_tokens"] > 0
