"""llama.cpp's backend as g4 starts it (``ggml_api.backend_init``): the CPU's AMX weight buffers,
whose matrix multiply segfaults on the first prompt (llama-cpp-python 0.3.36 on an Intel Xeon
with AMX), are taken out of the CPU backend's extra buffer types; the others stay, in order.

Each check runs in a fresh process: the buffer-type list is the CPU backend's own, once per
process, and a segfault must fail a test, not end the test run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

PROBE = r"""
import json, sys
from g4cli.chat.runtime import ggml_api
from g4cli.chat.runtime.model import Model
from g4cli.chat.conversation import Stats, Turn
from g4cli.chat.settings import Sampling

if sys.argv[2] == "keep-all":  # the injected bug: nothing taken out
    ggml_api.BROKEN_CPU_BUFFER_TYPES = frozenset()
before = ggml_api.cpu_extra_buffer_types()
removed = ggml_api.backend_init()
after = ggml_api.cpu_extra_buffer_types()
with Model(sys.argv[1], None, n_ctx=256) as model:  # a prompt of many tokens: a batch matmul
    stats, turns = Stats(), [Turn("user", "Tell me a long story about a cat, please.")]
    list(model.generate(turns, Sampling(temperature=0.0, max_tokens=8), stats))
print(json.dumps({"before": before, "removed": list(removed), "after": after, "tokens": stats.gen_tokens}))
"""


def probe(gguf: Path, mode: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "G4_LLAMA_LOG": "1"}  # llama.cpp's load lines on stderr: where each weight went
    return subprocess.run([sys.executable, "-c", PROBE, str(gguf), mode], capture_output=True, text=True, env=env)


@pytest.mark.parametrize("quant", ["Q8_0", "Q4_K_M"])
def test_the_cpu_buffer_types_that_crash_are_taken_out(gguf, quant: str) -> None:
    r = probe(gguf("e2b", quant), "fix")
    assert r.returncode == 0, r.stderr[-2000:]
    seen = json.loads(r.stdout)
    assert seen["after"] == [name for name in seen["before"] if name != "AMX"]  # the rest, in order
    assert seen["removed"] == (["AMX"] if "AMX" in seen["before"] else [])
    assert seen["tokens"] == 8
    assert "AMX model buffer" not in r.stderr
    if "CPU_REPACK" in seen["before"] and quant == "Q4_K_M":
        assert "CPU_REPACK model buffer" in r.stderr  # repacking for the CPU's kernels still happens


def test_amx_is_what_crashes(gguf) -> None:
    """The reason for the above, kept honest: with nothing taken out, a machine whose llama.cpp
    offers AMX crashes on the first prompt. When a llama.cpp update fixes that, this fails, and
    ``BROKEN_CPU_BUFFER_TYPES`` can go."""
    r = probe(gguf("e2b", "Q8_0"), "keep-all")
    if "AMX model buffer" not in r.stderr:
        assert r.returncode == 0, r.stderr[-2000:]
        pytest.skip("this CPU (or this llama.cpp build) has no AMX: nothing can crash here")
    assert r.returncode == -11, (r.returncode, r.stderr[-2000:])  # SIGSEGV
