"""Quantization through llama.cpp's own quantizer: the types it picks, and files that run."""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import pytest
from conftest import FAMILIES
from gguf import GGUFReader

NEVER_QUANTIZED = re.compile(
    r"(_norm(_\d)?\.weight|\.scale|ffn_gate_inp\.weight|layer_output_scale\.weight|rope_freqs\.weight|per_layer_model_proj\.weight)$"
)


def _types(path: Path) -> dict[str, str]:
    return {t.name: t.tensor_type.name for t in GGUFReader(path).tensors}


def _greedy(path: Path, n: int = 16) -> list[int]:
    import llama_cpp

    llm = llama_cpp.Llama(str(path), n_ctx=128, verbose=False, seed=1)
    try:
        prompt = llm.tokenize(b"The quick brown fox", add_bos=True)
        return list(itertools.islice(llm.generate(prompt, temp=0.0, top_k=1), n))
    finally:
        llm.close()


@pytest.mark.parametrize("family", FAMILIES)
def test_q4_k_m_types_are_llama_cpps_gemma4_mix(gguf, family: str) -> None:
    types = _types(gguf(family, "Q4_K_M"))
    assert types["token_embd.weight"] == "Q6_K"  # tied output rule (rows are /256)
    if family in ("e2b", "e4b"):
        assert types["per_layer_token_embd.weight"] == "Q6_K"
    for name, t in types.items():
        if NEVER_QUANTIZED.search(name):
            assert t == "F32", name
        else:
            assert t in {"Q4_K", "Q5_K", "Q6_K", "Q8_0"}, (name, t)
    body = [t for n, t in types.items() if n.startswith("blk.") and not NEVER_QUANTIZED.search(n)]
    assert body.count("Q4_K") > len(body) / 2


@pytest.mark.parametrize("family", FAMILIES)
def test_q8_0_quantizes_every_matrix(gguf, family: str) -> None:
    for name, t in _types(gguf(family, "Q8_0")).items():
        assert t == ("F32" if NEVER_QUANTIZED.search(name) else "Q8_0"), (name, t)


@pytest.mark.parametrize("quant", ["Q4_K_M", "Q8_0"])
@pytest.mark.parametrize("family", FAMILIES)
def test_quantized_files_load_and_generate_16_tokens(gguf, family: str, quant: str) -> None:
    path = gguf(family, quant)
    tokens = _greedy(path)
    assert len(tokens) == 16 and all(0 <= t < 1024 for t in tokens)
    assert _greedy(path) == tokens  # greedy decoding is deterministic


def test_quantize_api_on_an_existing_gguf(gguf, tmp_path: Path) -> None:
    from quantize import quantize

    seen: list[tuple[int, int]] = []
    out = quantize(gguf("31b", "F32"), tmp_path / "q.gguf", "q5_k_m", on_progress=lambda d, t: seen.append((d, t)))
    assert out.is_file() and _types(out)["blk.0.attn_q.weight"] == "Q5_K"
    assert seen and seen[-1][0] == seen[-1][1] and all(b >= a for (a, _), (b, _) in itertools.pairwise(seen))
    assert len(seen) > 10  # progress advanced tensor by tensor


def test_unknown_type_is_a_usage_error_listing_the_valid_ones(run_g4, tiny, tmp_path: Path) -> None:
    r = run_g4("convert", tiny("31b"), "-o", tmp_path / "x.gguf", "--quant", "q4_k_x")
    assert r.returncode == 2
    assert len(r.err_lines) == 1 and "unknown quantization type 'q4_k_x'" in r.err
    assert "q4_k_m" in r.err and "q8_0" in r.err and "did you mean" in r.err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("quant", ["F16", "BF16"])
def test_float_pass_through_types(gguf, quant: str) -> None:
    types = _types(gguf("e2b", quant))
    assert types["blk.0.attn_q.weight"] == quant and types["per_layer_token_embd.weight"] == quant
    assert types["blk.0.attn_norm.weight"] == "F32"
    assert len(_greedy(gguf("e2b", quant))) == 16


def test_progress_is_shown_on_a_terminal(tiny, tmp_path: Path) -> None:
    import os

    import pexpect
    from conftest import g4_executable

    exe = g4_executable()
    out = tmp_path / "p.gguf"
    env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": "120"}
    env.pop("NO_COLOR", None)
    child = pexpect.spawn(exe[0], [*exe[1:], "convert", str(tiny("e2b")), "-o", str(out), "-q", "q4_k_m"], env=env)
    child.expect_exact("projector")  # one bar per phase, with sizes and speed
    child.expect_exact("convert")
    child.expect_exact("quantize")
    child.expect_exact(f"wrote {out} (Q4_K_M")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
