"""Showing a streamed answer: exact bytes into a pipe; on a terminal, Markdown block by block.

On a terminal, finished blocks (paragraphs, lists, fenced code) are printed once with rich's
Markdown renderer, and only the block still being written is redrawn live; a code block is never
re-rendered as prose halfway through. Thinking goes to stderr (dimmed on a terminal).
"""

from __future__ import annotations

import re
import sys
from typing import Any

from g4cli.render import colors_ok

FENCE = re.compile(r"^\s*(```|~~~)")


def split_blocks(text: str) -> tuple[list[str], str]:
    """(finished Markdown blocks, the unfinished rest) — blank lines end blocks outside fences."""
    blocks: list[str] = []
    current: list[str] = []
    in_fence = False
    lines = text.split("\n")
    for i, line in enumerate(lines):
        last = i == len(lines) - 1  # the line still being written (no newline yet)
        if last:
            current.append(line)
            break
        if FENCE.match(line):
            if in_fence:
                current.append(line)
                blocks.append("\n".join(current))
                current, in_fence = [], False
                continue
            if current and any(c.strip() for c in current):
                blocks.append("\n".join(current))
                current = []
            in_fence = True
            current.append(line)
            continue
        if not in_fence and not line.strip():
            if any(c.strip() for c in current):
                blocks.append("\n".join(current))
            current = []
            continue
        current.append(line)
    return blocks, "\n".join(current)


class AnswerPrinter:
    """Consumes answer text; ``close()`` at the end (also after Ctrl-C)."""

    def __init__(self, markdown: bool | None = None, out: Any = None) -> None:
        self.out = out or sys.stdout
        self.markdown = colors_ok(self.out) if markdown is None else markdown
        self._buf = ""
        self._live = None
        self._last_char = ""
        if self.markdown:
            from rich.console import Console

            self._console = Console(file=self.out, highlight=False)

    def feed(self, text: str) -> None:
        if not text:
            return
        if not self.markdown:
            self.out.write(text)
            self.out.flush()
            self._last_char = text[-1]
            return
        self._buf += text
        blocks, rest = split_blocks(self._buf)
        if blocks:
            self._stop_live()
            for block in blocks:
                self._print_block(block)
            self._buf = rest
        self._show_pending()

    def _print_block(self, block: str) -> None:
        from rich.markdown import Markdown

        self._console.print(Markdown(block, code_theme="ansi_dark"))

    def _show_pending(self) -> None:
        if not self._buf.strip():
            return
        from rich.live import Live
        from rich.markdown import Markdown
        from rich.text import Text

        in_code = bool(FENCE.match(self._buf.lstrip("\n")))
        view = Text(self._buf) if in_code else Markdown(self._buf)
        if self._live is None:
            self._live = Live(
                view, console=self._console, auto_refresh=False, transient=True, vertical_overflow="visible"
            )
            self._live.start()
        self._live.update(view, refresh=True)

    def _stop_live(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None

    def close(self) -> None:
        if not self.markdown:
            if self._last_char not in ("", "\n"):
                self.out.write("\n")  # end the answer with one newline, like other Unix tools
            self.out.flush()
            return
        self._stop_live()
        if self._buf.strip():
            self._print_block(self._buf)
        self._buf = ""


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
