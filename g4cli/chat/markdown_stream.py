"""Markdown that arrives a few characters at a time, turned into terminal lines, each line once.

``BlockSplitter`` cuts the stream into blocks as it goes (outside a fenced code block a blank line
ends a block; a fence opens and closes one) and keeps only the unfinished block, so a new piece
costs O(piece), not a re-split of everything before it.

``MarkdownView`` renders with rich. A finished block is rendered once with rich's Markdown and
committed (handed out once, never redrawn). A fenced code block is committed line by line, each
line highlighted on its own, with the padding rich gives a whole block. A long paragraph commits
its wrapped lines once they cannot change any more (checked by rendering both halves), so the
unfinished tail that is redrawn stays a few lines tall. Blocks that cannot be cut (a table) are
previewed from their last lines and rendered whole when finished. Blocks are separated by one
blank line, so the committed lines are exactly rich's rendering of the whole answer.

One difference with rendering the whole answer at once: a string or comment spanning several
lines of a code block is coloured line by line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console, RenderableType

FENCE_OPEN = re.compile(r"^([ \t]*)(`{3,}(?=[^`]*$)|~{3,})(.*)$")
FENCE_CLOSE = re.compile(r"^[ \t]*(`{3,}|~{3,})[ \t]*$")
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\]8;[^\x1b]*\x1b\\")
TABLE = re.compile(r"^\s*\|")
# Blocks not cut early: a table (its columns depend on all rows), an ordered list (its numbers
# are padded to the widest).
UNCUTTABLE = re.compile(r"^\s*(\||\d+[.)]\s)", re.MULTILINE)
LINK_ID = re.compile(r"\x1b\]8;id=[^;\x1b]*;")
WORD = re.compile(r"\S+")
HEADING_MARK = re.compile(r"#{1,6}")
# In a rendered line, a literal * ` [ < ~ or a word-edge _ may be markup whose other half is yet
# to come (and would change the lines already shown): such lines are not committed early.
RISKY = re.compile(r"[*`\[<~]|(?<!\w)_|_(?!\w)")
BLANK = ""  # a code block's padding row: plain spaces with ansi_dark (no background), cut
KEEP = 2  # the last wrapped lines of a paragraph may still change: never committed early
SLACK = 4  # commit once the tail is KEEP + SLACK lines tall (fewer, bigger commits)
PREVIEW_CHARS = 3000  # a block longer than this and not cut yet is previewed from its end


@dataclass(frozen=True)
class Fence:
    marker: str  # the opening run: ``` or ~~~ (or longer)
    indent: int
    lexer: str

    @classmethod
    def parse(cls, line: str) -> Fence | None:
        m = FENCE_OPEN.match(line)
        if m is None:
            return None
        indent, marker, info = m.groups()
        return cls(marker, len(indent.expandtabs(4)), info.split()[0] if info.strip() else "text")

    def closes(self, line: str) -> bool:
        m = FENCE_CLOSE.match(line)
        return bool(m) and m.group(1)[0] == self.marker[0] and len(m.group(1)) >= len(self.marker)

    def content(self, line: str) -> str:
        """A code line without the fence's indentation (as CommonMark strips it)."""
        n = 0
        while n < self.indent and n < len(line) and line[n] == " ":
            n += 1
        return line[n:]


class BlockSplitter:
    """Incremental block splitter: ``feed(text)`` -> events, in order:
    ("prose", block), ("open", fence line), ("code", line), ("close", fence line)."""

    def __init__(self) -> None:
        self.lines: list[str] = []  # finished lines of the unfinished prose block
        self.partial = ""  # the line being written (no newline yet)
        self.fence: Fence | None = None  # the open fenced code block, if any

    def feed(self, text: str) -> list[tuple[str, str]]:
        events: list[tuple[str, str]] = []
        start = 0
        while (nl := text.find("\n", start)) >= 0:
            line, self.partial = self.partial + text[start:nl], ""
            self._line(line, events)
            start = nl + 1
        self.partial += text[start:]
        return events

    def finish(self) -> list[tuple[str, str]]:
        """End of the text: the unfinished block, as if the text ended with a newline."""
        events: list[tuple[str, str]] = []
        if self.partial:
            line, self.partial = self.partial, ""
            self._line(line, events)
        self._end_block(events)
        return events

    def pending(self) -> str:
        """The unfinished prose block (empty inside a fence)."""
        return "\n".join([*self.lines, self.partial]) if self.lines else self.partial

    def _line(self, line: str, events: list[tuple[str, str]]) -> None:
        if self.fence is not None:
            if self.fence.closes(line):
                self.fence = None
                events.append(("close", line))
            else:
                events.append(("code", line))
            return
        fence = Fence.parse(line)
        if fence is not None:
            self._end_block(events)
            self.fence = fence
            events.append(("open", line))
        elif not line.strip():
            self._end_block(events)
        else:
            self.lines.append(line)

    def _end_block(self, events: list[tuple[str, str]]) -> None:
        if self.lines:
            events.append(("prose", "\n".join(self.lines)))
            self.lines = []


def split_blocks(text: str) -> tuple[list[str], str]:
    """(finished Markdown blocks, the unfinished rest) — blank lines end blocks outside fences."""
    splitter = BlockSplitter()
    blocks: list[str] = []
    code: list[str] = []
    for kind, line in splitter.feed(text):
        if kind == "prose":
            blocks.append(line)
        elif kind in ("open", "code"):
            code.append(line)
        else:
            blocks.append("\n".join([*code, line]))
            code = []
    rest = "\n".join([*code, splitter.partial]) if splitter.fence else splitter.pending()
    return blocks, rest


def plain(line: str) -> str:
    return ANSI.sub("", line)


class MarkdownView:
    """Streamed Markdown -> committed terminal lines (``take``) and a live tail (``tail``)."""

    def __init__(self, console: Console, code_theme: str = "ansi_dark") -> None:
        self.console, self.theme = console, code_theme
        self.splitter = BlockSplitter()
        self._done: list[str] = []  # committed lines not taken yet
        self._blocks = 0  # blocks begun so far (one blank line goes between two)
        self._begun = False  # the current block has committed lines
        self._start = 0  # characters of the pending prose block already committed
        self._retry = 0  # length of the pending prose at which to try committing again
        self._fence: Fence | None = None
        self._blanks = 0  # blank code lines held back (rich drops trailing ones)
        self._rows = 0  # code lines committed in the open fence

    def feed(self, text: str) -> None:
        for kind, line in self.splitter.feed(text):
            self._event(kind, line)

    def finish(self) -> None:
        """Everything pending, rendered as final (also after Ctrl-C: what was shown stays)."""
        for kind, line in self.splitter.finish():
            self._event(kind, line)
        if self._fence is not None:
            self._close_code()

    def take(self) -> list[str]:
        """The lines committed since the last call: print them once, for good."""
        out, self._done = self._done, []
        return out

    def tail(self, limit: int) -> list[str]:
        """The unfinished end, at most ``limit`` lines: redraw it in place until it changes.
        May commit lines (a long paragraph), so call ``take`` after it."""
        if self._fence is not None:
            partial = self.splitter.partial
            rows = [BLANK] * self._blanks
            if partial.strip() and not FENCE_CLOSE.match(partial):
                rows = [*rows, *self._code(self._fence.content(partial))]
            return rows[-limit:]
        lines = self._prose_tail(limit)
        if lines and not self._begun and self._blocks:
            lines = ["", *lines]  # the blank line this block will be printed after
        return lines[-limit:]

    # --- prose ---------------------------------------------------------------------------------

    def _prose_tail(self, limit: int) -> list[str]:
        src = self.splitter.pending()[self._start :]
        if self.splitter.partial and Fence.parse(self.splitter.partial):  # a fence about to open
            src = src[: len(src) - len(self.splitter.partial)]
        if not src.strip():
            return []
        width = self.console.width
        if len(src) > max(2 * limit * width, PREVIEW_CHARS) or src.count("\n") > max(2 * limit, 40):
            # a block that could not be cut: preview its end (the cost of a redraw stays bounded)
            return self._markdown(_preview(src, limit, width))[-limit:]
        lines = self._markdown(src)
        if len(lines) >= max(KEEP + 1, min(KEEP + SLACK, limit)) and len(src) >= self._retry:
            k = self._commit_stable(src, lines)
            if k:
                return lines[k:]
            self._retry = len(src) + width
        return lines

    def _commit_stable(self, src: str, lines: list[str]) -> int:
        """Commit the first wrapped lines of ``src`` if the rest, rendered on its own, gives the
        same lines (so the final rendering is unchanged); the number of lines committed, or 0."""
        k = len(lines) - KEEP
        head_text = " ".join(plain(line) for line in lines[:k])
        if RISKY.search(head_text) or UNCUTTABLE.search(src):
            return 0
        starts, guess = _word_starts(src, len(head_text.split()))
        for i in (guess, guess - 1, guess + 1):  # the guess is off by a word now and then
            if 0 < i < len(starts):
                cut = starts[i]
                if self._markdown(src[cut:]) == lines[k:]:  # what is left renders the same alone
                    self._commit(lines[:k])
                    self._start += cut
                    return k
        return 0

    # --- events --------------------------------------------------------------------------------

    def _event(self, kind: str, line: str) -> None:
        if kind == "prose":
            self._commit(self._markdown(line[self._start :]))
            self._end_block()
        elif kind == "open":
            self._fence, self._blanks, self._rows = Fence.parse(line), 0, 0
            self._commit([BLANK])  # rich pads a code block with a blank row above
        elif kind == "code":
            assert self._fence is not None
            code = self._fence.content(line)
            if not code.strip():
                self._blanks += 1  # kept only if more code follows
                return
            self._commit([BLANK] * self._blanks + self._code(code))
            self._blanks, self._rows = 0, self._rows + 1
        else:
            self._close_code()

    def _close_code(self) -> None:
        self._commit([BLANK] * (2 if self._rows == 0 else 1))  # an empty block has one row
        self._fence = None
        self._end_block()

    def _commit(self, lines: list[str]) -> None:
        if not lines:
            return
        if not self._begun:
            if self._blocks:
                self._done.append("")
            self._blocks += 1
            self._begun = True
        self._done.extend(lines)

    def _end_block(self) -> None:
        self._begun, self._start, self._retry = False, 0, 0

    # --- rendering -----------------------------------------------------------------------------

    def _render(self, renderable: RenderableType) -> list[str]:
        with self.console.capture() as cap:
            self.console.print(renderable)
        text = LINK_ID.sub("\x1b]8;;", cap.get())  # rich numbers links at random: same text, same lines
        lines = [line.rstrip(" ") for line in text.split("\n")]
        while lines and not lines[-1]:
            lines.pop()
        return lines

    def _markdown(self, src: str) -> list[str]:
        lines = self._render(_markdown(src, self.theme))
        start = 0
        while start < len(lines) and not lines[start]:  # rich opens a list or table with one
            start += 1
        return lines[start:]

    def _code(self, code: str) -> list[str]:
        """A code line as rich shows it in a code block (its own row(s), a column of padding)."""
        from rich.cells import cell_len
        from rich.syntax import Syntax

        assert self._fence is not None
        lexer = _lexer(self._fence.lexer)
        expanded = code.expandtabs(4)
        if cell_len(expanded) <= self.console.width - 2 and expanded.isprintable():  # one row
            return [(" " + _highlight(expanded, lexer, self.theme, self.console.color_system)).rstrip(" ")]
        syntax = Syntax(code, lexer or "text", theme=self.theme, word_wrap=True, padding=(0, 1))
        return self._render(syntax)  # it wraps: rich's own layout


@cache
def _lexer(name: str) -> Any:
    """The pygments lexer rich would pick for a fence's language, looked up once (None: plain)."""
    from pygments.lexers import get_lexer_by_name
    from pygments.util import ClassNotFound

    try:
        return get_lexer_by_name(name, stripnl=False, ensurenl=True, tabsize=4)  # rich's options
    except ClassNotFound:
        return None


def _highlight(code: str, lexer: Any, theme: str, color_system: str | None) -> str:
    """One line of code coloured as rich's Syntax colours it, without its layout machinery (which
    costs more than the lexing, and is not needed for a line that fits on one row)."""
    if lexer is None or color_system is None:
        return code
    codes = _token_codes(theme, color_system)
    parts = []
    for kind, value in lexer.get_tokens(code):
        value = value.rstrip("\n")  # the lexer ends the text with a newline
        if value:
            pre, post = codes.get(kind) or codes.setdefault(kind, _codes_for(kind, theme, color_system))
            parts.append(f"{pre}{value}{post}")
    return "".join(parts)


@cache
def _token_codes(theme: str, color_system: str) -> dict[Any, tuple[str, str]]:
    return {}  # token type -> (escape codes before, after), filled as tokens come


def _codes_for(kind: Any, theme: str, color_system: str) -> tuple[str, str]:
    from rich.console import COLOR_SYSTEMS
    from rich.syntax import Syntax

    style = Syntax.get_theme(theme).get_style_for_token(kind)
    pre, _, post = style.render("\0", color_system=COLOR_SYSTEMS[color_system]).partition("\0")
    return pre, post


@cache
def _template(theme: str) -> tuple[Any, Any]:
    from markdown_it import MarkdownIt
    from rich.markdown import Markdown

    md = Markdown("", code_theme=theme)
    parser = MarkdownIt().enable("strikethrough").enable("table")  # as rich's Markdown sets it up
    return md, parser if hasattr(md, "parsed") else None


def _markdown(src: str, theme: str) -> RenderableType:
    """rich's Markdown of ``src``; one parser for all (building one is a third of a render)."""
    md, parser = _template(theme)
    if parser is None:  # a rich that keeps its tokens elsewhere: a fresh Markdown each time
        from rich.markdown import Markdown

        return Markdown(src, code_theme=theme)
    md.markup, md.parsed = src, parser.parse(src)
    return md


def _word_starts(src: str, n: int) -> tuple[list[int], int]:
    """Where the words of ``src`` start, and which of them is rendered as word ``n`` (a guess:
    a heading's #s are not rendered; other markup sticks to a word; links are hyperlinks)."""
    starts: list[int] = []
    count, guess = 0, -1
    for m in WORD.finditer(src):
        if count >= n and guess < 0:
            guess = len(starts)
        starts.append(m.start())
        count += 0 if HEADING_MARK.fullmatch(m.group()) else 1
    return starts, guess


def _preview(src: str, limit: int, width: int) -> str:
    """The last lines of a long block (with a table's header): a bounded preview to redraw."""
    lines = src.split("\n")
    head: list[str] = []
    if len(lines) > limit:  # each line is at least one row
        head = lines[:2] if TABLE.match(lines[0]) else []
        lines = lines[-limit:]
    text = "\n".join(lines)
    if len(text) > limit * width:  # very long lines: start at a word boundary
        cut = len(text) - limit * width
        space = text.find(" ", cut)
        text = text[space + 1 if space >= 0 else cut :]
    return "\n".join([*head, text])
