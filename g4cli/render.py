"""Where output goes: the answer to stdout (plain bytes when piped), everything else to stderr.

rich is used only on a terminal; NO_COLOR and TERM=dumb are honoured (rich does both), and
nothing here ever writes an escape code into a pipe or file.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console


def colors_ok(stream: Any) -> bool:
    """Escape codes only on a terminal, and not with NO_COLOR or TERM=dumb."""
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty()) and not os.environ.get("NO_COLOR") and os.environ.get("TERM") != "dumb"


def stderr_is_tty() -> bool:
    return sys.stderr.isatty()


@cache
def err_console() -> Console:
    """The stderr console for progress, status, warnings and stats."""
    from rich.console import Console

    return Console(stderr=True, highlight=False, soft_wrap=True)


def info(message: str) -> None:
    """A status line on stderr (plain when stderr is not a terminal)."""
    if stderr_is_tty():
        err_console().print(message)
    else:
        sys.stderr.write(_plain(message) + "\n")
        sys.stderr.flush()


def warn(message: str) -> None:
    info(f"[yellow]warning:[/] {message}")


def _plain(markup: str) -> str:
    from rich.text import Text

    return Text.from_markup(markup).plain


def out(text: str) -> None:
    """Write to stdout (the answer, a listing, a path), exactly as given."""
    sys.stdout.write(text)
    sys.stdout.flush()


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


class ByteProgress:
    """Phases of byte-counted work (convert, quantize, download) shown as rich bars on stderr.

    Silent when stderr is not a terminal (a pipe to a log file gets no bar spam) or when
    ``G4_NO_PROGRESS``/``HF_HUB_DISABLE_PROGRESS_BARS`` is set.
    """

    def __init__(self) -> None:
        self._progress = None
        self._tasks: dict[str, int] = {}
        enabled = stderr_is_tty() and not os.environ.get("G4_NO_PROGRESS")
        if enabled and not os.environ.get("HF_HUB_DISABLE_PROGRESS_BARS"):
            from rich.progress import (
                BarColumn,
                DownloadColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
                TransferSpeedColumn,
            )

            self._progress = Progress(
                TextColumn("{task.description:<12}"),
                BarColumn(),
                DownloadColumn(),
                TransferSpeedColumn(),
                TimeRemainingColumn(),
                console=err_console(),
                transient=False,
            )

    def update(self, phase: str, done: int, total: int) -> None:
        if self._progress is None:
            return
        if phase not in self._tasks:  # starting at ``done``: a resumed download shows no false speed
            self._tasks[phase] = self._progress.add_task(phase, total=total, completed=done)
        self._progress.update(self._tasks[phase], completed=done, total=total)

    @contextmanager
    def running(self) -> Iterator[ByteProgress]:
        if self._progress is None:
            yield self
            return
        with self._progress:
            yield self
