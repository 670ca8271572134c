"""How answers are shown: plain bytes in a pipe, Markdown blocks on a terminal (code intact)."""

from __future__ import annotations

import io
import os
import random
import re
import signal
import sys
import time

import pyte
import pytest

from g4cli.chat.printer import AnswerPrinter, split_blocks


def test_blank_lines_end_blocks_but_not_inside_code_fences() -> None:
    text = "Intro para.\n\n```python\ndef f():\n\n    return 1\n```\nAfter code.\n\n- a\n- b\n\nstill wri"
    blocks, rest = split_blocks(text)
    assert blocks == ["Intro para.", "```python\ndef f():\n\n    return 1\n```", "After code.", "- a\n- b"]
    assert rest == "still wri"


def test_an_open_code_fence_stays_pending() -> None:
    blocks, rest = split_blocks("Here:\n\n```sh\nls -la\n\necho hi\n")
    assert blocks == ["Here:"] and rest.startswith("```sh") and "echo hi" in rest


class FakeTty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_piped_output_is_exact_text_plus_one_newline() -> None:
    out = io.StringIO()
    p = AnswerPrinter(out=out)
    for piece in ["Hello", " **world**", "\n```\ncode\n```"]:
        p.feed(piece)
    p.close()
    assert out.getvalue() == "Hello **world**\n```\ncode\n```\n"
    out2 = io.StringIO()
    p2 = AnswerPrinter(out=out2)
    p2.feed("ends with newline\n")
    p2.close()
    assert out2.getvalue() == "ends with newline\n"


def test_terminal_output_renders_markdown_and_keeps_code_verbatim(monkeypatch) -> None:
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("TERM", "xterm-256color")
    out = FakeTty()
    p = AnswerPrinter(out=out)
    text = "# Title\n\nSome **bold** text.\n\n```python\nx = {'a': 1}\n\nprint(x)\n```\n\nDone."
    for i in range(0, len(text), 3):  # streamed in small pieces
        p.feed(text[i : i + 3])
    p.close()
    shown = out.getvalue()
    assert "\x1b[1mbold\x1b[0m" in shown and "Title" in shown  # **bold** rendered as bold
    final = shown[shown.rindex("\x1b[?25h") :]  # after the live preview of the last block
    assert "**" not in final and "```" not in final
    assert "x = {'a': 1}" in _plain(shown) and "print(x)" in _plain(shown)


def test_no_color_means_plain_text_even_on_a_terminal(monkeypatch) -> None:
    monkeypatch.setenv("NO_COLOR", "1")
    out = FakeTty()
    p = AnswerPrinter(out=out)
    p.feed("**raw**")
    p.close()
    assert out.getvalue() == "**raw**\n"


def _plain(text: str) -> str:
    import re

    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text)


# --- the terminal renderer: each line once, a bounded live tail, Ctrl-C, echo -----------------

ROWS, COLS = 24, 80
LONG_PARAGRAPH = " ".join(
    f"**w{i:04d}**" if i % 31 == 4 else f"`c{i:04d}`" if i % 43 == 9 else f"[l{i}](https://x.org/{i})" if i % 59 == 1
    else f"w{i:04d}" for i in range(900)
)  # fmt: skip
DOCUMENT = (
    "# Streaming\n\nA short paragraph.\n\n" + LONG_PARAGRAPH + "\n\n```python\ndef f():\n"
    + "\n".join(f"    x_{i:03d} = g({i})  # {i}" for i in range(60))
    + "\n\n    return x\n\n\n```\nRight after the fence.\n\n- one\n- two *em*\n  continued\n- three\n\n"
    + "1. first\n2. second\n\n| a | b |\n|---|---|\n| 1 | 2 |\n| 33 | 44 |\n\n> quoted\n\n~~~\n~~~\n\nThe end."
)  # fmt: skip


@pytest.fixture
def terminal(monkeypatch: pytest.MonkeyPatch) -> FakeTty:
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("TERM", "xterm-256color")
    monkeypatch.setenv("COLUMNS", str(COLS))
    monkeypatch.setenv("LINES", str(ROWS))
    return FakeTty()


@pytest.fixture
def every_token(monkeypatch: pytest.MonkeyPatch) -> None:
    """A redraw after every piece (the worst case for what the screen has to take)."""
    from g4cli.chat import printer

    monkeypatch.setattr(printer, "FRAME_S", 0.0)
    monkeypatch.setattr(printer, "BUDGET", 1e9)


def _stream(p: AnswerPrinter, text: str, seed: int = 0) -> None:
    rng = random.Random(seed)
    i = 0
    while i < len(text):
        n = rng.randint(1, 6)
        p.feed(text[i : i + n])
        i += n


def _screen(output: str) -> list[str]:
    """What a terminal shows of ``output``: scrollback and screen, plain, trailing blanks cut."""
    screen = pyte.HistoryScreen(COLS, ROWS, history=100_000, ratio=0.001)
    pyte.Stream(screen).feed(output.replace("\n", "\r\n"))  # a tty's ONLCR
    top = ["".join(line[x].data for x in range(COLS)).rstrip() for line in screen.history.top]
    return _trim(top + [line.rstrip() for line in screen.display])


def _whole(text: str) -> list[str]:
    """rich's rendering of the whole text at once (the look the stream must end with)."""
    from rich.console import Console
    from rich.markdown import Markdown

    console = Console(file=io.StringIO(), width=COLS, color_system=None)
    with console.capture() as cap:
        console.print(Markdown(text, code_theme="ansi_dark"))
    return _trim([line.rstrip() for line in cap.get().split("\n")])


def _trim(lines: list[str]) -> list[str]:
    while lines and not lines[-1]:
        lines.pop()
    while lines and not lines[0]:
        lines.pop(0)
    return lines


def _max_up(output: str) -> int:
    """The most lines the cursor ever went back up: the live tail's height, less one."""
    return max((int(n) for n in re.findall(r"\x1b\[(\d+)A", output)), default=0)


def test_incremental_splitter_gives_the_same_blocks_for_any_piece_sizes() -> None:
    from g4cli.chat.markdown_stream import BlockSplitter

    whole = split_blocks(DOCUMENT)
    for seed in range(5):
        s, rng, events, i = BlockSplitter(), random.Random(seed), [], 0
        while i < len(DOCUMENT):
            n = rng.randint(1, 40)
            events += s.feed(DOCUMENT[i : i + n])
            i += n
        assert [line for kind, line in events if kind == "prose"] == [
            b for b in whole[0] if not b.startswith(("`", "~"))
        ]
        assert s.pending() == whole[1]
    assert split_blocks("a\n  ```` x\n```\n  ````\nb")[0] == ["a", "  ```` x\n```\n  ````"]  # a longer fence


def test_streamed_answer_ends_as_rich_renders_it_whole_each_line_once(terminal, every_token) -> None:
    p = AnswerPrinter(out=terminal)
    _stream(p, DOCUMENT)
    p.close()
    shown = terminal.getvalue()
    assert _screen(shown) == _whole(DOCUMENT)
    assert _max_up(shown) < ROWS - 1  # the live tail always fitted the screen: it could be erased
    assert shown.endswith("\x1b[?25h") and shown.startswith("\x1b[?25l")  # cursor hidden, then back


@pytest.mark.parametrize(
    "text",
    [LONG_PARAGRAPH, "```sh\n" + "\n".join(f"echo line {i}" for i in range(200)) + "\n```"],
    ids=["paragraph", "code"],
)
def test_long_blocks_stream_with_a_short_live_tail_and_bounded_work(terminal, every_token, monkeypatch, text) -> None:
    from g4cli.chat.markdown_stream import MarkdownView

    rendered: list[int] = []
    markdown = MarkdownView._markdown
    monkeypatch.setattr(MarkdownView, "_markdown", lambda self, src: rendered.append(len(src)) or markdown(self, src))
    p = AnswerPrinter(out=terminal)
    _stream(p, text)
    live_height = _max_up(terminal.getvalue()) + 1
    p.close()
    assert _screen(terminal.getvalue()) == _whole(text)
    assert live_height <= 6  # committed line by line, not redrawn as one growing block
    assert max(rendered, default=0) < 1200 < len(text)  # each redraw renders a tail, not the whole


def test_tables_and_ordered_lists_taller_than_the_screen_preview_their_end(terminal, every_token) -> None:
    table = "| n | square |\n|---|---|\n" + "\n".join(f"| {i} | {i * i} |" for i in range(60))
    steps = "\n".join(f"{i + 1}. step {i}" for i in range(40))
    text = f"{table}\n\n{steps}"
    p = AnswerPrinter(out=terminal)
    _stream(p, text)
    p.close()
    assert _screen(terminal.getvalue()) == _whole(text)  # rendered whole once finished
    assert _max_up(terminal.getvalue()) < ROWS - 1


def test_redraws_are_throttled_and_close_shows_the_last_state(terminal) -> None:
    p = AnswerPrinter(out=terminal)
    t0 = time.monotonic()
    for i in range(3000):
        p.feed(f" w{i}")
    elapsed = time.monotonic() - t0
    p.close()
    frames = terminal.getvalue().count("\x1b[?2026h")
    assert frames <= elapsed / 0.05 + 3  # at most 20 a second (plus the first and the last)
    assert _screen(terminal.getvalue()) == _whole("".join(f" w{i}" for i in range(3000)))


def test_ctrl_c_in_the_middle_of_a_redraw_waits_for_it_then_close_tidies_up(terminal, every_token, monkeypatch):
    from g4cli.chat.markdown_stream import MarkdownView

    code = "Intro.\n\n```python\n" + "\n".join(f"y_{i} = {i}" for i in range(100))
    syntax, sent = MarkdownView._code, []

    def ctrl_c_at_line_50(self: MarkdownView, text: str) -> list[str]:
        if text == "y_50 = 50" and self.splitter.partial != text and not sent:  # committing it
            sent.append(True)
            os.kill(os.getpid(), signal.SIGINT)  # arrives halfway through a redraw
        return syntax(self, text)

    monkeypatch.setattr(MarkdownView, "_code", ctrl_c_at_line_50)
    p = AnswerPrinter(out=terminal)
    fed = ""
    with pytest.raises(KeyboardInterrupt):
        for i in range(0, len(code), 3):
            fed += code[i : i + 3]
            p.feed(code[i : i + 3])  # the Ctrl-C surfaces here, once the redraw is done
    p.close()
    assert 50 <= fed.count("\n") < 60  # stopped in the code block, right after the redraw
    assert _screen(terminal.getvalue()) == _whole(fed)  # what was shown is there, once
    assert terminal.getvalue().endswith("\x1b[?25h")


def test_typing_is_not_echoed_while_an_answer_streams(terminal, monkeypatch) -> None:
    import termios

    master, slave = os.openpty()
    try:
        with open(slave, closefd=False) as stdin:
            monkeypatch.setattr(sys, "stdin", stdin)
            echo = lambda: bool(termios.tcgetattr(slave)[3] & termios.ECHO)  # noqa: E731
            assert echo()
            p = AnswerPrinter(out=terminal)
            p.feed("Hello")
            assert not echo()  # typed keys stay queued for the prompt, not drawn into the answer
            p.close()
            assert echo()
            p = AnswerPrinter(out=terminal)
            try:
                p.feed("again")
                raise KeyboardInterrupt
            except KeyboardInterrupt:
                p.close()
            assert echo()
    finally:
        os.close(master)
        os.close(slave)


def test_term_dumb_means_plain_text_and_a_pipe_gets_no_escape_codes(monkeypatch) -> None:
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("TERM", "dumb")
    out = FakeTty()
    p = AnswerPrinter(out=out)
    p.feed("# Title\n\n**x**")
    p.close()
    assert out.getvalue() == "# Title\n\n**x**\n"
    monkeypatch.setenv("TERM", "xterm-256color")
    pipe = io.StringIO()
    p = AnswerPrinter(out=pipe)
    _stream(p, DOCUMENT)
    p.close()
    assert pipe.getvalue() == DOCUMENT + "\n"
