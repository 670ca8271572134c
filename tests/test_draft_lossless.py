"""Drafting changes nothing but speed: on every tiny target + drafter pair, greedy tokens with the
drafter equal those without, token for token.

NOT met in full: the issue asks for 200 equal tokens; on e2b, e4b and 26b-a4b the answers part
after 130-160 tokens (independently of the context size), at a token where the plain run and a
batched re-evaluation of the same history already disagree (e2b: top-2 margin 0.045): llama.cpp
computes a token's logits differently in a batch than alone. With the drafter attached but no
drafts (single rows, the hidden-state output on) the 200 tokens are identical. ``SAME`` is what
holds on every pair; ``test_greedy_200`` records the full requirement (xfail where it does not
hold). After an image the answers part after 12-30 tokens (xfail), and there the cause is pinned
down: with 512 or more cells in the cache view, llama.cpp's CPU flash attention computes a
single-token decode on a split-KV path (``ggml-cpu/ops.cpp:9490``, ``neq1 == 1 && nek1 >= 512``)
that sums in another order than any batch does; the first rows of a 4-token batch then differ
from single decodes by 0.21 (logits of ~10), and by 0.0 with flash attention off.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import FAMILIES

from g4cli.chat.conversation import Stats, Turn
from g4cli.chat.settings import Sampling

N = 200
SAME = 100  # answer tokens equal on every pair (see above)
PROMPT = "Tell me a long story about a cat."


@pytest.fixture(scope="module")
def endless(tmp_path_factory):
    """(target GGUF, drafter GGUF) per family; targets never stop by themselves (``endless``)."""
    from quantize.converter import convert
    from quantize.tiny import make_checkpoint, make_drafter

    cache: dict[str, tuple[Path, Path]] = {}

    def build(family: str) -> tuple[Path, Path]:
        if family not in cache:
            d = tmp_path_factory.mktemp(f"lossless-{family}")
            make_checkpoint(d / "t", family, endless=True)
            target = convert(d / "t", d / "t.gguf", quant="q8_0", mmproj_type="f16").text
            make_drafter(d / "a", family)
            cache[family] = (target, convert(d / "a", d / "a.gguf", quant="q8_0", mmproj_type=None).text)
        return cache[family]

    return build


def answer(target: Path, drafter: Path | None, turns: list[Turn], n: int = N) -> tuple[list, Stats]:
    """What the target's cache holds afterwards (prompt and answer, in units) and the stats."""
    from g4cli.chat.runtime.draft import attach
    from g4cli.chat.runtime.model import Model

    mmproj = target.with_name(f"mmproj-{target.stem}.gguf")
    with Model(target, mmproj if mmproj.exists() else None, n_ctx=2048) as model:
        if drafter is not None:
            attach(model, drafter, 3)
        stats = Stats()
        list(model.generate(turns, Sampling(temperature=0.0, max_tokens=n), stats))
        return list(model.sequences[0].units), stats


def same_prefix(a: list, b: list) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


@pytest.mark.parametrize("family", [*FAMILIES, "12b"])
def test_greedy_same_with_and_without_drafter(endless, family: str) -> None:
    target, drafter = endless(family)
    turns = [Turn("user", PROMPT)]
    plain, s0 = answer(target, None, turns)
    drafted, s1 = answer(target, drafter, turns)
    assert s0.gen_tokens == s1.gen_tokens == N
    n_prompt = len(plain) - N
    assert same_prefix(drafted, plain) >= n_prompt + SAME
    assert s1.drafting and s1.draft_tokens >= N  # it drafted all along (3 a round, all but the first)
    assert not s0.drafting


@pytest.mark.parametrize(
    "family",
    [
        *(pytest.param(f, marks=pytest.mark.xfail(reason="batch vs single-row logits: see the docstring"))
          for f in ("e2b", "e4b", "26b-a4b")),
        "31b",
        "12b",
    ],
)  # fmt: skip
def test_greedy_200(endless, family: str) -> None:
    target, drafter = endless(family)
    turns = [Turn("user", PROMPT)]
    assert answer(target, drafter, turns)[0] == answer(target, None, turns)[0]


@pytest.mark.xfail(reason="after an image: flash attention's split-KV path for single-token decodes, see the docstring")
@pytest.mark.parametrize("family", ["e2b", "e4b"])
def test_greedy_same_after_an_image(endless, media_dir, family: str) -> None:
    from g4cli.chat import media

    target, drafter = endless(family)
    turns = [Turn("user", "What is in this picture? " + PROMPT, [media.load(media_dir["photo"])])]
    plain, _ = answer(target, None, turns)
    drafted, stats = answer(target, drafter, turns)
    assert same_prefix(drafted, plain) >= len(plain) - N + SAME
    assert stats.gen_tokens == N and stats.draft_tokens > 0


class Oracle:
    """Proposes the known answer's next tokens, every third one wrong: rounds that keep 0, 1 or
    2 drafts, and some that keep all 3 and take the target's bonus token."""

    def __init__(self, real, expected: list[int]) -> None:
        self.real, self.expected, self.calls = real, expected, 0

    def draft(self, token: int, pos: int, n: int, seq_id: int = 0) -> list[int]:
        self.calls += 1
        out = list(self.expected[pos + 1 : pos + 1 + n])  # text only: unit i is at position i
        if self.calls % 3 == 0 and out:
            out[-1] = (out[-1] + 1) % 1000 + 5
        return out

    def __getattr__(self, name: str):
        return getattr(self.real, name)


def test_accepted_drafts_same_answer(endless, monkeypatch) -> None:
    from g4cli.chat.runtime import draft

    target, drafter_path = endless("e4b")
    turns = [Turn("user", PROMPT)]
    plain, _ = answer(target, None, turns, SAME)
    original = draft.attach

    def oracle_attach(model, path, n_max=3):
        real = original(model, path, n_max)
        model.drafter = Oracle(real, plain)
        return real

    monkeypatch.setattr(draft, "attach", oracle_attach)
    drafted, stats = answer(target, drafter_path, turns, SAME)
    assert drafted == plain
    assert 0.5 < stats.acceptance < 1.0, (stats.draft_accepted, stats.draft_tokens)
    assert model_calls(stats) < SAME * 0.6  # fewer target passes than tokens


def model_calls(stats: Stats) -> int:
    """Target passes of an answer: one per round, a round keeps its accepted drafts and one more."""
    return stats.gen_tokens - stats.draft_accepted


def test_without_rollback_the_answer_changes(endless, monkeypatch) -> None:
    """The injected bug: rejected drafts left in the target's cache."""
    from g4cli.chat.runtime.cache import Sequence

    target, drafter = endless("e4b")
    turns = [Turn("user", PROMPT)]
    plain, _ = answer(target, None, turns)
    monkeypatch.setattr(Sequence, "keep", lambda self, n_units: None)
    broken, _ = answer(target, drafter, turns)
    assert same_prefix(broken, plain) < len(plain) - N + SAME
