"""``--draft auto`` drafts only where it pays: each answer times plain rounds, then drafted ones,
and stops drafting when they yield fewer tokens a second (``speculate.Pace``).

Real models and a real drafter; what decides is made plain by the drafter: one that proposes the
known answer (every draft kept: 4 tokens a round for about one pass) pays, the same one slowed
by 50 ms a step does not. The answers equal the plain ones either way."""

from __future__ import annotations

import time

from test_draft_lossless import PROMPT, Oracle, answer, load

from g4cli.chat.conversation import Stats, Turn
from g4cli.chat.runtime.speculate import DRAFTED_ROUNDS, PLAIN_ROUNDS, Pace
from g4cli.chat.settings import Sampling

N = 80


def test_pace_decides_from_the_rounds_it_timed() -> None:
    always = Pace(paced=False)
    assert always.wants_drafts()
    for faster in (True, False):
        pace = Pace(paced=True)
        for _ in range(PLAIN_ROUNDS):
            assert not pace.wants_drafts()
            pace.record(0.010, 1, drafted=False)  # 100 tok/s
        for _ in range(DRAFTED_ROUNDS):
            assert pace.wants_drafts() and pace.pays is None
            pace.record(0.020 if faster else 0.050, 3, drafted=True)  # 150 or 60 tok/s
        assert pace.pays is faster and pace.wants_drafts() is faster
    assert not Pace(paced=True, pays=False).wants_drafts()  # an earlier answer measured it
    assert Pace(paced=True, pays=True).wants_drafts()  # no plain rounds again


class Perfect(Oracle):
    def draft(self, token: int, pos: int, n: int, seq_id: int = 0) -> list[int]:
        return list(self.expected[pos + 1 : pos + 1 + n])


class Slow(Perfect):
    def draft(self, token: int, pos: int, n: int, seq_id: int = 0) -> list[int]:
        time.sleep(0.05)
        return super().draft(token, pos, n, seq_id)


def paced_answers(target, drafter_path, kind: type[Oracle], plain: list) -> tuple[list[Stats], list[list]]:
    """Two answers on one model with ``--draft auto``'s pacing and the given drafter."""
    from g4cli.chat.runtime.draft import attach

    turns = [Turn("user", PROMPT)]
    stats_list, caches = [], []
    with load(target, batch_invariant=True) as model:
        real = attach(model, drafter_path, 3)
        model.drafter, model.draft_paced = kind(real, plain), True
        for _ in range(2):
            model.reset()
            stats = Stats()
            list(model.generate(turns, Sampling(temperature=0.0, max_tokens=N), stats))
            stats_list.append(stats)
            caches.append(list(model.sequences[0].units))
    return stats_list, caches


def test_a_drafter_that_pays_keeps_drafting(endless) -> None:
    target, drafter = endless("e4b")
    plain, _ = answer(target, None, [Turn("user", PROMPT)], n=N, batch_invariant=True)
    (first, second), caches = paced_answers(target, drafter, Perfect, plain)
    assert caches == [plain, plain]
    assert not first.draft_paused and first.drafted_tps > first.plain_tps > 0
    assert first.acceptance == 1.0 and first.draft_tokens > N // 2  # drafting went on to the end
    assert not second.draft_paused and second.draft_tokens > first.draft_tokens  # decided: no timed plain rounds


def test_a_drafter_slower_than_plain_decoding_is_paused(endless) -> None:
    target, drafter = endless("e4b")
    plain, _ = answer(target, None, [Turn("user", PROMPT)], n=N, batch_invariant=True)
    (first, second), caches = paced_answers(target, drafter, Slow, plain)
    assert caches == [plain, plain]
    assert first.draft_paused and 0 < first.drafted_tps < first.plain_tps
    assert first.draft_tokens <= 3 * DRAFTED_ROUNDS  # stopped after the rounds it timed
    assert second.draft_paused and second.draft_tokens == 0  # the model remembers


def test_draft_on_is_not_paced(endless) -> None:
    """``--draft on`` (``draft_paced`` false): the slow drafter drafts every round."""
    target, drafter = endless("e4b")
    plain, _ = answer(target, None, [Turn("user", PROMPT)], n=N, batch_invariant=True)
    from g4cli.chat.runtime.draft import attach

    with load(target, batch_invariant=True) as model:
        model.drafter = Slow(attach(model, drafter, 3), plain)
        stats = Stats()
        list(model.generate([Turn("user", PROMPT)], Sampling(temperature=0.0, max_tokens=N), stats))
    assert not stats.draft_paused and stats.draft_tokens > N // 2  # every round but the first drafted
