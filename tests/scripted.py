"""A scripted tiny Gemma 4: a real checkpoint, converted by the real converter and run by real
llama.cpp, whose greedy answer is a text known in advance.

How it works: every block adds nothing to the residual stream (attention and MLP output
projections are zero, ``layer_scalar`` is 1, and the 31B layout has no per-layer embeddings), so
the last hidden state is the current token's embedding, normalised. Each piece of the script is
an added token of the tokenizer (not special, so it detokenizes to its text), and the untied
output matrix maps each piece's embedding onto the next piece, the last piece onto ``<turn|>``
and the generation prompt's last token (``<channel|>``, or ``\n`` with ``--think``) onto the
first piece.
The other weights are random, so a token costs the full compute of the chosen width and depth.

    gguf = scripted_gguf(tmp / "m", split_script("Hello **world**.\\n"))
    # g4 chat gguf "anything" --temp 0   ->   Hello **world**.

A script may also hold the thinking channel's control tokens, ``<|channel>`` and ``<channel|>``
(base tokens, emitted as themselves): ``["<|channel>", "thought\\nHmm.", "<channel|>", "Yes."]``
is a model that thinks "Hmm." and answers "Yes." when asked to think (``--think``).

Because the model only sees the current token, a script cannot repeat a piece:
``split_script`` cuts a text into word-sized pieces, merging a piece that was already used
with the next one, so any text becomes a valid script.
"""

from __future__ import annotations

import itertools
import json
import math
import re
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from quantize import safetensors_io as st
from quantize import tiny_tokenizer
from quantize.tiny import init_params, make_config, text_tensors

BASE_VOCAB = 1024  # the tiny tokenizer's own pieces; the script's pieces come after them
END_OF_TURN = 106  # <turn|>
PROMPT_ENDS = (101,)  # <channel|>: the last token of the generation prompt with thinking off
MATCH_LOGIT = 12.0  # the logit of the scripted next piece (the others stay near 0)


def base_vocab() -> dict[str, int]:
    tokenizer, _ = tiny_tokenizer.build(BASE_VOCAB)
    return tokenizer["model"]["vocab"]


def split_script(text: str, words: int = 1) -> list[str]:
    """``text`` cut into pieces of about ``words`` words (leading whitespace included), each
    piece different from the others and from the tiny tokenizer's own tokens."""
    taken = set(base_vocab())
    chunks = re.findall(r"\s*\S+", text)
    if not chunks:
        raise ValueError("a script needs some text")
    chunks[-1] += text[len("".join(chunks)) :]  # trailing whitespace goes with the last piece
    out: list[str] = []
    current, n = "", 0
    for chunk in chunks:
        current, n = current + chunk, n + 1
        if n >= words and current not in taken:
            out.append(current)
            taken.add(current)
            current, n = "", 0
    if current:  # a leftover that was already taken: glue it to the last piece
        if not out:
            raise ValueError(f"cannot make a script of {text!r}: it is a token of the base vocabulary")
        taken.discard(out[-1])
        out[-1] += current
    assert "".join(out) == text
    return out


CONTROL = ("<|channel>", "<channel|>")  # base tokens a script may hold (the thinking channel)


def _check(script: list[str]) -> None:
    taken = base_vocab()
    seen: set[str] = set()
    for piece in script:
        if not piece or piece in seen or (piece in taken and piece not in CONTROL):
            raise ValueError(f"script piece {piece!r} is empty, repeated or a base token (use split_script)")
        seen.add(piece)


def _ids(script: list[str]) -> list[int]:
    """Each piece's token id: its added token, or the control token it is."""
    base, ids, added = base_vocab(), [], 0
    for piece in script:
        if piece in CONTROL:
            ids.append(base[piece])
        else:
            ids.append(BASE_VOCAB + added)
            added += 1
    return ids


def _tokenizer(script: list[str]) -> tuple[dict, dict]:
    tokenizer, config = tiny_tokenizer.build(BASE_VOCAB)
    for i, piece in enumerate(p for p in script if p not in CONTROL):
        tokenizer["added_tokens"].append(
            {
                "id": BASE_VOCAB + i,
                "content": piece,
                "single_word": False,
                "lstrip": False,
                "rstrip": False,
                "normalized": False,
                "special": False,  # user-defined: llama.cpp detokenizes it to its text
            }
        )
    return tokenizer, config


def _tables(vocab: int, width: int, rng: np.random.Generator, ids: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """(embeddings, output matrix) that chain the prompt's last token -> script -> <turn|>."""
    embed = (rng.standard_normal((vocab, width), dtype=np.float32) / math.sqrt(width)).astype(np.float32)
    unit = embed / np.linalg.norm(embed, axis=1, keepdims=True)
    head = np.zeros((vocab, width), dtype=np.float32)
    # the final norm leaves a hidden state of length sqrt(width) along the token's embedding
    scale = MATCH_LOGIT / math.sqrt(width)
    ends = [t for t in PROMPT_ENDS if t not in ids]  # a script that closes the channel itself goes on from it
    for prev in (*ends, base_vocab()["\n"]):  # "\n" ends the prompt with thinking on
        head[ids[0]] += scale * unit[prev]
    for prev, nxt in itertools.pairwise(ids):
        head[nxt] += scale * unit[prev]
    head[END_OF_TURN] += scale * unit[ids[-1]]
    return embed, head


def scripted_checkpoint(
    out_dir: Path | str, script: list[str], *, width: int = 256, layers: int = 6, ff: int | None = None, seed: int = 0
) -> Path:
    """Write a Hugging Face checkpoint (31B layout) whose greedy answer is ``"".join(script)``."""
    _check(script)
    if width % 256 or layers < 2:
        raise ValueError("width must be a multiple of 256 and layers at least 2")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ids = _ids(script)
    vocab = BASE_VOCAB + sum(p not in CONTROL for p in script)
    kinds = ["sliding_attention"] * layers
    kinds[2::3] = ["full_attention"] * len(kinds[2::3])  # the 31B pattern: one full layer in three
    text = dict(
        hidden_size=width,
        intermediate_size=ff or 2 * width,
        num_hidden_layers=layers,
        layer_types=kinds,
        vocab_size=vocab,
        vocab_size_per_layer_input=vocab,
        tie_word_embeddings=False,
        max_position_embeddings=32768,
    )
    cfg = make_config("31b", text=text)
    cfg.update(tie_word_embeddings=False, vision_config=None, audio_config=None)
    tc = cfg["text_config"]
    rng = np.random.default_rng(seed)
    embed, head = _tables(vocab, width, rng, ids)
    fixed = {
        "model.language_model.embed_tokens.weight": embed,
        "lm_head.weight": head,
        "model.language_model.norm.weight": np.ones(width, dtype=np.float32),
    }

    def fill(spec: st.TensorSpec) -> Iterator[np.ndarray]:
        leaf = spec.name.rsplit(".", 1)[-1]
        if spec.name in fixed:
            yield fixed[spec.name].reshape(-1)
        elif spec.name.endswith(("self_attn.o_proj.weight", "mlp.down_proj.weight")):
            yield np.zeros(math.prod(spec.shape), dtype=np.float32)  # the block adds nothing
        elif leaf == "layer_scalar":
            yield np.ones(1, dtype=np.float32)
        else:
            kind, a, b = init_params(spec.name, spec.shape, tc)
            r = np.random.default_rng([seed, zlib.crc32(spec.name.encode())])
            n = math.prod(spec.shape)
            x = r.standard_normal(n, dtype=np.float32) * b + a if kind == "normal" else r.uniform(a, b, n)
            yield x.astype(np.float32)

    specs = [st.TensorSpec(n, "F32", tuple(s)) for n, s in text_tensors(cfg)]
    st.write(out / "model.safetensors", specs, fill, metadata={"format": "pt"})
    tokenizer, tok_config = _tokenizer(script)
    (out / "config.json").write_text(json.dumps(cfg, indent=2), encoding="utf-8")
    (out / "tokenizer.json").write_text(json.dumps(tokenizer), encoding="utf-8")
    (out / "tokenizer_config.json").write_text(json.dumps(tok_config, indent=2), encoding="utf-8")
    (out / "chat_template.jinja").write_text(tiny_tokenizer.CHAT_TEMPLATE, encoding="utf-8")
    gen = {"bos_token_id": 2, "eos_token_id": [1, END_OF_TURN], "pad_token_id": 0, "transformers_version": "5.23.0"}
    (out / "generation_config.json").write_text(json.dumps(gen, indent=2), encoding="utf-8")
    return out


def scripted_gguf(
    out_dir: Path | str,
    script: list[str],
    *,
    width: int = 256,
    layers: int = 6,
    ff: int | None = None,
    quant: str = "Q8_0",
    seed: int = 0,
) -> Path:
    """A GGUF (via the real converter) whose greedy answer to any prompt is ``"".join(script)``."""
    from quantize.converter import convert

    out = Path(out_dir)
    ckpt = scripted_checkpoint(out / "checkpoint", script, width=width, layers=layers, ff=ff, seed=seed)
    gguf = out / f"scripted-{quant}.gguf"
    convert(ckpt, gguf, quant=quant, mmproj_type=None)
    return gguf
