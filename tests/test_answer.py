"""How answers are shown: plain bytes in a pipe, Markdown blocks on a terminal (code intact)."""

from __future__ import annotations

import io

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
