"""Vision and audio through our projector equal transformers' Gemma 4 on the same checkpoint.

Image embeddings (mtmd_encode_chunk + mtmd_get_output_embd vs get_image_features) on a 768×768
image (aligned, so both sides see the same 48×48 patches), audio embeddings on a spoken clip,
and the logits after an image prompt and after an audio prompt; on 26B/31B, whose images are
decoded non-causally, an image of more than one 512-token ubatch, and a budget changed in place.
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


BIG = (1104, 1104)  # 23 x 23 = 529 tokens (48 px each): more than 512, and at budget 560 neither side resizes it


@pytest.fixture(scope="module")
def big_image(tmp_path_factory):
    from media_files import aligned_png

    return aligned_png(tmp_path_factory.mktemp("big") / "aligned1104.png", *BIG)


def _logits_after(model, att) -> tuple[str, np.ndarray, tuple[int, int]]:
    from g4cli.chat.conversation import Turn

    prompt = model.render([Turn("user", "Describe this.", [att])])
    counts = model.eval_prompt(prompt, [att])
    return prompt, model.last_logits(), counts


def test_an_image_of_more_than_one_ubatch_is_read_whole(tiny, gguf, big_image) -> None:
    """31B reads an image non-causally (every image token sees every other); llama.cpp gets that
    right only within one ubatch, so the runtime sizes the ubatch for the largest image. The
    same image split at llama.cpp's usual 512 (``n_ubatch=512``) is measurably wrong."""
    from reference import REL_TOL, image_prompt_logits

    from g4cli.chat import media
    from g4cli.chat.runtime.model import Model

    att, path, budget = media.load(big_image), gguf("31b", "F32"), 560
    mmproj, ours = path.with_name("mmproj-31b-F32.gguf"), {}
    for n_ubatch in (None, 512):
        with Model(path, mmproj, n_ctx=2048, image_tokens=budget, n_ubatch=n_ubatch) as m:
            assert m.non_causal_images and m.media_tokens(att) == [529]
            assert m.n_ubatch == (budget if n_ubatch is None else 512)
            prompt, ours[n_ubatch], _ = _logits_after(m, att)
    ref = image_prompt_logits(tiny("31b"), prompt, big_image, max_soft_tokens=budget)
    assert _rel(ours[None], ref) <= REL_TOL  # measured 1.4e-3
    assert ours[None].argmax() == ref.argmax()
    assert _rel(ours[512], ref) > 0.05, "an image split across ubatches went unnoticed"  # measured 0.30
    with Model(path, None, n_ctx=2048) as text_only:  # no images: llama.cpp's batches as before
        assert not text_only.non_causal_images and text_only.n_ubatch == text_only.n_batch == 512


def test_a_new_image_budget_reads_images_again(gguf, media_dir) -> None:
    """``/set image_tokens``: a new projector context, nothing evaluated under the old budget
    reused, the same logits as a model loaded at the new budget; a budget beyond the ubatch of
    a non-causal model is refused rather than split."""
    from g4cli.chat import media
    from g4cli.chat.runtime.model import Model
    from g4cli.errors import RuntimeFailure

    att, path = media.load(media_dir["aligned"]), gguf("31b", "F32")
    mmproj = path.with_name("mmproj-31b-F32.gguf")
    with Model(path, mmproj, n_ctx=2048, image_tokens=140) as fresh:
        assert fresh.media_tokens(att) == [121]  # 768 px shrunk to 11 x 11 tokens
        _, expected, _ = _logits_after(fresh, att)
    with Model(path, mmproj, n_ctx=2048, image_tokens=280) as m:
        assert m.media_tokens(att) == [256] and m.n_ubatch == 512
        _logits_after(m, att)
        m.set_image_tokens(140)
        assert m.media_tokens(att) == [121] and m.sequences[0].units == []
        _, got, (n_pos, evaluated) = _logits_after(m, att)
        assert evaluated == n_pos  # nothing reused from the 280-token image
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
        with pytest.raises(RuntimeFailure, match="restart with --image-tokens 1120"):
            m.set_image_tokens(1120)
        assert m.image_tokens == 140 and m.media_tokens(att) == [121]


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
