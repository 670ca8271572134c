"""Showing a streamed answer: exact bytes into a pipe; on a terminal, Markdown as it streams.

On a terminal (and without NO_COLOR or TERM=dumb) the answer is rendered with rich (see
``markdown_stream``): each finished line is printed once and never touched again, and only the
unfinished tail, never taller than the screen so that it can always be erased, is redrawn in
place. Redraws happen at most 20 times a second, and less often when rendering is slow, so that
it takes a few percent of the time at most; the cost of a redraw does not grow with the answer.
While the answer streams the cursor is hidden and the terminal does not echo what is typed (it
stays queued for the next prompt), and Ctrl-C waits for a redraw to finish. Thinking goes to
stderr (dimmed on a terminal).
"""

from __future__ import annotations

import math
import os
import signal
import sys
import threading
import time
from types import TracebackType
from typing import Any

from g4cli.chat.markdown_stream import MarkdownView, plain, split_blocks
from g4cli.render import colors_ok

__all__ = ["AnswerPrinter", "ThoughtPrinter", "split_blocks"]

FRAME_S = 0.05  # at most 20 redraws a second
BUDGET = 0.02  # ... and at most ~2% of the time spent redrawing the tail
MAX_FRAME_S = 0.5
HIDE_CURSOR, SHOW_CURSOR = "\x1b[?25l", "\x1b[?25h"
SYNC_BEGIN, SYNC_END = "\x1b[?2026h", "\x1b[?2026l"  # synchronized output (ignored where unknown)


class AnswerPrinter:
    """Consumes answer text; ``close()`` at the end (also after Ctrl-C)."""

    def __init__(self, markdown: bool | None = None, out: Any = None) -> None:
        self.out = out or sys.stdout
        self.markdown = colors_ok(self.out) if markdown is None else markdown
        self._last_char = ""
        self._live = LiveAnswer(self.out) if self.markdown else None

    def feed(self, text: str) -> None:
        if not text:
            return
        if self._live is not None:
            self._live.feed(text)
            return
        self.out.write(text)
        self.out.flush()
        self._last_char = text[-1]

    def suspend(self) -> None:
        """Erase the live tail so that something else (a notice on stderr) can be written; it
        comes back with the next redraw."""
        if self._live is not None:
            self._live.suspend()

    def close(self) -> None:
        if self._live is not None:
            self._live.close()
            return
        if self._last_char not in ("", "\n"):
            self.out.write("\n")  # end the answer with one newline, like other Unix tools
        self.out.flush()


class LiveAnswer:
    """The terminal side: committed lines printed once, the tail redrawn in place, throttled."""

    def __init__(self, out: Any) -> None:
        from rich.console import Console

        self.out = out
        self.console = Console(file=out, highlight=False)  # the terminal's width and colours
        self.view = MarkdownView(self.console)
        self._queue: list[str] = []
        self._shown: list[str] = []  # the live lines on screen; the cursor ends the last one
        self._next = 0.0  # time.monotonic() of the next redraw
        self._cost = 0.0  # seconds per redraw of the tail, smoothed
        self._quiet: QuietInput | None = None
        self._closed = False
        # rich's Markdown and pygments take ~0.2 s to import and warm up: done while the prompt
        # is evaluated rather than after the first token
        self._warm: threading.Thread | None = threading.Thread(target=warm_up, name="g4-render-warm-up")
        self._warm.start()

    def feed(self, text: str) -> None:
        self._queue.append(text)
        if time.monotonic() >= self._next:
            self._frame()

    def suspend(self) -> None:
        if self._shown:
            with DeferredInterrupt():
                self._draw([], [])

    def close(self) -> None:
        if self._closed:
            return
        with DeferredInterrupt():
            self._closed = True
            try:
                if self._quiet is not None or self._queue:
                    self._frame(final=True)
            finally:
                if self._warm is not None:
                    self._warm.join()
                if self._quiet is not None:
                    self._write(SHOW_CURSOR)
                    self._quiet.restore()

    def _frame(self, final: bool = False) -> None:
        with DeferredInterrupt():
            if self._warm is not None:
                self._warm.join()
                self._warm = None
            if self._quiet is None:
                self._quiet = QuietInput()
                self._write(HIDE_CURSOR)
            text = "".join(self._queue)
            self._queue.clear()
            if text:
                self.view.feed(text)  # finished lines: rendered once whatever the redraw rate
            if final:
                self.view.finish()
            t0 = time.perf_counter()
            live = [] if final else self.view.tail(max(1, self.console.size.height - 1))
            self._draw(self.view.take(), live)
            cost = time.perf_counter() - t0  # what a redraw costs: the rate is set from it
        self._cost = cost if not self._cost else 0.8 * self._cost + 0.2 * cost
        self._next = time.monotonic() + min(MAX_FRAME_S, max(FRAME_S, self._cost / BUDGET))

    def _draw(self, done: list[str], live: list[str]) -> None:
        """Print ``done`` for good and show ``live`` below it, rewriting only changed lines.
        The cursor stays at the end of the last live line (at the start of a fresh line when
        none is shown), so the live lines can be erased from there."""
        old = self._shown
        same = 0
        if not done and live:
            while same < min(len(old), len(live)) and old[same] == live[same]:
                same += 1
            if same == len(old) == len(live):
                return
            same = min(same, len(live) - 1)  # rewrite at least one line: the cursor ends it
        if not done and not live and not old:
            return
        buf = [SYNC_BEGIN]
        if same < len(old):
            width = max(1, self.console.width)
            up = sum(_rows(line, width) for line in old[same:]) - 1
            buf.append("\r" + (f"\x1b[{up}A" if up else "") + "\x1b[J")
        elif old:
            buf.append("\n")
        buf.extend(line + "\n" for line in done)
        buf.append("\n".join(live[same:]))
        buf.append(SYNC_END)
        self._write("".join(buf))
        self._shown = live

    def _write(self, text: str) -> None:
        self.out.write(text)
        self.out.flush()


def warm_up() -> None:
    """Import and exercise rich's Markdown and Syntax once (their first use costs ~0.2 s)."""
    try:
        import io

        from rich.console import Console
        from rich.markdown import Markdown
        from rich.syntax import Syntax

        console = Console(file=io.StringIO(), force_terminal=True, width=40)
        console.print(Markdown("*a* **b** `c`\n\n- d\n\n| e |\n|---|\n| f |", code_theme="ansi_dark"))
        console.print(Syntax("x = 1", "python", theme="ansi_dark"))
    except Exception:  # only a head start: the real rendering reports its own errors
        pass


def _rows(line: str, width: int) -> int:
    """Screen rows a line takes (1 unless the terminal got narrower since it was drawn)."""
    from rich.cells import cell_len

    return max(1, math.ceil(cell_len(plain(line)) / width))


class QuietInput:
    """Terminal echo off on stdin (when it is a terminal) until ``restore()``: what is typed
    while an answer streams is not drawn into it (nor is ^C); it stays queued for the prompt."""

    def __init__(self, stream: Any = None) -> None:
        self._fd: int | None = None
        self._saved: list | None = None
        stream = sys.stdin if stream is None else stream
        try:
            import termios

            if stream is None or not stream.isatty():
                return
            fd = stream.fileno()
            if _foreground_group(fd) not in (None, os.getpgrp()):  # a background job: it would stop
                return
            saved = termios.tcgetattr(fd)
            quiet = list(saved)
            quiet[3] = saved[3] & ~(termios.ECHO | termios.ECHONL)  # the local modes
            termios.tcsetattr(fd, termios.TCSANOW, quiet)
            self._fd, self._saved = fd, saved
        except Exception:  # no termios (Windows), or not a real terminal after all
            pass

    def restore(self) -> None:
        if self._fd is None:
            return
        import termios

        try:
            termios.tcsetattr(self._fd, termios.TCSANOW, self._saved)
        except Exception:  # stdin closed meanwhile: nothing left to restore
            pass
        self._fd = None


def _foreground_group(fd: int) -> int | None:
    """The terminal's foreground process group (None: it is not our controlling terminal)."""
    try:
        return os.tcgetpgrp(fd)
    except OSError:
        return None


class DeferredInterrupt:
    """Hold Ctrl-C back while the screen and what we know of it change together (a
    KeyboardInterrupt halfway through a redraw would leave lines nobody can erase); it is raised
    right after. Only in the main thread, where Python handles signals."""

    def __enter__(self) -> None:
        self._caught: list[int] = []
        self._active = threading.current_thread() is threading.main_thread()
        if self._active:
            self._previous = signal.signal(signal.SIGINT, lambda signum, frame: self._caught.append(signum))

    def __exit__(self, kind: type | None, value: BaseException | None, tb: TracebackType | None) -> None:
        if not self._active:
            return
        previous = signal.SIG_DFL if self._previous is None else self._previous  # None: set outside Python
        signal.signal(signal.SIGINT, previous)
        if not self._caught or previous == signal.SIG_IGN:
            return
        if callable(previous):
            previous(signal.SIGINT, None)  # the default handler raises KeyboardInterrupt
        else:
            raise KeyboardInterrupt


class ThoughtPrinter:
    """Thinking text on stderr: dimmed on a terminal, plain otherwise; never on stdout."""

    def __init__(self) -> None:
        self.err = sys.stderr
        self.tty = colors_ok(self.err)
        self.started = False

    def feed(self, text: str) -> None:
        if not self.started:
            self.started = True
            if self.tty:
                self.err.write("\x1b[2m")
        self.err.write(text)
        self.err.flush()

    def close(self) -> None:
        if self.started:
            self.err.write("\x1b[0m\n" if self.tty else "\n")
            self.err.flush()
            self.started = False
