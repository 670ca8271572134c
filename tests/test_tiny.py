"""The tiny-checkpoint factory: deterministic, fast, and exactly the layout transformers writes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import FAMILIES

from quantize import safetensors_io as st
from quantize.tiny import make_checkpoint


def test_same_seed_same_bytes_other_seed_other_values(tmp_path: Path) -> None:
    a = make_checkpoint(tmp_path / "a", "31b", seed=3)
    b = make_checkpoint(tmp_path / "b", "31b", seed=3)
    c = make_checkpoint(tmp_path / "c", "31b", seed=4)
    for name in ("model.safetensors", "config.json", "tokenizer.json", "chat_template.jinja"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    assert (a / "model.safetensors").read_bytes() != (c / "model.safetensors").read_bytes()
    assert (a / "tokenizer.json").read_bytes() == (c / "tokenizer.json").read_bytes()


def test_files_of_a_release_are_all_there(tiny) -> None:
    d = tiny("e2b")
    for name in (
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "chat_template.jinja",
        "generation_config.json",
        "processor_config.json",
    ):
        assert (d / name).is_file(), name
    names = st.read_header(d / "model.safetensors")
    assert all(
        n.startswith(("model.language_model.", "model.vision_tower.", "model.audio_tower.", "model.embed_"))
        for n in names
    )
    tok = json.loads((d / "tokenizer.json").read_text())
    specials = {t["content"]: t["id"] for t in tok["added_tokens"]}
    for text, idx in {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<|turn>": 105, "<turn|>": 106, "<|think|>": 98}.items():
        assert specials[text] == idx
    assert {"<|image|>", "<|audio|>", "<|channel>", "<channel|>"} <= specials.keys()


@pytest.mark.reference
@pytest.mark.parametrize("family", [*FAMILIES, "12b"])
def test_layout_is_what_transformers_builds_and_saves(tiny, family: str, tmp_path: Path) -> None:
    pytest.importorskip("torch")
    from reference import model_class
    from transformers import AutoConfig

    d = tiny(family)
    model = model_class(d)(AutoConfig.from_pretrained(d))
    # transformers' own serialisation of the same config: the release's names (the 12B's
    # ``model.vision_embedder.*`` are renamed on load and back on save), no tied lm_head
    model.save_pretrained(tmp_path)
    expected = {k: r.shape for k, r in st.read_header(tmp_path / "model.safetensors").items()}
    ours = {k: r.shape for k, r in st.read_header(d / "model.safetensors").items()}
    assert ours == expected
    assert json.loads((d / "config.json").read_text()) == json.loads((tmp_path / "config.json").read_text())


@pytest.mark.reference
def test_12b_generation_config_suppresses_tokens_as_transformers_reads_it(tiny) -> None:
    pytest.importorskip("torch")
    from transformers import GenerationConfig

    assert GenerationConfig.from_pretrained(tiny("12b")).suppress_tokens == [112, 111]  # <audio|>, <image|>
    assert GenerationConfig.from_pretrained(tiny("31b")).suppress_tokens is None
