"""Benchmark: `g4 convert` to BF16 on checkpoints with the real E2B shapes, against a plain copy.

Builds synthetic BF16 checkpoints with the real E2B tensor shapes (random values, towers left
out) and a tokenizer.json of the real size (262,144 tokens, 514,906 merges, indented as the
releases ship it, ~33 MB), one case at a time:

  small  2 layers, PLE width 512: embeddings at full size, ~1.5 GB (the fixed costs show here)
  slice  2 layers, the PLE table at its full 4.7 GB, ~5.7 GB
  full   35 layers, the PLE table 4.7 GB, ~9.3 GB

and runs, interleaved, ``--repeat`` times each (after one round that warms the page cache):

  cp        `cp` of the same safetensors files (the physical floor, not durable)
  cp+fsync  `cp`, then `sync FILE...` (fsync of each copy): the floor for a durable write
  convert   ``g4 convert DIR --quant bf16`` in a subprocess (it fsyncs its output)

and prints the median wall time, MB/s and peak RSS (of the child process) of each, and the ratio
of convert to each baseline. Goals (issues #2, #9): peak RSS <= 400 MB whatever the size; time
<= 2x the copy.

    python bench/convert_bench.py [--case small slice full] [--repeat 3] [--workdir DIR] [--checkpoints DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

S, F = "sliding_attention", "full_attention"
TWO_LAYERS = dict(num_hidden_layers=2, layer_types=[S, F], num_kv_shared_layers=0)
CASES = {  # text_config overrides of the e2b-real family; None: the real E2B text model
    "small": dict(TWO_LAYERS, hidden_size_per_layer_input=512),
    "slice": dict(TWO_LAYERS, hidden_size_per_layer_input=35 * 256 // 2),  # the PLE table at its real 4.7 GB
    "full": None,
}
REAL_MERGES = 514_906  # Gemma 4's tokenizer.json (the 262,144-token Gemma vocabulary)
FILLER = "\u2581w"  # quantize.tiny_tokenizer's filler tokens: ▁w<n>


@dataclass
class Run:
    wall: float  # seconds
    cpu: float  # user + system seconds of the child
    peak_rss: int  # bytes


def run_measured(cmd: list[str]) -> Run:
    """Wall time, CPU time and peak RSS of a child process.

    Peak RSS is the child's VmHWM, sampled from /proc until it exits (ru_maxrss would count the
    parent's pages that fork copied before exec). CPU time (user + system, the child's children
    included) tells the fixed costs apart from waiting for the disk, and is less disturbed than
    wall time by other processes on the machine; an fsync's write-back counts as system time.
    """
    err = tempfile.TemporaryFile()  # not a pipe: a child's progress output could fill it and block
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err)
    peak = 0
    status_file = Path(f"/proc/{proc.pid}/status")
    while True:
        try:
            for line in status_file.read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peak = max(peak, int(line.split()[1]) * 1024)
        except (FileNotFoundError, ProcessLookupError, ValueError):
            pass
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        time.sleep(0.02)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    with err:
        if proc.returncode != 0:
            err.seek(0)
            raise SystemExit(f"command failed: {' '.join(cmd)}\n{err.read().decode(errors='replace')}")
    return Run(wall, usage.ru_utime + usage.ru_stime, peak)


def real_size_tokenizer(ckpt: Path) -> None:
    """Give the synthetic tokenizer.json the real one's merge count, characters and layout.

    The filler tokens ``▁w<n>`` get the merges ``▁w<n[:-k]> <n[-k:]>``: pieces of real-looking
    lengths, each a token of the vocabulary. One in 500 gets an emoji, as the real vocabulary
    has them: one character beyond U+FFFF makes Python hold the whole text at 4 bytes a character.
    """
    path = ckpt / "tokenizer.json"
    tok = json.loads(path.read_text(encoding="utf-8"))
    model = tok["model"]
    emoji = "\U0001f642"
    model["vocab"] = vocab = {
        text + (emoji if text.startswith(FILLER) and i % 500 == 0 else ""): i for text, i in model["vocab"].items()
    }
    merges = model["merges"]
    for text in vocab:
        if len(merges) >= REAL_MERGES:
            break
        if text.startswith(FILLER) and text[2:].isdigit():
            merges += [[text[:-k], text[-k:]] for k in (1, 2) if len(text) - k > 2]
    del merges[REAL_MERGES:]
    if len(merges) != REAL_MERGES:
        raise SystemExit(f"only {len(merges)} merges for a {len(vocab)}-token vocabulary")
    path.write_text(json.dumps(tok, ensure_ascii=False, indent=2), encoding="utf-8")


def build(case: str, root: Path) -> Path:
    """The synthetic checkpoint of ``case`` under ``root`` (reused if a previous run built it)."""
    from quantize.tiny import make_checkpoint

    ckpt = root / f"gemma-4-e2b-synthetic-{case}"
    done = ckpt / ".complete"
    if not done.exists():
        t0 = time.perf_counter()
        make_checkpoint(ckpt, "e2b-real", dtype="BF16", vision=False, audio=False, text=CASES[case],
                        shard_bytes=4 << 30)  # fmt: skip
        real_size_tokenizer(ckpt)
        done.touch()
        print(f"{case}: built in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    return ckpt


def measure(ckpt: Path, work: Path, repeat: int) -> dict[str, list[Run]]:
    files = sorted(ckpt.glob("*.safetensors"))
    # the g4 script of this interpreter's environment: a version manager's shim found first in
    # PATH (pyenv's is a bash script) would add its own start-up to every run
    script = Path(sys.executable).with_name("g4")
    convert_cmd = [str(script)] if script.is_file() else [sys.executable, "-m", "g4cli.app"]
    copy_dir = work / "copy"
    gguf = work / "out.gguf"
    commands = {
        "cp": ["cp", *map(str, files), str(copy_dir)],
        # `sync FILE` fsyncs that file (not the whole file system, as `sync -f` would)
        "cp+fsync": ["sh", "-c", 'd=$1; shift; cp "$@" "$d" && sync "$d"/*', "sh", str(copy_dir), *map(str, files)],
        "convert": [*convert_cmd, "convert", str(ckpt), "-q", "bf16", "-o", str(gguf)],
    }
    results: dict[str, list[Run]] = {name: [] for name in commands}
    for i in range(repeat + 1):  # the first round warms the page cache and is not counted
        for name, cmd in commands.items():
            copy_dir.mkdir()
            os.sync()  # no dirty pages of the previous run written back during this one
            timing = run_measured(cmd)
            shutil.rmtree(copy_dir)
            gguf.unlink(missing_ok=True)
            if i:
                results[name].append(timing)
    return results


def _summary(runs: list[Run]) -> Run:
    """Median wall and CPU time, the highest peak RSS."""
    return Run(
        statistics.median(r.wall for r in runs), statistics.median(r.cpu for r in runs), max(r.peak_rss for r in runs)
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--case", nargs="+", choices=list(CASES), default=list(CASES))
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--workdir", type=Path, default=None, help="where the copies and outputs go (default: a temp dir)")
    ap.add_argument("--checkpoints", type=Path, default=None,
                    help="build the synthetic checkpoints here and keep them (reused when present)")  # fmt: skip
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="g4-bench-", dir=args.workdir))
    rows = []
    try:
        for case in args.case:
            ckpt = build(case, args.checkpoints or work)
            size = sum(f.stat().st_size for f in ckpt.glob("*.safetensors"))
            results = measure(ckpt, work, args.repeat)
            rows.append((case, size, results))
            for name, runs in results.items():
                print(f"{case} {name}: wall " + " ".join(f"{r.wall:.2f}" for r in runs), file=sys.stderr)
            if not args.checkpoints:
                shutil.rmtree(ckpt)
    finally:
        shutil.rmtree(work)

    print(f"median of {args.repeat}, page cache warm; ratio = convert / baseline (wall time), the median of each")
    print("round's ratio (the three commands of a round run back to back, so a slow spell of the disk")
    print("weighs on all three)")
    print(f"{'case':6} {'GB':>5} {'cp s':>6} {'cp+fsync s':>10} {'convert s':>9} {'/cp':>5} {'/cp+fsync':>9} "
          f"{'CPU s: cp+fsync':>15} {'convert':>7} {'convert peak RSS MB':>19}")  # fmt: skip
    for case, size, m in rows:
        cp, cps, conv = (_summary(m[name]) for name in ("cp", "cp+fsync", "convert"))
        to_cp, to_cps = (
            statistics.median(c.wall / b.wall for c, b in zip(m["convert"], m[name])) for name in ("cp", "cp+fsync")
        )
        print(f"{case:6} {size / 1e9:5.2f} {cp.wall:6.2f} {cps.wall:10.2f} {conv.wall:9.2f} {to_cp:5.2f} "
              f"{to_cps:9.2f} {cps.cpu:15.2f} {conv.cpu:7.2f} {conv.peak_rss / 1e6:19.0f}")  # fmt: skip
    print("goals: convert <= 2.0x the copy; peak RSS <= 400 MB")


if __name__ == "__main__":
    main()
