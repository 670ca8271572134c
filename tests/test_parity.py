"""Does our GGUF compute Gemma 4? llama.cpp on our F32 file vs transformers on the same checkpoint.

Over 48 tokens (the tiny models' sliding window is 8, so the window slides many times, and the
sequence runs through the KV-shared layers), as one batch and one token at a time. The bug tests
inject each known conversion bug and check that the same comparison rejects it.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from conftest import FAMILIES
from reference import REL_TOL, compare, llama_logits, reference_logits, sample_tokens

pytestmark = pytest.mark.reference
torch = pytest.importorskip("torch", reason="parity tests need the reference implementation (CPU torch)")

# MoE: under an F16 KV cache near-tied router scores flip experts (tiny-checkpoints.md); F32 cache
F32_KV = {"26b-a4b"}


@pytest.mark.parametrize("one_by_one", [False, True], ids=["batch", "token-by-token"])
@pytest.mark.parametrize("family", [*FAMILIES, "12b"])  # 12b: transformers' Gemma4Unified*
def test_logits_match_transformers(tiny, gguf, family: str, one_by_one: bool) -> None:
    ids = sample_tokens()
    ref = reference_logits(tiny(family), ids)
    # the tiny model must be meaningful: logits of a few units, not predicting its own input
    assert 1.0 < ref.std() < 10.0
    assert (ref.argmax(-1) == np.array(ids)).mean() < 0.2
    got = llama_logits(gguf(family, "F32"), ids, one_by_one=one_by_one, f32_kv=family in F32_KV)
    result = compare(got, ref)
    assert result.ok, f"{family}: {result}"


def _kv_edit(key: str, value):
    from quantize import gemma4

    original = gemma4.gguf_kv

    def patched(hp):
        return [(k, value(v) if k.endswith(key) else v, t, s) for k, v, t, s in original(hp)]

    return "gguf_kv", patched


def _tensor_edit(pattern: str, fn):
    from quantize import gemma4
    from quantize.safetensors_io import load

    original = gemma4.plan_text

    def patched(*args, **kwargs):
        plan = original(*args, **kwargs)
        for t in plan.tensors:
            if pattern in t.name and t.source is not None:
                t.data, t.source = fn(load(t.source)), None
        return plan

    return "plan_text", patched


def _params_edit(**changes):
    from quantize import gemma4

    original = gemma4.text_params
    return "text_params", lambda config: dataclasses.replace(original(config), **changes)


BUGS = {
    "sliding window off by one": lambda: _kv_edit("attention.sliding_window", lambda v: v + 1),
    "layer_output_scale missing": lambda: _tensor_edit("layer_output_scale", np.ones_like),
    "Gemma-3-style +1 on norms": lambda: _tensor_edit("_norm.weight", lambda w: w + 1),
    "wrong sliding RoPE base": lambda: _kv_edit("rope.freq_base_swa", lambda v: 1e6),
    "wrong full RoPE base": lambda: _kv_edit("rope.freq_base", lambda v: 1e4),
    "rotary fraction 0.5": lambda: _params_edit(rotary_fraction_full=0.5),
    "final softcap missing": lambda: _kv_edit("final_logit_softcapping", lambda v: 0.0),
}


@pytest.mark.parametrize("bug", list(BUGS))
def test_parity_check_rejects_injected_conversion_bugs(tiny, tmp_path: Path, monkeypatch, bug: str) -> None:
    from quantize import gemma4
    from quantize.converter import convert

    family = "e2b"
    name, patched = BUGS[bug]()
    monkeypatch.setattr(gemma4, name, patched)
    out = tmp_path / "buggy.gguf"
    convert(tiny(family), out, quant="F32")
    ids = sample_tokens()
    result = compare(llama_logits(out, ids, f32_kv=True), reference_logits(tiny(family), ids))
    assert not result.ok, f"{bug} went unnoticed: {result}"
    assert result.max_rel > 2 * REL_TOL, f"{bug} is too close to the tolerance: {result}"
