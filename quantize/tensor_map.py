"""Hugging Face -> GGUF tensor names for Gemma 4, as data.

Each entry: (HF name after the text prefix, GGUF name, where it comes from). ``{bid}`` stands for
a layer index. The HF names are transformers 5.23's module paths (``Gemma4TextModel``); GGUF
names are llama.cpp's (``LLM_ARCH_GEMMA4``). Checked by ``tests/test_gemma4_family.py`` and
``tests/test_convert.py``.
"""

from __future__ import annotations

import re
from functools import cache

# Prefixes under which the text model's weights are stored.
TEXT_PREFIXES = (
    "model.language_model.",  # Gemma4ForConditionalGeneration (all official releases)
    "model.",  # Gemma4ForCausalLM
)

TEXT_TENSORS: list[tuple[str, str, str]] = [
    # embeddings and head
    ("embed_tokens.weight", "token_embd.weight", "all; rows trimmed to the tokenizer"),
    ("norm.weight", "output_norm.weight", "all"),
    ("lm_head.weight", "output.weight", "only when not tied (Gemma 4 ties it)"),
    # per-layer embeddings, PLE (E2B/E4B)
    ("embed_tokens_per_layer.weight", "per_layer_token_embd.weight", "PLE (E2B/E4B)"),
    ("per_layer_model_projection.weight", "per_layer_model_proj.weight", "PLE (E2B/E4B)"),
    ("per_layer_projection_norm.weight", "per_layer_proj_norm.weight", "PLE (E2B/E4B)"),
    # block norms
    ("layers.{bid}.input_layernorm.weight", "blk.{bid}.attn_norm.weight", "all"),
    ("layers.{bid}.post_attention_layernorm.weight", "blk.{bid}.post_attention_norm.weight", "all"),
    ("layers.{bid}.pre_feedforward_layernorm.weight", "blk.{bid}.ffn_norm.weight", "all"),
    ("layers.{bid}.post_feedforward_layernorm.weight", "blk.{bid}.post_ffw_norm.weight", "all"),
    # attention
    ("layers.{bid}.self_attn.q_proj.weight", "blk.{bid}.attn_q.weight", "all"),
    ("layers.{bid}.self_attn.k_proj.weight", "blk.{bid}.attn_k.weight", "layers that own a KV cache"),
    ("layers.{bid}.self_attn.v_proj.weight", "blk.{bid}.attn_v.weight", "absent where K=V (31B, 26B full layers)"),
    ("layers.{bid}.self_attn.o_proj.weight", "blk.{bid}.attn_output.weight", "all"),
    ("layers.{bid}.self_attn.q_norm.weight", "blk.{bid}.attn_q_norm.weight", "all"),
    ("layers.{bid}.self_attn.k_norm.weight", "blk.{bid}.attn_k_norm.weight", "layers that own a KV cache"),
    # dense MLP (the "shared expert" beside the experts in 26B-A4B)
    ("layers.{bid}.mlp.gate_proj.weight", "blk.{bid}.ffn_gate.weight", "all"),
    ("layers.{bid}.mlp.up_proj.weight", "blk.{bid}.ffn_up.weight", "all"),
    ("layers.{bid}.mlp.down_proj.weight", "blk.{bid}.ffn_down.weight", "all"),
    ("layers.{bid}.layer_scalar", "blk.{bid}.layer_output_scale.weight", "all; a [1] buffer"),
    # per-layer input (E2B/E4B)
    ("layers.{bid}.per_layer_input_gate.weight", "blk.{bid}.inp_gate.weight", "PLE (E2B/E4B)"),
    ("layers.{bid}.per_layer_projection.weight", "blk.{bid}.proj.weight", "PLE (E2B/E4B)"),
    ("layers.{bid}.post_per_layer_input_norm.weight", "blk.{bid}.post_norm.weight", "PLE (E2B/E4B)"),
    # mixture of experts (26B-A4B)
    ("layers.{bid}.router.proj.weight", "blk.{bid}.ffn_gate_inp.weight", "MoE (26B-A4B)"),
    ("layers.{bid}.router.scale", "blk.{bid}.ffn_gate_inp.scale", "MoE (26B-A4B)"),
    ("layers.{bid}.router.per_expert_scale", "blk.{bid}.ffn_down_exps.scale", "MoE (26B-A4B)"),
    ("layers.{bid}.experts.gate_up_proj", "blk.{bid}.ffn_gate_up_exps.weight", "MoE (26B-A4B); [E, 2I, H]"),
    ("layers.{bid}.experts.down_proj", "blk.{bid}.ffn_down_exps.weight", "MoE (26B-A4B); [E, H, I]"),
    ("layers.{bid}.pre_feedforward_layernorm_2.weight", "blk.{bid}.pre_ffw_norm_2.weight", "MoE (26B-A4B)"),
    ("layers.{bid}.post_feedforward_layernorm_1.weight", "blk.{bid}.post_ffw_norm_1.weight", "MoE (26B-A4B)"),
    ("layers.{bid}.post_feedforward_layernorm_2.weight", "blk.{bid}.post_ffw_norm_2.weight", "MoE (26B-A4B)"),
]

# Assistant drafters (Gemma4AssistantForCausalLM): the blocks are TEXT_TENSORS' (no K/V: every
# layer reads the target's cache), plus two projections outside the text model, by full name.
ASSISTANT_TENSORS: list[tuple[str, str, str]] = [
    # source: modeling_gemma4_assistant.py:123-124; vendored gguf-py constants.py:1990, tensor_mapping.py:2743-2749
    ("pre_projection.weight", "nextn.pre_projection.weight", "[H, 2B]: cat(target embedding, target hidden) -> H"),
    # source: modeling_gemma4_assistant.py:125; vendored gguf-py constants.py:1991, tensor_mapping.py:2747-2749
    ("post_projection.weight", "nextn.post_projection.weight", "[B, H]: the next step's hidden state"),
]

# Source tensors that are deliberately not in the text GGUF, each with the rule that drops it.
# (regex on the full HF name, rule). KV-shared layers' own K/V weights are dropped in gemma4.py,
# because which layers share depends on the config.
DROPPED: list[tuple[str, str]] = [
    (r"^model\.(vision_tower|embed_vision)\.", "vision tower: belongs to the mmproj file"),
    (r"^model\.vision_embedder\.", "vision embedder (12B): belongs to the mmproj file"),
    (r"^model\.(audio_tower|embed_audio)\.", "audio tower: belongs to the mmproj file"),
    (r"\.rotary_emb\.inv_freq$", "RoPE buffer: recomputed by llama.cpp"),
    # assistant drafters (E2B/E4B): conversion/gemma.py:939-946 skips them too
    (r"^masked_embedding\.", "assistant's centroid-masked head: llama.cpp uses the full LM head"),
]
TIED_HEAD_RULE = "lm_head: tied to embed_tokens"
SHARED_KV_RULE = "KV-shared layer: reads the cache of an earlier layer, its own K/V are unused"


def _compile(template: str) -> re.Pattern[str]:
    return re.compile("^" + re.escape(template).replace(re.escape("{bid}"), r"(?P<bid>\d+)") + "$")


@cache
def _patterns() -> list[tuple[re.Pattern[str], str]]:
    return [(_compile(hf), gg) for hf, gg, _ in TEXT_TENSORS]


def strip_text_prefix(name: str) -> str | None:
    """The name relative to the text model, or None if it is not a text-model tensor."""
    if name == "lm_head.weight":
        return name
    for prefix in TEXT_PREFIXES:
        if name.startswith(prefix):
            return name[len(prefix) :]
    return None


def gguf_name(hf_name: str) -> tuple[str, int | None] | None:
    """HF tensor name -> (GGUF name, layer index or None); None when the table has no entry."""
    for source, target, _ in ASSISTANT_TENSORS:
        if hf_name == source:
            return target, None
    rel = strip_text_prefix(hf_name)
    if rel is None:
        return None
    for pattern, target in _patterns():
        m = pattern.match(rel)
        if m:
            bid = m.groupdict().get("bid")
            return (target.format(bid=bid) if bid is not None else target), (int(bid) if bid else None)
    return None


@cache
def _reverse() -> list[tuple[re.Pattern[str], str]]:
    return [(_compile(gg), hf) for hf, gg, _ in TEXT_TENSORS]


def hf_name(gguf: str, prefix: str = TEXT_PREFIXES[0]) -> str:
    """GGUF tensor name -> the HF name it comes from (for writing checkpoints, e.g. the tiny ones)."""
    for source, target, _ in ASSISTANT_TENSORS:
        if gguf == target:
            return source
    for pattern, source in _reverse():
        m = pattern.match(gguf)
        if m:
            rel = source.format(**m.groupdict())
            return rel if rel == "lm_head.weight" else prefix + rel
    raise KeyError(f"no HF name for GGUF tensor {gguf!r}")


def drop_rule(hf_name: str) -> str | None:
    """The rule that drops this tensor from the text GGUF, if any."""
    for pattern, rule in DROPPED:
        if re.search(pattern, hf_name):
            return rule
    return None


# --- the multimodal projector (mmproj, arch "clip"): vision tower "gemma4v", audio "gemma4a" ---
# Module paths under the tower; a module's own tensors keep their suffix (``.weight``, ``.bias``,
# and the clipped-linear bounds ``.input_min/.input_max/.output_min/.output_max``), except that a
# clipped linear's ``.linear.weight`` becomes ``.weight``.
VISION_TENSORS: list[tuple[str, str, str]] = [
    ("model.vision_tower.patch_embedder.input_proj", "v.patch_embd", "reshaped to a conv kernel [H, 3, p, p]"),
    ("model.vision_tower.encoder.layers.{bid}.input_layernorm", "v.blk.{bid}.ln1", ""),
    ("model.vision_tower.encoder.layers.{bid}.post_attention_layernorm", "v.blk.{bid}.attn_post_norm", ""),
    ("model.vision_tower.encoder.layers.{bid}.pre_feedforward_layernorm", "v.blk.{bid}.ln2", ""),
    ("model.vision_tower.encoder.layers.{bid}.post_feedforward_layernorm", "v.blk.{bid}.ffn_post_norm", ""),
    ("model.vision_tower.encoder.layers.{bid}.self_attn.q_proj", "v.blk.{bid}.attn_q", "clipped linear"),
    ("model.vision_tower.encoder.layers.{bid}.self_attn.k_proj", "v.blk.{bid}.attn_k", "clipped linear"),
    ("model.vision_tower.encoder.layers.{bid}.self_attn.v_proj", "v.blk.{bid}.attn_v", "clipped linear"),
    ("model.vision_tower.encoder.layers.{bid}.self_attn.o_proj", "v.blk.{bid}.attn_out", "clipped linear"),
    ("model.vision_tower.encoder.layers.{bid}.self_attn.q_norm", "v.blk.{bid}.attn_q_norm", ""),
    ("model.vision_tower.encoder.layers.{bid}.self_attn.k_norm", "v.blk.{bid}.attn_k_norm", ""),
    ("model.vision_tower.encoder.layers.{bid}.mlp.gate_proj", "v.blk.{bid}.ffn_gate", "clipped linear"),
    ("model.vision_tower.encoder.layers.{bid}.mlp.up_proj", "v.blk.{bid}.ffn_up", "clipped linear"),
    ("model.vision_tower.encoder.layers.{bid}.mlp.down_proj", "v.blk.{bid}.ffn_down", "clipped linear"),
    ("model.embed_vision.embedding_projection", "mm.input_projection", "vision -> text width"),
]
AUDIO_TENSORS: list[tuple[str, str, str]] = [
    ("model.audio_tower.subsample_conv_projection.layer{n}.conv", "a.conv1d.{n}", "2-D conv, F32"),
    ("model.audio_tower.subsample_conv_projection.layer{n}.norm", "a.conv1d.{n}.norm", "LayerNorm without bias"),
    ("model.audio_tower.subsample_conv_projection.input_proj_linear", "a.input_projection", "F32"),
    ("model.audio_tower.layers.{bid}.feed_forward1.pre_layer_norm", "a.blk.{bid}.ffn_norm", ""),
    ("model.audio_tower.layers.{bid}.feed_forward1.ffw_layer_1", "a.blk.{bid}.ffn_up", "clipped linear"),
    ("model.audio_tower.layers.{bid}.feed_forward1.ffw_layer_2", "a.blk.{bid}.ffn_down", "clipped linear"),
    ("model.audio_tower.layers.{bid}.feed_forward1.post_layer_norm", "a.blk.{bid}.ffn_post_norm", ""),
    ("model.audio_tower.layers.{bid}.feed_forward2.pre_layer_norm", "a.blk.{bid}.ffn_norm_1", ""),
    ("model.audio_tower.layers.{bid}.feed_forward2.ffw_layer_1", "a.blk.{bid}.ffn_up_1", "clipped linear"),
    ("model.audio_tower.layers.{bid}.feed_forward2.ffw_layer_2", "a.blk.{bid}.ffn_down_1", "clipped linear"),
    ("model.audio_tower.layers.{bid}.feed_forward2.post_layer_norm", "a.blk.{bid}.ffn_post_norm_1", ""),
    ("model.audio_tower.layers.{bid}.norm_pre_attn", "a.blk.{bid}.attn_pre_norm", ""),
    ("model.audio_tower.layers.{bid}.self_attn.q_proj", "a.blk.{bid}.attn_q", "clipped linear"),
    ("model.audio_tower.layers.{bid}.self_attn.k_proj", "a.blk.{bid}.attn_k", "clipped linear"),
    ("model.audio_tower.layers.{bid}.self_attn.v_proj", "a.blk.{bid}.attn_v", "clipped linear"),
    ("model.audio_tower.layers.{bid}.self_attn.post", "a.blk.{bid}.attn_out", "clipped linear"),
    ("model.audio_tower.layers.{bid}.self_attn.relative_k_proj", "a.blk.{bid}.attn_k_rel", ""),
    ("model.audio_tower.layers.{bid}.norm_post_attn", "a.blk.{bid}.attn_post_norm", ""),
    ("model.audio_tower.layers.{bid}.lconv1d.linear_start", "a.blk.{bid}.conv_pw1", "clipped linear"),
    ("model.audio_tower.layers.{bid}.lconv1d.depthwise_conv1d", "a.blk.{bid}.conv_dw", "[H, 1, K] -> [H, K], F32"),
    ("model.audio_tower.layers.{bid}.lconv1d.linear_end", "a.blk.{bid}.conv_pw2", "clipped linear"),
    # the conv module's two norms are stored swapped; llama.cpp's clip.cpp swaps them back
    ("model.audio_tower.layers.{bid}.lconv1d.pre_layer_norm", "a.blk.{bid}.conv_norm", "swapped"),
    ("model.audio_tower.layers.{bid}.lconv1d.conv_norm", "a.blk.{bid}.norm_conv", "swapped"),
    ("model.audio_tower.layers.{bid}.norm_out", "a.blk.{bid}.ln2", ""),
    ("model.audio_tower.output_proj", "a.pre_encode.out", "with bias"),
    ("model.embed_audio.embedding_projection", "mm.a.input_projection", "audio -> text width"),
]
# Bare parameters (no module, no suffix): exact names.
TOWER_PARAMETERS: list[tuple[str, str, str]] = [
    ("model.vision_tower.patch_embedder.position_embedding_table", "v.position_embd.weight", "[2, P, H], F32"),
    ("model.vision_tower.std_bias", "v.std_bias", "standardize (26B/31B)"),
    ("model.vision_tower.std_scale", "v.std_scale", "standardize (26B/31B)"),
    ("model.audio_tower.layers.{bid}.self_attn.per_dim_scale", "a.blk.{bid}.per_dim_scale.weight", "softplus"),
]
# The 12B "unified" model (``Gemma4UnifiedForConditionalGeneration``): no towers, only the
# embedders of raw 48x48 pixel patches (projector "gemma4uv") and raw 640-sample waveform frames
# ("gemma4ua"). Names as the release stores them (transformers renames them at load,
# conversion_mapping.py "gemma4_unified"). PyPI gguf 0.19.0 has neither the projector types nor
# ``v.patch_norm.{bid}``: the GGUF names below are raw strings, from the vendored gguf-py.
UNIFIED_TENSORS: list[tuple[str, str, str]] = [
    # source: vendored gguf-py constants.py:1684 V_ENC_EMBD_PATCH "v.patch_embd", tensor_mapping.py:1592
    ("model.vision_embedder.patch_dense", "v.patch_embd", "Linear 6912 -> D, columns permuted HWC -> CHW"),
    # source: constants.py:1686 V_ENC_EMBD_PATCH_NORM "v.patch_norm.{bid}", tensor_mapping.py:1603
    ("model.vision_embedder.patch_ln1", "v.patch_norm.1", "LayerNorm over raw pixels, permuted HWC -> CHW"),
    # source: constants.py:1686 V_ENC_EMBD_PATCH_NORM, tensor_mapping.py:1603
    ("model.vision_embedder.patch_ln2", "v.patch_norm.2", "LayerNorm after the patch projection"),
    # source: constants.py:1686 V_ENC_EMBD_PATCH_NORM; conversion/gemma.py:1063-1065 (pos_norm -> patch_ln3)
    ("model.vision_embedder.pos_norm", "v.patch_norm.3", "LayerNorm after the position embedding"),
    # the projections to the text width are VISION_TENSORS' and AUDIO_TENSORS' embed_vision and
    # embed_audio entries (mm.input_projection, vendored constants.py:1715, tensor_mapping.py:141;
    # mm.a.input_projection, constants.py:1938, tensor_mapping.py:2680): the same names
]
UNIFIED_PARAMETERS: list[tuple[str, str, str]] = [
    # source: constants.py:1687 V_ENC_EMBD_POS "v.position_embd", tensor_mapping.py:1622; conversion/gemma.py:1060-1062
    ("model.vision_embedder.pos_embedding", "v.position_embd.weight", "[P, 2, D] -> [2, P, D] (x table, y table), F32"),
]
MODULE_SUFFIXES = {
    ".linear.weight": ".weight",
    ".weight": ".weight",
    ".bias": ".bias",
    ".input_min": ".input_min",
    ".input_max": ".input_max",
    ".output_min": ".output_min",
    ".output_max": ".output_max",
}


def _tower_regex(template: str, tail: str) -> re.Pattern[str]:
    body = re.escape(template).replace(re.escape("{bid}"), r"(?P<bid>\d+)").replace(re.escape("{n}"), r"(?P<n>\d+)")
    return re.compile("^" + body + tail + "$")


@cache
def _tower_patterns() -> list[tuple[re.Pattern[str], str, bool]]:
    params = [(_tower_regex(hf, ""), gg, True) for hf, gg, _ in TOWER_PARAMETERS]
    modules = [
        (_tower_regex(hf, r"(?P<suffix>(\.[a-z_]+)+)"), gg, False) for hf, gg, _ in VISION_TENSORS + AUDIO_TENSORS
    ]
    unified = [(_tower_regex(hf, ""), gg, True) for hf, gg, _ in UNIFIED_PARAMETERS]
    unified += [(_tower_regex(hf, r"(?P<suffix>\.weight|\.bias)"), gg, False) for hf, gg, _ in UNIFIED_TENSORS]
    return params + modules + unified


def tower_gguf_name(hf_name: str) -> str | None:
    """HF name of a vision/audio tower (or 12B embedder) tensor -> its mmproj GGUF name (None if unknown)."""
    for pattern, target, bare in _tower_patterns():
        m = pattern.match(hf_name)
        if not m:
            continue
        groups = {k: v for k, v in m.groupdict().items() if v is not None and k != "suffix"}
        if bare:
            return target.format(**groups)
        suffix = MODULE_SUFFIXES.get(m.group("suffix"))
        return target.format(**groups) + suffix if suffix else None
    return None
