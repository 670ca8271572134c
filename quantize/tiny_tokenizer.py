"""A small Gemma 4-style tokenizer for tiny test checkpoints.

Same kind as the real one: BPE over SentencePiece-style text (spaces become ``▁``), byte
fallback through ``<0xXX>`` tokens, merges, and Gemma 4's special tokens at their real ids where
those are low (``<pad>`` 0 ... ``<turn|>`` 106). The media tokens, which sit above 255999 in the
real vocabulary, are moved down to 107-113 and the config says so. Pure Python, deterministic.
"""

from __future__ import annotations

import itertools
from collections import Counter

SPACE = "\u2581"  # ▁

SPECIALS: dict[int, str] = {
    0: "<pad>",
    1: "<eos>",
    2: "<bos>",
    3: "<unk>",
    4: "<mask>",
    46: "<|tool>",
    47: "<tool|>",
    48: "<|tool_call>",
    49: "<tool_call|>",
    50: "<|tool_response>",
    51: "<tool_response|>",
    52: '<|"|>',
    98: "<|think|>",
    100: "<|channel>",
    101: "<channel|>",
    105: "<|turn>",
    106: "<turn|>",
    107: "<|image>",  # boi (255999 in the real vocabulary)
    108: "<|audio>",  # boa (256000)
    109: "<|image|>",  # image soft token (258880)
    110: "<|audio|>",  # audio soft token (258881)
    111: "<image|>",  # eoi (258882)
    112: "<audio|>",  # eoa (258883)
    113: "<|video|>",  # (258884)
}
MEDIA_IDS = {
    "boi_token_id": 107,
    "boa_token_id": 108,
    "image_token_id": 109,
    "audio_token_id": 110,
    "eoi_token_id": 111,
    "eoa_token_index": 112,
    "video_token_id": 113,
}
FIRST_FREE = 114

CORPUS = """\
The quick brown fox jumps over the lazy dog. A model reads text, images and sound.
Gemma runs on a laptop: it answers questions, writes code and describes pictures.
When the weather is fine we walk to the river and watch the boats go by.
The cat sat on the mat, and the dog slept in the sun by the door.
def main(args):
    for item in items:
        print(item, end=" ")
    return 0
Numbers: 0 1 2 3 4 5 6 7 8 9 10 42 100 2024 3.14
Café, naïve, résumé, über, jalapeño, façade, déjà vu.
Please summarize the following notes in three short sentences.
What is in this image? Describe the audio clip. Think step by step.
"""
EXTRA_CHARS = "éèàüöäñçïâêôûœß€£—–…“”‘’"


def _words(text: str) -> Counter[tuple[str, ...]]:
    counts: Counter[tuple[str, ...]] = Counter()
    for line in text.splitlines():
        norm = line.replace(" ", SPACE)
        word = ""
        for ch in norm:
            if ch == SPACE and word:
                counts[tuple(word)] += 1
                word = ""
            word += ch
        if word:
            counts[tuple(word)] += 1
    return counts


def _merge(word: tuple[str, ...], pair: tuple[str, str]) -> tuple[str, ...]:
    out, i = [], 0
    while i < len(word):
        if i + 1 < len(word) and (word[i], word[i + 1]) == pair:
            out.append(word[i] + word[i + 1])
            i += 2
        else:
            out.append(word[i])
            i += 1
    return tuple(out)


def train_bpe(text: str, n_merges: int) -> list[tuple[str, str]]:
    """Plain BPE training: repeatedly merge the most frequent adjacent pair (ties by text)."""
    words = _words(text)
    merges: list[tuple[str, str]] = []
    for _ in range(n_merges):
        pairs: Counter[tuple[str, str]] = Counter()
        for w, c in words.items():
            for a, b in itertools.pairwise(w):
                pairs[(a, b)] += c
        if not pairs:
            break
        best = min(pairs, key=lambda p: (-pairs[p], p))
        merges.append(best)
        words = Counter({_merge(w, best): c for w, c in words.items()})
    return merges


def build(vocab_size: int = 1024) -> tuple[dict, dict]:
    """(tokenizer.json, tokenizer_config.json) as dicts."""
    vocab: dict[str, int] = {}
    for i in range(FIRST_FREE):
        vocab[SPECIALS.get(i, f"<unused{i}>")] = i
    for b in range(256):
        vocab[f"<0x{b:02X}>"] = len(vocab)
    chars = sorted(set(CORPUS.replace(" ", SPACE).replace("\n", "")) | set(EXTRA_CHARS) | {SPACE, "\n", "\t"})
    for ch in chars:
        vocab.setdefault(ch, len(vocab))
    merges = []
    for a, b in train_bpe(CORPUS, n_merges=4 * vocab_size):
        if len(vocab) >= vocab_size:
            break
        if a + b not in vocab:
            vocab[a + b] = len(vocab)
            merges.append([a, b])
    if len(vocab) < vocab_size:  # full-size vocabularies (benchmarks): plain filler pieces
        for i in range(len(vocab), vocab_size):
            vocab[f"{SPACE}w{i}"] = i
    return _tokenizer_json(vocab, merges), dict(TOKENIZER_CONFIG)


TOKENIZER_CONFIG = {
    "add_bos_token": True,
    "add_eos_token": False,
    "bos_token": "<bos>",
    "eos_token": "<eos>",
    "pad_token": "<pad>",
    "unk_token": "<unk>",
    "mask_token": "<mask>",
    "boi_token": "<|image>",
    "eoi_token": "<image|>",
    "image_token": "<|image|>",
    "boa_token": "<|audio>",
    "eoa_token": "<audio|>",
    "audio_token": "<|audio|>",
    "clean_up_tokenization_spaces": False,
    "model_max_length": 1000000000000000019884624838656,
    "padding_side": "left",
    "spaces_between_special_tokens": False,
    "tokenizer_class": "GemmaTokenizer",
}


def _tokenizer_json(vocab: dict[str, int], merges: list[list[str]]) -> dict:
    """tokenizer.json in the layout the Gemma releases use (BPE with byte fallback)."""
    added = [
        {
            "id": i,
            "content": text,
            "single_word": False,
            "lstrip": False,
            "rstrip": False,
            "normalized": False,
            "special": True,
        }
        for text, i in vocab.items()
        if text.startswith("<") and text.endswith(">") and not text.startswith("<0x")
    ]
    tokenizer = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": {"type": "Replace", "pattern": {"String": " "}, "content": SPACE},
        "pre_tokenizer": {
            "type": "Split",
            "pattern": {"String": " "},
            "behavior": "MergedWithPrevious",
            "invert": False,
        },
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "<bos>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [
                {"SpecialToken": {"id": "<bos>", "type_id": 0}},
                {"Sequence": {"id": "A", "type_id": 0}},
                {"Sequence": {"id": "B", "type_id": 1}},
            ],
            "special_tokens": {"<bos>": {"id": "<bos>", "ids": [2], "tokens": ["<bos>"]}},
        },
        "decoder": {
            "type": "Sequence",
            "decoders": [
                {"type": "Replace", "pattern": {"String": SPACE}, "content": " "},
                {"type": "ByteFallback"},
                {"type": "Fuse"},
            ],
        },
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": "<unk>",
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": True,
            "byte_fallback": True,
            "ignore_merges": False,
            "vocab": vocab,
            "merges": merges,
        },
    }
    return tokenizer


# The Gemma 4 prompt format (a compact template with the same output as the released one for
# text, images, audio, a system turn and the thinking switch; no tool calling).
CHAT_TEMPLATE = """\
{%- macro strip_thinking(text) -%}
    {%- set ns = namespace(result='') -%}
    {%- for part in text.split('<channel|>') -%}
        {%- if '<|channel>' in part -%}
            {%- set ns.result = ns.result + part.split('<|channel>')[0] -%}
        {%- else -%}
            {%- set ns.result = ns.result + part -%}
        {%- endif -%}
    {%- endfor -%}
    {{- ns.result | trim -}}
{%- endmacro -%}
{{- bos_token -}}
{%- set loop_messages = messages -%}
{%- if (enable_thinking is defined and enable_thinking) or messages[0]['role'] in ['system', 'developer'] -%}
    {{- '<|turn>system\\n' -}}
    {%- if enable_thinking is defined and enable_thinking -%}
        {{- '<|think|>\\n' -}}
    {%- endif -%}
    {%- if messages[0]['role'] in ['system', 'developer'] -%}
        {{- messages[0]['content'] | trim -}}
        {%- set loop_messages = messages[1:] -%}
    {%- endif -%}
    {{- '<turn|>\\n' -}}
{%- endif -%}
{%- for message in loop_messages -%}
    {%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}
    {{- '<|turn>' + role + '\\n' -}}
    {%- if message['content'] is string -%}
        {%- if role == 'model' -%}
            {{- strip_thinking(message['content']) -}}
        {%- else -%}
            {{- message['content'] | trim -}}
        {%- endif -%}
    {%- else -%}
        {%- for item in message['content'] -%}
            {%- if item['type'] == 'text' -%}
                {%- if role == 'model' -%}
                    {{- strip_thinking(item['text']) -}}
                {%- else -%}
                    {{- item['text'] | trim -}}
                {%- endif -%}
            {%- elif item['type'] == 'image' -%}
                {{- '<|image|>' -}}
            {%- elif item['type'] == 'audio' -%}
                {{- '<|audio|>' -}}
            {%- elif item['type'] == 'video' -%}
                {{- '<|video|>' -}}
            {%- endif -%}
        {%- endfor -%}
    {%- endif -%}
    {{- '<turn|>\\n' -}}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{- '<|turn>model\\n' -}}
    {%- if not enable_thinking | default(false) -%}
        {{- '<|channel>thought\\n<channel|>' -}}
    {%- endif -%}
{%- endif -%}
"""
