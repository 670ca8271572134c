"""Benchmarks for `g4 serve` (issue #11), on the mid-size model of chat_bench.py (E2B widths and
vocabulary, 8 layers, Q4_K_M) unless ``--tiny``; every figure measured from outside (the client's
wall clock, bytes as they arrive) beside what g4 reports.

(a) single-stream decode tok/s through the server (SSE chunks as they arrive) vs `g4 chat
    --local` in-process (stdout bytes as they arrive), same prompt, greedy, interleaved;
(b) the HTTP path's time-to-first-token overhead: client-seen TTFT minus the server's own;
(c) aggregate decode throughput with 4 concurrent streams vs 1 (`--parallel 4`);
(d) time to the first token of a follow-up turn after a ~4,000-token conversation, with the
    prefix cache (the same server, the history already evaluated) vs without (a fresh server);
(e) 20 sequential one-shot `g4 chat` calls in a shell loop, with and without a running server.

    python bench/serve_bench.py [--repeat 3] [--tokens 64] [--tiny]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

PROMPT = "Write a long story about a fox who learns to code."


_CLIENT: list = []


def client():
    """One HTTP client with keep-alive, as a real client holds (a new httpx client per request
    costs ~35 ms of the client's own set-up, which is not the server's TTFT)."""
    import httpx

    if not _CLIENT:
        _CLIENT.append(httpx.Client(timeout=600))
    return _CLIENT[0]


def stream_request(url: str, body: dict) -> dict:
    """POST a streaming chat completion; times measured as the SSE chunks arrive."""

    t0 = time.perf_counter()
    first = last = None
    pieces = 0
    usage: dict = {}
    with client().stream(
        "POST",
        url + "/v1/chat/completions",
        json={**body, "stream": True, "stream_options": {"include_usage": True}},
        timeout=600,
    ) as r:
        if r.status_code != 200:
            raise SystemExit(f"the server answered {r.status_code}: {r.read().decode()[:300]}")
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            doc = json.loads(line[6:])
            if doc.get("usage"):
                usage = doc
            for c in doc.get("choices", []):
                if c.get("delta", {}).get("content"):
                    now = time.perf_counter()
                    first = first or now
                    last = now
                    pieces += 1
    n = usage["usage"]["completion_tokens"]
    return {
        "ttft": first - t0,
        "tps": (n - 1) / (last - first) if last and first and last > first else 0.0,
        "tokens": n,
        "server_ttft": usage["timings"]["time_to_first_token_s"],
        "server_tps": usage["timings"]["generation_tokens_per_s"],
        "prompt_tokens": usage["usage"]["prompt_tokens"],
    }


def local_run(model: Path, n: int, threads: int) -> dict:
    """`g4 chat --local` in a fresh process; decode speed from stdout bytes as they arrive."""
    cmd = [
        sys.executable,
        "-m",
        "g4cli.app",
        "chat",
        str(model),
        PROMPT,
        "--temp",
        "0",
        "-n",
        str(n),
        "--local",
        "--verbose",
        "--threads",
        str(threads),
    ]
    t0 = time.perf_counter()
    p = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "G4_HOST": "127.0.0.1:9"}
    )
    first = last = None
    while p.stdout.read1(65536):
        now = time.perf_counter()
        first = first or now
        last = now
    err = p.stderr.read().decode()
    p.wait()
    import re

    m = re.search(r"answer (\d+) tokens \(([\d.]+) tok/s\)", err)
    tokens, tps = int(m.group(1)), float(m.group(2))
    return {"tps": (tokens - 1) / (last - first) if last > first else 0.0, "self_tps": tps, "wall": last - t0}


WORDS = "the fox and the dog ran over a hill to see the sea in the morning light while birds sang".split()


def conversation(n_words: int) -> list[dict]:
    """A chat history of about ``n_words`` common words (about as many tokens), in turns."""
    turns, words, i = [], 0, 0
    while words < n_words:
        text = " ".join(WORDS[(i * 7 + j) % len(WORDS)] for j in range(200))
        turns.append({"role": "user" if i % 2 == 0 else "assistant", "content": text})
        words += 200
        i += 1
    if turns[-1]["role"] != "assistant":
        turns.append({"role": "assistant", "content": "Understood."})
    return turns


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--tiny", action="store_true", help="use the tiny test model (quick check)")
    ap.add_argument("--parts", default="abcde", help="which measurements to run (default: all)")
    ap.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "g4-bench")
    args = ap.parse_args()
    args.data.mkdir(parents=True, exist_ok=True)
    from serving import Served

    from g4cli.chat.runtime.hardware import physical_cores

    threads = physical_cores()
    if args.tiny:
        from quantize.converter import convert
        from quantize.tiny import make_checkpoint

        model = args.data / "tiny-31b-Q8_0.gguf"
        if not model.is_file():
            convert(make_checkpoint(args.data / "tiny31", "31b", endless=True), model, quant="Q8_0", mmproj_type=None)
    else:
        from chat_bench import build_mid

        model = build_mid(args.data)
    name = model.stem
    body = {
        "model": name,
        "messages": [{"role": "user", "content": PROMPT}],
        "temperature": 0,
        "max_tokens": args.tokens,
    }

    print(f"model {model.name}, {args.tokens} tokens, {threads} threads, median of {args.repeat}\n")
    # (a) + (b)
    if "a" in args.parts:
        remote, local = [], []
        with Served(model, "--parallel", "1", "--threads", threads) as s:
            stream_request(s.url, {**body, "max_tokens": 4})  # warm
            for _ in range(args.repeat):
                remote.append(stream_request(s.url, body))
                local.append(local_run(model, args.tokens, threads))
        med = lambda xs, k: statistics.median(x[k] for x in xs)  # noqa: E731
        print("(a) single-stream decode tok/s (outside measurement; g4's own figure in brackets)")
        print(f"    server   {med(remote, 'tps'):8.1f}  [{med(remote, 'server_tps'):.1f}]")
        print(f"    local    {med(local, 'tps'):8.1f}  [{med(local, 'self_tps'):.1f}]")
        print(f"    ratio    {med(remote, 'tps') / med(local, 'tps'):8.3f}  (goal >= 0.95)")
        overhead = [(r["ttft"] - r["server_ttft"]) * 1000 for r in remote]
        print(
            f"(b) TTFT client {med(remote, 'ttft') * 1000:.1f} ms, server {med(remote, 'server_ttft') * 1000:.1f} ms: "
            f"HTTP overhead {statistics.median(overhead):.1f} ms (goal <= 10)"
        )

    # (c)
    if "c" in args.parts:
        with Served(model, "--parallel", "4", "--threads", threads) as s:
            stream_request(s.url, {**body, "max_tokens": 4})
            t0 = time.perf_counter()
            one = stream_request(s.url, body)
            single = one["tokens"] / (time.perf_counter() - t0)
            results: list[dict] = []

            def go(i: int) -> None:
                results.append(
                    stream_request(s.url, {**body, "messages": [{"role": "user", "content": f"{PROMPT} ({i})"}]})
                )

            t0 = time.perf_counter()
            ts = [threading.Thread(target=go, args=(i,)) for i in range(4)]
            for t in ts:
                t.start()
            for t in ts:
                t.join()
            wall = time.perf_counter() - t0
            total = sum(r["tokens"] for r in results)
        print(
            f"(c) aggregate throughput: 1 stream {single:.1f} tok/s, 4 streams {total / wall:.1f} tok/s "
            f"({total / wall / single:.2f}x)"
        )

    # (d)
    if "d" in args.parts:
        history = conversation(1750)  # ~4,000 tokens of the mid model
        follow = [*history, {"role": "user", "content": "And now, in one sentence?"}]
        with Served(model, "--parallel", "1", "--threads", threads, "--ctx", "8192") as s:
            first = stream_request(
                s.url, {**body, "messages": [*history, {"role": "user", "content": "Summarise."}], "max_tokens": 2}
            )
            cached = stream_request(s.url, {**body, "messages": follow, "max_tokens": 8})
        with Served(model, "--parallel", "1", "--threads", threads, "--ctx", "8192") as s:
            stream_request(s.url, {**body, "max_tokens": 2})  # loaded and warm, but nothing of the history cached
            fresh = stream_request(s.url, {**body, "messages": follow, "max_tokens": 8})
        print(
            f"(d) follow-up after {first['prompt_tokens']} tokens of history: first token in "
            f"{cached['ttft'] * 1000:.0f} ms with the prefix cache, {fresh['ttft'] * 1000:.0f} ms without "
            f"({fresh['ttft'] / cached['ttft']:.1f}x)"
        )

    # (e)
    if "e" in args.parts:

        def loop(target: str, host: str) -> float:
            t0 = time.perf_counter()
            for _ in range(20):
                cmd = [sys.executable, "-m", "g4cli.app", "chat", target, "hi", "-n", "8", "--temp", "0"]
                env = {**os.environ, "G4_HOST": host}
                subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
            return time.perf_counter() - t0

        without = loop(str(model), "127.0.0.1:9")  # nothing listens there: every call loads the model
        with Served(model, "--threads", threads) as s:
            with_server = loop(name, s.url.removeprefix("http://"))
        print(
            f"(e) 20 one-shot calls: {without:.1f} s without a server, {with_server:.1f} s with one "
            f"({without / with_server:.1f}x)"
        )


if __name__ == "__main__":
    main()
