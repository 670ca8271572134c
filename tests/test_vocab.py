"""The whole-list tokenizer.json reading gives what the per-token rules give, errors included."""

from __future__ import annotations

import pytest
from gguf import TokenType

from g4cli.errors import CheckpointError
from quantize import vocab as V


def _reference_table(tok: dict) -> tuple[list[str], list[int]]:
    """The per-token rules, written out one token at a time."""
    by_id = {idx: text for text, idx in tok["model"]["vocab"].items()}
    special, user = set(), set()
    for e in tok.get("added_tokens") or []:
        by_id[e["id"]] = e["content"]
        (special if e.get("special") else user).add(e["id"])
    tokens, types = [], []
    for i in range(max(by_id) + 1):
        text = by_id[i]
        tokens.append(text)
        if text in V.VISIBLE_SPECIALS:
            types.append(TokenType.USER_DEFINED)
        elif i in special:
            types.append(TokenType.CONTROL)
        elif i in user:
            types.append(TokenType.USER_DEFINED)
        elif V.BYTE_TOKEN.fullmatch(text):
            types.append(TokenType.BYTE)
        else:
            types.append(TokenType.NORMAL)
    return tokens, [int(t) for t in types]


def _tok(vocab: dict, added: list | None = None, merges: list | None = None) -> dict:
    return {"model": {"type": "BPE", "vocab": vocab, "merges": merges or [["a", "b"]]}, "added_tokens": added or []}


TRICKY = _tok(
    {
        "<pad>": 0,
        "<0x0A>": 1,
        "<0xfF>": 2,
        "<0x0G>": 3,  # not a byte token
        "<|channel>": 4,  # visible although not added
        "<b>": 5,
        "▁w": 6,
        "x": 7,
        "<0x41>": 8,  # replaced by an added token below: its type follows the added one
        "y": 9,
    },
    added=[
        {"id": 0, "content": "<pad>", "special": True},
        {"id": 5, "content": "<b>", "special": False},
        {"id": 8, "content": "<0x41>", "special": True},
        {"id": 10, "content": "<channel|>", "special": True},  # visible beats control
        {"id": 11, "content": "<mask>", "special": True},
        {"id": 7, "content": "x2", "special": False},  # renames id 7
        {"id": 9, "content": "y", "special": False},
        {"id": 9, "content": "y", "special": True},  # both: control wins
    ],
)


def test_token_table_matches_the_per_token_rules() -> None:
    assert all(t.startswith("<") for t in V.VISIBLE_SPECIALS)  # _token_table looks only at "<..." tokens
    tokens, types = V._token_table(TRICKY, TRICKY["model"])
    assert (tokens, types) == _reference_table(TRICKY)
    assert types[1:4] == [TokenType.BYTE, TokenType.BYTE, TokenType.NORMAL]
    assert types[4] == types[10] == TokenType.USER_DEFINED
    assert types[8] == types[9] == TokenType.CONTROL


@pytest.mark.parametrize(
    ("vocab", "added", "message"),
    [
        ({"a": 0, "b": True}, [], "token 'b' has invalid id True"),
        ({"a": 0, "b": -1}, [], "token 'b' has invalid id -1"),
        ({"a": 0, "b": 1.0}, [], "token 'b' has invalid id 1.0"),
        ({"a": 0, "b": 1 << 21}, [], "invalid id 2097152"),
        ({"a": 0, "b": 3}, [{"id": 1, "content": "c"}], "gaps (first missing id 2)"),
        ({"a": 0}, [{"id": "1", "content": "c"}], "malformed added token"),
    ],
)
def test_token_table_errors(vocab: dict, added: list, message: str) -> None:
    tok = _tok(vocab, added)
    with pytest.raises(CheckpointError, match=message.replace("(", r"\(").replace(")", r"\)")):
        V._token_table(tok, tok["model"])


@pytest.mark.parametrize(
    ("merges", "expected"),
    [
        ([["a", "b"], ["▁", "the"], ["ab", "c d"]], ["a b", "▁ the", "ab c d"]),
        (["a b", "▁ the", "  x"], ["a b", "▁ the", "  x"]),
        ([["a", "b"], "c d"], ["a b", "c d"]),  # mixed: the per-merge path
    ],
)
def test_merges_in_either_form(merges: list, expected: list) -> None:
    assert V._merges({"merges": merges}) == expected


@pytest.mark.parametrize(
    "merges", [[["a", "b"], ["a", 1]], [["a", "b"], ["a"]], ["a b", "ab"], ["a b", " ab"], [["a", "b"], 3], []]
)
def test_malformed_merges_are_refused(merges: list) -> None:
    with pytest.raises(CheckpointError, match="merge"):
        V._merges({"merges": merges})


def test_special_ids_take_the_last_of_repeated_texts() -> None:
    ids = V._special_ids(["<pad>", "<eos>", "<bos>", "<eos>"], {}, {})
    assert ids == {"pad": 0, "eos": 3, "bos": 2}
