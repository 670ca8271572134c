"""Prompt evaluation and the decode loop: a conversation in, ``Event``s out.

``prefill`` brings a sequence's KV cache to a tokenized prompt (reusing the prefix it already
holds); a ``Decoder`` turns the logits of each step into answer/thinking events and the next
token to feed. ``answer_turns`` is the loop for one sequence; a scheduler serving several
sequences can drive ``Decoder``s over one shared batch instead.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

from g4cli.chat.conversation import ChannelSplitter, Event, Stats, Turn
from g4cli.chat.runtime.cache import MediaUnit, Sequence, n_pos
from g4cli.chat.runtime.sampler import Sampler, grammar_guard
from g4cli.chat.settings import Sampling
from g4cli.errors import RuntimeFailure

if TYPE_CHECKING:
    from g4cli.chat.runtime.model import Model, Prompt


def prefill(model: Model, seq: Sequence, prompt: Prompt) -> tuple[int, int]:
    """Evaluate what ``seq`` does not hold yet of ``prompt``; (prompt positions, positions evaluated)."""
    units = prompt.units
    total = n_pos(units)
    if total >= model.n_ctx:
        raise RuntimeFailure(f"the prompt ({total} tokens) does not fit the context ({model.n_ctx})")
    start = seq.reuse(units)
    i = start
    while i < len(units):
        if isinstance(units[i], MediaUnit):
            model.eval_media(seq, prompt.media[i], units[i], logits_last=i == len(units) - 1)
            i += 1
            continue
        j = i
        while j < len(units) and not isinstance(units[j], MediaUnit):
            j += 1
        model.decode(seq, list(units[i:j]), logits_last=j == len(units))
        i = j
    return total, n_pos(units[start:])


class Decoder:
    """One answer on one sequence: each step samples a token from the logits, turns it into
    events, and says which token to evaluate next (None once the answer is over)."""

    def __init__(
        self, model: Model, seq: Sequence, sampling: Sampling, stats: Stats, t0: float, n_ctx: int | None = None
    ) -> None:
        self.model, self.seq, self.stats, self.t0 = model, seq, stats, t0
        self.n_ctx = n_ctx or model.n_ctx  # positions this sequence may fill
        guard = grammar_guard(model) if sampling.grammar is not None else None
        self.sampler = Sampler(model.vocab, sampling, guard)
        self.splitter = ChannelSplitter()
        self.limit = sampling.max_tokens if sampling.max_tokens is not None else self.n_ctx
        self.finish = "stop"
        self.t_first: float | None = None

    def step(self, row: int = -1, n_past: int | None = None) -> tuple[list[Event], int | None]:
        """Sample from output ``row``; (events, the token to feed next or None when done).
        ``n_past``: the positions the answer holds so far, when the cache holds more (drafts)."""
        stats = self.stats
        if stats.gen_tokens >= self.limit:
            self.finish = "length"
            return self.splitter.finish(), None
        tok = self.sampler.sample(self.model.ctx, row)
        if self.t_first is None:
            self.t_first = time.perf_counter()
            stats.ttft_s = self.t_first - self.t0
        stats.gen_tokens += 1
        if self.model.is_eog(tok):
            return self.splitter.finish(), None
        control = self.model.control(tok)
        events = self.splitter.feed(control, b"" if control else self.model.piece_bytes(tok))
        if (self.seq.n_past if n_past is None else n_past) >= self.n_ctx:
            self.finish = "context"
            return events + self.splitter.finish(), None
        return events, tok

    def close(self) -> None:
        self.sampler.close()
        if self.t_first is not None:
            self.stats.gen_s = time.perf_counter() - self.t_first


def answer_turns(
    model: Model, seq: Sequence, turns: list[Turn], sampling: Sampling, stats: Stats | None = None
) -> Iterator[Event]:
    """Render the turns with the model's template, evaluate the prompt, stream the answer.

    ``stats`` (filled as the answer goes, so that an interrupted answer still has its numbers)
    is also carried by the final "done" event.
    """
    media = [m for t in turns for m in t.media]
    stats = stats if stats is not None else Stats()
    stats.load_s = model.load_s
    t0 = time.perf_counter()
    with model.tokenize_prompt(model.render(turns, sampling.think), media) as prompt:
        stats.prompt_tokens, stats.prompt_eval_tokens = prefill(model, seq, prompt)
    stats.prompt_s = time.perf_counter() - t0
    decoder = Decoder(model, seq, sampling, stats, t0)
    drafter = model.drafter  # an assistant attached by g4cli.chat.runtime.draft.attach
    try:
        if drafter is not None:
            from g4cli.chat.runtime.speculate import speculate

            yield from speculate(model, seq, decoder, drafter, model.draft_max)
        while drafter is None:
            events, tok = decoder.step()
            yield from events
            if tok is None:
                break
            model.decode(seq, [tok], logits_last=True)
    finally:
        decoder.close()
    yield Event("done", finish=decoder.finish, stats=stats)
