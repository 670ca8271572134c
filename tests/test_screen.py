"""What a terminal really shows of a streamed answer: `g4 chat` in a real pseudo-terminal of
24 rows x 80 columns, every byte fed to a terminal emulator (pyte) that keeps the lines scrolled
off the top. Every line of the answer must be there exactly once, in order, as rich renders the
whole answer: nothing drawn twice into the scrollback, nothing lost.

The model is a scripted tiny Gemma 4 (tests/scripted.py) whose greedy answer is known.
"""

from __future__ import annotations

import io
import os
import time
from collections import Counter
from pathlib import Path

import pexpect
import pyte
import pytest
from conftest import g4_executable
from scripted import scripted_gguf, split_script

ROWS, COLS = 24, 80
PROMPT = ">>> "
# One thread: llama.cpp's spinning thread pool crawls when the cores are busy (a loaded CI
# machine), and the thread count has nothing to do with what is drawn.
THREADS = ("-t", "1")


def paragraph(tag: str, words: int) -> str:
    out = []
    for i in range(words):
        w = f"{tag}{i:03d}"
        out.append(f"**{w}**" if i % 41 == 7 else f"`{w}`" if i % 53 == 11 else w)
    return " ".join(out)


def code_lines(n: int) -> list[str]:
    return [f"    total_{i:03d} = compute({i}, scale={i % 7})  # step {i}" for i in range(n)]


CODE = code_lines(80)
ANSWER = (
    "## A streamed report\n\n"
    + paragraph("alpha", 330)  # about 40 wrapped lines: taller than the screen
    + "\n\n```python\ndef report():\n"
    + "\n".join(CODE)
    + "\n    return total\n```\n\n"
    + "- first item, short\n- second item, with *emphasis*\n- third item\n\n"
    + "| name | value |\n|------|-------|\n| one | 1 |\n| two | 22 |\n| three | 333 |\n\n"
    + paragraph("omega", 300)
    + "\n\nThe end."
)
LONG_CODE = code_lines(600)
INTERRUPTED = "Here is the code:\n\n```python\n" + "\n".join(LONG_CODE) + "\n```\n\nDone."


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("scripted")
    return {
        "answer": scripted_gguf(base / "answer", split_script(ANSWER)),
        "long": scripted_gguf(base / "long", split_script(INTERRUPTED), width=512, layers=8),
    }


def rendered(text: str) -> list[str]:
    """rich's rendering of the whole answer at once, as plain lines (the look to get)."""
    from rich.console import Console
    from rich.markdown import Markdown

    console = Console(file=io.StringIO(), width=COLS, color_system=None)
    with console.capture() as cap:
        console.print(Markdown(text, code_theme="ansi_dark"))
    return _trim([line.rstrip() for line in cap.get().split("\n")])


def _trim(lines: list[str]) -> list[str]:
    start, end = 0, len(lines)
    while start < end and not lines[start]:
        start += 1
    while end > start and not lines[end - 1]:
        end -= 1
    return lines[start:end]


class Terminal:
    """A program in a pseudo-terminal, and what a terminal emulator shows of it, scrollback
    included (pyte keeps the lines that scroll off the top)."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        exe = g4_executable()
        full_env = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "COLUMNS", "LINES", "FORCE_COLOR")}
        full_env.update({"TERM": "xterm-256color", **(env or {})})
        self.child = pexpect.spawn(exe[0], [*exe[1:], *args], env=full_env, dimensions=(ROWS, COLS), timeout=120)
        self.screen = pyte.HistoryScreen(COLS, ROWS, history=1_000_000, ratio=0.001)
        self.stream = pyte.ByteStream(self.screen)
        self.eof = False

    def pump(self, timeout: float = 0.05) -> None:
        try:
            self.stream.feed(self.child.read_nonblocking(1 << 16, timeout=timeout))
        except pexpect.TIMEOUT:
            pass
        except pexpect.EOF:
            self.eof = True

    def lines(self) -> list[str]:
        top = ["".join(line[x].data for x in range(COLS)).rstrip() for line in self.screen.history.top]
        return _trim(top + [line.rstrip() for line in self.screen.display])

    def wait_for(self, predicate, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while not predicate(self.lines()):
            if self.eof or time.monotonic() > deadline:
                raise AssertionError("not shown in time; the screen:\n" + "\n".join(self.lines()[-ROWS:]))
            self.pump()

    def finish(self, timeout: float = 120) -> list[str]:
        deadline = time.monotonic() + timeout
        while not self.eof and time.monotonic() < deadline:
            self.pump(0.2)
        self.child.close()
        return self.lines()


def assert_once_in_order(shown: list[str], expected: list[str]) -> None:
    """``expected`` appears as one contiguous run of ``shown``, and none of its lines elsewhere."""
    counts = Counter(shown)
    twice = [line for line in expected if line.strip() and counts[line] > Counter(expected)[line]]
    assert not twice, f"{len(twice)} lines shown more than once, e.g. {twice[:3]}"
    missing = [line for line in expected if line.strip() and counts[line] == 0]
    assert not missing, f"{len(missing)} lines never shown, e.g. {missing[:3]}"
    n = len(expected)
    starts = [i for i in range(len(shown) - n + 1) if shown[i : i + n] == expected]
    assert len(starts) == 1, "the answer is not shown once, in order, as rich renders it"


def test_one_shot_answer_in_a_terminal_shows_every_line_once(models) -> None:
    expected = rendered(ANSWER)
    assert len(expected) > 3 * ROWS and sum(line.startswith("     total_") for line in expected) == 80
    term = Terminal("chat", str(models["answer"]), "Write the report", "--temp", "0", *THREADS)
    shown = term.finish()
    assert term.child.exitstatus == 0
    assert shown == expected  # the answer and nothing else, exactly as rich renders it whole


def test_piped_answer_is_the_script_exactly(run_g4, models) -> None:
    r = run_g4("chat", models["answer"], "Write the report", "--temp", "0", *THREADS)
    assert r.returncode == 0 and r.out == ANSWER + "\n"


def test_repl_answer_shows_every_line_once(models, tmp_path: Path) -> None:
    term = Terminal("chat", str(models["answer"]), "--temp", "0", *THREADS, env={"XDG_STATE_HOME": str(tmp_path)})
    term.wait_for(lambda lines: lines and lines[-1] == PROMPT.rstrip())
    term.child.sendline("Write the report")
    term.wait_for(lambda lines: "The end." in lines and lines[-1] == PROMPT.rstrip())
    term.child.sendline("/bye")
    shown = term.finish()
    assert_once_in_order(shown, rendered(ANSWER))
    assert shown[-1] == PROMPT + "/bye"


def test_ctrl_c_in_a_long_code_block_keeps_each_line_shown_once(models, tmp_path: Path) -> None:
    term = Terminal("chat", str(models["long"]), "--temp", "0", *THREADS, env={"XDG_STATE_HOME": str(tmp_path)})
    term.wait_for(lambda lines: lines and lines[-1] == PROMPT.rstrip())
    term.child.sendline("Show me the code")
    term.wait_for(lambda lines: any(line.startswith("     total_030 ") for line in lines))
    term.child.sendintr()
    term.wait_for(lambda lines: "(stopped)" in lines and lines[-1] == PROMPT.rstrip())
    term.child.sendline("/bye")
    shown = term.finish()
    code = [line[1:] for line in shown if line.startswith(" " + "    total_")]  # rich pads code by one column
    assert 30 <= len(code) < len(LONG_CODE), "the answer did not stop in the code block"
    assert code[:-1] == LONG_CODE[: len(code) - 1]  # once each, in order
    assert LONG_CODE[len(code) - 1].startswith(code[-1])  # the last one maybe cut short
    assert_once_in_order(shown, ["Here is the code:", "", ""] + [" " + line for line in code])
    after = shown[shown.index("(stopped)") :]
    assert after[-1] == PROMPT + "/bye" and "Done." not in shown
