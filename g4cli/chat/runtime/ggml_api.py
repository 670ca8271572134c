"""The ggml calls llama-cpp-python does not bind: the device list and the RPC backend.

Signatures from the vendored ggml/include/ggml-backend.h, ggml-rpc.h and ggml.h (0.3.36). The
libraries are the ones llama_cpp loaded (same directory, so the same process-wide registry).
``rpc`` is None when the build has no libggml-rpc (llama-cpp-python built without -DGGML_RPC=on).
"""

from __future__ import annotations

import ctypes
import re
from pathlib import Path

import llama_cpp  # loads libggml first: the device registry is the one llama.cpp uses

LIB = Path(llama_cpp.__file__).parent / "lib"
P, SIZE, STR = ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p

# enum ggml_backend_dev_type
DEV_CPU, DEV_GPU, DEV_IGPU, DEV_ACCEL, DEV_META = range(5)
DEV_TYPE_NAMES = {DEV_CPU: "CPU", DEV_GPU: "GPU", DEV_IGPU: "iGPU", DEV_ACCEL: "accelerator", DEV_META: "meta"}

# ggml.h: typedef void (*ggml_abort_callback_t)(const char * error_message)
ABORT_CALLBACK = ctypes.CFUNCTYPE(None, STR)


def _mapped() -> list[str]:
    """Files this process has mapped (Linux): the exact libggml copies libllama was linked to."""
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as f:
            return [line.split(None, 5)[-1].strip() for line in f if "/" in line]
    except OSError:
        return []


def _load(name: str) -> ctypes.CDLL | None:
    """The library libllama uses. The wheel ships libggml.so, .so.0 and .so.0.x as separate
    copies (not links); opening another copy than libllama's gives a second device registry
    that llama.cpp never sees."""
    pattern = re.compile(rf"lib{re.escape(name)}(\.so[.\d]*|\.[.\d]*dylib|\.dll)$")
    loaded = [p for p in dict.fromkeys(_mapped()) if pattern.search(Path(p).name)]
    candidates = loaded or sorted(str(p) for p in LIB.iterdir() if pattern.search(p.name))
    for candidate in candidates:
        try:
            return ctypes.CDLL(candidate)
        except OSError:
            continue
    return None


def _declare(lib: ctypes.CDLL, table: dict[str, tuple[list, object]]) -> None:
    for fn, (args, res) in table.items():
        f = getattr(lib, fn)
        f.argtypes, f.restype = args, res


ggml = _load("ggml")  # the registry: ggml-backend-reg.cpp
base = _load("ggml-base")  # the device and backend objects: ggml-backend.cpp, ggml.c
rpc = _load("ggml-rpc")
if ggml is None or base is None:  # never on a working llama-cpp-python install
    raise ImportError(f"libggml not found beside llama_cpp in {LIB}")

_declare(
    ggml,
    {
        "ggml_backend_dev_count": ([], SIZE),
        "ggml_backend_dev_get": ([SIZE], P),
        "ggml_backend_dev_by_name": ([STR], P),
        "ggml_backend_dev_by_type": ([ctypes.c_int], P),
        "ggml_backend_reg_count": ([], SIZE),
        "ggml_backend_reg_get": ([SIZE], P),
        "ggml_backend_reg_by_name": ([STR], P),
        "ggml_backend_register": ([P], None),
    },
)
_declare(
    base,
    {
        "ggml_backend_dev_name": ([P], STR),
        "ggml_backend_dev_description": ([P], STR),
        "ggml_backend_dev_memory": ([P, ctypes.POINTER(SIZE), ctypes.POINTER(SIZE)], None),
        "ggml_backend_dev_type": ([P], ctypes.c_int),
        "ggml_backend_dev_backend_reg": ([P], P),
        "ggml_backend_reg_name": ([P], STR),
        "ggml_backend_reg_dev_count": ([P], SIZE),
        "ggml_backend_reg_dev_get": ([P, SIZE], P),
        "ggml_set_abort_callback": ([ABORT_CALLBACK], P),
    },
)
if rpc is not None:
    _declare(
        rpc,
        {
            # endpoint "host:port", cache_dir (NULL: none), n_threads, n_devices, devices[]; never returns
            "ggml_backend_rpc_start_server": ([STR, STR, SIZE, SIZE, ctypes.POINTER(P)], None),
            "ggml_backend_rpc_add_server": ([STR], P),  # a registry with the server's devices (NULL: none)
        },
    )
