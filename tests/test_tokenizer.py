"""The tokenizer and chat template in our GGUF behave as the Hugging Face ones do."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.reference
pytest.importorskip("transformers", reason="needs the reference tokenizer (transformers)")

SAMPLES = [
    "Hello world",
    "The quick brown fox jumps over the lazy dog.",
    "  leading spaces and  double  spaces ",
    "line one\nline two\n\nafter a blank line\n",
    "tabs\tand\r\nwindows newlines",
    "Café naïve résumé über jalapeño façade déjà vu",
    "emoji 🦊🎉 and CJK 日本語 and ∑ math",
    "def main(args):\n    return 0\n",
    "<|turn>user\nWhat is in <|image|> this picture?<turn|>\n<|turn>model\n",
    "<bos>special <eos> tokens <|channel>thought\n<channel|> inline",
    "numbers 3.14159 and 2024-11-28",
    "",
]


@pytest.fixture(scope="module")
def pair(tiny, gguf):
    import llama_cpp
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(tiny("e2b"))
    llm = llama_cpp.Llama(str(gguf("e2b", "F32")), vocab_only=True, verbose=False)
    yield hf, llm
    llm.close()


@pytest.mark.parametrize("text", SAMPLES)
def test_tokenization_matches_hugging_face(pair, text: str) -> None:
    hf, llm = pair
    ours = llm.tokenize(text.encode(), add_bos=False, special=True)
    ref = hf(text, add_special_tokens=False)["input_ids"]
    assert ours == ref
    with_bos = llm.tokenize(text.encode(), add_bos=True, special=True)
    assert with_bos == hf(text)["input_ids"]


@pytest.mark.parametrize("text", SAMPLES)
def test_detokenization_round_trips(pair, text: str) -> None:
    hf, llm = pair
    ids = hf(text, add_special_tokens=False)["input_ids"]
    assert llm.detokenize(ids, special=True).decode() == hf.decode(ids)


CONVERSATIONS = [
    [{"role": "user", "content": "Hi there"}],
    [
        {"role": "system", "content": "  Be brief.  "},
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "<|channel>thought\nadd<channel|>4"},
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "and this?"}]},
    ],
    [{"role": "user", "content": [{"type": "audio"}, {"type": "text", "text": "Transcribe."}]}],
]


@pytest.mark.parametrize("thinking", [False, True])
@pytest.mark.parametrize("messages", CONVERSATIONS)
def test_chat_template_in_gguf_renders_like_transformers(pair, gguf, messages, thinking: bool) -> None:
    from gguf import GGUFReader

    from g4cli.chat.template import render

    hf, _ = pair
    template = GGUFReader(gguf("e2b", "F32")).fields["tokenizer.chat_template"].contents()
    ours = render(template, messages, add_generation_prompt=True, enable_thinking=thinking)
    ref = hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, enable_thinking=thinking)
    assert ours == ref
    assert ours.startswith("<bos>") and ours.endswith(
        "<|turn>model\n" + ("" if thinking else "<|channel>thought\n<channel|>")
    )


def test_template_sandbox_refuses_escapes() -> None:
    from g4cli.chat.template import render
    from g4cli.errors import RuntimeFailure

    evil = "{{ ''.__class__.__mro__[1].__subclasses__() }}"
    with pytest.raises(RuntimeFailure):
        render(evil, [{"role": "user", "content": "x"}])
