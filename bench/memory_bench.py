"""Memory of a chat at real shapes (issue 9): peak RSS of E4B Q4_K_M at 8192 context, and its parts.

A synthetic checkpoint with the real E4B shapes (text config from
/work/shared/real-configs/e4b/config.json, towers of the real E2B/E4B shapes, random values)
is converted to Q4_K_M (projector F16) with g4's converter, once, into ``--data``. Then each
loading mode answers a ~600-token prompt (two ubatches) with 32 greedy tokens at 8192 context,
in a fresh process:

  g4 chat      ``g4 chat GGUF PROMPT --mmproj … --ctx 8192 -v``: the product as shipped
  variants     the same answer through g4's runtime (``Model`` + ``Model.generate``) with the
               model parameters overridden: ``load_mode`` (mmap or read into memory), llama.cpp's
               ``lazy_mode`` for the PLE table (OFF / AUTO / ON), with and without the projector

Peak RSS is measured from outside: ``/usr/bin/time -v``'s maximum resident set size (and the
child's ``VmHWM``). What makes it up comes from the process itself after the answer: the GGUF's
file-backed pages resident in the process (``/proc/self/pagemap``, split by tensor: PLE table,
token embeddings, tensors llama.cpp repacks into its own buffer, the rest), its anonymous memory,
and llama.cpp's log (model buffers, KV cache, compute buffer, projector). Then g4's fit estimate
(``g4cli.models.fit.estimate``) for the same file and context, against the measured peak.

    python bench/memory_bench.py [--ctx 8192] [--modes default,…] [--data /work/bench-data/memory]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from knobs_bench import WORDS, bench_lock, quiet_lock, quiet_run  # noqa: E402

DATA = Path("/work/bench-data/memory")
REAL_CONFIG = Path("/work/shared/real-configs/e4b/config.json")
TEXT_KEYS = (  # the text_config fields that make the shapes (the rest: the tiny family's defaults)
    "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
    "head_dim", "global_head_dim", "hidden_size_per_layer_input", "num_kv_shared_layers",
    "use_double_wide_mlp", "layer_types", "sliding_window", "vocab_size", "max_position_embeddings",
)  # fmt: skip
GIB = 2**30


# --- the model --------------------------------------------------------------------------------


def build(d: Path) -> tuple[Path, Path, dict]:
    """E4B-shaped Q4_K_M GGUF + F16 projector in ``d`` (built once), and the checkpoint's config."""
    from quantize.converter import convert
    from quantize.tiny import make_checkpoint
    from quantize.tiny_families import AUDIO, VISION

    gguf, mmproj, cfg_path = d / "e4b-Q4_K_M.gguf", d / "mmproj-e4b-Q4_K_M.gguf", d / "config.json"
    if gguf.is_file() and mmproj.is_file() and cfg_path.is_file():
        return gguf, mmproj, json.loads(cfg_path.read_text())
    real = json.loads(REAL_CONFIG.read_text())
    for ours, theirs in ((VISION["e2b"], real["vision_config"]), (AUDIO["e2b"], real["audio_config"])):
        differ = {k: (v, theirs.get(k)) for k, v in ours.items() if theirs.get(k) != v}
        assert not differ, f"the E2B tower shapes are not E4B's: {differ}"
    text = {k: real["text_config"][k] for k in TEXT_KEYS}
    ckpt = make_checkpoint(d / "checkpoint", "e2b-real", dtype="BF16", text=text, towers="e2b", shard_bytes=4 * GIB)
    try:
        convert(ckpt, gguf, quant="Q4_K_M", mmproj_type="F16")
        config = json.loads((ckpt / "config.json").read_text())
        config["_source_bytes"] = sum(p.stat().st_size for p in ckpt.glob("*.safetensors"))
        cfg_path.write_text(json.dumps(config, indent=1))
    finally:
        shutil.rmtree(ckpt, ignore_errors=True)
    return gguf, mmproj, json.loads(cfg_path.read_text())


# --- inside the measured process --------------------------------------------------------------


def status() -> dict[str, int]:
    """This process's memory counters from /proc/self/status, in bytes."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile", "RssShmem"):
            out[key] = int(value.split()[0]) * 1024
    return out


def resident_by_tensor(path: Path, tensors: dict[str, tuple[int, int]]) -> dict[str, int]:
    """Bytes of each tensor's file range that are resident *in this process* (present in its page
    table, /proc/self/pagemap), over every mapping of ``path``."""
    import numpy as np

    page = os.sysconf("SC_PAGE_SIZE")
    real = os.path.realpath(path)
    counts = dict.fromkeys(tensors, 0)
    with open("/proc/self/maps", encoding="utf-8") as maps, open("/proc/self/pagemap", "rb") as pm:
        for line in maps:
            fields = line.split(maxsplit=5)
            if len(fields) < 6 or fields[5].strip() != real:
                continue
            lo, hi = (int(x, 16) for x in fields[0].split("-"))
            off = int(fields[2], 16)
            n = (hi - lo) // page
            pm.seek(lo // page * 8)
            present = (np.frombuffer(pm.read(n * 8), dtype=np.uint64) >> np.uint64(63)).astype(np.int64)
            cum = np.concatenate([[0], np.cumsum(present)])
            for name, (a, b) in tensors.items():  # file offsets -> pages of this mapping
                pa, pb = max((a - off) // page, 0), min(-(-(b - off) // page), n)
                if pa < pb:
                    counts[name] += int(cum[pb] - cum[pa]) * page
    return counts


def worker(spec: dict) -> None:
    import llama_cpp
    from knobs_bench import fill_text

    from g4cli.chat.conversation import Turn
    from g4cli.chat.runtime.model import Model
    from g4cli.chat.settings import Sampling

    before = status()
    overrides = spec.get("params") or {}
    if overrides:  # the variants: g4's own _load, with some model parameters changed
        load = llama_cpp.llama_model_load_from_file

        def patched(path: bytes, mp: llama_cpp.llama_model_params) -> object:
            for key, value in overrides.items():
                setattr(mp, key, value)
            return load(path, mp)

        llama_cpp.llama_model_load_from_file = patched
    t0 = time.perf_counter()
    tensors = {k: tuple(v) for k, v in spec["tensors"].items()}
    with Model(spec["gguf"], spec.get("mmproj"), n_ctx=spec["ctx"], flash_attn=spec.get("flash_attn", "auto")) as m:
        if spec.get("projector"):
            assert m.projector is not None  # loaded now, as the first image would
        load_s = time.perf_counter() - t0
        loaded, loaded_pages = status(), resident_by_tensor(Path(spec["gguf"]), tensors)
        text = fill_text(m, spec["prompt_tokens"])
        sampling = Sampling(temperature=0.0, top_k=1, max_tokens=spec["tokens"])
        for ev in m.generate([Turn("user", text)], sampling):
            if ev.kind == "done":
                st = ev.stats
        after, after_pages = status(), resident_by_tensor(Path(spec["gguf"]), tensors)
    print(json.dumps({
        "before": before, "loaded": loaded, "after": after, "load_s": load_s,
        "prefill": st.prompt_tps, "decode": st.gen_tps, "prompt_tokens": st.prompt_tokens,
        "pages_loaded": loaded_pages, "pages_after": after_pages,
    }))  # fmt: skip


# --- the benchmark ----------------------------------------------------------------------------


def tensor_ranges(gguf: Path) -> dict[str, tuple[int, int]]:
    from gguf import GGUFReader

    return {t.name: (int(t.data_offset), int(t.data_offset) + int(t.n_bytes)) for t in GGUFReader(gguf).tensors}


def parse_log(text: str) -> dict[str, object]:
    """What llama.cpp and mtmd say they allocated (MiB -> bytes)."""
    mib = lambda x: round(float(x) * 2**20)  # noqa: E731
    buffers: dict[str, int] = {}
    for kind, size in re.findall(r"load_tensors:\s+(\S+) model buffer size =\s+([\d.]+) MiB", text):
        buffers[kind] = buffers.get(kind, 0) + mib(size)
    return {
        "buffers": buffers,
        "repacked": re.findall(r"repack: repack tensor (\S+) with", text),
        "lazy": re.findall(r"tensor (\S+) \(size = \d+ MiB\) lazy read enabled", text),
        "kv": sum(mib(x) for x in re.findall(r"llama_kv_cache: size =\s+([\d.]+) MiB", text)),
        "compute": sum(mib(x) for x in re.findall(r"sched_reserve:\s+\S+ compute buffer size =\s+([\d.]+) MiB", text)),
        "output": sum(mib(x) for x in re.findall(r"llama_context:\s+\S+\s+output buffer size =\s+([\d.]+) MiB", text)),
        # each encoder's context (vision, audio) reports the file's size; its weights are loaded once
        "mtmd": max((mib(x) for x in re.findall(r"load_hparams: model size:\s+([\d.]+) MiB", text)), default=0),
        "mtmd_compute": sum(mib(x) for x in re.findall(r"\S+ compute buffer size =\s+([\d.]+) MiB", text))
        - sum(mib(x) for x in re.findall(r"sched_reserve:\s+\S+ compute buffer size =\s+([\d.]+) MiB", text)),
    }  # fmt: skip


def max_rss(stderr: str) -> int:
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", stderr)
    assert m, stderr[-1000:]
    return int(m[1]) * 1024


# name -> (model parameters overridden in the process, load the projector too)
MODES = {
    "mmap/lazy-auto": ({"load_mode": -1, "lazy_mode": 1}, True),  # llama.cpp's defaults
    "mmap/lazy-on": ({"load_mode": -1, "lazy_mode": 2}, True),
    "mmap/lazy-on/no-repack": ({"load_mode": -1, "lazy_mode": 2, "use_extra_bufts": False}, True),
    "read/lazy-off": ({"load_mode": 0, "lazy_mode": 0}, True),
    "read/lazy-on": ({"load_mode": 0, "lazy_mode": 2}, True),
    "g4": ({}, True),  # whatever g4cli/chat/runtime/model.py sets (the projector loads on first use)
    "g4/projector-loaded": ({}, True),  # the same once an image or audio was sent
}
# Modes whose projector is loaded before the chat (g4 loads it with the first image or audio):
# the llama.cpp variants are compared as llama.cpp's tools load them, projector included.
PROJECTOR_UP_FRONT = {name for name, (params, with_mmproj) in MODES.items() if with_mmproj and params}
PROJECTOR_UP_FRONT.add("g4/projector-loaded")


def run_mode(name: str, gguf: Path, mmproj: Path, tensors: dict, args: argparse.Namespace, prompt: int) -> dict:
    params, with_mmproj = MODES[name]
    spec = {
        "gguf": str(gguf), "mmproj": str(mmproj) if with_mmproj else None, "ctx": args.ctx, "tokens": args.tokens,
        "prompt_tokens": prompt, "tensors": tensors, "params": params, "projector": name in PROJECTOR_UP_FRONT,
    }  # fmt: skip
    cmd = ["/usr/bin/time", "-v", sys.executable, __file__, "--worker", json.dumps(spec)]
    out, others = quiet_run(cmd, args.noise, env={**os.environ, "G4_LLAMA_LOG": "1"})
    stderr = out.stderr.decode("utf-8", "replace")
    return {**json.loads(out.stdout), "peak": max_rss(stderr), "log": parse_log(stderr), "others": others}


def run_g4_chat(gguf: Path, mmproj: Path, args: argparse.Namespace, prompt_words: int) -> dict:
    """``g4 chat`` itself, the prompt piped in: peak RSS from /usr/bin/time, and what -v says."""
    exe = shutil.which("g4")
    g4 = [exe] if exe else [sys.executable, "-m", "g4cli.app"]
    text = " ".join(WORDS[(i * 7 + i // 11) % len(WORDS)] for i in range(prompt_words))
    cmd = ["/usr/bin/time", "-v", *g4, "chat", str(gguf), "--mmproj", str(mmproj), "--ctx", str(args.ctx)]
    cmd += ["-n", str(args.tokens), "--temp", "0", "--top-k", "1", "-v"]
    with quiet_lock(args.noise):
        out = subprocess.run(cmd, input=text.encode(), capture_output=True, check=True)
    stderr = out.stderr.decode("utf-8", "replace")
    m = re.search(r"prompt (\d+) tokens .*?answer (\d+) tokens \(([\d.]+) tok/s\).*?peak memory (\d+) MB", stderr)
    assert m, stderr[-1500:]
    return {
        "peak": max_rss(stderr),
        "reported_peak": int(m[4]) * 2**20,
        "prompt_tokens": int(m[1]),
        "decode": float(m[3]),
    }


def breakdown(r: dict, ple: str = "per_layer_token_embd.weight") -> dict[str, int]:
    """The process's memory after the answer, by origin."""
    repacked = set(r["log"]["repacked"])
    pages = r["pages_after"]
    parts = {
        "file: PLE table": pages.get(ple, 0),
        "file: token embeddings": pages.get("token_embd.weight", 0),
        "file: repacked tensors": sum(v for k, v in pages.items() if k in repacked),
    }
    parts["file: other tensors"] = sum(pages.values()) - sum(parts.values())
    parts["anonymous"] = r["after"]["RssAnon"]
    return parts


def mib(n: float) -> str:
    return f"{n / 2**20:,.0f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--ctx", type=int, default=8192)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--prompt", type=int, default=600, help="prompt tokens of the short chat")
    ap.add_argument("--modes", default=",".join(MODES), help="comma-separated, from: " + ", ".join(MODES))
    ap.add_argument("--full", action="store_true", help="also a chat that fills the context (g4 defaults)")
    ap.add_argument("--noise", type=float, default=0.3, help="other processes' CPU (cores) that voids a run")
    ap.add_argument("--build-only", action="store_true")
    ap.add_argument("--no-chat", action="store_true", help="only the modes, not g4 chat and the estimate")
    args = ap.parse_args()
    if args.worker:
        return worker(json.loads(args.worker))
    args.data.mkdir(parents=True, exist_ok=True)
    with bench_lock():
        gguf, mmproj, config = build(args.data)
    if args.build_only:
        return
    from g4cli.models import fit

    tensors = tensor_ranges(gguf)
    ple = tensors["per_layer_token_embd.weight"]
    print(f"{gguf.name}: {mib(gguf.stat().st_size)} MiB (PLE table {mib(ple[1] - ple[0])} MiB); "
          f"{mmproj.name}: {mib(mmproj.stat().st_size)} MiB; context {args.ctx}")  # fmt: skip

    rows = []
    for name in args.modes.split(","):
        r = run_mode(name, gguf, mmproj, tensors, args, args.prompt)
        rows.append((name, r))
        print(f"  {name}: peak {mib(r['peak'])} MiB", file=sys.stderr, flush=True)
    print(f"\nchat of a {rows[0][1]['prompt_tokens']}-token prompt + {args.tokens} tokens (MiB; tok/s)")
    cols = ["peak RSS", "VmHWM", *breakdown(rows[0][1]), "KV (log)", "compute (log)", "load s", "prefill", "decode"]
    print("| mode | " + " | ".join(cols) + " |")
    print("|---" * (len(cols) + 1) + "|")
    for name, r in rows:
        cells = [mib(r["peak"]), mib(r["after"]["VmHWM"]), *(mib(v) for v in breakdown(r).values())]
        cells += [mib(r["log"]["kv"]), mib(r["log"]["compute"]), f"{r['load_s']:.1f}", f"{r['prefill']:.1f}"]
        cells += [f"{r['decode']:.2f}"]
        print(f"| {name} | " + " | ".join(cells) + " |")
    for name, r in rows:
        bufs = ", ".join(f"{k} {mib(v)}" for k, v in r["log"]["buffers"].items())
        print(f"  {name}: llama.cpp model buffers {bufs} MiB; projector {mib(r['log']['mtmd'])} MiB; "
              f"lazy {r['log']['lazy']}; others' CPU {r['others']:.2f} cores")  # fmt: skip

    if args.no_chat:
        return
    chats = [("short", run_g4_chat(gguf, mmproj, args, args.prompt))]
    if args.full:
        chats.append(("full", run_g4_chat(gguf, mmproj, args, args.ctx - args.tokens - 200)))
    est = fit.estimate(config, quant="Q4_K_M", source_bytes=config["_source_bytes"], ctx=args.ctx)
    print(f"\nfit estimate at {est.ctx} context: {mib(est.memory)} MiB = " + " + ".join(
        f"{label} {mib(v)}" for label, v in est.memory_parts()))  # fmt: skip
    for label, c in chats:
        err = est.memory / c["peak"] - 1
        print(f"g4 chat, {label} chat ({c['prompt_tokens']}-token prompt): peak RSS {mib(c['peak'])} MiB "
              f"(g4 -v: {mib(c['reported_peak'])}); decode {c['decode']:.2f} tok/s; estimate {err:+.1%}")  # fmt: skip


if __name__ == "__main__":
    main()
