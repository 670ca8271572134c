"""Vision and audio through our projector equal transformers' Gemma 4 on the same checkpoint.

Image embeddings (mtmd_encode_chunk + mtmd_get_output_embd vs get_image_features) on a 768×768
image (aligned, so both sides see the same 48×48 patches), audio embeddings on a spoken clip,
and the logits after an image prompt and after an audio prompt.
"""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.reference
torch = pytest.importorskip("torch", reason="parity tests need the reference implementation (CPU torch)")

TOL = 1e-2  # the bound; measured: images ~3e-3, audio ~7e-3, logits ~2-3e-3


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.fixture(scope="module")
def models(tiny, gguf):
    from g4cli.chat.runtime.model import Model

    opened = {}

    def get(family: str):
        if family not in opened:
            path = gguf(family, "F32")
            opened[family] = Model(path, path.with_name(f"mmproj-{family}-F32.gguf"), n_ctx=4096)
        return opened[family]

    yield get
    for m in opened.values():
        m.close()


def _reference(checkpoint, bidirectional_vision: bool = False):
    from transformers import AutoConfig, Gemma4ForConditionalGeneration

    cfg = AutoConfig.from_pretrained(checkpoint)
    if bidirectional_vision:
        cfg.text_config.use_bidirectional_attention = "vision"
    return Gemma4ForConditionalGeneration.from_pretrained(
        checkpoint, config=cfg, dtype=torch.float32, attn_implementation="eager"
    ).eval()


def _pixels(path):
    from PIL import Image
    from transformers.models.gemma4.image_processing_pil_gemma4 import Gemma4ImageProcessorPil

    out = Gemma4ImageProcessorPil()(images=[Image.open(path).convert("RGB")], return_tensors="pt")
    return out["pixel_values"], out["image_position_ids"]


def _features(pcm):
    from transformers.models.gemma4.feature_extraction_gemma4 import Gemma4AudioFeatureExtractor

    f = Gemma4AudioFeatureExtractor()([pcm], sampling_rate=16000, return_tensors="pt")
    return f["input_features"], f["input_features_mask"]


@pytest.mark.parametrize("family", ["e2b", "26b-a4b"])
def test_image_embeddings(models, tiny, media_dir, family) -> None:
    from g4cli.chat import media

    ours = models(family).encode_media(media.load(media_dir["aligned"]))
    pixel_values, positions = _pixels(media_dir["aligned"])
    with torch.no_grad():
        ref = _reference(tiny(family)).model.get_image_features(pixel_values, positions).pooler_output[0].numpy()
    assert ours.shape == ref.shape == (256, 256)
    assert _rel(ours, ref) < TOL


@pytest.mark.parametrize("family", ["e2b", "e4b"])
def test_audio_embeddings(models, tiny, media_dir, family) -> None:
    from g4cli.chat import media

    clip = media.load(media_dir["speech"])
    ours = models(family).encode_media(clip)
    with torch.no_grad():
        ref = _reference(tiny(family)).model.get_audio_features(*_features(clip.pieces[0])).pooler_output[0].numpy()
    assert ours.shape == ref.shape
    assert _rel(ours, ref) < TOL


@pytest.mark.parametrize(("family", "kind"), [("e2b", "image"), ("e2b", "audio"), ("31b", "image")])
def test_logits_after_a_media_prompt(models, tiny, media_dir, family, kind) -> None:
    from transformers import AutoTokenizer

    from g4cli.chat import media
    from g4cli.chat.conversation import Turn

    model = models(family)
    att = media.load(media_dir["aligned" if kind == "image" else "speech"])
    prompt = model.render([Turn("user", "Describe this.", [att])])
    model.reset()
    model.eval_prompt(prompt, [att])
    ours = model.last_logits()

    # llama.cpp lets image tokens attend both ways on sliding layers unless the text width is
    # E2B's or E4B's (1536/2560); the tiny models are 256 wide, so the reference does the same
    ref_model = _reference(tiny(family), bidirectional_vision=True)
    tok = AutoTokenizer.from_pretrained(tiny(family))
    if kind == "image":
        n, slot, extra = (
            256,
            "<|image|>",
            dict(zip(("pixel_values", "image_position_ids"), _pixels(media_dir["aligned"]))),
        )
        opening, closing, type_id = "<|image>", "<image|>", 1
    else:
        feats = _features(att.pieces[0])
        with torch.no_grad():
            n = ref_model.model.get_audio_features(*feats).pooler_output.shape[1]
        slot, extra = "<|audio|>", dict(input_features=feats[0], input_features_mask=feats[1])
        opening, closing, type_id = "<|audio>", "<audio|>", 3
    ids = tok(
        prompt.replace("<__media__>", opening + slot * n + closing), add_special_tokens=False, return_tensors="pt"
    )
    input_ids = ids["input_ids"]
    mm_types = (input_ids == tok.convert_tokens_to_ids(slot)).long() * type_id
    with torch.no_grad():
        ref = ref_model(input_ids=input_ids, mm_token_type_ids=mm_types, **extra).logits[0, -1].numpy()
    assert _rel(ours, ref) < TOL
    assert ours.argmax() == ref.argmax()


@pytest.mark.parametrize("bug", ["GELU-quick instead of tanh GELU", "per_dim_scale without softplus"])
def test_parity_check_rejects_projector_bugs(tiny, tmp_path, monkeypatch, media_dir, bug) -> None:
    from g4cli.chat import media
    from g4cli.chat.runtime.model import Model
    from quantize import mmproj
    from quantize.converter import convert

    if bug.startswith("GELU"):
        original = mmproj.mmproj_kv
        monkeypatch.setattr(mmproj, "mmproj_kv", lambda c, t: [kv for kv in original(c, t) if kv[0] != "clip.use_gelu"])
        att, ref_fn = media.load(media_dir["aligned"]), "image"
    else:
        monkeypatch.setattr(mmproj, "softplus", lambda x: np.asarray(x, np.float32))
        att, ref_fn = media.load(media_dir["speech"]), "audio"
    result = convert(tiny("e2b"), tmp_path / "bug.gguf", quant="F32", mmproj_type="F32")
    with Model(result.text, result.mmproj, n_ctx=2048) as model:
        ours = model.encode_media(att)
    reference = _reference(tiny("e2b")).model
    with torch.no_grad():
        if ref_fn == "image":
            ref = reference.get_image_features(*_pixels(media_dir["aligned"])).pooler_output[0].numpy()
        else:
            ref = reference.get_audio_features(*_features(att.pieces[0])).pooler_output[0].numpy()
    assert _rel(ours, ref) > TOL, f"{bug} went unnoticed"
