"""The multimodal projector file (mmproj, arch ``clip``) from Gemma 4's vision and audio towers.

Vision: projector ``gemma4v`` (E2B/E4B, 26B-A4B, 31B); audio: ``gemma4a`` (E2B/E4B). The 12B
"unified" model has no towers: ``gemma4uv`` projects raw 48x48 pixel patches (LayerNorm, Linear,
LayerNorm, a factorized x/y position table, LayerNorm, RMSNorm, Linear) and ``gemma4ua`` raw
640-sample waveform frames (RMSNorm, Linear). Transforms, each a pure function tested on
``arange`` arrays: the patch embedding becomes a conv kernel, clipped-linear bounds become
1-element tensors, the audio ``per_dim_scale`` gets its softplus, the depthwise conv loses its
singleton axis; for the 12B the pixel-facing weights are reordered from HWC to CHW (ggml's
im2col order) and the position table becomes an x table and a y table. Conv weights and the
position tables stay F32.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from gguf import GGUFValueType

from g4cli.errors import CheckpointError, ConvertError
from quantize import tensor_map
from quantize.checkpoint import Checkpoint, ConfigView, read_json
from quantize.gemma4 import OutTensor, Plan, is_unified, text_config
from quantize.safetensors_io import FLOAT_DTYPES

BLOCK_NORMS = ("input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm", "post_feedforward_layernorm")
N_MEL = 128  # Gemma 4's audio front end: 128 mel bins at 16 kHz
FRAME = 640  # 12B: samples per audio token (40 ms at 16 kHz), fixed in llama.cpp's gemma4ua
MMPROJ_TYPES = ("F16", "F32", "Q8_0")


# --- the towers' layout (as transformers 5.23 names and shapes them) -------------------------


def _clippable(prefix: str, out_f: int, in_f: int, clipped: bool) -> list[tuple[str, tuple[int, ...]]]:
    bounds = [(f"{prefix}.{b}", ()) for b in ("input_min", "input_max", "output_min", "output_max")] if clipped else []
    return [*bounds, (f"{prefix}.linear.weight", (out_f, in_f))]


def vision_tensors(vc: dict, text_hidden: int) -> list[tuple[str, tuple[int, ...]]]:
    Hv, hd, ff, clip = vc["hidden_size"], vc["head_dim"], vc["intermediate_size"], vc["use_clipped_linears"]
    p = "model.vision_tower."
    out = [
        (p + "patch_embedder.position_embedding_table", (2, vc["position_embedding_size"], Hv)),
        (p + "patch_embedder.input_proj.weight", (Hv, 3 * vc["patch_size"] ** 2)),
    ]
    for i in range(vc["num_hidden_layers"]):
        b = f"{p}encoder.layers.{i}."
        for n in ("q_proj", "k_proj", "v_proj"):
            out += _clippable(b + "self_attn." + n, vc["num_attention_heads"] * hd, Hv, clip)
        out += _clippable(b + "self_attn.o_proj", Hv, vc["num_attention_heads"] * hd, clip)
        out += [(b + "self_attn.q_norm.weight", (hd,)), (b + "self_attn.k_norm.weight", (hd,))]
        out += _clippable(b + "mlp.gate_proj", ff, Hv, clip) + _clippable(b + "mlp.up_proj", ff, Hv, clip)
        out += _clippable(b + "mlp.down_proj", Hv, ff, clip)
        out += [(b + n + ".weight", (Hv,)) for n in BLOCK_NORMS]
    if vc["standardize"]:
        out += [(p + "std_bias", (Hv,)), (p + "std_scale", (Hv,))]
    out.append(("model.embed_vision.embedding_projection.weight", (text_hidden, Hv)))
    return out


def audio_tensors(ac: dict, text_hidden: int) -> list[tuple[str, tuple[int, ...]]]:
    Ha, c0, c1 = ac["hidden_size"], *ac["subsampling_conv_channels"]
    clip = ac.get("use_clipped_linears", True)
    hd = Ha // ac["num_attention_heads"]
    p = "model.audio_tower."
    s = p + "subsample_conv_projection."
    out = [
        (s + "layer0.conv.weight", (c0, 1, 3, 3)),
        (s + "layer0.norm.weight", (c0,)),
        (s + "layer1.conv.weight", (c1, c0, 3, 3)),
        (s + "layer1.norm.weight", (c1,)),
        (s + "input_proj_linear.weight", (Ha, c1 * (128 // 4))),
    ]
    for i in range(ac["num_hidden_layers"]):
        b = f"{p}layers.{i}."
        for ffn in ("feed_forward1", "feed_forward2"):
            out += _clippable(f"{b}{ffn}.ffw_layer_1", 4 * Ha, Ha, clip) + _clippable(
                f"{b}{ffn}.ffw_layer_2", Ha, 4 * Ha, clip
            )
            out += [(f"{b}{ffn}.pre_layer_norm.weight", (Ha,)), (f"{b}{ffn}.post_layer_norm.weight", (Ha,))]
        out.append((b + "self_attn.per_dim_scale", (hd,)))
        for n in ("q_proj", "k_proj", "v_proj", "post"):
            out += _clippable(b + "self_attn." + n, Ha, Ha, clip)
        out.append((b + "self_attn.relative_k_proj.weight", (Ha, Ha)))
        out += _clippable(b + "lconv1d.linear_start", 2 * Ha, Ha, clip)
        out += _clippable(b + "lconv1d.linear_end", Ha, Ha, clip)
        out += [
            (b + "lconv1d.depthwise_conv1d.weight", (Ha, 1, ac["conv_kernel_size"])),
            (b + "lconv1d.pre_layer_norm.weight", (Ha,)),
            (b + "lconv1d.conv_norm.weight", (Ha,)),
            (b + "norm_pre_attn.weight", (Ha,)),
            (b + "norm_post_attn.weight", (Ha,)),
            (b + "norm_out.weight", (Ha,)),
        ]
    out += [
        (p + "output_proj.weight", (ac["output_proj_dims"], Ha)),
        (p + "output_proj.bias", (ac["output_proj_dims"],)),
    ]
    out.append(("model.embed_audio.embedding_projection.weight", (text_hidden, ac["output_proj_dims"])))
    return out


def unified_tensors(vc: dict | None, ac: dict | None, text_hidden: int) -> list[tuple[str, tuple[int, ...]]]:
    """The 12B's embedders (names as the release stores them, ``vc``/``ac`` from the views below)."""
    out: list[tuple[str, tuple[int, ...]]] = []
    if vc:
        v, n_px, D = "model.vision_embedder.", 3 * vc["model_patch_size"] ** 2, vc["mm_embed_dim"]
        out += [(v + "patch_ln1.weight", (n_px,)), (v + "patch_ln1.bias", (n_px,))]
        out += [(v + "patch_dense.weight", (D, n_px)), (v + "patch_dense.bias", (D,))]
        out += [(v + "patch_ln2.weight", (D,)), (v + "patch_ln2.bias", (D,))]
        out.append((v + "pos_embedding", (vc["mm_posemb_size"], 2, D)))
        out += [(v + "pos_norm.weight", (D,)), (v + "pos_norm.bias", (D,))]
        out.append(("model.embed_vision.embedding_projection.weight", (text_hidden, D)))
    if ac:
        out.append(("model.embed_audio.embedding_projection.weight", (text_hidden, ac["audio_embed_dim"])))
    return out


# --- transforms --------------------------------------------------------------------------------


def patch_kernel(w: np.ndarray) -> np.ndarray:
    """[H, p*p*3] patch projection (pixels in HWC order) -> conv2d kernel [H, 3, p, p]."""
    hidden, n = w.shape
    p = math.isqrt(n // 3)
    if 3 * p * p != n:
        raise ConvertError(f"patch projection width {n} is not 3*p*p")
    return np.ascontiguousarray(w.reshape(hidden, p, p, 3).transpose(0, 3, 1, 2))


def chw_order(p: int) -> np.ndarray:
    """For each pixel value of a p x p RGB patch in CHW order (what ggml's im2col yields), its
    index in the HWC order the 12B's patches are flattened in: ``perm[i] = (y*p + x)*3 + c``."""
    i = np.arange(3 * p * p)
    c, y, x = i // (p * p), (i // p) % p, i % p
    return (y * p + x) * 3 + c


def _patch_side(n: int) -> int:
    p = math.isqrt(n // 3)
    if 3 * p * p != n:
        raise ConvertError(f"patch width {n} is not 3*p*p")
    return p


def patch_columns_chw(w: np.ndarray) -> np.ndarray:
    """12B ``patch_dense`` [D, p*p*3]: columns reordered HWC -> CHW, so column i meets im2col's value i."""
    return np.ascontiguousarray(w[:, chw_order(_patch_side(w.shape[1]))])


def patch_vector_chw(v: np.ndarray) -> np.ndarray:
    """12B ``patch_ln1`` weight or bias [p*p*3]: reordered HWC -> CHW like the projection's columns."""
    return np.ascontiguousarray(v[chw_order(_patch_side(v.shape[0]))])


def xy_tables(t: np.ndarray) -> np.ndarray:
    """12B ``pos_embedding`` [P, 2, D] (row i: x = i, y = i) -> [2, P, D]: the x table, then the y table."""
    if t.ndim != 3 or t.shape[1] != 2:
        raise ConvertError(f"position table has shape {list(t.shape)}, expected [P, 2, D]")
    return np.ascontiguousarray(t.transpose(1, 0, 2))


def softplus(x: np.ndarray) -> np.ndarray:
    return (np.logaddexp(0.0, x.astype(np.float64))).astype(np.float32)


def squeeze_depthwise(w: np.ndarray) -> np.ndarray:
    """[H, 1, K] depthwise conv1d -> [H, K]."""
    if w.ndim != 3 or w.shape[1] != 1:
        raise ConvertError(f"depthwise conv weight has shape {list(w.shape)}, expected [H, 1, K]")
    return np.ascontiguousarray(w[:, 0, :])


def scalar_to_1d(x: np.ndarray) -> np.ndarray:
    return np.asarray(x, dtype=np.float32).reshape(1)


def _transform(hf_name: str) -> Callable[[np.ndarray], np.ndarray] | None:
    if hf_name.endswith("patch_embedder.input_proj.weight"):
        return patch_kernel
    if hf_name == "model.vision_embedder.patch_dense.weight":  # 12B
        return patch_columns_chw
    if hf_name in ("model.vision_embedder.patch_ln1.weight", "model.vision_embedder.patch_ln1.bias"):  # 12B
        return patch_vector_chw
    if hf_name == "model.vision_embedder.pos_embedding":  # 12B
        return xy_tables
    if hf_name.endswith("self_attn.per_dim_scale"):
        return softplus
    if hf_name.endswith("depthwise_conv1d.weight"):
        return squeeze_depthwise
    if hf_name.endswith(("input_min", "input_max", "output_min", "output_max")):
        return scalar_to_1d
    return None


def _out_type(gguf_name: str, shape: tuple[int, ...], outtype: str) -> str:
    """F32: 1-D tensors, the position table, audio conv weights; Q8_0 only where rows allow."""
    if len(shape) <= 1 or gguf_name == "v.position_embd.weight":
        return "F32"
    if gguf_name.startswith(("a.conv1d.", "a.input_projection")) or ".conv_dw." in gguf_name:
        return "F32"
    if outtype == "Q8_0" and (len(shape) != 2 or shape[-1] % 32 or gguf_name == "v.patch_embd.weight"):
        return "F16"  # conv kernels, the 12B's projection of raw pixels (as llama.cpp keeps it), odd widths
    return outtype


# --- plan and metadata -------------------------------------------------------------------------


@dataclass
class Towers:
    vision: dict | None
    audio: dict | None
    text_hidden: int
    unified: bool = False  # 12B: embedders of raw patches and waveform frames, no towers


def towers(config: dict) -> Towers:
    tc = text_config(config)
    vision = config.get("vision_config") if isinstance(config.get("vision_config"), dict) else None
    audio = config.get("audio_config") if isinstance(config.get("audio_config"), dict) else None
    return Towers(vision or None, audio or None, tc.int("hidden_size", minimum=1), is_unified(config))


def has_towers(config: dict) -> bool:
    t = towers(config)
    return bool(t.vision or t.audio)


def _expected(t: Towers) -> dict[str, tuple[int, ...]]:
    out: dict[str, tuple[int, ...]] = {}
    if t.unified:
        vc = _unified_vision_view(t.vision) if t.vision else None
        ac = _unified_audio_view(t.audio) if t.audio else None
        return dict(unified_tensors(vc, ac, t.text_hidden))
    try:
        if t.vision:
            out.update(vision_tensors(_vision_view(t.vision), t.text_hidden))
        if t.audio:
            out.update(audio_tensors(_audio_view(t.audio), t.text_hidden))
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"config.json: vision/audio config is incomplete ({e})") from e
    return out


def unified_layout(config: dict) -> list[tuple[str, tuple[int, ...]]]:
    """The 12B's embedder tensors, named and shaped from its config.json (validated)."""
    return list(_expected(towers(config)).items())


def _vision_view(vc: dict) -> dict:
    v = ConfigView(vc, "vision_config.")
    return {
        "hidden_size": v.int("hidden_size", minimum=1),
        "head_dim": v.int("head_dim", minimum=1),
        "intermediate_size": v.int("intermediate_size", minimum=1),
        "num_attention_heads": v.int("num_attention_heads", minimum=1),
        "num_hidden_layers": v.int("num_hidden_layers", minimum=1),
        "position_embedding_size": v.int("position_embedding_size", 10240, minimum=1),
        "patch_size": v.int("patch_size", 16, minimum=1),
        "use_clipped_linears": v.bool("use_clipped_linears", False),
        "standardize": v.bool("standardize", False),
    }


def _unified_vision_view(vc: dict) -> dict:
    """12B ``Gemma4UnifiedVisionConfig`` (``model_patch_size`` is a property: absent from 5.23 saves)."""
    v = ConfigView(vc, "vision_config.")
    patch, pooling = v.int("patch_size", 16, minimum=1), v.int("pooling_kernel_size", 3, minimum=1)
    D = v.int("mm_embed_dim", 3840, minimum=1)
    if v.int("model_patch_size", patch * pooling) != patch * pooling:
        raise CheckpointError("config.json: vision_config.model_patch_size is not patch_size * pooling_kernel_size")
    if v.int("output_proj_dims", D) != D:
        raise CheckpointError("config.json: vision_config.output_proj_dims must equal mm_embed_dim")
    return {
        "patch_size": patch,
        "pooling_kernel_size": pooling,
        "model_patch_size": patch * pooling,
        "mm_embed_dim": D,
        "mm_posemb_size": v.int("mm_posemb_size", 1120, minimum=1),
        "rms_norm_eps": v.float("rms_norm_eps", 1e-6),
    }


def _unified_audio_view(ac: dict) -> dict:
    a = ConfigView(ac, "audio_config.")
    n = a.int("audio_embed_dim", FRAME, minimum=1)
    if n != FRAME:  # clip.cpp fixes gemma4ua's frame at 640 samples, whatever the file says
        raise ConvertError(f"config.json: audio_config.audio_embed_dim {n}: llama.cpp's gemma4ua takes {FRAME}")
    return {"audio_embed_dim": n, "rms_norm_eps": a.float("rms_norm_eps", 1e-6)}


def _audio_view(ac: dict) -> dict:
    a = ConfigView(ac, "audio_config.")
    channels = a.list("subsampling_conv_channels") or [128, 32]
    if len(channels) != 2 or not all(isinstance(c, int) and c > 0 for c in channels):
        raise CheckpointError("config.json: audio_config.subsampling_conv_channels must be two positive integers")
    return {
        "hidden_size": a.int("hidden_size", minimum=1),
        "num_attention_heads": a.int("num_attention_heads", minimum=1),
        "num_hidden_layers": a.int("num_hidden_layers", minimum=1),
        "subsampling_conv_channels": channels,
        "conv_kernel_size": a.int("conv_kernel_size", 5, minimum=1),
        "output_proj_dims": a.int("output_proj_dims", minimum=1),
        "use_clipped_linears": a.bool("use_clipped_linears", True),
    }


def plan_mmproj(ckpt: Checkpoint, outtype: str = "F16") -> Plan:
    """Every tower tensor -> its mmproj tensor; unknown or misshapen ones are refused."""
    if outtype not in MMPROJ_TYPES:
        raise ConvertError(f"projector type {outtype} is not one of {', '.join(MMPROJ_TYPES)}")
    t = towers(ckpt.config)
    expected = _expected(t)
    plan = Plan(tensors=[])
    for name, shape in expected.items():
        ref = ckpt.tensors.get(name)
        if ref is None:
            raise ConvertError(f"checkpoint is missing tower tensor {name}")
        if ref.shape != shape:
            raise ConvertError(f"tensor {name!r} has shape {list(ref.shape)}, expected {list(shape)} from config.json")
        if ref.dtype not in FLOAT_DTYPES:
            raise ConvertError(f"tensor {name!r} has dtype {ref.dtype}; only F32, F16 and BF16 are supported")
        gname = tensor_map.tower_gguf_name(name)
        if gname is None:
            raise ConvertError(f"tower tensor {name!r} has no GGUF name")
        fn = _transform(name)
        out_shape = tuple(fn(np.zeros(shape, np.float32)).shape) if fn else shape
        plan.tensors.append(OutTensor(gname, out_shape, _out_type(gname, out_shape, outtype), source=ref, transform=fn))
    towers_prefix = (
        "model.vision_tower.",
        "model.vision_embedder.",  # 12B
        "model.embed_vision.",
        "model.audio_tower.",
        "model.embed_audio.",
    )
    for name in ckpt.tensors:
        if name.startswith(towers_prefix) and name not in expected:
            raise ConvertError(f"unknown tower tensor {name!r}: no rule converts or drops it")
    return plan


def _image_norm(ckpt: Checkpoint) -> tuple[list[float], list[float]]:
    """image_mean / image_std from preprocessor_config.json or processor_config.json."""
    for fname in ("preprocessor_config.json", "processor_config.json"):
        path = ckpt.root / fname
        if not path.is_file():
            continue
        data = read_json(path)
        proc = data.get("image_processor", data) if isinstance(data, dict) else None
        if isinstance(proc, dict) and "image_mean" in proc and "image_std" in proc:
            mean, std = proc["image_mean"], proc["image_std"]
            ok = all(
                isinstance(v, list) and len(v) == 3 and all(isinstance(x, (int, float)) for x in v) for v in (mean, std)
            )
            if not ok or any(x == 0 for x in std):
                raise CheckpointError(f"{fname}: image_mean/image_std must be three numbers each (std non-zero)")
            return [float(x) for x in mean], [float(x) for x in std]
    raise CheckpointError("no image_mean/image_std in preprocessor_config.json or processor_config.json")


STR, U32, F32, BOOL, ARR = (
    GGUFValueType.STRING,
    GGUFValueType.UINT32,
    GGUFValueType.FLOAT32,
    GGUFValueType.BOOL,
    GGUFValueType.ARRAY,
)
FILE_TYPES = {"F32": 0, "F16": 1, "Q8_0": 7}


def mmproj_kv(ckpt: Checkpoint, outtype: str) -> list:
    t = towers(ckpt.config)
    kv: list = [
        ("general.type", "mmproj", STR, None),
        ("general.name", ckpt.root.resolve().name or "gemma4", STR, None),
        ("general.file_type", FILE_TYPES[outtype], U32, None),
        ("general.quantization_version", 2, U32, None),
        ("clip.has_vision_encoder", bool(t.vision), BOOL, None),
        ("clip.has_audio_encoder", bool(t.audio), BOOL, None),
    ]
    if t.unified:
        return kv + _unified_kv(ckpt, t)
    if t.vision:
        v = _vision_view(t.vision)
        eps = ConfigView(t.vision).float("rms_norm_eps", 1e-6)
        mean, std = _image_norm(ckpt)
        act = ConfigView(t.vision).str("hidden_activation", "gelu_pytorch_tanh")
        if act != "gelu_pytorch_tanh":
            raise ConvertError(f"config.json: vision hidden_activation {act!r} is not supported")
        kv += [
            ("clip.vision.projector_type", "gemma4v", STR, None),
            # tanh-approximated GELU as in the checkpoint; without this key clip.cpp uses GELU-quick
            ("clip.use_gelu", True, BOOL, None),
            ("clip.vision.embedding_length", v["hidden_size"], U32, None),
            ("clip.vision.feed_forward_length", v["intermediate_size"], U32, None),
            ("clip.vision.block_count", v["num_hidden_layers"], U32, None),
            ("clip.vision.attention.head_count", v["num_attention_heads"], U32, None),
            ("clip.vision.attention.head_dim", v["head_dim"], U32, None),
            ("clip.vision.attention.layer_norm_epsilon", eps, F32, None),
            ("clip.vision.projection_dim", t.text_hidden, U32, None),
            ("clip.vision.image_size", 224, U32, None),  # unused by gemma4v (it sizes images itself)
            ("clip.vision.patch_size", v["patch_size"], U32, None),
            ("clip.vision.image_mean", mean, ARR, F32),
            ("clip.vision.image_std", std, ARR, F32),
        ]
    if t.audio:
        a = _audio_view(t.audio)
        eps = ConfigView(t.audio).float("rms_norm_eps", 1e-6)
        kv += [
            ("clip.audio.projector_type", "gemma4a", STR, None),
            ("clip.audio.embedding_length", a["hidden_size"], U32, None),
            ("clip.audio.feed_forward_length", 4 * a["hidden_size"], U32, None),
            ("clip.audio.block_count", a["num_hidden_layers"], U32, None),
            ("clip.audio.attention.head_count", a["num_attention_heads"], U32, None),
            ("clip.audio.attention.layer_norm_epsilon", eps, F32, None),
            ("clip.audio.projection_dim", t.text_hidden, U32, None),
            ("clip.audio.num_mel_bins", ConfigView(t.audio).int("input_feat_size", N_MEL, minimum=1), U32, None),
        ]
    return kv


def _unified_kv(ckpt: Checkpoint, t: Towers) -> list:
    """12B: gemma4uv / gemma4ua. No encoder blocks (block count, heads and FFN width 0); the
    LayerNorms' epsilon is PyTorch's default, which clip.cpp hard-codes; the key below is the
    RMSNorm's before each projection (llama.cpp's converter: conversion/gemma.py:1033-1095)."""
    kv: list = []
    if t.vision:
        v = _unified_vision_view(t.vision)
        mean, std = _image_norm(ckpt)
        kv += [
            ("clip.vision.projector_type", "gemma4uv", STR, None),  # vendored gguf-py constants.py:5902
            ("clip.vision.embedding_length", v["mm_embed_dim"], U32, None),
            ("clip.vision.feed_forward_length", 0, U32, None),
            ("clip.vision.block_count", 0, U32, None),
            ("clip.vision.attention.head_count", 0, U32, None),
            ("clip.vision.attention.layer_norm_epsilon", v["rms_norm_eps"], F32, None),
            ("clip.vision.projection_dim", t.text_hidden, U32, None),
            ("clip.vision.image_size", 224, U32, None),  # unused (images are sized by their own size)
            # clip.cpp: patch_size x scale_factor is the model patch (48 px), read by one im2col
            ("clip.vision.patch_size", v["patch_size"], U32, None),
            ("clip.vision.projector.scale_factor", v["pooling_kernel_size"], U32, None),
            ("clip.vision.image_mean", mean, ARR, F32),
            ("clip.vision.image_std", std, ARR, F32),
        ]
    if t.audio:
        a = _unified_audio_view(t.audio)
        kv += [
            ("clip.audio.projector_type", "gemma4ua", STR, None),  # vendored gguf-py constants.py:5903
            ("clip.audio.embedding_length", a["audio_embed_dim"], U32, None),
            ("clip.audio.feed_forward_length", 0, U32, None),
            ("clip.audio.block_count", 0, U32, None),
            ("clip.audio.attention.head_count", 0, U32, None),
            ("clip.audio.attention.layer_norm_epsilon", a["rms_norm_eps"], F32, None),
            ("clip.audio.projection_dim", t.text_hidden, U32, None),
            # the frame size, not mel bins (clip.cpp sets 640 for gemma4ua whatever is written)
            ("clip.audio.num_mel_bins", a["audio_embed_dim"], U32, None),
        ]
    return kv
