"""Threads, flash attention and KV-cache type on CPU (issue 9): what g4's defaults are chosen from.

On the chat benchmark model (``chat_bench.build_mid``: E2B widths, 262k vocabulary, 8 layers,
Q4_K_M), at each context size (default 512 and 4096), for every setting

  threads      1, the physical cores, the logical CPUs, and one more (oversubscribed)
  flash attn   off / on                 (``Model(flash_attn=)``)
  KV type      f16 / q8_0 / q4_0        (quantized only with flash attention: llama.cpp needs it)

one fresh process loads the model through g4's runtime (``Model``) and answers through
``Model.generate`` (greedy):

  decode (empty)   ``--tokens`` tokens after a short prompt
  prefill          a prompt that fills the context but for ``--tokens`` (+16) positions
  decode (full)    ``--tokens`` tokens after that prompt: attention over a long KV cache

Each figure is g4's own (``Stats``) and, as a cross-check, the benchmark's wall clock around the
event stream (time to the first event for prefill, first event to the end for decode). Settings
are interleaved, ``--repeat`` rounds; medians. Every run holds ``/tmp/g4-bench.lock`` (other
benchmarks on this machine take it too) and is repeated when other processes took more than
``--noise`` of a core meanwhile (ggml's threads spin: a busy core ruins decode speed).

``--quality`` adds what a quantized KV cache costs in accuracy: with flash attention on, the same
tokens (a ~3900-token prompt, then 64 greedy tokens of the F16 run, teacher-forced) through F16,
Q8_0 and Q4_0 caches; KL divergence of the next-token distributions against F16, top-1 agreement
and the largest logit difference (random weights: a lower bound on what real weights show).
``--outside`` runs ``g4 chat MODEL --json``/``--verbose`` at the defaults and times the bytes
arriving on its stdout, against what g4 reports.

    python bench/knobs_bench.py [--repeat 3] [--ctx 512 4096] [--tokens 64] [--quality] [--outside]
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

DATA = Path("/work/bench-data/knobs")
LOCK = Path("/tmp/g4-bench.lock")
WORDS = (
    "the fox learns to code in a quiet valley where rivers bend and old stones remember every name "
    "of each traveller who passed before winter came down from the northern hills with snow"
).split()


@dataclass(frozen=True)
class Knobs:
    threads: int
    flash_attn: str  # "on" / "off"
    kv_type: str  # "f16" / "q8_0" / "q4_0"

    @property
    def label(self) -> str:
        return f"t={self.threads} fa={self.flash_attn} kv={self.kv_type}"


# --- measuring without noise ------------------------------------------------------------------


def _cpu_busy() -> float:
    """Seconds of CPU time all CPUs spent busy (user, system, irq, and time stolen by the host)."""
    with open("/proc/stat", encoding="ascii") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = v[:8]
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


@contextlib.contextmanager
def bench_lock() -> Iterator[None]:
    """The machine's benchmark lock (the one ``flock /tmp/g4-bench.lock CMD`` takes)."""
    with open(LOCK, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _busy(settle: float) -> float:
    """Cores in use on the machine, sampled over ``settle`` seconds."""
    b0, t0 = _cpu_busy(), time.perf_counter()
    time.sleep(settle)
    return (_cpu_busy() - b0) / (time.perf_counter() - t0)


def wait_for_quiet(limit: float, settle: float = 1.0) -> None:
    """Wait until the other processes use less than ``limit`` of a core."""
    while (busy := _busy(settle)) >= limit:
        print(f"  (machine busy: {busy:.2f} cores in use; waiting)", file=sys.stderr, flush=True)
        time.sleep(20)


@contextlib.contextmanager
def quiet_lock(limit: float) -> Iterator[None]:
    """The benchmark lock on a quiet machine: wait for quiet without the lock (others' benchmarks
    are not held up), take it, and check again; give it back while the machine is busy."""
    while True:
        wait_for_quiet(limit)
        with bench_lock():
            if _busy(1.0) < limit:
                yield
                return
        time.sleep(5)


def quiet_run(cmd: list[str], noise: float, tries: int = 4, **kw) -> tuple[subprocess.CompletedProcess, float]:
    """Run ``cmd`` under the benchmark lock on a quiet machine; (result, others' CPU in cores).

    Others' CPU = all CPU time spent meanwhile minus the child's own: when it exceeds ``noise``
    cores on average, the run is thrown away and repeated."""
    for attempt in range(tries):
        with quiet_lock(noise):
            b0, c0, t0 = _cpu_busy(), _children_cpu(), time.perf_counter()
            out = subprocess.run(cmd, capture_output=True, check=False, stdin=subprocess.DEVNULL, **kw)
            wall = time.perf_counter() - t0
            others = max(0.0, (_cpu_busy() - b0) - (_children_cpu() - c0)) / wall
        if out.returncode != 0:
            raise SystemExit(f"{' '.join(cmd[:4])}… failed:\n{out.stderr.decode()[-2000:]}")
        if others <= noise or attempt == tries - 1:
            return out, others
        print(f"  (others used {others:.2f} cores during the run; repeating)", file=sys.stderr, flush=True)
        time.sleep(30)
    raise AssertionError("unreachable")


# --- one setting, in its own process ---------------------------------------------------------


def fill_text(model, n_tokens: int) -> str:
    """User text whose chat prompt is about ``n_tokens`` tokens long."""
    from g4cli.chat.conversation import Turn

    words = [WORDS[(i * 7 + i // 11) % len(WORDS)] for i in range(n_tokens * 2)]
    lo, hi = 1, len(words)
    while lo < hi:  # the longest text that stays within n_tokens
        mid = (lo + hi + 1) // 2
        if model.prompt_tokens([Turn("user", " ".join(words[:mid]))]) <= n_tokens:
            lo = mid
        else:
            hi = mid - 1
    return " ".join(words[:lo])


def answer(model, text: str, tokens: int) -> dict:
    """One greedy answer of ``tokens`` tokens: g4's stats and the wall clock around its events."""
    from g4cli.chat.conversation import Turn
    from g4cli.chat.settings import Sampling

    model.reset()
    sampling = Sampling(temperature=0.0, top_k=1, max_tokens=tokens)
    t0 = time.perf_counter()
    first = None
    for ev in model.generate([Turn("user", text)], sampling):
        if first is None:
            first = time.perf_counter()
        if ev.kind == "done":
            end, st = time.perf_counter(), ev.stats
    assert first is not None and st.gen_tokens == tokens, f"expected {tokens} tokens, got {st.gen_tokens}"
    return {
        "prompt_tokens": st.prompt_eval_tokens,
        "prefill": st.prompt_tps,
        "prefill_wall": st.prompt_eval_tokens / (first - t0),
        "decode": st.gen_tps,
        "decode_wall": (st.gen_tokens - 1) / (end - first),
    }


def worker(spec: dict) -> None:
    from g4cli.chat.runtime.model import Model

    k = Knobs(**spec["knobs"])
    ctx, tokens = spec["ctx"], spec["tokens"]
    with Model(spec["model"], n_ctx=ctx, n_threads=k.threads, flash_attn=k.flash_attn, kv_type=k.kv_type) as m:
        short = answer(m, "Tell me a story.", tokens)
        full = answer(m, fill_text(m, ctx - tokens - 16), tokens)
    print(
        json.dumps(
            {
                "decode_empty": short["decode"],
                "decode_empty_wall": short["decode_wall"],
                "prompt_tokens": full["prompt_tokens"],
                "prefill": full["prefill"],
                "prefill_wall": full["prefill_wall"],
                "decode_full": full["decode"],
                "decode_full_wall": full["decode_wall"],
            }
        )
    )


def run_setting(model: Path, k: Knobs, ctx: int, tokens: int, noise: float) -> dict:
    spec = {"model": str(model), "knobs": asdict(k), "ctx": ctx, "tokens": tokens}
    out, others = quiet_run([sys.executable, __file__, "--worker", json.dumps(spec)], noise)
    return {**json.loads(out.stdout), "others": others}


# --- accuracy of a quantized KV cache --------------------------------------------------------


def quality_worker(spec: dict) -> None:
    """Teacher-forced logits through F16, Q8_0 and Q4_0 caches (flash attention on), and F16
    without flash attention: KL against F16 + FA, top-1 agreement, largest logit difference."""
    import numpy as np

    from g4cli.chat.conversation import Turn
    from g4cli.chat.runtime.model import Model

    ctx, steps = spec["ctx"], spec["tokens"]

    def logits_along(fa: str, kv: str, prompt: list[int], follow: list[int] | None) -> tuple[list[int], np.ndarray]:
        with Model(spec["model"], n_ctx=ctx, flash_attn=fa, kv_type=kv) as m:
            seq = m.sequences[0]
            m.decode(seq, prompt, logits_last=True)
            toks, rows = [], []
            for i in range(steps):
                row = m.last_logits()
                rows.append(row)
                tok = int(np.argmax(row)) if follow is None else follow[i]
                toks.append(tok)
                m.decode(seq, [tok], logits_last=True)
            return toks, np.stack(rows)

    with Model(spec["model"], n_ctx=ctx) as m:
        prompt = m.tokenize(m.render([Turn("user", fill_text(m, ctx - steps - 16))]))
    ref_toks, ref = logits_along("on", "f16", prompt, None)

    def log_softmax(x: np.ndarray) -> np.ndarray:
        x = x.astype(np.float64)
        x = x - x.max(axis=1, keepdims=True)
        return x - np.log(np.exp(x).sum(axis=1, keepdims=True))

    lp_ref = log_softmax(ref)
    result = {"prompt_tokens": len(prompt), "steps": steps}
    for fa, kv in (("off", "f16"), ("on", "q8_0"), ("on", "q4_0")):
        _, got = logits_along(fa, kv, prompt, ref_toks)
        lp = log_softmax(got)
        kl = (np.exp(lp_ref) * (lp_ref - lp)).sum(axis=1)
        result[f"fa={fa} kv={kv}"] = {
            "kl_mean": float(kl.mean()),
            "kl_max": float(kl.max()),
            "top1": float((ref.argmax(1) == got.argmax(1)).mean()),
            "max_abs_logit": float(np.abs(ref - got).max()),
            "logit_std": float(ref.std()),
        }
    print(json.dumps(result))


# --- the outside view: g4 chat's stdout ------------------------------------------------------


def outside(model: Path, ctx: int, tokens: int, noise: float) -> dict:
    """``g4 chat`` at its defaults (a long piped prompt), timing stdout's bytes as they arrive,
    against the numbers ``--verbose`` prints."""
    import re
    import shutil

    exe = shutil.which("g4")
    g4 = [exe] if exe else [sys.executable, "-m", "g4cli.app"]
    text = " ".join(WORDS[(i * 7 + i // 11) % len(WORDS)] for i in range(ctx - tokens - 200))
    timer = r"""
import subprocess, sys, time, json
p = subprocess.Popen(sys.argv[2:], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
t0 = time.perf_counter()
p.stdin.write(sys.argv[1].encode()); p.stdin.close()
first = last = None; n = 0
while chunk := p.stdout.read1(65536):
    last = time.perf_counter(); first = first or last; n += len(chunk)
err = p.stderr.read().decode(); p.wait()
print(json.dumps({"t0": 0, "first": first - t0, "last": last - t0, "bytes": n, "stderr": err}))
"""
    cmd = [*g4, "chat", str(model), "-n", str(tokens), "--temp", "0", "--top-k", "1", "--ctx", str(ctx), "-v"]
    out, _ = quiet_run([sys.executable, "-c", timer, text, *cmd], noise)
    r = json.loads(out.stdout)
    said = r"prompt (\d+) tokens \((\d+) evaluated, ([\d.]+) tok/s\) · answer (\d+) tokens \(([\d.]+) tok/s\)"
    m = re.search(said, r["stderr"])
    assert m, r["stderr"][-500:]
    n_gen = int(m[4])
    return {
        "prompt_tokens": int(m[1]),
        "reported_prefill": float(m[3]),
        "reported_decode": float(m[5]),
        "bytes_decode": (n_gen - 1) / (r["last"] - r["first"]),  # first byte ~ first token, last byte ~ last
        "bytes": r["bytes"],
    }


# --- the benchmark ---------------------------------------------------------------------------


def settings(threads: list[int], oversubscribed: int) -> list[Knobs]:
    out = []
    for t in threads:
        out += [Knobs(t, "off", "f16"), Knobs(t, "on", "f16"), Knobs(t, "on", "q8_0"), Knobs(t, "on", "q4_0")]
    out += [Knobs(oversubscribed, "off", "f16"), Knobs(oversubscribed, "on", "f16")]
    return out


COLUMNS = ("decode_empty", "prefill", "decode_full")


def print_table(ctx: int, results: dict[Knobs, list[dict]]) -> None:
    prompt = statistics.median(r["prompt_tokens"] for rs in results.values() for r in rs)
    n = len(next(iter(results.values())))
    print(f"\ncontext {ctx} (prompt {prompt:.0f} tokens; tok/s, median of {n}; wall-clock cross-check in brackets)")
    print("| threads | flash attn | KV | decode, short prompt | prefill | decode, full context |")
    print("|---|---|---|---|---|---|")
    for k, rs in results.items():
        cells = []
        for col in COLUMNS:
            ours = statistics.median(r[col] for r in rs)
            wall = statistics.median(r[col + "_wall"] for r in rs)
            cells.append(f"{ours:.1f} ({wall:.1f})")
        print(f"| {k.threads} | {k.flash_attn} | {k.kv_type} | " + " | ".join(cells) + " |")
    worst = max(r["others"] for rs in results.values() for r in rs)
    print(f"(other processes used at most {worst:.2f} cores during a run)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--quality-worker", help=argparse.SUPPRESS)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--ctx", type=int, nargs="+", default=[512, 4096])
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, nargs="+", help="default: 1, physical cores, logical CPUs")
    ap.add_argument("--noise", type=float, default=0.15, help="other processes' CPU (cores) that voids a run")
    ap.add_argument("--data", type=Path, default=DATA, help="where the benchmark model is built (kept)")
    ap.add_argument("--quality", action="store_true", help="also measure the accuracy of a quantized KV cache")
    ap.add_argument("--outside", action="store_true", help="also time g4 chat's stdout from outside")
    ap.add_argument("--only", choices=["speed", "none"], default="speed", help="none: skip the speed matrix")
    args = ap.parse_args()
    if args.worker:
        return worker(json.loads(args.worker))
    if args.quality_worker:
        return quality_worker(json.loads(args.quality_worker))

    from chat_bench import build_mid

    from g4cli.chat.runtime.hardware import physical_cores

    args.data.mkdir(parents=True, exist_ok=True)
    with bench_lock():
        model = build_mid(args.data)
    logical = os.cpu_count() or 1
    threads = args.threads or sorted({1, physical_cores(), logical})
    print(f"model {model.name} ({model.stat().st_size / 2**30:.2f} GiB); physical cores {physical_cores()}, "
          f"logical CPUs {logical}; threads {threads} + {max(threads) + 1} (oversubscribed)")  # fmt: skip
    if args.only == "speed":
        matrix = settings(threads, max(threads) + 1)
        for ctx in args.ctx:
            results: dict[Knobs, list[dict]] = {k: [] for k in matrix}
            for rnd in range(args.repeat):
                for k in matrix if rnd % 2 == 0 else matrix[::-1]:  # interleaved, alternating order
                    results[k].append(run_setting(model, k, ctx, args.tokens, args.noise))
                    r = results[k][-1]
                    done = f"decode {r['decode_empty']:.1f} / {r['decode_full']:.1f}, prefill {r['prefill']:.1f} tok/s"
                    print(f"  ctx {ctx} round {rnd + 1} {k.label}: {done}", file=sys.stderr, flush=True)
            print_table(ctx, results)
    if args.quality:
        ctx = max(args.ctx)
        spec = {"model": str(model), "ctx": ctx, "tokens": args.tokens}
        out, _ = quiet_run([sys.executable, __file__, "--quality-worker", json.dumps(spec)], args.noise)
        q = json.loads(out.stdout)
        print(f"\nKV-cache accuracy against F16 with flash attention ({q['prompt_tokens']}-token prompt, "
              f"{q['steps']} teacher-forced steps)")  # fmt: skip
        print("| setting | mean KL (nats) | max KL | top-1 agreement | max abs logit diff (logit std) |")
        print("|---|---|---|---|---|")
        for key, v in q.items():
            if isinstance(v, dict):
                print(f"| {key} | {v['kl_mean']:.2e} | {v['kl_max']:.2e} | {v['top1']:.1%} | "
                      f"{v['max_abs_logit']:.3f} ({v['logit_std']:.2f}) |")  # fmt: skip
    if args.outside:
        ctx = max(args.ctx)
        runs = [outside(model, ctx, args.tokens, args.noise) for _ in range(args.repeat)]
        med = {key: statistics.median(r[key] for r in runs) for key in runs[0]}
        print(f"\ng4 chat at its defaults, ctx {ctx}, {med['prompt_tokens']:.0f}-token piped prompt "
              f"(median of {len(runs)}): reports prefill {med['reported_prefill']:.1f} tok/s, decode "
              f"{med['reported_decode']:.1f} tok/s; stdout bytes: {med['bytes_decode']:.1f}")  # fmt: skip


if __name__ == "__main__":
    main()
