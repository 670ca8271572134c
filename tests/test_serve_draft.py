"""``g4 serve`` with an assistant drafter: the same answers, drafts verified per answer in the
shared steps of continuous batching, and the drafts counted in ``usage``.

The server's worker is driven in-process (its real thread, model and batches; requests as the
HTTP side submits them) where a test must change the drafter or the cache; the rest goes through
a real ``g4 serve`` and the official ``openai`` client. Answers are compared with
``--batch-invariant`` (see tests/test_draft_lossless.py for why the default may part at a
near-tie).
"""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest
from serving import Served
from test_draft_lossless import wrap_drafter

from g4cli.chat.conversation import Stats, Turn
from g4cli.chat.settings import LoadOptions, Sampling

N = 100
PROMPTS = ["Tell me a long story about a cat.", "Write about the sea and the ships on it."]


@pytest.fixture(scope="module")
def pair(endless, tmp_path_factory) -> Path:
    """An E2B-like target with its drafter beside it (``drafter-<stem>.gguf``, as for a GGUF path)."""
    target, drafter = endless("e2b")
    d = tmp_path_factory.mktemp("served-pair")
    shutil.copy(target, d / "m.gguf")
    shutil.copy(drafter, d / "drafter-m.gguf")
    return d / "m.gguf"


def served(target: Path, prompts: list[str], *, parallel: int, draft: str, n: int = N) -> list[tuple[str, Stats]]:
    """The answers of a worker serving ``target`` to ``prompts`` all submitted at once (greedy)."""
    from g4cli.chat.select import Choice
    from g4cli.serve.engine import GenRequest, Job, Worker

    load = LoadOptions(ctx=1024 * parallel, draft=draft, batch_invariant=True).validate()
    worker = Worker(Choice("m", target, None), load, parallel=parallel, max_queue=len(prompts))
    worker.start()
    worker.loaded.wait()
    assert worker.load_error is None, worker.load_error
    loop = asyncio.new_event_loop()

    async def one(prompt: str) -> tuple[str, Stats]:
        job = Job(GenRequest([Turn("user", prompt)], Sampling(temperature=0.0, max_tokens=n)), loop)
        worker.submit(job)
        text = []
        while True:
            ev = await job.queue.get()
            if isinstance(ev, Exception):
                raise ev
            job.idle.set()
            if ev.kind == "done":
                return "".join(text), ev.stats
            text.append(ev.text)

    async def all_at_once() -> list[tuple[str, Stats]]:
        return await asyncio.gather(*(one(p) for p in prompts))

    try:
        return loop.run_until_complete(all_at_once())
    finally:
        worker.stop()
        worker.join()
        loop.close()


@pytest.mark.parametrize("parallel", [1, 2])
def test_the_same_answers_with_the_drafter(pair, parallel: int) -> None:
    """Two requests at once: with ``--parallel 2`` each step holds both answers' verify rows."""
    plain = served(pair, PROMPTS, parallel=parallel, draft="off")
    drafted = served(pair, PROMPTS, parallel=parallel, draft="on")
    assert [text for text, _ in drafted] == [text for text, _ in plain]
    for (_, s0), (_, s1) in zip(plain, drafted, strict=True):
        assert s0.gen_tokens == s1.gen_tokens == N
        assert not s0.drafting and s1.drafting and s1.draft_tokens > N  # 3 a round after the first


class Oracle:
    """Proposes each sequence's known answer (the plain run's), every third round one token wrong:
    rounds keep 0 to 3 drafts. It finds the answer by the tokens the sequence holds."""

    def __init__(self, real, model, answers: list[list[int]]) -> None:
        self.real, self.model, self.answers, self.calls = real, model, answers, 0

    def draft(self, token: int, pos: int, n: int, seq_id: int = 0) -> list[int]:
        self.calls += 1
        held = [*self.model.sequences[seq_id].units, token]
        known = next(a for a in self.answers if a[: len(held)] == held)
        out = known[len(held) : len(held) + n]
        if self.calls % 3 == 0 and out:
            out[-1] = (out[-1] + 1) % 1000 + 5
        return out

    def __getattr__(self, name: str):
        return getattr(self.real, name)


def held_answers(target: Path, prompts: list[str]) -> list[list[int]]:
    """Prompt + greedy answer tokens of each prompt, decoded without a drafter (g4 chat's path)."""
    from g4cli.chat.runtime.model import Model

    out = []
    with Model(target, n_ctx=1024, batch_invariant=True) as model:
        for prompt in prompts:
            seq = model.sequences[0]
            seq.clear()
            list(model.generate([Turn("user", prompt)], Sampling(temperature=0.0, max_tokens=N), Stats()))
            out.append(list(seq.units))
    return out


def test_accepted_drafts_counted_per_answer(pair, monkeypatch) -> None:
    answers = held_answers(pair, PROMPTS)
    wrap_drafter(monkeypatch, lambda real, model: Oracle(real, model, answers))
    plain = served(pair, PROMPTS, parallel=2, draft="off")
    drafted = served(pair, PROMPTS, parallel=2, draft="on")
    assert [text for text, _ in drafted] == [text for text, _ in plain]
    for _, stats in drafted:
        assert 0.5 < stats.acceptance < 1.0, (stats.draft_accepted, stats.draft_tokens)
        # one target pass a round; a round keeps its accepted drafts and one token more
        assert stats.gen_tokens - stats.draft_accepted < N * 0.6


class SlowDrafter:
    """The real drafter, 50 ms slower a step: drafting can only lose."""

    def __init__(self, real) -> None:
        self.real = real

    def draft(self, *args, **kwargs) -> list[int]:
        import time

        time.sleep(0.05)
        return self.real.draft(*args, **kwargs)

    def __getattr__(self, name: str):
        return getattr(self.real, name)


def test_auto_pauses_a_drafter_that_does_not_pay(pair, monkeypatch) -> None:
    """``--draft auto`` in the server: the worker times plain steps, then drafted ones, and stops
    drafting when they are slower; the answers stay the same."""
    wrap_drafter(monkeypatch, lambda real, _model: SlowDrafter(real))
    plain = served(pair, PROMPTS, parallel=2, draft="off")
    paced = served(pair, PROMPTS, parallel=2, draft="auto")
    assert [text for text, _ in paced] == [text for text, _ in plain]
    for _, stats in paced:
        assert stats.draft_paused and 0 < stats.drafted_tps < stats.plain_tps
        assert 0 < stats.draft_tokens <= 3 * 8  # only the rounds it timed drafted


def test_without_rollback_the_served_answers_change(pair, monkeypatch) -> None:
    """The injected bug: rejected drafts left in the target's cache."""
    from g4cli.chat.runtime.cache import Sequence

    plain = served(pair, PROMPTS, parallel=2, draft="off")
    monkeypatch.setattr(Sequence, "keep", lambda self, n_units: None)
    broken = served(pair, PROMPTS, parallel=2, draft="on")
    assert [text for text, _ in broken] != [text for text, _ in plain]


def test_usage_counts_the_drafts(pair) -> None:
    """Through the real server and the openai client: ``completion_tokens_details`` carries the
    accepted and rejected drafts, the same numbers as g4 chat's for the same answer."""
    from openai import OpenAI

    from g4cli.chat.runtime.draft import attach
    from g4cli.chat.runtime.model import Model

    with Model(pair, n_ctx=1024, batch_invariant=True) as model:
        attach(model, pair.with_name("drafter-m.gguf"))
        chat = Stats()
        text = "".join(
            e.text
            for e in model.generate([Turn("user", PROMPTS[0])], Sampling(temperature=0.0, max_tokens=40), chat)
            if e.kind == "text"
        )
    for draft in ("on", "off"):  # not auto: that paces drafting by the clock (test_draft_pace.py)
        with Served(pair, "--ctx", "1024", "--batch-invariant", "--draft", draft) as server:
            client = OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=120)
            r = client.chat.completions.create(
                model="m", messages=[{"role": "user", "content": PROMPTS[0]}], temperature=0, max_tokens=40
            )
        details = r.usage.completion_tokens_details
        assert r.choices[0].message.content == text and r.usage.completion_tokens == 40
        if draft == "on":
            assert chat.draft_tokens > 40
            assert details.accepted_prediction_tokens == chat.draft_accepted
            assert details.rejected_prediction_tokens == chat.draft_tokens - chat.draft_accepted
        else:
            assert details.accepted_prediction_tokens == details.rejected_prediction_tokens == 0


def test_bad_drafting_options_stop_the_server(run_g4, pair, gguf, tmp_path) -> None:
    alone = tmp_path / "alone.gguf"
    shutil.copy(gguf("e2b", "Q8_0"), alone)
    none = run_g4("serve", alone, "--draft", "on", "--port", "0", timeout=120)
    assert none.returncode == 1 and none.err_lines == [
        f"Error: alone: --draft on: {alone} has no drafter (pull it again to fetch its drafter, or use --draft auto)"
    ]
    shutil.copy(alone, tmp_path / "drafter-alone.gguf")  # a model, not a drafter, beside it
    wrong = run_g4("serve", alone, "--port", "0", timeout=120)
    assert wrong.returncode == 1 and wrong.err_lines == [
        f"Error: alone: {tmp_path / 'drafter-alone.gguf'}: a gemma4 model, not a drafter (arch gemma4-assistant)"
    ]
    usage = run_g4("serve", alone, "--draft", "maybe", "--port", "0")
    assert usage.returncode == 2
