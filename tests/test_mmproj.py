"""The projector file: transforms on arange arrays, names against gguf's own table, and contents."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import gguf as gguf_py
import numpy as np
import pytest
from conftest import FAMILIES
from gguf import GGUFReader

from g4cli.errors import CheckpointError, ConvertError
from quantize import mmproj, tensor_map
from quantize.checkpoint import open_checkpoint
from quantize.converter import convert


def test_patch_kernel_reorders_hwc_pixels_into_a_conv_kernel() -> None:
    p, hidden = 4, 2
    w = np.arange(hidden * p * p * 3, dtype=np.float32).reshape(hidden, p * p * 3)
    k = mmproj.patch_kernel(w)
    assert k.shape == (hidden, 3, p, p)
    # weight for output o, channel c, row y, column x sat at column (y * p + x) * 3 + c
    for o, c, y, x in [(0, 0, 0, 0), (1, 2, 3, 1), (0, 1, 2, 3)]:
        assert k[o, c, y, x] == w[o, (y * p + x) * 3 + c]


def test_small_transforms() -> None:
    x = np.arange(-3, 3, dtype=np.float32)
    np.testing.assert_allclose(mmproj.softplus(x), np.log1p(np.exp(x.astype(np.float64))), rtol=1e-6)
    assert mmproj.softplus(np.array([200.0], np.float32))[0] == pytest.approx(200.0)  # no overflow
    d = np.arange(2 * 1 * 5, dtype=np.float32).reshape(2, 1, 5)
    np.testing.assert_array_equal(mmproj.squeeze_depthwise(d), d[:, 0, :])
    assert mmproj.scalar_to_1d(np.array(2.5, np.float32)).shape == (1,)
    with pytest.raises(ConvertError):
        mmproj.patch_kernel(np.zeros((2, 10), np.float32))


def _llama_cpp_style_name(name: str) -> str | None:
    """llama.cpp's own converter: its renames, then gguf-py's TensorNameMap (an independent oracle)."""
    tmap = gguf_py.get_tensor_name_map(gguf_py.MODEL_ARCH.MMPROJ, 64)
    n = name
    if "audio" in n:
        n = n.replace("model.audio_tower.", "conformer.").replace(".linear.", ".")
        if n.endswith("per_dim_scale"):
            n += ".weight"
    else:
        n = n.replace("model.vision_tower.encoder.", "vision_model.model.").replace(".linear.weight", ".weight")
        if n.endswith("position_embedding_table"):
            n += ".weight"
    return tmap.get_name(n, try_suffixes=(".weight", ".bias", ".input_max", ".input_min", ".output_max", ".output_min"))


@pytest.mark.parametrize("family", ["e2b", "31b"])
def test_tower_names_agree_with_gguf_py(tiny, family: str) -> None:
    names = [n for n in open_checkpoint(tiny(family)).tensors if "language_model" not in n]
    assert names
    for name in names:
        assert tensor_map.tower_gguf_name(name) == _llama_cpp_style_name(name), name


@pytest.mark.parametrize("family", FAMILIES)
def test_projector_file_contents(gguf, family: str) -> None:
    path = gguf(family, "F32").with_name(f"mmproj-{family}-F32.gguf")
    assert path.is_file()
    reader = GGUFReader(path)
    kv = {k: f.contents() for k, f in reader.fields.items()}
    assert kv["general.architecture"] == "clip" and kv["clip.has_vision_encoder"] is True
    assert kv["clip.vision.projector_type"] == "gemma4v" and kv["clip.use_gelu"] is True
    assert kv["clip.vision.image_mean"] == [0.0, 0.0, 0.0] and kv["clip.vision.image_std"] == [1.0, 1.0, 1.0]
    assert kv["clip.vision.projection_dim"] == 256
    audio = family in ("e2b", "e4b")
    assert kv["clip.has_audio_encoder"] is audio
    assert (kv.get("clip.audio.projector_type") == "gemma4a") is audio
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    shapes = {t.name: tuple(int(x) for x in t.shape) for t in reader.tensors}
    assert shapes["v.patch_embd.weight"] == (16, 16, 3, 64)  # ggml order of [H, 3, p, p]
    assert types["v.position_embd.weight"] == "F32"
    assert ("v.std_bias" in types) == (family in ("26b-a4b", "31b"))
    if audio:
        assert shapes["a.blk.0.conv_dw.weight"] == (5, 64) and shapes["a.blk.0.attn_q.input_min"] == (1,)


def test_f16_default_and_q8_0_on_request(tiny, tmp_path: Path) -> None:
    result = convert(tiny("e2b"), tmp_path / "m.gguf", quant="F32")
    types = {t.name: t.tensor_type.name for t in GGUFReader(result.mmproj).tensors}
    assert result.mmproj == tmp_path / "mmproj-m.gguf"
    assert types["v.blk.0.attn_q.weight"] == "F16" and types["mm.input_projection.weight"] == "F16"
    assert types["a.conv1d.0.weight"] == "F32" and types["a.blk.0.conv_dw.weight"] == "F32"
    assert types["v.blk.0.ln1.weight"] == "F32" and types["a.blk.0.per_dim_scale.weight"] == "F32"
    q8 = convert(tiny("e2b"), tmp_path / "q.gguf", quant="F32", mmproj_type="q8_0")
    types = {t.name: t.tensor_type.name for t in GGUFReader(q8.mmproj).tensors}
    assert types["v.blk.0.attn_q.weight"] == "Q8_0" and types["v.patch_embd.weight"] == "F16"
    assert types["v.position_embd.weight"] == "F32"


def test_per_dim_scale_gets_its_softplus(tiny, gguf) -> None:
    from quantize.safetensors_io import load

    ref = load(open_checkpoint(tiny("e2b")).tensors["model.audio_tower.layers.1.self_attn.per_dim_scale"])
    reader = GGUFReader(gguf("e2b", "F32").with_name("mmproj-e2b-F32.gguf"))
    got = next(t for t in reader.tensors if t.name == "a.blk.1.per_dim_scale.weight")
    np.testing.assert_allclose(np.asarray(got.data), np.log1p(np.exp(ref)), rtol=1e-6)


def test_unknown_tower_tensor_and_missing_image_stats_are_refused(tiny, tmp_path: Path) -> None:
    d = tmp_path / "ckpt"
    shutil.copytree(tiny("31b"), d)
    (d / "processor_config.json").unlink()
    with pytest.raises(CheckpointError, match="image_mean"):
        convert(d, tmp_path / "x.gguf", quant="F32")
    assert not list(tmp_path.glob("*.gguf"))  # neither file is left behind
    proc = {"image_processor": {"image_mean": [0, 0, 0], "image_std": [1, 1, 1]}}
    (d / "processor_config.json").write_text(json.dumps(proc))
    cfg = json.loads((d / "config.json").read_text())
    cfg["vision_config"]["num_hidden_layers"] = 1  # the checkpoint has layer 1 too: unknown
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConvertError, match=r"unknown tower tensor 'model\.vision_tower\.encoder\.layers\.1"):
        convert(d, tmp_path / "x.gguf", quant="F32")


def test_text_only_checkpoint_writes_no_projector(tiny, tmp_path: Path) -> None:
    result = convert(tiny("31b", vision=False, audio=False), tmp_path / "t.gguf", quant="F32")
    assert result.mmproj is None and not (tmp_path / "mmproj-t.gguf").exists()
