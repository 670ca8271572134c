"""The 12B "unified" model (``Gemma4Unified*``, google/gemma-4-12B-it): no vision or audio tower.

Raw 48x48 pixel patches and raw 640-sample waveform frames are projected straight into the text
model (projectors ``gemma4uv``/``gemma4ua``); the text model is Gemma 4 (arch ``gemma4``, 31B's
K=V layout); generation_config's ``suppress_tokens`` go into the GGUF and g4's sampler bans them.
Pure transforms on ``arange`` arrays, the release's own config, the files written, and parity
with transformers 5.23's ``Gemma4UnifiedForConditionalGeneration`` on the tiny "12b" family,
with the bugs that parity must catch injected.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from gguf import GGUFReader

from g4cli.errors import CheckpointError, ConvertError
from quantize import gemma4, mmproj, tensor_map
from quantize.converter import convert, suppress_tokens
from quantize.tiny import make_config

REAL = Path("/work/shared/real-configs/12b")
TOL = 1e-2  # the bound for embeddings and logits after media


# --- pure transforms ---------------------------------------------------------------------------


def test_chw_order_is_what_im2col_reads() -> None:
    p = 4
    hwc = np.arange(p * p * 3).reshape(p, p, 3)  # each value is its own HWC index
    # ggml's im2col yields a patch plane by plane (CHW); perm[i] = the HWC index of CHW value i
    np.testing.assert_array_equal(mmproj.chw_order(p), hwc.transpose(2, 0, 1).reshape(-1))


def test_patch_projection_columns_and_ln1_are_reordered_plane_by_plane() -> None:
    p, D = 4, 3
    n = 3 * p * p
    w = np.arange(D * n, dtype=np.float32).reshape(D, n)
    out = mmproj.patch_columns_chw(w)
    for c in range(3):  # channel c's plane: every third HWC column, starting at c
        np.testing.assert_array_equal(out[:, c * p * p : (c + 1) * p * p], w[:, c::3])
    v = np.arange(n, dtype=np.float32)
    got = mmproj.patch_vector_chw(v)
    for c in range(3):
        np.testing.assert_array_equal(got[c * p * p : (c + 1) * p * p], v[c::3])
    # the point of it: the same patch, read HWC by HF and CHW by llama.cpp, projects the same
    patch = np.arange(p * p * 3, dtype=np.float32).reshape(p, p, 3) / 7.0
    np.testing.assert_allclose(out @ patch.transpose(2, 0, 1).reshape(-1), w @ patch.reshape(-1), rtol=1e-6)
    with pytest.raises(ConvertError, match="3\\*p\\*p"):
        mmproj.patch_columns_chw(np.zeros((2, 10), np.float32))


def test_position_table_becomes_an_x_table_and_a_y_table() -> None:
    P, D = 5, 3
    t = np.arange(P * 2 * D, dtype=np.float32).reshape(P, 2, D)
    out = mmproj.xy_tables(t)
    assert out.shape == (2, P, D) and out.flags.c_contiguous
    np.testing.assert_array_equal(out[0], t[:, 0, :])  # x = i
    np.testing.assert_array_equal(out[1], t[:, 1, :])  # y = i
    with pytest.raises(ConvertError, match="expected \\[P, 2, D\\]"):
        mmproj.xy_tables(np.zeros((2, P, D), np.float32))


# --- names -------------------------------------------------------------------------------------

RELEASE_NAMES = {
    "model.vision_embedder.patch_ln1.weight": "v.patch_norm.1.weight",
    "model.vision_embedder.patch_ln1.bias": "v.patch_norm.1.bias",
    "model.vision_embedder.patch_dense.weight": "v.patch_embd.weight",
    "model.vision_embedder.patch_dense.bias": "v.patch_embd.bias",
    "model.vision_embedder.patch_ln2.weight": "v.patch_norm.2.weight",
    "model.vision_embedder.patch_ln2.bias": "v.patch_norm.2.bias",
    "model.vision_embedder.pos_embedding": "v.position_embd.weight",
    "model.vision_embedder.pos_norm.weight": "v.patch_norm.3.weight",
    "model.vision_embedder.pos_norm.bias": "v.patch_norm.3.bias",
    "model.embed_vision.embedding_projection.weight": "mm.input_projection.weight",
    "model.embed_audio.embedding_projection.weight": "mm.a.input_projection.weight",
}


def test_release_names_map_to_what_clip_cpp_loads(tiny) -> None:
    from quantize.checkpoint import open_checkpoint

    towers = {n for n in open_checkpoint(tiny("12b")).tensors if not n.startswith("model.language_model.")}
    assert towers == set(RELEASE_NAMES)
    for hf, gg in RELEASE_NAMES.items():
        assert tensor_map.tower_gguf_name(hf) == gg, hf
        assert "mmproj" in tensor_map.drop_rule(hf)  # never in the text GGUF
    for hf, _, what in tensor_map.UNIFIED_TENSORS + tensor_map.UNIFIED_PARAMETERS:
        assert hf.startswith("model.vision_embedder.") and what, hf
    assert tensor_map.tower_gguf_name("model.vision_embedder.patch_dense.linear.weight") is None


# --- the release's config ----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["config.json", "config.base-pt.json"])
def test_the_real_12b_config(name: str) -> None:
    config = json.loads((REAL / name).read_text())
    assert gemma4.is_unified(config)
    hp = gemma4.text_params(config)
    assert (hp.n_layer, hp.n_embd, hp.n_ff, hp.n_head) == (48, 3840, 15360, 16)
    assert (hp.n_head_kv_swa, hp.n_head_kv_full, hp.head_dim_swa, hp.head_dim_full) == (8, 1, 256, 512)
    assert hp.k_eq_v and hp.sliding_window == 1024 and hp.is_swa == ((True,) * 5 + (False,)) * 8
    assert (hp.ple_dim, hp.n_expert, hp.n_kv_shared, hp.double_wide_mlp) == (0, 0, 0, False)
    assert (hp.vocab_size, hp.n_ctx_train, hp.softcap) == (262144, 262144, 30.0)
    kv = {k.removeprefix("gemma4."): v for k, v, _, _ in gemma4.gguf_kv(hp)}
    assert kv["attention.head_count_kv"] == ([8] * 5 + [1]) * 8
    assert (kv["attention.key_length"], kv["attention.key_length_swa"]) == (512, 256)
    assert kv["embedding_length_per_layer_input"] == 0 and "expert_count" not in kv
    projector = dict(mmproj.unified_layout(config))
    assert projector["model.vision_embedder.patch_dense.weight"] == (3840, 6912)  # 48 x 48 x 3 raw values
    assert projector["model.vision_embedder.pos_embedding"] == (1120, 2, 3840)
    assert projector["model.embed_audio.embedding_projection.weight"] == (3840, 640)
    # the release's tensor count (README of real-configs): 666 text + 11 embedder tensors
    assert len(hp.tensors()) + len(projector) == 677


def test_fit_estimate_for_the_real_12b() -> None:
    from g4cli.models import fit

    config = json.loads((REAL / "config.json").read_text())
    hp = gemma4.text_params(config)
    n_text = sum(math.prod(t.shape) for t in hp.tensors())
    n_proj = sum(math.prod(s) for s in dict(mmproj.unified_layout(config)).values())
    assert 11.8e9 < n_text + n_proj < 12.1e9  # "12B"
    est = fit.estimate(config, quant="Q4_K_M", source_bytes=(n_text + n_proj) * 2)  # BF16 release
    assert 7.0e9 < est.text < 7.8e9
    # F16 projections, the F32 position table (1120 x 2 x 3840), F32 norms: no encoder tower
    f16 = 3840 * 6912 + 3840 * 3840 + 3840 * 640
    f32 = 1120 * 2 * 3840 + 2 * 6912 + 7 * 3840
    assert est.projector == pytest.approx(f16 * 2 + f32 * 4, rel=0.01)
    # 8192 cells; 40 sliding layers K/V 8 x 256, 8 full layers K/V 1 x 512 (F16; with flash attention,
    # g4's CPU default, V rows are not padded to the widest layer's)
    assert est.ctx == 8192 and est.kv_cache == 8192 * (40 * (2048 + 2048) + 8 * (512 + 512)) * 2
    # a text chat holds the weights, the tied output matrix's own copy, KV cache and compute
    assert est.ple == 0 and est.weights == est.text + est.embeddings and 0.8e9 < est.embeddings < 1.1e9
    assert est.memory == est.weights + est.kv_cache + est.compute + fit.RUNTIME
    assert est.memory_media == est.memory + est.projector and 10.5e9 < est.memory_media < 12.5e9
    assert est.intermediate == pytest.approx(n_text * 2, rel=0.01)  # the BF16 text GGUF quantized from


# --- the files ---------------------------------------------------------------------------------


def test_projector_and_text_files(gguf) -> None:
    text = gguf("12b", "F32")
    reader = GGUFReader(text.with_name("mmproj-12b-F32.gguf"))
    kv = {k: f.contents() for k, f in reader.fields.items()}
    assert kv["general.architecture"] == "clip"
    assert kv["clip.has_vision_encoder"] is True and kv["clip.has_audio_encoder"] is True
    assert (kv["clip.vision.projector_type"], kv["clip.audio.projector_type"]) == ("gemma4uv", "gemma4ua")
    assert (kv["clip.vision.projection_dim"], kv["clip.audio.projection_dim"]) == (256, 256)
    assert (kv["clip.vision.embedding_length"], kv["clip.audio.embedding_length"]) == (128, 640)
    for key in ("feed_forward_length", "block_count", "attention.head_count"):
        assert kv[f"clip.vision.{key}"] == 0 and kv[f"clip.audio.{key}"] == 0
    assert (kv["clip.vision.patch_size"], kv["clip.vision.projector.scale_factor"]) == (16, 3)  # 48-px patches
    assert kv["clip.vision.image_mean"] == [0.0] * 3 and kv["clip.vision.image_std"] == [1.0] * 3
    shapes = {t.name: tuple(int(x) for x in t.shape) for t in reader.tensors}  # ggml order
    assert shapes == {
        "v.patch_norm.1.weight": (6912,),
        "v.patch_norm.1.bias": (6912,),
        "v.patch_embd.weight": (6912, 128),
        "v.patch_embd.bias": (128,),
        "v.patch_norm.2.weight": (128,),
        "v.patch_norm.2.bias": (128,),
        "v.position_embd.weight": (128, 1120, 2),
        "v.patch_norm.3.weight": (128,),
        "v.patch_norm.3.bias": (128,),
        "mm.input_projection.weight": (128, 256),
        "mm.a.input_projection.weight": (640, 256),
    }
    text_reader = GGUFReader(text)
    field = text_reader.fields["tokenizer.ggml.suppress_tokens"]
    assert field.contents() == [112, 111] and field.types[-1].name == "INT32"  # the loader takes INT32 only
    assert text_reader.fields["general.architecture"].contents() == "gemma4"
    assert not [t.name for t in text_reader.tensors if t.name.startswith(("v.", "mm."))]


def test_q8_0_projector_keeps_the_raw_pixel_projection_f16(tiny, tmp_path: Path) -> None:
    result = convert(tiny("12b"), tmp_path / "m.gguf", quant="F32", mmproj_type="q8_0")
    types = {t.name: t.tensor_type.name for t in GGUFReader(result.mmproj).tensors}
    assert types["v.patch_embd.weight"] == "F16" and types["v.position_embd.weight"] == "F32"
    assert types["mm.input_projection.weight"] == "Q8_0" and types["mm.a.input_projection.weight"] == "Q8_0"
    assert types["v.patch_norm.1.weight"] == "F32"


def test_suppress_tokens_from_generation_config(tmp_path: Path) -> None:
    assert suppress_tokens(tmp_path, 100) == []  # no generation_config.json
    gc = tmp_path / "generation_config.json"
    gc.write_text(json.dumps({"eos_token_id": 1}))
    assert suppress_tokens(tmp_path, 100) == []
    gc.write_text(json.dumps({"suppress_tokens": [7, 3, 7, 250, -1]}))
    assert suppress_tokens(tmp_path, 100) == [7, 3]  # out of the vocabulary: dropped, as llama.cpp does
    for bad in ("7", [1.5], [True]):
        gc.write_text(json.dumps({"suppress_tokens": bad}))
        with pytest.raises(CheckpointError, match="suppress_tokens"):
            suppress_tokens(tmp_path, 100)


def test_llama_cpp_reads_the_suppress_tokens(gguf) -> None:
    from g4cli.chat.runtime.model import Model

    with Model(gguf("12b", "F32"), n_ctx=256) as m:
        assert m.suppress_tokens == [112, 111]
    with Model(gguf("31b", "F32"), n_ctx=256) as m:
        assert m.suppress_tokens == []


def test_bad_unified_configs_are_refused() -> None:
    config = make_config("12b")
    config["audio_config"]["audio_embed_dim"] = 320
    with pytest.raises(ConvertError, match="gemma4ua takes 640"):
        dict(mmproj.unified_layout(config))
    config = make_config("12b")
    config["vision_config"]["output_proj_dims"] = 64
    with pytest.raises(CheckpointError, match="output_proj_dims"):
        dict(mmproj.unified_layout(config))


def test_pull_and_show_a_12b(run_g4, tiny) -> None:
    r = run_g4("pull", tiny("12b", dtype="BF16"), "--name", "u12", "-q", "q8_0")
    assert r.returncode == 0, r.err
    r = run_g4("show", "u12")
    assert r.returncode == 0, r.err
    rows = {line[:14].strip(): line[14:] for line in r.out.splitlines()}
    assert rows["architecture"].startswith("gemma4, 6 layers, embedding 256")
    assert "5 sliding (window 8) + 1 full layers; 4 heads, KV heads 2/1, head dim 64/128" in rows["attention"]
    assert rows["capabilities"] == "vision audio" and rows["ple"] == "none" and rows["experts"] == "none"
    assert "file (mmproj)" in rows


# --- parity with transformers -------------------------------------------------------------------

reference = pytest.mark.reference


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.fixture(scope="module")
def model12(gguf):
    from g4cli.chat.runtime.model import Model

    path = gguf("12b", "F32")
    with Model(path, path.with_name("mmproj-12b-F32.gguf"), n_ctx=4096) as m:
        yield m


def _ref_model(checkpoint: Path):
    pytest.importorskip("torch")
    from reference import _model

    return _model(str(checkpoint))


def _image_embeddings(model, image: Path) -> np.ndarray:
    from g4cli.chat import media

    return model.encode_media(media.load(image))


def _ref_image_embeddings(checkpoint: Path, image: Path) -> np.ndarray:
    import torch
    from reference import unified_pixels

    with torch.no_grad():
        return _ref_model(checkpoint).model.get_image_features(*unified_pixels(image)).pooler_output[0].numpy()


def _ref_audio_embeddings(checkpoint: Path, pcm: np.ndarray) -> np.ndarray:
    import torch
    from reference import unified_frames

    with torch.no_grad():
        return _ref_model(checkpoint).model.get_audio_features(*unified_frames(pcm)).pooler_output[0].numpy()


@reference
def test_image_embeddings(model12, tiny, media_dir) -> None:
    ours = _image_embeddings(model12, media_dir["aligned"])
    ref = _ref_image_embeddings(tiny("12b"), media_dir["aligned"])
    assert ours.shape == ref.shape == (256, 256)  # 768 px: 16 x 16 patches of 48 px
    assert _rel(ours, ref) < TOL  # measured 5e-7


@reference
def test_audio_embeddings(model12, tiny, media_dir) -> None:
    from g4cli.chat import media

    clip = media.load(media_dir["speech"])
    ours = model12.encode_media(clip)
    ref = _ref_audio_embeddings(tiny("12b"), clip.pieces[0])
    assert ours.shape == ref.shape and ours.shape[0] == math.ceil(len(clip.pieces[0]) / 640)  # 40 ms a token
    assert _rel(ours, ref) < TOL  # measured 3e-7


def _ref_logits_after(checkpoint: Path, prompt: str, kind: str, att, image: Path | None) -> np.ndarray:
    """transformers' logits after the prompt, the attention masks built as its ``generate`` builds
    them (``create_masks_for_generate``: image tokens see each other on sliding layers only, as
    mtmd decodes gemma4uv). A bare ``forward`` call instead overlays the image block on the full
    layers too, which neither generate nor llama.cpp does (0.53 apart on the tiny model)."""
    import torch
    from reference import unified_frames, unified_pixels
    from transformers import AutoTokenizer, Gemma4UnifiedForConditionalGeneration

    model = _ref_model(checkpoint)
    tok = AutoTokenizer.from_pretrained(checkpoint)
    if kind == "image":
        pixels, positions = unified_pixels(image)
        extra, n, slot, wrap, type_id = (
            dict(pixel_values=pixels, image_position_ids=positions),
            pixels.shape[1],
            "<|image|>",
            ("<|image>", "<image|>"),
            1,
        )
    else:
        frames, mask = unified_frames(att.pieces[0])
        extra, n, slot, wrap, type_id = (
            dict(input_features=frames, input_features_mask=mask),
            frames.shape[1],
            "<|audio|>",
            ("<|audio>", "<audio|>"),
            3,
        )
    text = prompt.replace("<__media__>", wrap[0] + slot * n + wrap[1])
    ids = tok(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    mm_types = (ids == tok.convert_tokens_to_ids(slot)).long() * type_id
    masks = Gemma4UnifiedForConditionalGeneration.create_masks_for_generate(
        model.config,
        torch.zeros(1, ids.shape[1], 1),
        None,
        None,
        torch.arange(ids.shape[1])[None],
        mm_token_type_ids=mm_types,
    )
    with torch.no_grad():
        out = model(input_ids=ids, mm_token_type_ids=mm_types, attention_mask=masks, **extra)
    return out.logits[0, -1].numpy()


@reference
@pytest.mark.parametrize("kind", ["image", "audio"])
def test_logits_after_a_media_prompt(model12, tiny, media_dir, kind) -> None:
    from g4cli.chat import media
    from g4cli.chat.conversation import Turn

    image = media_dir["aligned"]
    att = media.load(image if kind == "image" else media_dir["speech"])
    assert model12.non_causal_images  # mtmd reads gemma4uv images both ways (on sliding layers)
    prompt = model12.render([Turn("user", "Describe this.", [att])])
    model12.reset()
    model12.eval_prompt(prompt, [att])
    ours = model12.last_logits()
    ref = _ref_logits_after(tiny("12b"), prompt, kind, att, image)
    assert _rel(ours, ref) < TOL  # measured 7.6e-4 (image), 9.2e-4 (audio)
    assert ours.argmax() == ref.argmax()


@reference
@pytest.mark.parametrize("bug", ["patch permutation left out", "position table unpermuted"])
def test_image_parity_rejects_projector_bugs(tiny, tmp_path, monkeypatch, media_dir, bug) -> None:
    from g4cli.chat.runtime.model import Model

    if bug.startswith("patch"):
        monkeypatch.setattr(mmproj, "patch_columns_chw", lambda w: np.asarray(w))
        monkeypatch.setattr(mmproj, "patch_vector_chw", lambda v: np.asarray(v))
    else:  # the same bytes declared [2, P, D]: what a reshape instead of a transpose writes
        monkeypatch.setattr(mmproj, "xy_tables", lambda t: np.ascontiguousarray(t).reshape(2, t.shape[0], t.shape[2]))
    result = convert(tiny("12b"), tmp_path / "bug.gguf", quant="F32", mmproj_type="F32")
    with Model(result.text, result.mmproj, n_ctx=1024) as model:
        ours = _image_embeddings(model, media_dir["aligned"])
    err = _rel(ours, _ref_image_embeddings(tiny("12b"), media_dir["aligned"]))
    assert err > 10 * TOL, f"{bug} went unnoticed ({err:.2e})"


def _greedy(model, prompt: str, n: int) -> list[int]:
    """g4's sampler, greedy, ``n`` tokens (end-of-generation tokens not special-cased)."""
    from g4cli.chat.runtime.sampler import Sampler
    from g4cli.chat.settings import Sampling

    seq = model.sequences[0]
    model.reset()
    model.decode(seq, model.tokenize(prompt), logits_last=True)
    out = []
    with Sampler(model.vocab, Sampling(temperature=0.0)) as sampler:
        for _ in range(n):
            out.append(sampler.sample(model.ctx))
            model.decode(seq, [out[-1]], logits_last=True)
    return out


@reference
def test_a_greedy_answer_never_takes_a_suppressed_token(tiny, tmp_path, monkeypatch) -> None:
    """A checkpoint whose suppress_tokens hold the very token greedy decoding would pick first:
    g4's answer is transformers' ``generate`` (which bans them too), token for token; with the
    ban left out of the sampler, the first token is the suppressed one."""
    import copy

    import torch
    from transformers import AutoTokenizer

    from g4cli.chat.conversation import Turn
    from g4cli.chat.runtime import sampler as sampler_module
    from g4cli.chat.runtime.model import Model

    plain = tiny("12b")
    tok = AutoTokenizer.from_pretrained(plain)
    with Model(convert(plain, tmp_path / "plain.gguf", quant="F32", mmproj_type=None).text, n_ctx=256) as m:
        prompt = m.render([Turn("user", "The quick brown fox")])
        first = _greedy(m, prompt, 1)[0]
    ckpt = tiny("12b", suppress_tokens=(first, 112, 111))
    ids = tok(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
    ref_model = _ref_model(ckpt)
    gen = copy.deepcopy(ref_model.generation_config)
    gen.do_sample, gen.eos_token_id = False, None  # greedy, and no early stop
    with torch.no_grad():
        expected = ref_model.generate(ids, generation_config=gen, max_new_tokens=6)[0, ids.shape[1] :].tolist()
    assert expected[0] != first and gen.suppress_tokens == [first, 112, 111]

    path = convert(ckpt, tmp_path / "suppress.gguf", quant="F32", mmproj_type=None).text
    with Model(path, n_ctx=256) as m:
        assert m.suppress_tokens == [first, 112, 111]
        assert _greedy(m, prompt, 6) == expected
        assert not {first, 112, 111} & set(_sampled(m, prompt, 40))  # nor at temperature 1
        monkeypatch.setattr(sampler_module, "suppress_tokens", lambda vocab: [])  # the injected bug
        assert _greedy(m, prompt, 1) == [first], "suppress tokens ignored went unnoticed"
        assert _sampled(m, prompt, 40).count(first) > 5  # measured 17 of 40 (p = 0.27)


def _sampled(model, prompt: str, n: int) -> list[int]:
    """The first token of ``n`` answers sampled with Gemma 4's defaults (seeds 0..n-1)."""
    from g4cli.chat.runtime.sampler import Sampler
    from g4cli.chat.settings import Sampling

    model.reset()
    model.decode(model.sequences[0], model.tokenize(prompt), logits_last=True)
    out = []
    for seed in range(n):
        with Sampler(model.vocab, Sampling(seed=seed)) as s:
            out.append(s.sample(model.ctx))
    return out


def test_suppressed_tokens_stay_out_of_grammar_constrained_answers(gguf) -> None:
    """With a grammar, the pick that the grammar allows is made without the suppressed tokens."""
    from g4cli.chat.conversation import Turn
    from g4cli.chat.runtime.model import Model
    from g4cli.chat.runtime.sampler import Sampler, grammar_guard
    from g4cli.chat.settings import Sampling

    greedy = Sampling(temperature=0.0, grammar="root ::= [a-z]+")
    with Model(gguf("12b", "F32"), n_ctx=256) as m:
        m.decode(m.sequences[0], m.tokenize(m.render([Turn("user", "Name a colour.")])), logits_last=True)
        picks = []
        for _ in range(3):  # each time the grammar's best pick is banned, the next one is taken
            with Sampler(m.vocab, greedy, grammar_guard(m), suppress=picks) as s:
                picks.append(s.sample(m.ctx))
        assert len(set(picks)) == 3
        assert all(m.piece(t).strip("\u2581 ").isalpha() for t in picks)
