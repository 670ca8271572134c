"""Showing a reply as it streams (REPL and one-shot alike): a spinner until the first token, the
answer on stdout, thinking and notices on stderr; then stats or the ``--json`` envelope."""

from __future__ import annotations

import json
import resource
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from g4cli.chat.conversation import Stats
from g4cli.chat.media import Media
from g4cli.chat.session import Reply, Session

if TYPE_CHECKING:
    from g4cli.chat.remote import Endpoint
    from g4cli.chat.settings import ChatOptions


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Spinner:
    """A spinner on stderr until the first token (only when stderr is a terminal)."""

    def __init__(self) -> None:
        from g4cli.render import err_console, stderr_is_tty

        self._status = err_console().status("thinking…") if stderr_is_tty() else None
        if self._status is not None:
            self._status.start()

    def stop(self) -> None:
        if self._status is not None:
            self._status.stop()
            self._status = None


def stream_reply(
    session: Session, text: str, reply: Reply, *, show_thoughts: bool, notice: Callable[[str], None]
) -> Reply:
    """Send ``text`` and show the reply as it streams into ``reply`` (which holds what was said,
    and its stats, also after Ctrl-C: that propagates once the screen is tidy and the partial
    answer is recorded)."""
    from g4cli.chat.printer import AnswerPrinter, ThoughtPrinter

    out, thoughts = AnswerPrinter(), ThoughtPrinter()
    spinner = None
    stream = session.send(text, reply)
    try:
        spinner = Spinner()
        for ev in stream:
            spinner.stop()
            if ev.kind == "text":
                thoughts.close()
                out.feed(ev.text)
            elif ev.kind == "thought" and show_thoughts:
                out.suspend()  # the answer's live lines are erased first, so stderr cannot garble them
                thoughts.feed(ev.text)
            elif ev.kind == "notice":
                out.suspend()
                notice(ev.text)
    finally:
        stream.close()  # an interrupted answer is recorded now, not when garbage-collected
        if spinner is not None:
            spinner.stop()
        thoughts.close()
        out.close()
    return reply


def print_stats(stats: Stats) -> None:
    from g4cli.render import info

    stopped = " · [yellow]stopped[/]" if stats.interrupted else ""
    info(
        f"[dim]load {stats.load_s:.2f} s · prompt {stats.prompt_tokens} tokens "
        f"({stats.prompt_eval_tokens} evaluated, {stats.prompt_tps:.1f} tok/s) · "
        f"answer {stats.gen_tokens} tokens ({stats.gen_tps:.1f} tok/s) · "
        f"first token {stats.ttft_s * 1000:.0f} ms · peak memory {peak_rss_mb():.0f} MB[/]{stopped}"
    )
    if stats.drafting:
        pace = f" · drafted rounds {stats.drafted_tps:.1f} tok/s" if stats.drafted_tps else ""
        pace += f", plain {stats.plain_tps:.1f} tok/s" if stats.plain_tps else ""
        paused = " · [yellow]paused[/][dim]: slower than plain decoding here" if stats.draft_paused else ""
        info(
            f"[dim]drafted {stats.draft_tokens} tokens, accepted {stats.draft_accepted} "
            f"({stats.acceptance:.0%}) · {stats.gen_tokens - stats.draft_accepted} target passes{pace}{paused}[/]"
        )


def print_json(model_name: str, reply: Reply, attachments: list[Media]) -> None:
    """The ``--json`` envelope on stdout."""
    doc = {
        "model": model_name,
        "response": reply.text,
        "thinking": reply.thought or None,
        "finish_reason": reply.finish,
        "tokens": {"prompt": reply.stats.prompt_tokens, "generated": reply.stats.gen_tokens},
        "timings": {**reply.stats.as_dict(), "peak_memory_mb": round(peak_rss_mb(), 1)},
        "attachments": [{"kind": m.kind, "path": m.name, "sha256": m.sha256} for m in attachments],
        "created": round(time.time(), 3),
    }
    sys.stdout.write(json.dumps(doc, ensure_ascii=False) + "\n")
    sys.stdout.flush()


def answer_remote(ep: Endpoint, name: str, text: str, attachments: list[Media], opts: ChatOptions) -> Reply:
    """The one-shot answer through a running ``g4 serve``, shown exactly as in-process."""
    from g4cli.chat import remote
    from g4cli.chat.printer import AnswerPrinter, ThoughtPrinter

    body = remote.request_body(name, text, attachments, opts)
    reply = Reply()
    started, first = remote.now(), None
    out = thoughts = None
    try:
        stream = remote.events(ep, body)
        kind, value = next(stream, ("finish", "stop"))  # the server's errors come before any output
        if not opts.json:
            out, thoughts = AnswerPrinter(), ThoughtPrinter()
        while True:
            if kind in ("text", "thought") and first is None:
                first = remote.now()
            if kind == "text":
                reply.text += value
                if out is not None:
                    thoughts.close()
                    out.feed(value)
            elif kind == "thought":
                reply.thought += value
                if thoughts is not None and opts.sampling.think:
                    thoughts.feed(value)
            elif kind == "finish":
                reply.finish = value
            elif kind == "usage":
                reply.stats = remote.stats_from(value, started, first)
            kind, value = next(stream, (None, None))
            if kind is None:
                break
    finally:
        if thoughts is not None:
            thoughts.close()
        if out is not None:
            out.close()
        if opts.verbose:
            print_stats(reply.stats)
    if opts.json:
        print_json(name, reply, attachments)
    return reply
