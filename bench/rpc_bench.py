"""The cost of llama.cpp's RPC hop: decode tok/s local vs split across 2 ``g4 rpc-server`` on loopback.

Information, not a goal: on one machine the servers compute on the same cores as a local run
would, so the ratio shows what the protocol itself costs per token (one graph per token sent to
each server, the hidden state passed between them, the logits fetched back).

Each round runs, interleaved, ``g4 chat MODEL --verbose`` greedily for ``--tokens`` tokens

  local    no RPC: the model on this process's CPU
  rpc      ``--rpc A,B --gpu-layers 99``: every layer on the two servers (half each)

and takes two figures per run: g4's own decode rate (its ``--verbose`` line) and the wall clock
from the first answer byte on stdout to the end of the stream (tokens / seconds), as the
cross-check. Medians over ``--repeat`` rounds; the ratio rpc / local. The servers get
``--threads`` threads each, the local run as many in total (``2 x --threads``), so that both use
the same cores. Holds ``/tmp/g4-bench.lock`` like the other benchmarks.

    python bench/rpc_bench.py [--model mid|tiny] [--tokens 128] [--repeat 3] [--threads 1]

``mid`` is the chat benchmark's model (E2B widths, 262k vocabulary, Q4_K_M; built once under
/work/bench-data); ``tiny`` the test suite's tiny 31B layout (seconds; for checking the script).
"""

from __future__ import annotations

import argparse
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from chat_bench import build_mid, g4_cmd  # noqa: E402
from knobs_bench import bench_lock  # noqa: E402

DATA = Path("/work/bench-data/rpc")
PROMPT = "Write a long story about the sea."
STATS = re.compile(r"answer (\d+) tokens \(([\d.]+) tok/s\)")


def tiny_model(d: Path) -> Path:
    from quantize.converter import convert
    from quantize.tiny import make_checkpoint

    out = d / "tiny-31b-F32.gguf"
    if not out.is_file():
        ckpt = make_checkpoint(d / "tiny-31b", "31b", vision=False, audio=False)
        convert(ckpt, out, quant="F32", mmproj_type=None)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(threads: int) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen(
        [*g4_cmd(), "rpc-server", "--port", str(port), "--threads", str(threads)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    for _ in range(300):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc, f"127.0.0.1:{port}"
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("rpc-server did not start")


def run(model: Path, tokens: int, threads: int, extra: list[str]) -> tuple[float, float, int]:
    """(g4's decode tok/s, wall-clock decode tok/s, tokens) of one greedy answer."""
    proc = subprocess.Popen(
        [*g4_cmd(), "chat", str(model), PROMPT, "-n", str(tokens), "--temp", "0", "--verbose",
         "--threads", str(threads), "--local", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    first = proc.stdout.read(1)
    t0 = t1 = time.perf_counter()
    while chunk := proc.stdout.read1(65536):  # the last byte's time: process teardown is not decode
        t1 = time.perf_counter()
        del chunk
    err = proc.stderr.read().decode()
    if proc.wait() != 0 or not first:
        raise SystemExit(f"g4 chat failed: {err.strip()[-500:]}")
    m = STATS.search(err)
    if m is None:
        raise SystemExit(f"no stats line in: {err[-500:]}")
    n = int(m.group(1))
    return float(m.group(2)), (n - 1) / (t1 - t0) if n > 1 else 0.0, n  # the first token came before t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", choices=["mid", "tiny"], default="mid")
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="per server; the local run gets twice as many")
    args = ap.parse_args()
    work = DATA if args.model == "mid" else Path(tempfile.mkdtemp(prefix="g4-rpc-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    model = build_mid(work) if args.model == "mid" else tiny_model(work)
    results: dict[str, list[tuple[float, float, int]]] = {"local": [], "rpc": []}
    with bench_lock():
        servers = [start_server(args.threads) for _ in range(2)]
        try:
            rpc = ",".join(ep for _, ep in servers)
            for r in range(args.repeat):
                for name, extra in (("local", ["--gpu-layers", "0"]), ("rpc", ["--rpc", rpc, "--gpu-layers", "99"])):
                    results[name].append(run(model, args.tokens, 2 * args.threads, extra))
                    g4_tps, wall_tps, n = results[name][-1]
                    print(f"round {r + 1} {name:<5} {n} tokens: g4 {g4_tps:.1f} tok/s, wall {wall_tps:.1f} tok/s",
                          file=sys.stderr, flush=True)  # fmt: skip
        finally:
            for proc, _ in servers:
                proc.kill()
                proc.wait()
    med = {k: (statistics.median(x[0] for x in v), statistics.median(x[1] for x in v)) for k, v in results.items()}
    print(f"model {model.name}, {args.tokens} tokens, {args.repeat} rounds, {args.threads} thread(s) per server")
    print(f"{'':<8}{'g4 tok/s':>10}{'wall tok/s':>12}")
    for k, (g, w) in med.items():
        print(f"{k:<8}{g:>10.1f}{w:>12.1f}")
    (g_rpc, w_rpc), (g_local, w_local) = med["rpc"], med["local"]
    print(f"rpc/local decode: {g_rpc / g_local:.2f}x (g4), {w_rpc / w_local:.2f}x (wall)")


if __name__ == "__main__":
    main()
