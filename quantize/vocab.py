"""Tokenizer files -> the GGUF tokenizer keys (Gemma 4: BPE with byte fallback and merges).

Reads ``tokenizer.json`` directly (no transformers at run time) plus ``tokenizer_config.json``,
``chat_template.jinja`` and ``config.json`` for special ids. Everything here is untrusted input.
"""

from __future__ import annotations

import contextlib
import gc
import itertools
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from gguf import TokenType

from g4cli.errors import CheckpointError
from quantize.checkpoint import read_json

# Rendered as text by llama.cpp so the chat parser can read them, though HF marks them special.
VISIBLE_SPECIALS = frozenset(
    {"<|channel>", "<channel|>", "<|tool_call>", "<tool_call|>", "<|tool_response>", "<tool_response|>", '<|"|>'}
)
BYTE_TOKEN = re.compile(r"<0x[0-9A-Fa-f]{2}>")
MAX_TOKENS = 1 << 21


@dataclass
class Vocab:
    tokens: list[str]
    scores: list[float]
    types: list[int]
    merges: list[str]
    special_ids: dict[str, int]  # bos / eos / unk / pad -> id
    add_bos: bool
    add_eos: bool
    chat_template: str | None

    def __len__(self) -> int:
        return len(self.tokens)


def _token_text(value: object) -> str | None:
    """tokenizer_config.json writes special tokens as a string or as {"content": ...}."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return value["content"]
    return None


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """No cyclic GC while ~800k lists and dicts are built: each of its passes would walk them all
    again (roughly halves the time to parse Gemma 4's tokenizer.json); nothing built here is cyclic."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def load_vocab(root: Path, config: dict) -> Vocab:
    """tokenizer.json + tokenizer_config.json -> what the GGUF's tokenizer keys hold (validated)."""
    with _gc_paused():
        return _load_vocab(root, config)


def _load_vocab(root: Path, config: dict) -> Vocab:
    tok = read_json(root / "tokenizer.json")
    model = tok.get("model") if isinstance(tok, dict) else None
    if not isinstance(model, dict) or model.get("type") != "BPE":
        raise CheckpointError("tokenizer.json: expected a BPE tokenizer model (Gemma 4)")
    tokens, types = _token_table(tok, model)
    tc_path = root / "tokenizer_config.json"
    tcfg = read_json(tc_path) if tc_path.exists() else {}
    if not isinstance(tcfg, dict):
        raise CheckpointError("tokenizer_config.json: not a JSON object")
    return Vocab(
        tokens=tokens,
        scores=[-1000.0] * len(tokens),
        types=types,
        merges=_merges(model),
        special_ids=_special_ids(tokens, tcfg, config),
        add_bos=True,  # llama.cpp forces it for Gemma 4 anyway
        add_eos=bool(tcfg.get("add_eos_token", False)),
        chat_template=load_chat_template(root, tcfg),
    )


def _valid_id(idx: object) -> bool:
    return isinstance(idx, int) and not isinstance(idx, bool) and 0 <= idx < MAX_TOKENS


def _token_table(tok: dict, model: dict) -> tuple[list[str], list[int]]:
    """Every token's text and llama.cpp type, by id (ids must be contiguous).

    Whole-list operations where they can be (map, zip, dict): Python-level work per token costs
    a few tenths of a second on a 262k-token vocabulary.
    """
    vocab = model.get("vocab")
    if not isinstance(vocab, dict) or not vocab:
        raise CheckpointError("tokenizer.json: model.vocab is missing or empty")
    ids = list(vocab.values())
    if set(map(type, ids)) != {int} or min(ids) < 0 or max(ids) >= MAX_TOKENS:  # type(): bool is no id
        text, idx = next((t, i) for t, i in vocab.items() if not _valid_id(i))
        raise CheckpointError(f"tokenizer.json: token {text!r} has invalid id {idx!r}")
    by_id: dict[int, str] = dict(zip(ids, vocab))
    special: set[int] = set()
    user_defined: set[int] = set()
    added = tok.get("added_tokens") or []
    if not isinstance(added, list):
        raise CheckpointError("tokenizer.json: added_tokens must be a list")
    for entry in added:
        idx = entry.get("id") if isinstance(entry, dict) else None
        text = entry.get("content") if isinstance(entry, dict) else None
        if not _valid_id(idx) or not isinstance(text, str):
            raise CheckpointError(f"tokenizer.json: malformed added token {entry!r}")
        by_id[idx] = text
        (special if entry.get("special") else user_defined).add(idx)
    n = max(by_id) + 1
    if len(by_id) != n:  # every key is an id in [0, n)
        first_gap = next(i for i in range(n) if i not in by_id)
        raise CheckpointError(f"tokenizer.json: token ids have gaps (first missing id {first_gap})")
    tokens = list(map(by_id.__getitem__, range(n)))
    # later rules win: VISIBLE_SPECIALS > special (CONTROL) > other added (USER_DEFINED) > BYTE > NORMAL
    types = [int(TokenType.NORMAL)] * n
    angled = [i for i, text in enumerate(tokens) if text.startswith("<")]  # bytes and specials only
    for i in angled:
        if BYTE_TOKEN.fullmatch(tokens[i]):
            types[i] = int(TokenType.BYTE)
    for i in user_defined:
        types[i] = int(TokenType.USER_DEFINED)
    for i in special:
        types[i] = int(TokenType.CONTROL)
    for i in angled:
        if tokens[i] in VISIBLE_SPECIALS:
            types[i] = int(TokenType.USER_DEFINED)
    return tokens, types


def _merges(model: dict) -> list[str]:
    """BPE merges as llama.cpp stores them: ``"left right"``.

    tokenizer.json has them as ``[left, right]`` pairs (current releases) or as such strings;
    the common case is checked and joined a whole list at a time (514,906 merges in Gemma 4).
    """
    raw_merges = model.get("merges") or []
    if not isinstance(raw_merges, list) or not raw_merges:
        raise CheckpointError("tokenizer.json: BPE merges are missing (llama.cpp requires them)")
    kinds = set(map(type, raw_merges))
    if kinds == {list} and set(map(len, raw_merges)) == {2}:
        with contextlib.suppress(TypeError):  # a piece that is not a string: reported below
            return list(map(" ".join, raw_merges))
    elif kinds == {str} and min(map(str.find, raw_merges, itertools.repeat(" "), itertools.repeat(1))) > 0:
        return list(raw_merges)
    merges = []
    for m in raw_merges:
        if isinstance(m, str) and " " in m[1:]:
            merges.append(m)
        elif isinstance(m, list) and len(m) == 2 and all(isinstance(p, str) for p in m):
            merges.append(f"{m[0]} {m[1]}")
        else:
            raise CheckpointError(f"tokenizer.json: malformed merge {m!r}")
    return merges


SPECIAL_ROLES = (("bos", "<bos>"), ("eos", "<eos>"), ("unk", "<unk>"), ("pad", "<pad>"), ("mask", "<mask>"))


def _last_id(tokens: list[str], text: str) -> int | None:
    """The id of ``text``; the last one if repeated (an added token over a vocab entry's text).

    A few scans of the list (C speed), not a text -> id dict of 262k entries.
    """
    idx = None
    with contextlib.suppress(ValueError):
        while True:
            idx = tokens.index(text, 0 if idx is None else idx + 1)
    return idx


def _special_ids(tokens: list[str], tcfg: dict, config: dict) -> dict[str, int]:
    """bos/eos/unk/pad/mask ids: the tokenizer config's token text, else config.json's id."""
    text_cfg = config.get("text_config") if isinstance(config.get("text_config"), dict) else config
    special_ids: dict[str, int] = {}
    for role, default in SPECIAL_ROLES:
        text = _token_text(tcfg.get(f"{role}_token")) or default
        idx = _last_id(tokens, text)
        if idx is not None:
            special_ids[role] = idx
        else:
            cfg_id = text_cfg.get(f"{role}_token_id")
            cfg_id = cfg_id[0] if isinstance(cfg_id, list) and cfg_id else cfg_id
            if _valid_id(cfg_id) and cfg_id < len(tokens):
                special_ids[role] = cfg_id
    if "bos" not in special_ids or "eos" not in special_ids:
        raise CheckpointError("tokenizer: cannot find the <bos> and <eos> tokens")
    return special_ids


def load_chat_template(root: Path, tcfg: dict) -> str | None:
    """``chat_template.jinja`` (current releases) or tokenizer_config.json's ``chat_template``."""
    path = root / "chat_template.jinja"
    if path.is_file():
        try:
            return path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise CheckpointError(f"chat_template.jinja: cannot read ({e})") from e
    tmpl = tcfg.get("chat_template")
    if isinstance(tmpl, list):  # [{"name": "default", "template": ...}, ...]
        named = {t.get("name"): t.get("template") for t in tmpl if isinstance(t, dict)}
        tmpl = named.get("default") or next(iter(named.values()), None)
    if tmpl is not None and not isinstance(tmpl, str):
        raise CheckpointError("tokenizer_config.json: chat_template must be a string")
    return tmpl
