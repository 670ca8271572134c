"""Images and audio through llama.cpp's mtmd with our projector: token counts, generation after
media, capability errors before anything loads, and a chat state that survives bad input."""

from __future__ import annotations

import pytest
from media_files import audio_tokens, image_tokens

from g4cli.chat import media
from g4cli.chat.conversation import Turn
from g4cli.chat.runtime.model import Model, non_causal_images, projector_capabilities
from g4cli.chat.settings import Sampling
from g4cli.errors import CapabilityError, MediaError, RuntimeFailure


@pytest.fixture(scope="module")
def e2b(gguf):
    path = gguf("e2b", "Q8_0")
    with Model(path, path.with_name("mmproj-e2b-Q8_0.gguf"), n_ctx=8192) as model:
        yield model


@pytest.fixture(scope="module")
def m31b(gguf):
    path = gguf("31b", "Q8_0")
    with Model(path, path.with_name("mmproj-31b-Q8_0.gguf"), n_ctx=4096) as model:
        yield model


def _generate(model: Model, turns: list[Turn], n: int = 4):
    events = list(model.generate(turns, Sampling(temperature=0.0, max_tokens=n)))
    done = events[-1]
    assert done.kind == "done" and done.stats.gen_tokens >= 1
    return done.stats


@pytest.mark.parametrize(
    ("key", "size"),
    [("photo", (3024, 4032)), ("alpha", (640, 480)), (".gif", (200, 150)), ("aligned", (768, 768))],
)
def test_images_become_the_expected_number_of_tokens_and_the_model_answers(e2b, media_dir, key, size) -> None:
    att = media.load(media_dir[key])
    assert att.pixels.shape[1::-1] == size
    expected = image_tokens(*size)
    assert e2b.media_tokens(att) == [expected]
    stats = _generate(e2b, [Turn("user", "What is in this picture?", [att])])
    text_only = _generate(e2b, [Turn("user", "What is in this picture?")])
    # the prompt grew by the image tokens plus mtmd's <|image> and <image|> wrappers
    assert stats.prompt_tokens - text_only.prompt_tokens == expected + 2


@pytest.mark.parametrize("key", ["mp3", "wav48", "speech", "long"])
def test_audio_becomes_the_expected_number_of_tokens_and_the_model_answers(e2b, media_dir, key) -> None:
    att = media.load(media_dir[key])
    expected = [audio_tokens(len(p)) for p in att.pieces]
    assert e2b.media_tokens(att) == expected
    if key == "long":
        assert len(expected) == 3 and 1700 < sum(expected) < 1760  # ~25 tokens per second of 70 s
    stats = _generate(e2b, [Turn("user", "Transcribe this.", [att])])
    text_only = _generate(e2b, [Turn("user", "Transcribe this.")])
    assert stats.prompt_tokens - text_only.prompt_tokens == sum(expected) + 2 * len(expected)


def test_image_and_audio_in_one_turn_and_across_turns(e2b, media_dir) -> None:
    img, clip = media.load(media_dir["alpha"]), media.load(media_dir["speech"])
    turns = [Turn("user", "Look and listen.", [img, clip])]
    first = _generate(e2b, turns)
    turns += [Turn("assistant", "ok"), Turn("user", "And now?")]
    second = _generate(e2b, turns)
    # the second turn reused the KV cache: only the new text was evaluated
    assert second.prompt_eval_tokens < 40 < first.prompt_eval_tokens


def test_audio_on_a_model_without_audio_encoder_is_a_capability_error(m31b, gguf, media_dir) -> None:
    mmproj = gguf("31b", "Q8_0").with_name("mmproj-31b-Q8_0.gguf")
    assert projector_capabilities(mmproj) == {"vision"}  # read from the header, nothing loaded
    clip = media.load(media_dir["speech"])
    before = list(m31b.sequences[0].units)
    with pytest.raises(CapabilityError, match="cannot take audio"):
        list(m31b.generate([Turn("user", "hi", [clip])]))
    assert m31b.sequences[0].units == before  # nothing was evaluated
    _generate(m31b, [Turn("user", "hi", [media.load(media_dir["alpha"])])])  # images still work


def test_a_failed_attachment_leaves_the_conversation_usable(e2b, media_dir, tmp_path) -> None:
    turns = [Turn("user", "Describe.", [media.load(media_dir["alpha"])])]
    _generate(e2b, turns)
    state = (list(e2b.sequences[0].units), e2b.sequences[0].n_past)
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(media_dir["photo"].read_bytes()[:5000])
    with pytest.raises(MediaError):
        media.load(bad)
    assert (list(e2b.sequences[0].units), e2b.sequences[0].n_past) == state
    turns += [Turn("assistant", "fine"), Turn("user", "More?")]
    assert _generate(e2b, turns).prompt_eval_tokens < 30


def test_text_only_model_refuses_media(gguf, media_dir) -> None:
    with Model(gguf("31b", "Q8_0"), None, n_ctx=512) as model:
        with pytest.raises(CapabilityError, match="no projector file"):
            list(model.generate([Turn("user", "x", [media.load(media_dir["alpha"])])]))


def test_thinking_is_off_by_default_and_on_by_request(e2b, media_dir) -> None:
    turns = [Turn("system", "Be brief."), Turn("user", "Hi", [media.load(media_dir["alpha"])])]
    off, on = e2b.render(turns), e2b.render(turns, think=True)
    assert off.endswith("<|turn>model\n<|channel>thought\n<channel|>") and "<|think|>" not in off
    assert on.endswith("<|turn>model\n") and on.startswith("<bos><|turn>system\n<|think|>\nBe brief.")
    assert off.count("<__media__>") == on.count("<__media__>") == 1


@pytest.mark.parametrize("family", ["e2b", "31b"])
def test_the_projector_loads_with_the_first_media_and_its_header_told_the_truth(gguf, media_dir, family) -> None:
    path = gguf(family, "Q8_0")
    with Model(path, path.with_name(f"mmproj-{family}-Q8_0.gguf"), n_ctx=4096) as m:
        # from the header alone (the tiny models are narrower than E2B/E4B: mtmd reads theirs non-causally)
        expected = {"e2b": {"vision", "audio"}, "31b": {"vision"}}[family]
        assert m.capabilities == expected and m.non_causal_images
        non_causal = m.non_causal_images
        assert not non_causal_images(m.mmproj, 1536) and not non_causal_images(m.mmproj, 2560)  # real E2B/E4B widths
        text = _generate(m, [Turn("user", "Hello there")])
        assert m._mtmd is None  # a text chat never loads the towers
        image = media.load(media_dir["aligned"])
        stats = _generate(m, [Turn("user", "Hello there"), Turn("assistant", "Hi."), Turn("user", "This?", [image])])
        assert m._mtmd is not None and stats.prompt_tokens > text.prompt_tokens + image_tokens(768, 768)
        # loading checked the header's answers against mtmd's own: a mismatch is an error
        m.non_causal_images = not non_causal
        m.close_projector()
        with pytest.raises(RuntimeFailure, match="not what its header says"):
            m.projector  # noqa: B018
