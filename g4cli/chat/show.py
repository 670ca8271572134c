"""Showing a reply as it streams (REPL and one-shot alike): a spinner until the first token, the
answer on stdout, thinking and notices on stderr; then stats or the ``--json`` envelope."""

from __future__ import annotations

import json
import resource
import sys
import time
from collections.abc import Callable

from g4cli.chat.conversation import Stats
from g4cli.chat.session import Reply, Session


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
                thoughts.feed(ev.text)
            elif ev.kind == "notice":
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


def print_json(model_name: str, reply: Reply, session: Session) -> None:
    """The ``--json`` envelope on stdout."""
    last = session.turns[-2] if len(session.turns) >= 2 else None
    doc = {
        "model": model_name,
        "response": reply.text,
        "thinking": reply.thought or None,
        "finish_reason": reply.finish,
        "tokens": {"prompt": reply.stats.prompt_tokens, "generated": reply.stats.gen_tokens},
        "timings": {**reply.stats.as_dict(), "peak_memory_mb": round(peak_rss_mb(), 1)},
        "attachments": [{"kind": m.kind, "path": m.name, "sha256": m.sha256} for m in (last.media if last else [])],
        "created": round(time.time(), 3),
    }
    sys.stdout.write(json.dumps(doc, ensure_ascii=False) + "\n")
    sys.stdout.flush()
