"""The Gemma 4 family: config -> GGUF keys, checkpoint tensors -> GGUF tensors.

One file for E2B/E4B (per-layer embeddings "PLE", KV-shared layers, double-wide MLP), 26B-A4B
(mixture of experts, K=V on full-attention layers), 31B (K=V, per-layer KV head counts,
proportional RoPE), the 12B "unified" model (31B's text layout, no vision or audio tower:
``Gemma4Unified*``, the same ``gemma4`` text architecture) and the assistant drafters
(``Gemma4Assistant*``, arch ``gemma4-assistant``: 4 layers reading the target's KV cache, fed the
target's hidden state through ``nextn.pre_projection``; llama.cpp's
``src/models/gemma4-assistant.cpp`` and ``conversion/gemma.py`` Gemma4AssistantModel). What
llama.cpp expects is what its loader and graph read (llama.cpp's ``src/models/gemma4.cpp`` and
``src/llama-model.cpp`` as vendored by llama-cpp-python 0.3.36); every rule here names the
variant it serves.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
from gguf import GGUFValueType, Keys

from g4cli.errors import CheckpointError, ConvertError
from quantize import tensor_map
from quantize.checkpoint import ConfigView
from quantize.gguf_out import OutTensor, Plan, output_dtype
from quantize.safetensors_io import FLOAT_DTYPES, TensorRef

ARCH = "gemma4"
# 12B: raw pixel patches and waveform frames straight into the text model, no towers
UNIFIED_ARCHITECTURES = ("Gemma4UnifiedForConditionalGeneration", "Gemma4UnifiedForCausalLM")
UNIFIED_MODEL_TYPES = ("gemma4_unified", "gemma4_unified_text")
# assistant drafters (MTP): not in PyPI gguf 0.19.0, the name from vendored gguf-py constants.py:1311
ASSISTANT_ARCH = "gemma4-assistant"
ASSISTANT_ARCHITECTURES = ("Gemma4AssistantForCausalLM", "Gemma4UnifiedAssistantForCausalLM")
ASSISTANT_MODEL_TYPES = ("gemma4_assistant", "gemma4_unified_assistant")
ARCHITECTURES = (
    "Gemma4ForConditionalGeneration",
    "Gemma4ForCausalLM",
    *UNIFIED_ARCHITECTURES,
    *ASSISTANT_ARCHITECTURES,
)
MODEL_TYPES = ("gemma4", "gemma4_text", *UNIFIED_MODEL_TYPES, *ASSISTANT_MODEL_TYPES)


def is_unified(config: dict) -> bool:
    """The encoder-free 12B (``Gemma4Unified*``): its projector is ``gemma4uv``/``gemma4ua``."""
    root = ConfigView(config)
    archs = root.list("architectures") or []
    return any(a in UNIFIED_ARCHITECTURES for a in archs) or root.str("model_type") in UNIFIED_MODEL_TYPES


def is_assistant(config: dict) -> bool:
    """An assistant drafter (``Gemma4Assistant*``, ``Gemma4UnifiedAssistant*``)."""
    root = ConfigView(config)
    archs = root.list("architectures") or []
    return any(a in ASSISTANT_ARCHITECTURES for a in archs) or root.str("model_type") in ASSISTANT_MODEL_TYPES


@dataclass(frozen=True)
class Layout:
    """The text model's layout, validated: hyper-parameters, what each layer is, every tensor.

    The one description of a Gemma 4 text model that the converter (``plan_text``), the fit
    estimate (``g4cli.models.fit``) and the tiny-checkpoint factory (``quantize.tiny``) read.
    """

    n_layer: int
    n_embd: int
    n_ff: int
    n_head: int
    n_head_kv_swa: int
    n_head_kv_full: int
    head_dim_swa: int
    head_dim_full: int
    is_swa: tuple[bool, ...]
    sliding_window: int
    rms_eps: float
    n_ctx_train: int
    vocab_size: int
    vocab_size_ple: int
    ple_dim: int  # PLE (E2B/E4B); 0 = none
    n_kv_shared: int  # E2B/E4B
    double_wide_mlp: bool  # E2B
    k_eq_v: bool  # 26B-A4B, 31B
    rope_theta_full: float
    rope_theta_swa: float
    rotary_fraction_full: float
    rotary_fraction_swa: float
    softcap: float | None
    n_expert: int  # MoE (26B-A4B); 0 = dense
    n_expert_used: int
    n_ff_expert: int
    tied: bool
    backbone: int = 0  # assistant drafters: the target's hidden size; 0 = a target model

    @property
    def arch(self) -> str:
        return ASSISTANT_ARCH if self.backbone else ARCH

    @property
    def kv_start(self) -> int:
        """First layer that reuses another layer's KV cache (n_layer when none does)."""
        return self.n_layer - self.n_kv_shared

    def is_shared(self, il: int) -> bool:
        return il >= self.kv_start

    def head_dim(self, il: int) -> int:
        return self.head_dim_swa if self.is_swa[il] else self.head_dim_full

    def n_head_kv(self, il: int) -> int:
        return self.n_head_kv_swa if self.is_swa[il] else self.n_head_kv_full

    def ff(self, il: int) -> int:
        return self.n_ff * 2 if self.double_wide_mlp and self.is_shared(il) else self.n_ff

    def has_v(self, il: int) -> bool:
        return not (self.k_eq_v and not self.is_swa[il])

    def layer(self, il: int) -> LayerLayout:
        return LayerLayout(
            index=il,
            sliding=self.is_swa[il],
            shared_kv=self.is_shared(il),
            head_dim=self.head_dim(il),
            n_head_kv=self.n_head_kv(il),
            n_ff=self.ff(il),
            has_v=self.has_v(il),
        )

    @property
    def layers(self) -> list[LayerLayout]:
        return [self.layer(il) for il in range(self.n_layer)]

    def tensors(self) -> list[TensorSlot]:
        """Every tensor of the text GGUF (``rope_freqs`` excepted: generated), with its HF shape."""
        H, P, L = self.n_embd, self.ple_dim, self.n_layer
        out = [TensorSlot("token_embd.weight", (self.vocab_size, H)), TensorSlot("output_norm.weight", (H,))]
        if not self.tied:
            out.append(TensorSlot("output.weight", (self.vocab_size, H)))
        if self.backbone:  # assistant: [target embedding | target hidden] -> H, H -> next hidden
            B = self.backbone
            out += [
                TensorSlot("nextn.pre_projection.weight", (H, 2 * B)),
                TensorSlot("nextn.post_projection.weight", (B, H)),
            ]
        if P:  # PLE (E2B/E4B)
            out += [
                TensorSlot("per_layer_token_embd.weight", (self.vocab_size_ple, L * P)),
                TensorSlot("per_layer_model_proj.weight", (L * P, H)),
                TensorSlot("per_layer_proj_norm.weight", (P,)),
            ]
        for lay in self.layers:
            out += [TensorSlot(f"blk.{lay.index}.{key}", shape, lay.index) for key, shape in self._block(lay)]
        return out

    def _block(self, lay: LayerLayout) -> list[tuple[str, tuple[int, ...]]]:
        H, P, hd = self.n_embd, self.ple_dim, lay.head_dim
        q, kv, ff = self.n_head * hd, lay.n_head_kv * hd, lay.n_ff
        blk = [(f"{n}.weight", (H,)) for n in ("attn_norm", "post_attention_norm", "ffn_norm", "post_ffw_norm")]
        blk += [("attn_q.weight", (q, H)), ("attn_q_norm.weight", (hd,)), ("attn_output.weight", (H, q))]
        if not lay.shared_kv:  # layers that own a KV cache (KV-shared ones, E2B/E4B, read another's)
            blk += [("attn_k.weight", (kv, H)), ("attn_k_norm.weight", (hd,))]
            if lay.has_v:  # K=V full layers (26B, 31B) have no V
                blk.append(("attn_v.weight", (kv, H)))
        blk += [("ffn_gate.weight", (ff, H)), ("ffn_up.weight", (ff, H)), ("ffn_down.weight", (H, ff))]
        blk.append(("layer_output_scale.weight", (1,)))
        if P:  # PLE (E2B/E4B)
            blk += [("inp_gate.weight", (P, H)), ("proj.weight", (H, P)), ("post_norm.weight", (H,))]
        if self.n_expert:  # MoE (26B-A4B)
            E, Ie = self.n_expert, self.n_ff_expert
            blk += [
                ("ffn_gate_inp.weight", (E, H)),
                ("ffn_gate_inp.scale", (H,)),
                ("pre_ffw_norm_2.weight", (H,)),
                ("post_ffw_norm_1.weight", (H,)),
                ("post_ffw_norm_2.weight", (H,)),
                ("ffn_gate_up_exps.weight", (E, 2 * Ie, H)),
                ("ffn_down_exps.weight", (E, H, Ie)),
                ("ffn_down_exps.scale", (E,)),
            ]
        return blk


@dataclass(frozen=True)
class LayerLayout:
    """One text layer: attention type, KV sharing, widths."""

    index: int
    sliding: bool
    shared_kv: bool  # reads an earlier layer's KV cache (E2B/E4B)
    head_dim: int
    n_head_kv: int
    n_ff: int  # doubled on E2B's KV-shared layers
    has_v: bool  # False on K=V full-attention layers (26B-A4B, 31B)


@dataclass(frozen=True)
class TensorSlot:
    """A tensor of the text GGUF: its name, its shape in HF (row-major) order, its layer."""

    name: str
    shape: tuple[int, ...]
    layer: int | None = None


def text_config(config: dict) -> ConfigView:
    """The text part of a Gemma 4 config.json (checked to be Gemma 4)."""
    root = ConfigView(config)
    archs = root.list("architectures") or []
    model_type = root.str("model_type")
    if not any(a in ARCHITECTURES for a in archs) and model_type not in MODEL_TYPES:
        found = ", ".join(map(str, archs)) or model_type or "unknown"
        raise CheckpointError(
            f"config.json: architecture {found} is not Gemma 4 (expected {' or '.join(ARCHITECTURES)})"
        )
    return root.sub("text_config") or root


def _per_layer_override(tc: ConfigView, is_swa: list[bool], key: str) -> int | None:
    """A value transformers 5.23 folds into ``per_layer_config`` for full-attention layers."""
    plc = tc.sub("per_layer_config")
    if plc is None:
        return None
    values = set()
    for idx, sub in plc.data.items():
        try:
            il = int(idx)
        except ValueError:
            raise CheckpointError(f"config.json: per_layer_config key {idx!r} is not a layer index") from None
        if not isinstance(sub, dict):
            raise CheckpointError(f"config.json: per_layer_config.{idx} must be an object")
        if 0 <= il < len(is_swa) and not is_swa[il] and key in sub:
            values.add(ConfigView(sub, f"per_layer_config.{idx}.").int(key, minimum=1))
    if len(values) > 1:
        raise ConvertError(f"config.json: full-attention layers disagree on {key} ({sorted(values)})")
    return values.pop() if values else None


def _layer_types(tc: ConfigView) -> list[bool]:
    """Per layer: sliding (True) or full attention."""
    n_layer = tc.int("num_hidden_layers", minimum=1)
    layer_types = tc.list("layer_types")
    if layer_types is None:  # transformers' default: every 6th layer is full, the last always
        layer_types = ["full_attention" if (i + 1) % 6 == 0 else "sliding_attention" for i in range(n_layer)]
        layer_types[-1] = "full_attention"
    if len(layer_types) != n_layer or any(t not in ("sliding_attention", "full_attention") for t in layer_types):
        raise CheckpointError(f"config.json: layer_types must list {n_layer} of 'sliding_attention'/'full_attention'")
    return [t == "sliding_attention" for t in layer_types]


def _check_supported(tc: ConfigView) -> None:
    act = tc.str("hidden_activation", "gelu_pytorch_tanh")
    if act != "gelu_pytorch_tanh":
        raise ConvertError(f"config.json: hidden_activation {act!r} is not supported by llama.cpp's Gemma 4")
    if tc.bool("attention_bias"):
        raise ConvertError("config.json: attention_bias=true is not supported by llama.cpp's Gemma 4")
    if tc.str("use_bidirectional_attention") == "all":
        raise ConvertError("config.json: use_bidirectional_attention='all' is not supported by llama.cpp")


def _attention(tc: ConfigView, is_swa: list[bool]) -> dict[str, int | bool]:
    """Head counts and widths; full-attention layers may differ (K=V on 26B-A4B and 31B)."""
    head_dim = tc.int("head_dim", minimum=2)
    head_dim_full = (
        tc.int("global_head_dim", minimum=2)
        if tc.has("global_head_dim")
        else _per_layer_override(tc, is_swa, "head_dim") or (512 if tc.sub("per_layer_config") is None else head_dim)
    )
    n_head = tc.int("num_attention_heads", minimum=1)
    n_kv = tc.int("num_key_value_heads", minimum=1)
    k_eq_v = tc.bool("attention_k_eq_v")
    n_kv_full = n_kv
    if k_eq_v:
        if tc.has("num_global_key_value_heads"):
            n_kv_full = tc.int("num_global_key_value_heads", minimum=1)
        else:
            n_kv_full = _per_layer_override(tc, is_swa, "num_key_value_heads") or n_kv
    for heads_kv in (n_kv, n_kv_full):
        if n_head % heads_kv:
            raise CheckpointError(f"config.json: num_attention_heads {n_head} is not a multiple of {heads_kv}")
    return dict(
        n_head=n_head,
        n_head_kv_swa=n_kv,
        n_head_kv_full=n_kv_full,
        head_dim_swa=head_dim,
        head_dim_full=head_dim_full,
        k_eq_v=k_eq_v,
    )


def _rope(tc: ConfigView) -> dict[str, float]:
    """Sliding layers: default RoPE; full layers: "proportional" (a rotated fraction of each head)."""
    rope = tc.sub("rope_parameters")
    full = rope.sub("full_attention") if rope else None
    swa = rope.sub("sliding_attention") if rope else None
    full = full or ConfigView({"rope_type": "proportional", "partial_rotary_factor": 0.25, "rope_theta": 1e6})
    swa = swa or ConfigView({"rope_type": "default", "rope_theta": 1e4})
    if full.str("rope_type", "default") not in ("default", "proportional"):
        raise ConvertError(f"config.json: full-attention rope_type {full.str('rope_type')!r} is not supported")
    if swa.str("rope_type", "default") != "default":
        raise ConvertError(f"config.json: sliding-attention rope_type {swa.str('rope_type')!r} is not supported")
    if full.float("factor", 1.0) != 1.0:
        raise ConvertError("config.json: RoPE scaling factors are not supported")
    return dict(
        rope_theta_full=full.float("rope_theta", 1e6),
        rope_theta_swa=swa.float("rope_theta", 1e4),
        rotary_fraction_full=full.float("partial_rotary_factor", 1.0),
        rotary_fraction_swa=swa.float("partial_rotary_factor", 1.0),
    )


def text_params(config: dict) -> Layout:
    """Validate a Gemma 4 config.json and derive the text model's ``Layout``."""
    tc = text_config(config)
    is_swa = _layer_types(tc)
    _check_supported(tc)
    moe = tc.bool("enable_moe_block")
    softcap = tc.data.get("final_logit_softcapping")
    assistant = _assistant(config, tc, len(is_swa))
    hp = Layout(
        n_layer=len(is_swa),
        n_embd=tc.int("hidden_size", minimum=1),
        n_ff=tc.int("intermediate_size", minimum=1),
        is_swa=tuple(is_swa),
        sliding_window=tc.int("sliding_window", minimum=1),
        rms_eps=tc.float("rms_norm_eps", 1e-6),
        n_ctx_train=tc.int("max_position_embeddings", minimum=1),
        vocab_size=tc.int("vocab_size", minimum=1),
        vocab_size_ple=tc.int("vocab_size_per_layer_input", tc.data.get("vocab_size"), minimum=0),  # 0: assistants
        ple_dim=tc.int("hidden_size_per_layer_input", 0),
        n_kv_shared=len(is_swa) if assistant else tc.int("num_kv_shared_layers", 0),
        double_wide_mlp=tc.bool("use_double_wide_mlp"),
        softcap=tc.float("final_logit_softcapping") if softcap else None,
        n_expert=tc.int("num_experts", minimum=1) if moe else 0,
        n_expert_used=tc.int("top_k_experts", minimum=1) if moe else 0,
        n_ff_expert=tc.int("moe_intermediate_size", minimum=1) if moe else 0,
        tied=ConfigView(config).bool("tie_word_embeddings", True) and tc.bool("tie_word_embeddings", True),
        backbone=assistant,
        **_attention(tc, is_swa),
        **_rope(tc),
    )
    check_loadable(hp)
    return hp


def _assistant(config: dict, tc: ConfigView, n_layer: int) -> int:
    """An assistant's backbone (target) hidden size, validated as transformers 5.23's
    ``Gemma4AssistantConfig`` does (every layer KV-shared, no PLE, MoE or double-wide MLP); 0 for
    a target model."""
    if not is_assistant(config):
        return 0
    backbone = ConfigView(config).int("backbone_hidden_size", minimum=1)
    for key in ("hidden_size_per_layer_input", "vocab_size_per_layer_input"):
        if tc.int(key, 0):
            raise CheckpointError(f"config.json: an assistant has no per-layer embeddings ({key} must be 0)")
    if tc.bool("enable_moe_block") or tc.bool("use_double_wide_mlp"):
        raise CheckpointError("config.json: an assistant has no experts and no double-wide MLP")
    shared = tc.int("num_kv_shared_layers", 0)
    if shared not in (0, n_layer):  # transformers sets 0 to all; anything else it refuses
        raise CheckpointError(f"config.json: every assistant layer must be KV-shared ({shared} of {n_layer})")
    if backbone == tc.int("hidden_size", minimum=1):  # gemma4-assistant.cpp:30-32 refuses it
        raise ConvertError("config.json: backbone_hidden_size equals hidden_size; llama.cpp cannot load that")
    return backbone


def check_loadable(hp: Layout) -> None:
    """Refuse layouts that llama.cpp would abort on (an assert kills the loading process)."""
    if all(hp.is_swa) or not any(hp.is_swa):
        raise ConvertError("config.json: llama.cpp needs at least one sliding and one full-attention layer")
    if hp.n_expert and hp.n_expert_used > hp.n_expert:
        raise CheckpointError("config.json: top_k_experts exceeds num_experts")
    if not 0 < hp.rotary_fraction_full <= 1 or not 0 < hp.rotary_fraction_swa <= 1:
        raise ConvertError("config.json: partial_rotary_factor must be in (0, 1]")
    if hp.n_kv_shared == 0 or hp.backbone:  # assistants read the target's cache (its last two layers)
        return
    start = hp.kv_start
    # llama.cpp: shared full layers reuse layer kv_start-1, shared sliding layers kv_start-2
    if start < 2 or hp.is_swa[start - 1] or not hp.is_swa[start - 2]:
        raise ConvertError(
            f"config.json: num_kv_shared_layers={hp.n_kv_shared} with this layer_types cannot be "
            f"loaded by llama.cpp (layer {start - 1} must be full attention and layer {start - 2} "
            "sliding; llama.cpp would abort)"
        )


# --- GGUF metadata ---------------------------------------------------------------------------

U32, F32, BOOL = GGUFValueType.UINT32, GGUFValueType.FLOAT32, GGUFValueType.BOOL


def gguf_kv(hp: Layout) -> list[tuple[str, object, GGUFValueType, GGUFValueType | None]]:
    """(key, value, type, array element type) for every gemma4.* key llama.cpp reads."""
    L, A = Keys.LLM, Keys.Attention

    def _k(template: str) -> str:
        return template.format(arch=hp.arch)

    kv: list[tuple[str, object, GGUFValueType, GGUFValueType | None]] = [
        (_k(L.BLOCK_COUNT), hp.n_layer, U32, None),
        (_k(L.CONTEXT_LENGTH), hp.n_ctx_train, U32, None),
        (_k(L.EMBEDDING_LENGTH), hp.n_embd, U32, None),
        (_k(A.HEAD_COUNT), hp.n_head, U32, None),
        (_k(A.KEY_LENGTH), hp.head_dim_full, U32, None),
        (_k(A.VALUE_LENGTH), hp.head_dim_full, U32, None),
        (_k(A.KEY_LENGTH_SWA), hp.head_dim_swa, U32, None),
        (_k(A.VALUE_LENGTH_SWA), hp.head_dim_swa, U32, None),
        (_k(A.LAYERNORM_RMS_EPS), hp.rms_eps, F32, None),
        (_k(A.SLIDING_WINDOW), hp.sliding_window, U32, None),
        # must be an array: a scalar pattern fails the loader
        (_k(A.SLIDING_WINDOW_PATTERN), list(hp.is_swa), GGUFValueType.ARRAY, BOOL),
        (_k(A.SHARED_KV_LAYERS), hp.n_kv_shared, U32, None),  # E2B/E4B
        (_k(L.EMBD_LENGTH_PER_LAYER_INP), hp.ple_dim, U32, None),  # PLE; 0 = none, but required
        # full layers rotate all dims; rope_freqs freezes the unrotated ones (proportional RoPE)
        (_k(Keys.Rope.DIMENSION_COUNT), hp.head_dim_full, U32, None),
        (_k(Keys.Rope.DIMENSION_COUNT_SWA), int(hp.head_dim_swa * hp.rotary_fraction_swa), U32, None),
        (_k(Keys.Rope.FREQ_BASE), hp.rope_theta_full, F32, None),
        (_k(Keys.Rope.FREQ_BASE_SWA), hp.rope_theta_swa, F32, None),
    ]
    ffs = [hp.ff(il) for il in range(hp.n_layer)]
    if len(set(ffs)) == 1:
        kv.append((_k(L.FEED_FORWARD_LENGTH), ffs[0], U32, None))
    else:  # double-wide MLP on the KV-shared layers (E2B)
        kv.append((_k(L.FEED_FORWARD_LENGTH), ffs, GGUFValueType.ARRAY, U32))
    if hp.n_head_kv_swa == hp.n_head_kv_full:
        kv.append((_k(A.HEAD_COUNT_KV), hp.n_head_kv_swa, U32, None))
    else:  # per-layer KV heads (26B-A4B, 31B)
        heads = [hp.n_head_kv(il) for il in range(hp.n_layer)]
        kv.append((_k(A.HEAD_COUNT_KV), heads, GGUFValueType.ARRAY, U32))
    # always written: llama.cpp defaults to 30 when absent; 0 switches the softcap off
    kv.append((_k(L.FINAL_LOGIT_SOFTCAPPING), hp.softcap or 0.0, F32, None))
    if hp.n_expert:  # MoE (26B-A4B)
        kv.append((_k(L.EXPERT_COUNT), hp.n_expert, U32, None))
        kv.append((_k(L.EXPERT_USED_COUNT), hp.n_expert_used, U32, None))
        kv.append((_k(L.EXPERT_FEED_FORWARD_LENGTH), hp.n_ff_expert, U32, None))
    if hp.backbone:  # assistant: conversion/gemma.py:948-951; read at llama-model.cpp:1325-1329
        kv.append((_k(L.EMBEDDING_LENGTH_OUT), hp.backbone, U32, None))
        kv.append((_k(L.NEXTN_PREDICT_LAYERS), hp.n_layer, U32, None))
    return kv


def rope_freqs(hp: Layout) -> np.ndarray:
    """Frequency factors for full layers: 1 for rotated pairs, 1e30 freezes the others."""
    n_pairs = hp.head_dim_full // 2
    n_rot = int(hp.rotary_fraction_full * hp.head_dim_full // 2)
    return np.array([1.0] * n_rot + [1e30] * (n_pairs - n_rot), dtype=np.float32)


# --- tensors ---------------------------------------------------------------------------------


def expected_shapes(hp: Layout) -> dict[str, tuple[int, ...]]:
    """Every GGUF tensor the checkpoint must provide, with its HF (row-major) shape."""
    return {t.name: t.shape for t in hp.tensors()}


def plan_text(hp: Layout, tensors: dict[str, TensorRef], n_vocab: int, outtype: str) -> Plan:
    """Decide, for every source tensor, where it goes; refuse unknown, missing or misshapen ones."""
    if n_vocab > hp.vocab_size:
        raise ConvertError(f"tokenizer has {n_vocab} tokens but the embedding only {hp.vocab_size} rows")
    expected = expected_shapes(hp)
    found: dict[str, TensorRef] = {}
    plan = Plan(tensors=[])
    for name, ref in tensors.items():
        rule = tensor_map.drop_rule(name)
        if rule is None and name.endswith("lm_head.weight") and hp.tied:
            rule = tensor_map.TIED_HEAD_RULE
        mapped = tensor_map.gguf_name(name) if rule is None else None
        if mapped is not None and mapped[1] is not None and mapped[1] >= hp.n_layer:
            raise CheckpointError(f"tensor {name!r}: layer {mapped[1]} but the config has {hp.n_layer} layers")
        if mapped is not None and mapped[0] not in expected and mapped[1] is not None and hp.is_shared(mapped[1]):
            if re.search(r"\.attn_(k|v|k_norm|v_norm)\.weight$", mapped[0]):
                rule = tensor_map.SHARED_KV_RULE  # E2B/E4B original checkpoints carry them
        if rule is not None:
            plan.dropped.append((name, rule))
            continue
        if mapped is None or mapped[0] not in expected:
            raise ConvertError(f"unknown tensor {name!r} in {ref.path.name}: no rule converts or drops it")
        gname = mapped[0]
        if gname in found:
            raise ConvertError(f"tensors {found[gname].name!r} and {name!r} both map to {gname}")
        if ref.shape != expected[gname]:
            raise ConvertError(
                f"tensor {name!r} in {ref.path.name} has shape {list(ref.shape)}, "
                f"expected {list(expected[gname])} from config.json"
            )
        if ref.dtype not in FLOAT_DTYPES:
            raise ConvertError(f"tensor {name!r} has dtype {ref.dtype}; only F32, F16 and BF16 are supported")
        found[gname] = ref
    missing = [g for g in expected if g not in found]
    if missing:
        raise ConvertError(f"checkpoint is missing tensor {missing[0]} (and {len(missing) - 1} more)")

    # llama.cpp's loader order: globals, then rope_freqs, then blocks (any order loads; keep it tidy)
    for gname, shape in expected.items():
        if gname == "token_embd.weight":
            shape = (n_vocab, shape[1])  # rows beyond the tokenizer are never used
        plan.tensors.append(OutTensor(gname, shape, output_dtype(gname, shape, outtype), source=found[gname]))
    freqs = rope_freqs(hp)
    plan.tensors.append(OutTensor("rope_freqs.weight", freqs.shape, "F32", data=freqs))
    return plan
