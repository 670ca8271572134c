"""Which CPU weight buffers g4 lets llama.cpp use: plain, CPU_REPACK, AMX.

llama.cpp places each weight in the first of the CPU backend's "extra" buffer types that takes
it (AMX on Intel CPUs that have it, then CPU_REPACK: weights re-laid for the CPU's SIMD kernels),
else in a plain buffer. g4 takes AMX out (``ggml_api.backend_init``: its matrix multiply
segfaults in llama-cpp-python 0.3.36); this measures what each choice gives on the chat
benchmark model (``chat_bench.build_mid``: E2B widths, 262k vocabulary, 8 layers).

For each mode, one fresh process loads the model through llama.cpp's C API (the physical cores'
threads, as g4 does) and times, by wall clock, a prefill of ``--prompt`` tokens in one batch and
``--tokens`` single-token decodes after it. Modes are interleaved, ``--repeat`` rounds, medians.
A mode whose process dies (AMX's segfault) is reported as such.

    python bench/cpu_buffers_bench.py [--repeat 3] [--quant Q4_K_M Q8_0] [--prompt 256] [--tokens 32]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

DATA = Path("/tmp/g4-bench")
MODES = ("plain", "repack", "amx")

CHILD = r"""
import json, random, sys, time
import llama_cpp
from g4cli.chat.runtime import ggml_api
from g4cli.chat.runtime.hardware import physical_cores

path, mode, n_prompt, n_gen = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
if mode == "amx":
    ggml_api.BROKEN_CPU_BUFFER_TYPES = frozenset()  # llama.cpp's own choice
ggml_api.backend_init()
mp = llama_cpp.llama_model_default_params()
mp.use_extra_bufts = mode != "plain"
mp.load_mode = llama_cpp.LLAMA_LOAD_MODE_NONE  # as g4 loads on a CPU
model = llama_cpp.llama_model_load_from_file(path.encode(), mp)
cp = llama_cpp.llama_context_default_params()
cp.n_ctx, cp.n_batch, cp.n_ubatch = 2048, 512, 512
cp.n_threads = cp.n_threads_batch = physical_cores()
cp.no_perf = True
ctx = llama_cpp.llama_init_from_model(model, cp)
random.seed(0)
prompt = (llama_cpp.llama_token * n_prompt)(*[random.randrange(1000, 200000) for _ in range(n_prompt)])
t = time.perf_counter()
assert llama_cpp.llama_decode(ctx, llama_cpp.llama_batch_get_one(prompt, n_prompt)) == 0
prefill = time.perf_counter() - t
t = time.perf_counter()
for k in range(n_gen):
    one = (llama_cpp.llama_token * 1)(1000 + k)
    assert llama_cpp.llama_decode(ctx, llama_cpp.llama_batch_get_one(one, 1)) == 0
decode = time.perf_counter() - t
print(json.dumps({"prefill": n_prompt / prefill, "decode": n_gen / decode, "extra": ggml_api.cpu_extra_buffer_types()}))
"""


def run(model: Path, mode: str, n_prompt: int, n_gen: int) -> dict:
    r = subprocess.run(
        [sys.executable, "-c", CHILD, str(model), mode, str(n_prompt), str(n_gen)], capture_output=True, text=True
    )
    return json.loads(r.stdout) if r.returncode == 0 else {"died": r.returncode}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--quant", nargs="+", default=["Q4_K_M", "Q8_0"])
    ap.add_argument("--prompt", type=int, default=256)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--data", type=Path, default=DATA)
    args = ap.parse_args()
    from chat_bench import build_mid

    print("| quant | weights | prefill tok/s | decode tok/s |")
    print("|---|---|---|---|")
    for quant in args.quant:
        model = build_mid(args.data, quant)
        runs: dict[str, list[dict]] = {m: [] for m in MODES}
        for _ in range(args.repeat):
            for mode in MODES:
                runs[mode].append(run(model, mode, args.prompt, args.tokens))
        for mode in MODES:
            died = [r["died"] for r in runs[mode] if "died" in r]
            if died:
                print(f"| {quant} | {mode} | died (exit {died[0]}) in {len(died)} of {args.repeat} runs | |")
                continue
            pre = statistics.median(r["prefill"] for r in runs[mode])
            dec = statistics.median(r["decode"] for r in runs[mode])
            print(f"| {quant} | {mode} | {pre:.1f} | {dec:.1f} |")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
