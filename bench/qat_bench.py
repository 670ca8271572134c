"""Benchmark: `g4 convert --quant q4_0_qat` (QAT-aware Q4_0) against `--quant q4_0` (llama.cpp's
own Q4_0 quantizer) on the same QAT-grid checkpoint.

Builds a synthetic BF16 checkpoint with the real E2B widths (hidden 1536, MLP 6144, 262k
vocabulary; ``--layers`` layers, no PLE, towers left out) whose linear layers are on a QAT grid
(``quantize.tiny.qat_grid``), then runs both conversions in subprocesses, interleaved,
``--repeat`` times (after one warm-up round), and prints the median wall time, CPU time and peak
RSS of each and the ratio q4_0_qat / q4_0. Both write a BF16-or-Q4_0 intermediate and let
llama.cpp finish the file; the difference is the block search (``quantize/qat.py``) against
llama.cpp's C quantizer.

    python bench/qat_bench.py [--layers 4] [--repeat 3] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from convert_bench import run_measured  # noqa: E402

S, F = "sliding_attention", "full_attention"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--layers", type=int, default=4, help="text layers (even; the last of each pair full)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()
    from quantize.tiny import make_checkpoint

    work = Path(args.workdir or tempfile.mkdtemp(prefix="qat-bench-"))
    ckpt = work / "ckpt"
    layers = [S, F] * (args.layers // 2)
    text = dict(num_hidden_layers=len(layers), layer_types=layers, num_kv_shared_layers=0,
                hidden_size_per_layer_input=0)  # fmt: skip
    if not (ckpt / "config.json").is_file():
        make_checkpoint(ckpt, "e2b-real", dtype="BF16", qat=True, vision=False, audio=False, text=text)
    weights = sum(p.stat().st_size for p in ckpt.glob("*.safetensors"))
    print(f"checkpoint: {ckpt} ({weights / 1e6:.0f} MB BF16, {len(layers)} layers, E2B widths)", file=sys.stderr)
    cmds = {
        q: [sys.executable, "-m", "g4cli.app", "convert", str(ckpt), "--quant", q, "--mmproj", "none",
            "-o", str(work / f"{q}.gguf")]
        for q in ("q4_0", "q4_0_qat")
    }  # fmt: skip
    runs: dict[str, list] = {q: [] for q in cmds}
    for i in range(args.repeat + 1):
        for q, cmd in cmds.items():
            r = run_measured(cmd)
            if i:  # the first round warms the page cache
                runs[q].append(r)
    med = {q: (statistics.median(r.wall for r in rs), statistics.median(r.cpu for r in rs),
               max(r.peak_rss for r in rs)) for q, rs in runs.items()}  # fmt: skip
    print("| quant | wall s | CPU s | peak RSS MB |")
    print("|---|---|---|---|")
    for q, (wall, cpu, rss) in med.items():
        print(f"| {q} | {wall:.2f} | {cpu:.2f} | {rss / 2**20:.0f} |")
    (qat_wall, qat_cpu, _), (base_wall, base_cpu, _) = med["q4_0_qat"], med["q4_0"]
    print(f"q4_0_qat / q4_0: wall {qat_wall / base_wall:.2f}x, CPU {qat_cpu / base_cpu:.2f}x")


if __name__ == "__main__":
    main()
