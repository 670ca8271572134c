"""Tiny random-weight Gemma 4 checkpoints in the exact layout of the real releases.

``make_checkpoint(dir, "e2b")`` writes config.json (fields as transformers 5.23 saves them),
``model*.safetensors`` (names under ``model.language_model.`` / ``model.vision_tower.`` /
``model.audio_tower.``; the 12B's ``model.vision_embedder.`` and projections), tokenizer.json,
tokenizer_config.json, chat_template.jinja, generation_config.json and processor_config.json.
numpy + JSON only, so the product itself can use it (``g4 doctor``); tests load the very same
files with transformers.

Initialisation is chosen so that parity tests can fail (default random init makes them
meaningless: near one-hot attention, noise-decided expert routing): token
embeddings with std 1/sqrt(hidden), final norm ~3, q/k norms ~head_dim^-0.25, router std 2,
``layer_scalar`` U(0.5, 1), clip bounds of ~±2 so the clamps act.
"""

from __future__ import annotations

import dataclasses
import math
import re
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from g4cli import fsutil
from quantize import gemma4, tensor_map, tiny_tokenizer
from quantize import safetensors_io as st
from quantize.mmproj import audio_tensors, unified_layout, vision_tensors
from quantize.tiny_families import (
    ALIASES,
    AUDIO,
    DRAFTER_CENTROIDS,
    DRAFTER_FROM_TARGET,
    DRAFTER_ORDERED,
    DRAFTER_TEXT,
    DRAFTER_TEXT_REAL,
    FAMILIES,
    NOT_UNIFIED_TEXT,
    TEXT_DEFAULTS,
    UNIFIED_AUDIO,
    UNIFIED_VISION,
    VISION,
    F,
)

# --- config.json ----------------------------------------------------------------------------


def _text_config(spec: dict, legacy: bool, unified: bool = False) -> dict:
    tc = {**TEXT_DEFAULTS, **spec}
    global_hd = tc.pop("global_head_dim")
    global_kv = tc.pop("num_global_key_value_heads", None)
    tc.setdefault("vocab_size_per_layer_input", tc["vocab_size"])
    if unified:  # Gemma4UnifiedTextConfig: no PLE, no MoE fields
        tc = {k: v for k, v in tc.items() if k not in NOT_UNIFIED_TEXT}
        tc["model_type"] = "gemma4_unified_text"
    if legacy:  # how configs looked before transformers folded these into per_layer_config
        tc["global_head_dim"] = global_hd
        if global_kv is not None:
            tc["num_global_key_value_heads"] = global_kv
    else:
        override = {"head_dim": global_hd}
        if tc["attention_k_eq_v"] and global_kv is not None and global_kv != tc["num_key_value_heads"]:
            override["num_key_value_heads"] = global_kv
        width = len(str(len(tc["layer_types"]) - 1))  # transformers zero-pads the layer index
        tc["per_layer_config"] = {f"{i:0{width}d}": dict(override) for i, t in enumerate(tc["layer_types"]) if t == F}
    return dict(sorted(tc.items()))


def _vision_config(kind: str | None) -> dict | None:
    if not kind:
        return None
    if kind == "unified":  # 12B: Gemma4UnifiedVisionConfig
        vc = dict(initializer_range=0.02, model_type="gemma4_unified_vision", rms_norm_eps=1e-06, **UNIFIED_VISION)
        return dict(sorted(vc.items()))
    vc = dict(
        attention_bias=False,
        attention_dropout=0.0,
        hidden_activation="gelu_pytorch_tanh",
        initializer_range=0.02,
        max_position_embeddings=131072,
        model_type="gemma4_vision",
        patch_size=16,
        pooling_kernel_size=3,
        rms_norm_eps=1e-06,
        rope_parameters={"rope_theta": 100.0, "rope_type": "axial"},
        **VISION[kind],
    )
    vc["num_key_value_heads"] = vc["num_attention_heads"]
    return dict(sorted(vc.items()))


def _audio_config(kind: object) -> dict | None:
    if not kind:
        return None
    if kind == "unified":  # 12B: Gemma4UnifiedAudioConfig
        ac = dict(initializer_range=0.02, model_type="gemma4_unified_audio", rms_norm_eps=1e-06, **UNIFIED_AUDIO)
        return dict(sorted(ac.items()))
    ac = dict(
        attention_chunk_size=12,
        attention_context_left=13,
        attention_context_right=0,
        attention_invalid_logits_value=-1000000000.0,
        attention_logit_cap=50.0,
        conv_kernel_size=5,
        gradient_clipping=10000000000.0,
        hidden_act="silu",
        initializer_range=0.02,
        model_type="gemma4_audio",
        residual_weight=0.5,
        rms_norm_eps=1e-06,
        subsampling_conv_channels=[128, 32],
        use_clipped_linears=True,
        **AUDIO[kind],
    )
    return dict(sorted(ac.items()))


def make_config(family: str, *, legacy: bool = False, dtype: str = "F32", text: dict | None = None) -> dict:
    fam = FAMILIES[ALIASES.get(family, family)]
    unified = fam.get("unified", False)  # 12B
    cfg = {
        "architectures": ["Gemma4UnifiedForConditionalGeneration" if unified else "Gemma4ForConditionalGeneration"],
        "audio_config": _audio_config(fam["audio"]),
        **tiny_tokenizer.MEDIA_IDS,
        "dtype": {"F32": "float32", "BF16": "bfloat16", "F16": "float16"}[dtype],
        "initializer_range": 0.02,
        "model_type": "gemma4_unified" if unified else "gemma4",
        "text_config": _text_config({**fam["text"], **(text or {})}, legacy, unified),
        "tie_word_embeddings": True,
        "transformers_version": "5.23.0",
        "vision_config": _vision_config(fam["vision"]),
    }
    return dict(sorted(cfg.items()))


# --- tensor names and shapes (as transformers 5.23 names its modules) ------------------------


def text_tensors(cfg: dict, layout: gemma4.Layout | None = None) -> list[tuple[str, tuple[int, ...]]]:
    """The text model's tensors under their HF names, from the converter's own ``Layout``."""
    hp = layout or gemma4.text_params(cfg)
    return [(tensor_map.hf_name(t.name), t.shape) for t in hp.tensors()]


def all_tensors(cfg: dict) -> list[tuple[str, tuple[int, ...]]]:
    tc = cfg["text_config"]
    out = text_tensors(cfg)
    if gemma4.is_unified(cfg):  # 12B: the embedders of raw patches and waveform frames
        return out + unified_layout(cfg)
    if cfg.get("vision_config"):
        out += vision_tensors(cfg["vision_config"], tc["hidden_size"])
    if cfg.get("audio_config"):
        out += audio_tensors(cfg["audio_config"], tc["hidden_size"])
    return out


# --- values ---------------------------------------------------------------------------------


def init_params(name: str, shape: tuple[int, ...], tc: dict) -> tuple[str, float, float]:
    """(distribution, a, b) for a tensor: ("normal", 0, std) or ("uniform", low, high)."""
    leaf = name.rsplit(".", 1)[-1]
    if name.startswith("model.vision_embedder."):  # 12B: LayerNorms with small biases, a strong position table
        if leaf == "bias":
            return "normal", 0.0, 0.1
        if name.endswith("pos_embedding"):
            return "normal", 0.0, 0.5
        if "_ln" in name or "_norm" in name:
            return "uniform", 0.8, 1.2
    if leaf in ("input_min", "output_min"):
        return "uniform", -2.5, -1.5
    if leaf in ("input_max", "output_max"):
        return "uniform", 1.5, 2.5
    if leaf == "layer_scalar":
        return "uniform", 0.5, 1.0
    if leaf == "per_expert_scale":
        return "uniform", 0.5, 1.5
    if name.endswith("router.proj.weight"):
        return "normal", 0.0, 2.0
    if name in ("model.language_model.norm.weight", "model.norm.weight"):  # target, assistant
        return "uniform", 2.8, 3.2
    text_norm = name.startswith(("model.language_model.", "model.layers."))  # target, assistant
    if text_norm and leaf == "weight" and ("q_norm" in name or "k_norm" in name):
        s = shape[0] ** -0.25
        return "uniform", 0.8 * s, 1.2 * s
    if "norm" in name or leaf in ("scale", "std_scale"):
        return "uniform", 0.8, 1.2
    if leaf in ("bias", "std_bias", "per_dim_scale"):
        return "normal", 0.0, 0.1
    if name.endswith("embed_tokens.weight"):
        return "normal", 0.0, shape[1] ** -0.5
    if name.endswith("embed_tokens_per_layer.weight"):
        return "normal", 0.0, max(tc["hidden_size_per_layer_input"], 1) ** -0.5
    if name.endswith("position_embedding_table"):
        return "normal", 0.0, 0.3
    fan_in = math.prod(shape[1:]) if len(shape) >= 2 else 1
    if name.endswith(("experts.gate_up_proj", "experts.down_proj")):
        fan_in = shape[-1]
    return "normal", 0.0, fan_in**-0.5


_POOL_SIZE = 1 << 22


def _values(name: str, shape: tuple[int, ...], tc: dict, seed: int, chunk: int) -> Iterator[np.ndarray]:
    """float32 values for a tensor, ``chunk`` elements at a time, deterministic from (seed, name)."""
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
    kind, a, b = init_params(name, shape, tc)
    n = math.prod(shape)
    pool = None
    if n > 4 * _POOL_SIZE:  # huge tensors (benchmarks): slide over one random pool, much faster
        base = (
            rng.standard_normal(_POOL_SIZE, dtype=np.float32)
            if kind == "normal"
            else rng.random(_POOL_SIZE, dtype=np.float32)
        )
        pool = np.concatenate([base, base])
    done = 0
    while done < n:
        m = min(chunk, n - done)
        if pool is not None:
            parts, left = [], m
            while left:
                k = min(left, _POOL_SIZE)
                start = int(rng.integers(0, _POOL_SIZE))
                parts.append(pool[start : start + k])
                left -= k
            x = np.concatenate(parts) if len(parts) > 1 else parts[0].copy()
        else:
            x = rng.standard_normal(m, dtype=np.float32) if kind == "normal" else rng.random(m, dtype=np.float32)
        yield (x * b + a) if kind == "normal" else (a + (b - a) * x).astype(np.float32)
        done += m


def make_checkpoint(
    out_dir: Path | str,
    family: str = "e2b",
    *,
    seed: int = 0,
    dtype: str = "F32",
    legacy_config: bool = False,
    kv_on_shared_layers: bool = False,
    shard_bytes: int | None = None,
    text: dict | None = None,
    vision: bool = True,
    audio: bool = True,
    towers: str | None = None,
    only: list[str] | None = None,
    endless: bool = False,
    suppress_tokens: tuple[int, ...] | None = None,
    qat: bool = False,
) -> Path:
    """Write a tiny (or, for ``e2b-real``, full-size) random Gemma 4 checkpoint to ``out_dir``.

    ``legacy_config`` writes ``global_head_dim`` instead of transformers 5.23's
    ``per_layer_config``; ``kv_on_shared_layers`` adds the unused K/V weights that original
    checkpoints carry on KV-shared layers; ``shard_bytes`` splits the weights into shards with
    an index; ``text`` overrides text_config fields; ``only`` keeps tensors whose names contain
    one of the given substrings (benchmark slices); ``towers="e2b"`` gives the vision and audio
    towers the real E2B shapes (benchmarks); ``endless`` zeroes the embeddings of the
    end-of-generation tokens, so that greedy decoding never stops by itself (tests that
    interrupt a long answer). ``suppress_tokens`` replaces the family's generation_config
    ``suppress_tokens`` (the 12B has some). ``qat`` puts the text model's linear layers on a
    quantization-aware-training grid, as Google's ``…-qat-q4_0-unquantized`` releases: per
    32-weight block a BF16 scale times int4 codes (``qat_grid``); write it with ``dtype="BF16"``.
    """
    family = ALIASES.get(family, family)
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; choose from {', '.join(FAMILIES)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg = make_config(family, legacy=legacy_config, dtype=dtype, text=text)
    if towers:
        cfg["vision_config"], cfg["audio_config"] = _vision_config(towers), _audio_config(towers)
    if not vision:
        cfg["vision_config"] = None
    if not audio:
        cfg["audio_config"] = None
    tc = cfg["text_config"]
    tensors = all_tensors(cfg)
    if kv_on_shared_layers and tc["num_kv_shared_layers"]:  # as the original releases carry them
        unshared = dataclasses.replace(gemma4.text_params(cfg), n_kv_shared=0)
        have = {n for n, _ in tensors}
        tensors += [(n, s) for n, s in text_tensors(cfg, unshared) if n not in have]
    if only:
        tensors = [(n, s) for n, s in tensors if any(o in n for o in only)]

    _write_weights(out, [st.TensorSpec(n, dtype, tuple(s)) for n, s in tensors], tc, seed, shard_bytes, endless, qat)
    suppress = FAMILIES[family].get("suppress_tokens") if suppress_tokens is None else list(suppress_tokens)
    _write_files(out, cfg, suppress)
    return out


def make_drafter(out_dir: Path | str, family: str = "e2b", *, seed: int = 0, dtype: str = "F32") -> Path:
    """Write the assistant drafter matched to ``make_checkpoint(family)``: config.json as
    transformers 5.23 saves a ``Gemma4AssistantConfig`` (``Gemma4UnifiedAssistantConfig`` for the
    12B), ``model.safetensors`` under its module names (``model.layers.N``, ``pre_projection``,
    ``post_projection``, E2B/E4B's ``masked_embedding.*``), and the tokenizer files."""
    family = ALIASES.get(family, family)
    fam = FAMILIES[family]
    unified = fam.get("unified", False)  # 12B
    target = make_config(family)["text_config"]
    spec = {**(DRAFTER_TEXT_REAL if family == "e2b-real" else DRAFTER_TEXT)}
    spec.update({k: target[k] for k in DRAFTER_FROM_TARGET if k in target})
    spec["global_head_dim"] = fam["text"]["global_head_dim"]
    if "num_global_key_value_heads" in fam["text"]:
        spec["num_global_key_value_heads"] = fam["text"]["num_global_key_value_heads"]
    tc = _text_config(spec, legacy=False, unified=unified)
    tc["num_kv_shared_layers"] = tc["num_hidden_layers"]  # as Gemma4AssistantConfig forces it
    ordered = family in DRAFTER_ORDERED
    cfg = {
        "architectures": ["Gemma4UnifiedAssistantForCausalLM" if unified else "Gemma4AssistantForCausalLM"],
        "backbone_hidden_size": target["hidden_size"],
        **DRAFTER_CENTROIDS,
        "dtype": {"F32": "float32", "BF16": "bfloat16", "F16": "float16"}[dtype],
        "model_type": "gemma4_unified_assistant" if unified else "gemma4_assistant",
        "text_config": tc,
        "tie_word_embeddings": True,
        "transformers_version": "5.23.0",
        "use_ordered_embeddings": ordered,
    }
    cfg = dict(sorted(cfg.items()))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    layout = gemma4.text_params(cfg)
    specs = [st.TensorSpec(tensor_map.hf_name(t.name, "model."), dtype, t.shape) for t in layout.tensors()]
    n_c, H, V = DRAFTER_CENTROIDS["num_centroids"], tc["hidden_size"], tc["vocab_size"]
    if ordered:  # E2B/E4B: the centroid head (llama.cpp drops it) and its token permutation
        specs += [st.TensorSpec("masked_embedding.centroids.weight", dtype, (n_c, H))]
        specs += [st.TensorSpec("masked_embedding.token_ordering", "I64", (V,))]
    chunk = st.CHUNK_BYTES // 4

    def fill(spec: st.TensorSpec) -> Iterator[np.ndarray]:
        if spec.dtype == "I64":
            yield np.random.default_rng([seed, 7]).permutation(V).astype(np.int64)
            return
        for x in _values(spec.name, spec.shape, tc, seed, chunk):
            yield st.convert_raw(x, "F32", spec.dtype)

    st.write(out / "model.safetensors", specs, fill, metadata={"format": "pt"})
    _write_files(out, cfg)
    return out


def _shards(specs: list[st.TensorSpec], shard_bytes: int | None) -> list[list[st.TensorSpec]]:
    shards: list[list[st.TensorSpec]] = [[]]
    size = 0
    for spec in specs:
        if shard_bytes and shards[-1] and size + spec.nbytes > shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(spec)
        size += spec.nbytes
    return shards


# the text tensors QAT trains for Q4_0 (linear layers; not embeddings, norms, router, PLE projection)
QAT_TRAINED = re.compile(
    r"language_model\.layers\.\d+\.(self_attn\.[qkvo]_proj\.weight|mlp\.\w+_proj\.weight|experts\.\w+"
    r"|per_layer_input_gate\.weight|per_layer_projection\.weight)$"
)


def qat_grid(x: np.ndarray, name: str, seed: int) -> np.ndarray:
    """``x`` (whole 32-blocks) moved onto a QAT grid: per block ``bf16(s * q)``, ``s`` a BF16 scale
    (the block's largest magnitude over 5.5-8, so that many blocks never reach code -8) and
    ``q = clip(rint(x / s), -8, 7)``; one block in 64 gets a scale below F16's normal range."""
    from quantize.qat import bf16

    rng = np.random.default_rng([seed, zlib.crc32(name.encode()), len(x)])
    blocks = x.reshape(-1, 32)
    s = bf16(np.abs(blocks).max(axis=1) / rng.uniform(5.5, 8.0, len(blocks)).astype(np.float32))
    tiny_scale = rng.random(len(blocks)) < 1 / 64
    s[tiny_scale] = bf16(s[tiny_scale] * np.float32(1e-3))
    q = np.clip(np.rint(blocks / np.where(s > 0, s, 1)[:, None]), -8, 7)
    return bf16(s[:, None] * q).reshape(-1)


def _write_weights(
    out: Path,
    specs: list[st.TensorSpec],
    tc: dict,
    seed: int,
    shard_bytes: int | None,
    endless: bool,
    qat: bool = False,
) -> None:
    """The safetensors shards (and their index when there are several), values streamed."""
    shards = _shards(specs, shard_bytes)
    chunk = st.CHUNK_BYTES // 4
    stop_ids = [i for i, t in tiny_tokenizer.SPECIALS.items() if t in ("<eos>", "<turn|>", "<|tool_response>")]

    def fill(spec: st.TensorSpec) -> Iterator[np.ndarray]:
        done = 0
        for x in _values(spec.name, spec.shape, tc, seed, chunk):
            if endless and spec.name.endswith("language_model.embed_tokens.weight"):
                width = spec.shape[1]
                for row in stop_ids:  # rows of this chunk that belong to a stop token
                    lo, hi = row * width - done, (row + 1) * width - done
                    if hi > 0 and lo < len(x):
                        x[max(lo, 0) : min(hi, len(x))] = 0.0
            if qat and QAT_TRAINED.search(spec.name):
                x = qat_grid(x, spec.name, seed)
            done += len(x)
            yield st.convert_raw(x, "F32", spec.dtype)

    names = (
        ["model.safetensors"]
        if len(shards) == 1
        else [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    )
    for fname, shard in zip(names, shards):
        st.write(out / fname, shard, fill, metadata={"format": "pt"})
    if len(shards) > 1:
        index = {
            "metadata": {"total_size": sum(s.nbytes for s in specs)},
            "weight_map": {s.name: f for f, shard in zip(names, shards) for s in shard},
        }
        _write_json(out / "model.safetensors.index.json", index)


def _write_files(out: Path, cfg: dict, suppress_tokens: list[int] | None = None) -> None:
    """config.json, the tokenizer files, the chat template, generation and processor configs."""
    tc = cfg["text_config"]
    tokenizer, tok_config = tiny_tokenizer.build(tc["vocab_size"])
    _write_json(out / "config.json", cfg)
    _write_json(out / "tokenizer.json", tokenizer, compact=tc["vocab_size"] > 4096)
    _write_json(out / "tokenizer_config.json", tok_config)
    (out / "chat_template.jinja").write_text(tiny_tokenizer.CHAT_TEMPLATE, encoding="utf-8")
    generation = {"bos_token_id": 2, "eos_token_id": [1, 106], "pad_token_id": 0}
    if suppress_tokens:
        generation["suppress_tokens"] = suppress_tokens
    _write_json(out / "generation_config.json", {**generation, "transformers_version": "5.23.0"})
    if cfg.get("vision_config") or cfg.get("audio_config"):
        _write_json(out / "processor_config.json", processor_config(cfg))


def processor_config(cfg: dict) -> dict:
    """processor_config.json as the releases ship it (image mean/std 0/1: Gemma 4 scales itself)."""
    if gemma4.is_unified(cfg):
        return _unified_processor_config(cfg)
    vc = cfg.get("vision_config") or {}
    out: dict = {
        "image_processor": {
            "do_normalize": False,
            "do_rescale": True,
            "do_resize": True,
            "image_mean": [0.0, 0.0, 0.0],
            "image_std": [1.0, 1.0, 1.0],
            "image_processor_type": "Gemma4ImageProcessor",
            "max_soft_tokens": 280,
            "patch_size": vc.get("patch_size", 16),
            "pooling_kernel_size": vc.get("pooling_kernel_size", 3),
            "rescale_factor": 1 / 255,
        },
        "processor_class": "Gemma4Processor",
    }
    if cfg.get("audio_config"):
        out["feature_extractor"] = {
            "feature_extractor_type": "Gemma4AudioFeatureExtractor",
            "feature_size": 128,
            "sampling_rate": 16000,
        }
    return out


def _unified_processor_config(cfg: dict) -> dict:
    """12B: raw 48-px patches (rescaled only) and raw 640-sample frames."""
    out: dict = {"processor_class": "Gemma4UnifiedProcessor"}
    vc = cfg.get("vision_config")
    if vc:
        out["image_processor"] = {
            "do_normalize": False,
            "do_rescale": True,
            "do_resize": True,
            "image_mean": [0.0, 0.0, 0.0],
            "image_std": [1.0, 1.0, 1.0],
            "image_processor_type": "Gemma4UnifiedImageProcessor",
            "max_soft_tokens": 280,
            "patch_size": vc["patch_size"],
            "pooling_kernel_size": vc["pooling_kernel_size"],
            "rescale_factor": 1 / 255,
        }
    if cfg.get("audio_config"):
        out["feature_extractor"] = {
            "audio_samples_per_token": cfg["audio_config"]["audio_embed_dim"],
            "feature_extractor_type": "Gemma4UnifiedAudioFeatureExtractor",
            "feature_size": cfg["audio_config"]["audio_embed_dim"],
            "sampling_rate": 16000,
        }
    return out


def _write_json(path: Path, data: object, compact: bool = False) -> None:
    fsutil.write_json(path, data, indent=None if compact else 2)
