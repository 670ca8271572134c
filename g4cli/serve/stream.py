"""One request's answer as the APIs see it: content, reasoning and tool-call pieces, then the end.

``answer()`` submits a job to a model's worker and turns its events into ``Piece``s: thinking
becomes reasoning, answer text is held back while it may be the start of a stop string (and
ends the answer when one appears), and with tools offered the text goes through Gemma 4's
tool-call parser. When the consumer stops reading (a client that went away), the job is
cancelled and its sequence freed.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Literal

from g4cli.chat.conversation import Stats
from g4cli.serve.engine import GenRequest, Job, Worker


@dataclass
class Piece:
    kind: Literal["content", "reasoning", "tool_call", "done"]
    text: str = ""
    tool_call: dict[str, Any] | None = None  # an OpenAI streaming tool-call delta
    finish: str | None = None  # "stop", "length", "tool_calls"
    stats: Stats | None = None


class StopFilter:
    """Holds back text that may be the beginning of a stop string; reports the first full hit."""

    def __init__(self, stops: list[str]) -> None:
        self.stops = [s for s in stops if s]
        self.held = ""

    def feed(self, text: str) -> tuple[str, bool]:
        """(text safe to emit now, whether a stop string ended the answer)."""
        if not self.stops:
            return text, False
        buf = self.held + text
        hits = [i for i in (buf.find(s) for s in self.stops) if i >= 0]
        if hits:
            self.held = ""
            return buf[: min(hits)], True
        keep = max((k for s in self.stops for k in range(1, len(s)) if buf.endswith(s[:k])), default=0)
        self.held = buf[len(buf) - keep :] if keep else ""
        return buf[: len(buf) - keep], False

    def flush(self) -> str:
        out, self.held = self.held, ""
        return out


@dataclass
class Answer:
    """What a non-streaming response needs: the whole answer."""

    content: str = ""
    reasoning: str = ""
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    finish: str = "stop"
    stats: Stats = field(default_factory=Stats)


async def answer(worker: Worker, request: GenRequest, *, stop: list[str] | None = None) -> AsyncIterator[Piece]:
    job = Job(request, asyncio.get_running_loop())
    worker.submit(job)
    stopper = StopFilter(stop or [])
    parser = None
    if request.tools:
        from g4cli.serve import tools as tool_calls

        parser = tool_calls.ToolCallParser(names=tool_calls.names(request.tools))
    called = False

    def split(text: str) -> list[Piece]:
        nonlocal called
        if parser is None:
            return [Piece("content", text)] if text else []
        out = []
        for kind, value in parser.feed(text):
            if kind == "tool_call":
                called = True
                out.append(Piece("tool_call", tool_call=value))
            elif value:
                out.append(Piece("content", value))
        return out

    try:
        while True:
            if job.queue.empty():
                job.idle.set()  # all sent: the worker may decode on (see engine.HANDOFF_S)
            ev = await job.queue.get()
            if isinstance(ev, Exception):
                raise ev
            if ev.kind == "thought":
                yield Piece("reasoning", ev.text)
            elif ev.kind == "notice":
                continue
            elif ev.kind == "text":
                text, hit = stopper.feed(ev.text)
                for piece in split(text):
                    yield piece
                if hit:
                    job.cancel()
                    await _drain(job)
                    job.stats.interrupted = False  # a stop string is a normal end
                    yield Piece("done", finish="stop", stats=job.stats)
                    return
            elif ev.kind == "done":
                for piece in split(stopper.flush()):
                    yield piece
                if parser is not None:
                    for piece in _tool_pieces(parser.finish()):
                        called = called or piece.kind == "tool_call"
                        yield piece
                finish = "tool_calls" if called else ("stop" if ev.finish == "cancelled" else ev.finish)
                yield Piece("done", finish=finish, stats=ev.stats)
                return
    finally:
        job.cancel()  # a consumer that stopped early (client gone): free the sequence


def _tool_pieces(items: list[tuple[str, Any]]) -> list[Piece]:
    return [Piece("tool_call", tool_call=v) if k == "tool_call" else Piece("content", v) for k, v in items if v]


async def _drain(job: Job) -> None:
    """Wait for the worker to acknowledge a cancel (its final event)."""
    while True:
        ev = await job.queue.get()
        if isinstance(ev, Exception) or ev.kind == "done":
            return


class Collector:
    """Assembles pieces into an ``Answer`` (tool-call deltas merged per call)."""

    def __init__(self) -> None:
        self.answer = Answer()
        self.calls: dict[int, dict[str, Any]] = {}

    def add(self, p: Piece) -> None:
        out = self.answer
        if p.kind == "content":
            out.content += p.text
        elif p.kind == "reasoning":
            out.reasoning += p.text
        elif p.kind == "tool_call" and p.tool_call is not None:
            d = p.tool_call
            call = self.calls.setdefault(d["index"], {"id": d.get("id"), "type": "function", "function": {}})
            fn = d.get("function", {})
            if "name" in fn:
                call["function"]["name"] = fn["name"]
            call["function"]["arguments"] = call["function"].get("arguments", "") + fn.get("arguments", "")
            out.tool_calls = [self.calls[i] for i in sorted(self.calls)]
        elif p.kind == "done":
            out.finish, out.stats = p.finish or "stop", p.stats or Stats()


async def collect(pieces: AsyncIterator[Piece]) -> Answer:
    """The whole answer of a non-streaming request."""
    c = Collector()
    async for p in pieces:
        c.add(p)
    return c.answer
