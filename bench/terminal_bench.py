"""Terminal rendering benchmark (issue #9): decode speed of `g4 chat` in a real pseudo-terminal
against the same command into a pipe.

    g4 chat MODEL PROMPT --temp 0 --seed N --verbose

runs one-shot, in a pty (24 x 80, drained promptly by a reader thread, as a terminal does) and
into a pipe, interleaved (pty, pipe, pty, pipe, ...), ``--runs`` times each; medians. The models
are scripted tiny Gemma 4s (tests/scripted.py) at a width where a token costs several
milliseconds, whose greedy answers are known: a 2,000-token paragraph and a 150-line fenced code
block. The tok/s g4 reports (``--verbose``) is cross-checked from outside: the time from the
first byte to the last on the pty or pipe, and the known token count. The bytes a pty run wrote
are fed to a pyte terminal (after the run, so that emulation never slows g4 down) to count the
lines left on screen and in the scrollback against the lines of the answer.

The renderer of commit ``--old`` (the one that re-rendered the whole pending block on every
token with rich Live) is measured alongside, loaded from git at run time into the child process.

    python bench/terminal_bench.py [--runs 5] [--threads 1] [--width 512 --layers 6] [--old REV | --no-old]
"""

from __future__ import annotations

import argparse
import fcntl
import os
import pty
import re
import statistics
import struct
import subprocess
import sys
import tempfile
import termios
import threading
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

OLD_RENDERER = "162058f"  # the last commit whose printer redrew the whole pending block per token
ROWS, COLS = 24, 80
PROMPT = "Write it out."
MAX_EMULATED = 2_000_000  # bytes of pty output fed to pyte for the line count
STATS = re.compile(r"answer (\d+) tokens \(([\d.]+) tok/s\)")
# Runs g4 with g4cli.chat.printer replaced by the file argv[1] ("-": the current one).
RUNNER = r"""
import importlib.util, sys
if sys.argv[1] != "-":
    spec = importlib.util.spec_from_file_location("g4cli.chat.printer", sys.argv[1])
    module = importlib.util.module_from_spec(spec)
    sys.modules["g4cli.chat.printer"] = module
    spec.loader.exec_module(module)
sys.argv = ["g4", *sys.argv[2:]]
from g4cli.app import main
sys.exit(main())
"""


def scripts() -> dict[str, str]:
    words = []
    for i in range(2000):
        w = f"word{i:04d}"
        words.append(f"**{w}**" if i % 97 == 5 else f"`{w}`" if i % 89 == 3 else w)
    code = [f"    total_{i:03d} = compute(total_{max(i - 1, 0):03d}, {i})  # step {i}" for i in range(150)]
    return {
        "paragraph": " ".join(words) + "\n",
        "code": "```python\ndef run():\n" + "\n".join(code) + "\n```\n",
    }


@dataclass
class Run:
    self_tps: float  # what g4 reports
    outside_tps: float  # first byte to last byte, known token count
    tokens: int
    output: bytes


def _reader(fd: int, chunks: list[tuple[float, bytes]]) -> None:
    while True:
        try:
            data = os.read(fd, 1 << 16)
        except OSError:  # EIO: the pty's other side closed
            break
        if not data:
            break
        chunks.append((time.perf_counter(), data))


def run_once(cmd: list[str], env: dict[str, str], in_pty: bool) -> Run:
    chunks: list[tuple[float, bytes]] = []
    if in_pty:
        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", ROWS, COLS, 0, 0))
        proc = subprocess.Popen(cmd, stdin=slave, stdout=slave, stderr=subprocess.PIPE, env=env)
        os.close(slave)
        fd = master
    else:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        fd = proc.stdout.fileno()
    reader = threading.Thread(target=_reader, args=(fd, chunks), daemon=True)
    reader.start()
    err = proc.stderr.read().decode("utf-8", "replace")
    proc.wait()
    reader.join()
    if in_pty:
        os.close(fd)
    else:
        proc.stdout.close()
    m = STATS.search(err)
    if proc.returncode != 0 or m is None or not chunks:
        raise SystemExit(f"g4 failed ({proc.returncode}): {err[-2000:]}")
    tokens = int(m.group(1))
    span = chunks[-1][0] - chunks[0][0]
    return Run(float(m.group(2)), (tokens - 1) / span if span > 0 else 0.0, tokens, b"".join(c for _, c in chunks))


def screen_lines(output: bytes) -> list[str]:
    """What a terminal shows after the run: the scrollback and the screen, as plain lines."""
    import pyte

    screen = pyte.HistoryScreen(COLS, ROWS, history=10_000_000, ratio=0.001)
    pyte.ByteStream(screen).feed(output)
    top = ["".join(line[x].data for x in range(COLS)).rstrip() for line in screen.history.top]
    lines = top + [line.rstrip() for line in screen.display]
    while lines and not lines[-1]:
        lines.pop()
    return lines


def expected_lines(text: str) -> list[str]:
    import io

    from rich.console import Console
    from rich.markdown import Markdown

    console = Console(file=io.StringIO(), width=COLS, color_system=None)
    with console.capture() as cap:
        console.print(Markdown(text, code_theme="ansi_dark"))
    lines = [line.rstrip() for line in cap.get().split("\n")]
    while lines and not lines[-1]:
        lines.pop()
    return lines


def old_printer(rev: str, into: Path) -> Path:
    """The old renderer's source, from git (or a file given instead of a revision)."""
    if Path(rev).is_file():
        return Path(rev)
    path = into / "old_printer.py"
    src = subprocess.run(
        ["git", "-C", str(ROOT), "show", f"{rev}:g4cli/chat/printer.py"], capture_output=True, check=True
    ).stdout
    path.write_bytes(src)
    return path


def build(work: Path, args: argparse.Namespace) -> dict[str, tuple[Path, str]]:
    from scripted import scripted_gguf, split_script

    models = {}
    for name, text in scripts().items():
        d = work / f"{name}-{args.width}x{args.layers}"
        gguf = d / "scripted-Q8_0.gguf"
        if not gguf.is_file():
            print(f"building the {name} model ({args.width} wide, {args.layers} layers)…", file=sys.stderr)
            scripted_gguf(d, split_script(text), width=args.width, layers=args.layers, ff=args.ff)
        models[name] = (gguf, text)
    return models


def measure(cmd: list[str], env: dict[str, str], runs: int) -> tuple[list[Run], list[Run]]:
    ptys, pipes = [], []
    for _ in range(runs):  # interleaved, so that a busy moment of the machine hits both
        ptys.append(run_once(cmd, env, in_pty=True))
        pipes.append(run_once(cmd, env, in_pty=False))
    return ptys, pipes


def print_table(rows: list[tuple], args: argparse.Namespace) -> None:
    print(f"\n{args.runs} runs each ({args.old_runs} for the old renderer), interleaved; medians. {COLS}x{ROWS} "
          f"pty; model {args.width} wide, {args.layers} layers; threads {args.threads or 'default'}")  # fmt: skip
    head = ("answer", "renderer", "tokens", "pty tok/s", "pipe tok/s", "ratio", "pty outside", "pipe outside",
            "ratio outside", "pairs (min-max)", "pty bytes", "lines shown", "lines")  # fmt: skip
    print(" | ".join(head))
    for name, label, pty_s, pipe_s, pty_o, pipe_o, tokens, pairs, nbytes, shown, lines in rows:
        print(
            f"{name} | {label} | {tokens} | {pty_s:.1f} | {pipe_s:.1f} | {pty_s / pipe_s:.3f} | {pty_o:.1f} | "
            f"{pipe_o:.1f} | {pty_o / pipe_o:.3f} | {pairs[0]:.2f}-{pairs[-1]:.2f} | {nbytes} | "
            f"{'-' if shown is None else shown} | {lines}"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--old-runs", type=int, default=3, help="runs of the old renderer (it is slow)")
    ap.add_argument("--seed", type=int, default=7)
    # One decode thread by default: llama.cpp's spinning thread pool slows down erratically when
    # the cores are shared (a busy machine), and rendering runs on the main thread either way.
    ap.add_argument("--threads", type=int, default=1, help="g4 -t (0: g4's default, all cores)")
    ap.add_argument("--width", type=int, default=512)  # ~7 ms a token on 1 core of a 2-core VM
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--ff", type=int, default=2048)
    ap.add_argument("--old", default=OLD_RENDERER, help="git revision (or file) of the old renderer")
    ap.add_argument("--no-old", action="store_true", help="measure the current renderer only")
    ap.add_argument("--workdir", type=Path, default=None, help="keep the models here (built once)")
    args = ap.parse_args()

    work = args.workdir or Path(tempfile.mkdtemp(prefix="g4-terminal-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    models = build(work, args)
    env = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "COLUMNS", "LINES", "FORCE_COLOR")}
    env.update(TERM="xterm-256color", G4_HOME=str(work / "home"), G4_NO_HISTORY="1")
    renderers = {"new": "-"} if args.no_old else {"new": "-", "old": str(old_printer(args.old, work))}
    extra = ["-t", str(args.threads)] if args.threads else []

    rows = []
    for name, (gguf, text) in models.items():
        expected = expected_lines(text)
        for label, printer in renderers.items():
            cmd = [sys.executable, "-c", RUNNER, printer, "chat", str(gguf), PROMPT]
            cmd += ["--temp", "0", "--seed", str(args.seed), "--verbose", *extra]
            ptys, pipes = measure(cmd, env, args.runs if label == "new" else args.old_runs)
            assert all(r.output.decode() == text for r in pipes), "the pipe did not get the script exactly"
            # the old renderer writes tens of MB into a pty: too much for pyte, said as "-"
            shown = len(screen_lines(ptys[0].output)) if len(ptys[0].output) < MAX_EMULATED else None
            rows.append(
                (
                    name,
                    label,
                    statistics.median(r.self_tps for r in ptys),
                    statistics.median(r.self_tps for r in pipes),
                    statistics.median(r.outside_tps for r in ptys),
                    statistics.median(r.outside_tps for r in pipes),
                    ptys[0].tokens,
                    sorted(a.self_tps / b.self_tps for a, b in zip(ptys, pipes)),
                    len(ptys[0].output),
                    shown,
                    len(expected),
                )
            )
            print(f"  {name}/{label}: done", file=sys.stderr)

    print_table(rows, args)


if __name__ == "__main__":
    main()
