"""The family file and the name table, as pure functions (no files, no llama.cpp)."""

from __future__ import annotations

import re

import numpy as np
import pytest
from gguf.constants import MODEL_ARCH, MODEL_TENSORS, TENSOR_NAMES

from g4cli.errors import CheckpointError, ConvertError
from quantize import gemma4, tensor_map
from quantize.tiny import make_config


def _gguf_templates() -> set[str]:
    return {TENSOR_NAMES[t] for t in MODEL_TENSORS[MODEL_ARCH.GEMMA4]}


def test_every_table_entry_names_a_gemma4_tensor_llama_cpp_knows() -> None:
    known = _gguf_templates()
    for hf, gg, source in tensor_map.TEXT_TENSORS:
        base = re.sub(r"\.(weight|scale)$", "", gg)
        assert base in known, f"{gg} ({hf}) is not a GEMMA4 tensor in gguf"
        assert source, f"{hf} has no source comment"


@pytest.mark.parametrize(
    ("hf", "expected"),
    [
        ("model.language_model.embed_tokens.weight", ("token_embd.weight", None)),
        ("model.language_model.layers.7.self_attn.k_norm.weight", ("blk.7.attn_k_norm.weight", 7)),
        ("model.language_model.layers.12.layer_scalar", ("blk.12.layer_output_scale.weight", 12)),
        ("model.language_model.layers.0.router.per_expert_scale", ("blk.0.ffn_down_exps.scale", 0)),
        ("model.language_model.layers.3.experts.gate_up_proj", ("blk.3.ffn_gate_up_exps.weight", 3)),
        ("model.layers.2.mlp.down_proj.weight", ("blk.2.ffn_down.weight", 2)),  # Gemma4ForCausalLM
        ("model.language_model.embed_tokens_per_layer.weight", ("per_layer_token_embd.weight", None)),
        ("model.vision_tower.encoder.layers.0.mlp.up_proj.linear.weight", None),
        ("model.language_model.layers.1.self_attn.q_proj.bias", None),
    ],
)
def test_name_mapping(hf: str, expected: tuple[str, int | None] | None) -> None:
    assert tensor_map.gguf_name(hf) == expected


def test_the_12b_is_gemma4_text_with_31bs_layout() -> None:
    cfg = make_config("12b")
    assert cfg["architectures"] == ["Gemma4UnifiedForConditionalGeneration"] and gemma4.is_unified(cfg)
    assert not gemma4.is_unified(make_config("31b"))
    hp, hp31 = gemma4.text_params(cfg), gemma4.text_params(make_config("31b"))
    assert (hp.k_eq_v, hp.n_head_kv_full, hp.ple_dim, hp.n_expert) == (hp31.k_eq_v, 1, 0, 0)
    assert _kv(hp)["attention.head_count_kv"] == [2, 2, 2, 2, 2, 1]


def test_drop_rules_name_their_reason() -> None:
    assert "mmproj" in tensor_map.drop_rule("model.vision_embedder.patch_dense.weight")  # 12B
    assert "mmproj" in tensor_map.drop_rule("model.vision_tower.encoder.layers.0.mlp.up_proj.linear.weight")
    assert "mmproj" in tensor_map.drop_rule("model.embed_audio.embedding_projection.weight")
    assert tensor_map.drop_rule("model.language_model.layers.0.mlp.up_proj.weight") is None


def test_rope_freqs_freeze_the_unrotated_pairs() -> None:
    hp = gemma4.text_params(make_config("31b"))  # global head dim 128, fraction 0.25
    freqs = gemma4.rope_freqs(hp)
    assert freqs.shape == (64,) and freqs.dtype == np.float32
    np.testing.assert_array_equal(freqs[:16], 1.0)
    assert (freqs[16:] == np.float32(1e30)).all()


def _kv(hp: gemma4.TextParams) -> dict[str, object]:
    return {k.removeprefix("gemma4."): v for k, v, _, _ in gemma4.gguf_kv(hp)}


def test_metadata_for_e2b_shape() -> None:
    kv = _kv(gemma4.text_params(make_config("e2b")))
    assert kv["attention.sliding_window_pattern"] == [True] * 4 + [False] + [True] * 4 + [False]
    assert kv["attention.shared_kv_layers"] == 5 and kv["embedding_length_per_layer_input"] == 256
    assert kv["feed_forward_length"] == [512] * 5 + [1024] * 5  # double-wide MLP on shared layers
    assert (kv["attention.key_length"], kv["attention.key_length_swa"]) == (128, 64)
    assert kv["rope.dimension_count"] == 128 and kv["rope.dimension_count_swa"] == 64
    assert kv["rope.freq_base"] == 1e6 and kv["rope.freq_base_swa"] == 1e4
    assert kv["final_logit_softcapping"] == 30.0 and "expert_count" not in kv


def test_metadata_for_moe_and_k_eq_v() -> None:
    kv = _kv(gemma4.text_params(make_config("26b-a4b")))
    assert kv["attention.head_count_kv"] == [2, 2, 1, 2, 2, 1]  # per-layer KV heads
    assert (kv["expert_count"], kv["expert_used_count"], kv["expert_feed_forward_length"]) == (8, 2, 256)
    assert kv["embedding_length_per_layer_input"] == 0


def test_legacy_and_current_config_forms_agree() -> None:
    for family in ("e4b", "31b", "12b"):
        assert gemma4.text_params(make_config(family)) == gemma4.text_params(make_config(family, legacy=True))


def test_no_softcap_is_written_as_zero_not_left_to_llama_cpps_default() -> None:
    cfg = make_config("e2b", text={"final_logit_softcapping": None})
    assert _kv(gemma4.text_params(cfg))["final_logit_softcapping"] == 0.0


@pytest.mark.parametrize(
    ("text", "error", "message"),
    [
        ({"num_kv_shared_layers": 4}, ConvertError, "llama.cpp would abort"),  # layer 5 sliding
        ({"num_kv_shared_layers": 9}, ConvertError, "llama.cpp would abort"),
        ({"layer_types": ["full_attention"] * 10, "num_kv_shared_layers": 0}, ConvertError, "sliding"),
        ({"hidden_size": "big"}, CheckpointError, "hidden_size must be an integer"),
        ({"layer_types": ["sliding_attention"] * 3}, CheckpointError, "layer_types"),
        ({"hidden_activation": "relu"}, ConvertError, "hidden_activation"),
        ({"rope_parameters": {"full_attention": {"rope_type": "yarn"}}}, ConvertError, "rope_type"),
    ],
)
def test_bad_configs_are_refused(text: dict, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        gemma4.text_params(make_config("e2b", text=text))


def test_non_gemma4_architecture_is_refused() -> None:
    cfg = make_config("e2b")
    cfg["architectures"], cfg["model_type"] = ["LlamaForCausalLM"], "llama"
    with pytest.raises(CheckpointError, match="LlamaForCausalLM is not Gemma 4"):
        gemma4.text_params(cfg)


def test_output_dtypes_keep_norms_scales_and_router_in_f32() -> None:
    assert gemma4.output_dtype("blk.0.attn_q.weight", (256, 256), "BF16") == "BF16"
    assert gemma4.output_dtype("blk.0.ffn_gate_up_exps.weight", (8, 512, 256), "F16") == "F16"
    for name, shape in [
        ("blk.0.attn_norm.weight", (256,)),
        ("blk.0.ffn_gate_inp.weight", (8, 256)),
        ("blk.0.ffn_gate_inp.scale", (256,)),
        ("blk.0.layer_output_scale.weight", (1,)),
    ]:
        assert gemma4.output_dtype(name, shape, "BF16") == "F32"
