"""Drafting changes nothing but speed: on every tiny target + drafter pair, greedy tokens with the
drafter equal those without, token for token.

Two decodes are compared. With ``batch_invariant`` (``--batch-invariant``) every token is computed
as a row of a batch, as the verify batches compute them, and 200 tokens are the same bit for bit
on every pair, across sliding-window boundaries and after an image (``test_greedy_200*``).
By default a lone token is computed by other llama.cpp kernels than a row of a batch
(``test_a_lone_row_is_computed_apart``: llamafile's sgemm only takes 2+ rows, K-quants' repacked
gemm vs gemv, flash attention's split-KV path for one query over 512+ cells), so by default the
answers agree only until a near-tie: on one machine after 130-160 tokens, on another after 13
(tiny random models have many near-ties; the kernels llama.cpp picks depend on the CPU).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import FAMILIES

from g4cli.chat.conversation import Stats, Turn
from g4cli.chat.settings import Sampling

N = 200
PROMPT = "Tell me a long story about a cat."


def load(target: Path, batch_invariant: bool = False):
    from g4cli.chat.runtime.model import Model

    mmproj = target.with_name(f"mmproj-{target.stem}.gguf")
    return Model(target, mmproj if mmproj.exists() else None, n_ctx=2048, batch_invariant=batch_invariant)


def answer(
    target: Path, drafter: Path | None, turns: list[Turn], n: int = N, batch_invariant: bool = False
) -> tuple[list, Stats]:
    """What the target's cache holds afterwards (prompt and answer, in units) and the stats."""
    from g4cli.chat.runtime.draft import attach

    with load(target, batch_invariant) as model:
        if drafter is not None:
            attach(model, drafter, 3)
        stats = Stats()
        list(model.generate(turns, Sampling(temperature=0.0, max_tokens=n), stats))
        assert model.sequences[0].n_past > sliding_window(target)  # the answer crossed the window
        return list(model.sequences[0].units), stats


def sliding_window(target: Path) -> int:
    from g4cli.models.ggufmeta import read_values

    key = "gemma4.attention.sliding_window"
    return int(read_values(target, {key})[key])


def same_prefix(a: list, b: list) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


@pytest.mark.parametrize("family", [*FAMILIES, "12b"])
def test_greedy_200(endless, family: str) -> None:
    target, drafter = endless(family)
    turns = [Turn("user", PROMPT)]
    plain, s0 = answer(target, None, turns, batch_invariant=True)
    drafted, s1 = answer(target, drafter, turns, batch_invariant=True)
    assert s0.gen_tokens == s1.gen_tokens == N
    assert drafted == plain
    assert s1.drafting and s1.draft_tokens >= N  # it drafted all along (3 a round, all but the first)
    assert not s0.drafting


@pytest.mark.parametrize("family", FAMILIES)
def test_greedy_200_after_an_image(endless, media_dir, family: str) -> None:
    """E2B/E4B read an image causally, 26B/31B in one non-causal ubatch; 1,120 image tokens put
    the cache past the 512 cells where a lone row takes flash attention's split-KV path."""
    from g4cli.chat import media

    target, drafter = endless(family)
    turns = [Turn("user", "What is in this picture? " + PROMPT, [media.load(media_dir["photo"])])]
    plain, _ = answer(target, None, turns, batch_invariant=True)
    drafted, s1 = answer(target, drafter, turns, batch_invariant=True)
    assert any(not isinstance(u, int) for u in plain[: len(plain) - N])  # the image is in the prompt
    assert drafted == plain
    assert s1.gen_tokens == N and s1.draft_tokens >= N


def lone_vs_batched(target: Path, batch_invariant: bool) -> float:
    """Largest logit difference, over 36 tokens t, between t decoded alone after 340 tokens and t
    as the first row of the batch [t, t + 1] (which row 0 does not attend to). With flash
    attention on (the CPU default) a lone row parts from a batch row once the cache view holds
    256+ cells; with it off, at any length."""
    from g4cli.chat.runtime.batch import StepBatch

    with load(target, batch_invariant) as model, StepBatch(2) as batch:
        seq = model.sequences[0]
        history = model.tokenize(model.render([Turn("user", PROMPT)])) + [300 + i for i in range(300)]
        worst = 0.0
        for t in range(100, 1000, 25):
            out = []
            for rows in ([t], [t, t + 1]):
                seq.clear()
                model.decode(seq, history, logits_last=False)
                batch.decode(model, [(seq, rows)])
                out.append(model.logits(0))
            worst = max(worst, float(np.abs(out[0] - out[1]).max()))
        return worst


def test_a_lone_row_is_computed_apart(endless) -> None:
    """Why the default decode may part from drafting's: llama.cpp computes a lone token by other
    kernels than a row of a batch. ``batch_invariant`` pads the lone row into a batch."""
    target, _ = endless("e2b")
    assert lone_vs_batched(target, batch_invariant=False) > 1e-3
    assert lone_vs_batched(target, batch_invariant=True) == 0.0


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


def wrap_drafter(monkeypatch, make) -> None:
    """Every model the worker loads drafts with ``make(real drafter, model)``."""
    from g4cli.chat.runtime import draft

    original = draft.attach

    def attach(model, path, n_max=3):
        real = original(model, path, n_max)
        model.drafter = make(real, model)
        return real

    monkeypatch.setattr(draft, "attach", attach)


def test_accepted_drafts_same_answer(endless, monkeypatch) -> None:
    target, drafter_path = endless("e4b")
    turns = [Turn("user", PROMPT)]
    plain, _ = answer(target, None, turns, batch_invariant=True)
    wrap_drafter(monkeypatch, lambda real, _model: Oracle(real, plain))
    drafted, stats = answer(target, drafter_path, turns, batch_invariant=True)
    assert drafted == plain
    assert 0.5 < stats.acceptance < 1.0, (stats.draft_accepted, stats.draft_tokens)
    assert model_calls(stats) < N * 0.6  # fewer target passes than tokens


def model_calls(stats: Stats) -> int:
    """Target passes of an answer: one per round, a round keeps its accepted drafts and one more."""
    return stats.gen_tokens - stats.draft_accepted


def test_without_rollback_the_answer_changes(endless, monkeypatch) -> None:
    """The injected bug: rejected drafts left in the target's cache."""
    from g4cli.chat.runtime.cache import Sequence

    target, drafter = endless("e4b")
    turns = [Turn("user", PROMPT)]
    plain, _ = answer(target, None, turns, batch_invariant=True)
    monkeypatch.setattr(Sequence, "keep", lambda self, n_units: None)
    broken, _ = answer(target, drafter, turns, batch_invariant=True)
    assert broken[: len(plain)] != plain
