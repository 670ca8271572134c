"""Benchmark: `g4 convert` to BF16 on a checkpoint with the real E2B shapes, against a plain copy.

Builds a synthetic BF16 checkpoint with the real E2B tensor shapes (random values, ~10 GB with
the towers left out; ``--slice`` keeps only the PLE table at full size and two layers, ~5 GB), then runs,
interleaved, ``--repeat`` times each:

  copy     `cp` of the same safetensors files (the physical floor)
  convert  ``g4 convert DIR --quant bf16`` in a subprocess

and prints wall time, MB/s and peak RSS (of the child process, from wait4) for both, and the
ratio convert/copy. Goals (issue #2): peak RSS <= 400 MB whatever the size; time <= 2x the copy.

    python bench/convert_bench.py [--slice] [--repeat 2] [--workdir DIR] [--keep]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def run_measured(cmd: list[str]) -> tuple[float, int]:
    """(wall seconds, peak RSS bytes) of a child process.

    Peak RSS is the child's VmHWM, sampled from /proc until it exits (ru_maxrss would count the
    parent's pages that fork copied before exec).
    """
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peak = 0
    status_file = Path(f"/proc/{proc.pid}/status")
    while proc.poll() is None:
        try:
            for line in status_file.read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peak = max(peak, int(line.split()[1]) * 1024)
        except (FileNotFoundError, ProcessLookupError, ValueError):
            pass
        time.sleep(0.02)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        err = proc.stderr.read().decode() if proc.stderr else ""
        raise SystemExit(f"command failed: {' '.join(cmd)}\n{err}")
    return wall, peak


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--slice", action="store_true", help="two layers, the PLE table at full size")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--keep", action="store_true", help="keep the synthetic checkpoint")
    args = ap.parse_args()

    from quantize.tiny import make_checkpoint

    work = Path(tempfile.mkdtemp(prefix="g4-bench-", dir=args.workdir))
    ckpt = work / "gemma-4-e2b-synthetic"
    t0 = time.perf_counter()
    # --slice: two layers, with the PLE width raised so the PLE table keeps its real 4.7 GB size
    text = (
        dict(num_hidden_layers=2, layer_types=["sliding_attention", "full_attention"], num_kv_shared_layers=0,
             hidden_size_per_layer_input=35 * 256 // 2)
        if args.slice
        else None
    )  # fmt: skip
    make_checkpoint(ckpt, "e2b-real", dtype="BF16", vision=False, audio=False, text=text, shard_bytes=4 << 30)
    files = sorted(ckpt.glob("*.safetensors"))
    size = sum(f.stat().st_size for f in files)
    print(f"synthetic E2B checkpoint: {size / 1e9:.2f} GB in {len(files)} shard(s), built in "
          f"{time.perf_counter() - t0:.0f} s", file=sys.stderr)  # fmt: skip

    g4 = shutil.which("g4")
    convert_cmd = [g4] if g4 else [sys.executable, "-m", "g4cli.app"]
    results: dict[str, list[tuple[float, int]]] = {"copy": [], "convert": []}
    copy_dir = work / "copy"
    for i in range(args.repeat + 1):  # the first round warms the page cache and is not counted
        copy_dir.mkdir()
        timing = run_measured(["cp", *map(str, files), str(copy_dir)])
        shutil.rmtree(copy_dir)
        if i == 0:
            continue
        results["copy"].append(timing)
        gguf = work / "out.gguf"
        results["convert"].append(run_measured([*convert_cmd, "convert", str(ckpt), "-q", "bf16", "-o", str(gguf)]))
        gguf.unlink()

    print(f"{'':8} {'wall s':>8} {'MB/s':>8} {'peak RSS MB':>12}")
    med = {}
    for name, runs in results.items():
        wall = statistics.median(w for w, _ in runs)
        rss = max(r for _, r in runs)
        med[name] = (wall, rss)
        print(f"{name:8} {wall:8.2f} {size / wall / 1e6:8.0f} {rss / 1e6:12.0f}")
    ratio = med["convert"][0] / med["copy"][0]
    print(f"convert/copy time ratio: {ratio:.2f} (goal <= 2.0); convert peak RSS {med['convert'][1] / 1e6:.0f} MB "
          f"(goal <= 400 MB); checkpoint {size / 1e9:.2f} GB")  # fmt: skip
    if not args.keep:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
