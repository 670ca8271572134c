"""Benchmarks for `g4 chat` (issue #5).

(a) Generation speed and time to first token of `g4 chat MODEL PROMPT --json` against
    llama-cpp-python called directly (its Llama.generate token loop) on the same GGUF,
    with the same prompt text, context, threads and greedy sampling; each side in a fresh
    process, interleaved, ``--repeat`` times; medians. Two models: the tiny test model (per-token
    overhead dominates) and a mid-size synthetic Gemma 4 (E2B widths and vocabulary, 8 layers,
    Q4_K_M: per-token compute like a real model's).
(b) `g4 --help` start-up time against `python -c pass` (median of 15).

    python bench/chat_bench.py [--repeat 5] [--tokens 128] [--skip-mid]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PROMPT = "Write a long story about a fox who learns to code."

BASELINE = r"""
import json, sys, time
import llama_cpp
path, prompt, n, ctx, threads = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
llm = llama_cpp.Llama(path, n_ctx=ctx, n_threads=threads, n_threads_batch=threads, verbose=False)
t0 = time.perf_counter()
tokens = llm.tokenize(prompt.encode(), add_bos=True, special=True)
first = last = None; count = 0
for tok in llm.generate(tokens, temp=0.0, top_k=1, reset=True):  # llama-cpp-python's own token loop
    now = time.perf_counter()
    first = first or now
    last = now
    count += 1
    if llm.token_eos() == tok or count >= n:
        break
print(json.dumps({"ttft": first - t0, "tps": (count - 1) / (last - first), "tokens": count}))
"""


# the mid-size benchmark model: E2B widths and vocabulary, 8 layers (2 full, 3 KV-shared)
MID_TEXT = dict(
    num_hidden_layers=8,
    num_kv_shared_layers=3,
    layer_types=["sliding_attention"] * 4 + ["full_attention"] + ["sliding_attention"] * 2 + ["full_attention"],
)


def build_mid(d: Path, quant: str = "Q4_K_M") -> Path:
    """The mid-size model as a GGUF in ``d`` (built once: kept if it is already there)."""
    from quantize.converter import convert
    from quantize.tiny import make_checkpoint

    out = d / f"mid-{quant}.gguf"
    if out.is_file():
        return out
    ckpt = make_checkpoint(d / "mid", "e2b-real", dtype="BF16", vision=False, audio=False, text=MID_TEXT, endless=True)
    try:
        convert(ckpt, out, quant=quant, mmproj_type=None)
    finally:
        shutil.rmtree(ckpt)
    return out


def g4_cmd() -> list[str]:
    exe = shutil.which("g4")
    return [exe] if exe else [sys.executable, "-m", "g4cli.app"]


def run_g4(model: Path, n: int, ctx: int, threads: int) -> dict:
    out = subprocess.run(
        [*g4_cmd(), "chat", str(model), PROMPT, "-n", str(n), "--temp", "0", "--top-k", "1", "--json",
         "--ctx", str(ctx), "--threads", str(threads)],
        capture_output=True, check=True, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    t = json.loads(out.stdout)["timings"]
    return {"ttft": t["time_to_first_token_s"], "tps": t["generation_tokens_per_s"], "tokens": t["generated_tokens"]}


def run_baseline(model: Path, prompt: str, n: int, ctx: int, threads: int) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", BASELINE, str(model), prompt, str(n), str(ctx), str(threads)],
        capture_output=True, check=True, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    return json.loads(out.stdout)


def rendered_prompt(model: Path) -> str:
    """The exact prompt text g4 sends (chat template), so both sides evaluate the same tokens."""
    from g4cli.chat.conversation import Turn
    from g4cli.chat.runtime.model import Model

    with Model(model, n_ctx=512) as m:
        return m.render([Turn("user", PROMPT)]).removeprefix("<bos>")  # llama-cpp-python adds BOS


def compare(label: str, model: Path, args: argparse.Namespace) -> None:
    prompt = rendered_prompt(model)
    g4, base = [], []
    for _ in range(args.repeat):
        g4.append(run_g4(model, args.tokens, args.ctx, args.threads))
        base.append(run_baseline(model, prompt, args.tokens, args.ctx, args.threads))
    med = {k: (statistics.median(r[k] for r in g4), statistics.median(r[k] for r in base)) for k in ("tps", "ttft")}
    print(f"{label}: generated {g4[0]['tokens']} / {base[0]['tokens']} tokens")
    for key, label, fmt in (("tps", "tok/s ", "9.1f"), ("ttft", "TTFT s", "9.4f")):
        ours, theirs = med[key]
        print(f"  {label}  g4 {ours:{fmt}}   llama-cpp-python {theirs:{fmt}}   ratio {ours / theirs:.3f}")


def startup(repeat: int = 15) -> None:
    def median_time(cmd: list[str]) -> float:
        times = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            subprocess.run(cmd, capture_output=True, check=True)
            times.append(time.perf_counter() - t0)
        return statistics.median(times)

    help_s = median_time([*g4_cmd(), "--help"])
    chat_help_s = median_time([*g4_cmd(), "chat", "--help"])
    base = median_time([sys.executable, "-c", "pass"])
    print(f"start-up: g4 --help {help_s:.3f} s, g4 chat --help {chat_help_s:.3f} s, python -c pass {base:.3f} s "
          f"(g4 adds {help_s - base:.3f} s; goal: g4 --help <= 0.3 s)")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--ctx", type=int, default=2048)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--skip-mid", action="store_true", help="only the tiny model")
    args = ap.parse_args()

    from quantize.converter import convert
    from quantize.tiny import make_checkpoint

    with tempfile.TemporaryDirectory(prefix="g4-chat-bench-") as tmp:
        d = Path(tmp)
        tiny = convert(
            make_checkpoint(d / "tiny", "e2b", endless=True), d / "tiny.gguf", quant="Q8_0", mmproj_type=None
        )
        compare("tiny E2B-layout model, Q8_0", tiny.text, args)
        if not args.skip_mid:
            compare("mid-size model (E2B widths, 262k vocabulary, 8 layers), Q4_K_M", build_mid(d), args)
    startup()


if __name__ == "__main__":
    main()
