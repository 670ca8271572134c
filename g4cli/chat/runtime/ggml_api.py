"""The ggml calls llama-cpp-python does not bind: the device list, the RPC backend, and
``backend_init`` (llama.cpp's backend, less the CPU buffer types that crash).

Signatures from the vendored ggml/include/ggml-backend.h, ggml-rpc.h and ggml.h (0.3.36). The
functions are looked up through libllama's handle, so they are those of the very libggml copy
libllama uses (one device registry). ``rpc`` is None when the build has no RPC backend
(llama-cpp-python built without -DGGML_RPC=on).
"""

from __future__ import annotations

import contextlib
import ctypes
import re
from functools import cache
from pathlib import Path

import llama_cpp  # loads libggml first: the device registry is the one llama.cpp uses

LIB = Path(llama_cpp.__file__).parent / "lib"
P, SIZE, STR = ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p

# enum ggml_backend_dev_type
DEV_CPU, DEV_GPU, DEV_IGPU, DEV_ACCEL, DEV_META = range(5)
DEV_TYPE_NAMES = {DEV_CPU: "CPU", DEV_GPU: "GPU", DEV_IGPU: "iGPU", DEV_ACCEL: "accelerator", DEV_META: "meta"}

# ggml.h: typedef void (*ggml_abort_callback_t)(const char * error_message)
ABORT_CALLBACK = ctypes.CFUNCTYPE(None, STR)


def _through_llama() -> ctypes.CDLL | None:
    """libllama's own handle, anew: dlsym through it searches the libraries libllama was linked
    to, so the ggml found is exactly libllama's. The wheel ships libggml.so, .so.0 and .so.0.x
    as separate copies (not links): opening another copy gives a second device registry, one
    llama.cpp never sees (measured: RPC devices registered there took no layers)."""
    try:
        lib = ctypes.CDLL(llama_cpp.llama_cpp._lib._name)
        lib.ggml_backend_dev_count  # noqa: B018  -- resolvable through it (POSIX), else None
    except (AttributeError, OSError):
        return None
    return lib


def _load(name: str) -> ctypes.CDLL | None:
    """A library beside llama_cpp by name (Windows: GetProcAddress does not search dependencies)."""
    pattern = re.compile(rf"(lib)?{re.escape(name)}(\.so[.\d]*|\.[.\d]*dylib|\.dll)$")
    for candidate in sorted(LIB.iterdir()):
        if pattern.match(candidate.name):
            with contextlib.suppress(OSError):
                return ctypes.CDLL(str(candidate))
    return None


def _declare(lib: ctypes.CDLL, table: dict[str, tuple[list, object]]) -> None:
    for fn, (args, res) in table.items():
        f = getattr(lib, fn)
        f.argtypes, f.restype = args, res


_llama = _through_llama()
ggml = _llama or _load("ggml")  # the registry: ggml-backend-reg.cpp
base = _llama or _load("ggml-base")  # the device and backend objects: ggml-backend.cpp, ggml.c
rpc = _llama if _llama is not None and hasattr(_llama, "ggml_backend_rpc_add_server") else None
if rpc is None and _llama is None:
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
        "ggml_backend_reg_get_proc_address": ([P, STR], P),
        "ggml_backend_buft_name": ([P], STR),
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


# Weight buffer types of the CPU backend g4 never lets llama.cpp use. AMX (Intel Sapphire Rapids
# and later; compiled in when the build machine has it, as -march=native does): its matrix
# multiply segfaults on the first prompt, at tiny and at E2B widths alike, for Q4_K_M and Q8_0
# (measured with llama-cpp-python 0.3.36; ggml-org/llama.cpp#20824, closed unfixed). Without it the
# same weights take CPU_REPACK or plain CPU buffers, as on any other x86 CPU.
BROKEN_CPU_BUFFER_TYPES = frozenset({"AMX"})
_EXTRA_BUFTS = ctypes.CFUNCTYPE(ctypes.POINTER(P), P)  # ggml-backend.h: ggml_backend_dev_get_extra_bufts_t


def cpu_extra_buffer_types() -> list[str]:
    """The CPU backend's extra weight buffer types, in the order llama.cpp prefers them."""
    return _names(_extra_bufts()[1])


def _names(bufts: list[int]) -> list[str]:
    return [base.ggml_backend_buft_name(b).decode() for b in bufts]


def _extra_bufts() -> tuple[ctypes.Array | None, list[int]]:
    """The CPU device's NULL-terminated buffer-type array (llama.cpp reads it at each model load)
    and its entries."""
    dev = ggml.ggml_backend_dev_by_type(DEV_CPU)
    if not dev:
        return None, []
    fn = base.ggml_backend_reg_get_proc_address(
        base.ggml_backend_dev_backend_reg(dev), b"ggml_backend_dev_get_extra_bufts"
    )
    if not fn:
        return None, []
    array = _EXTRA_BUFTS(fn)(dev)
    entries: list[int] = []
    while array and array[len(entries)]:
        entries.append(array[len(entries)])
    return array, entries


@cache
def backend_init() -> tuple[str, ...]:
    """``llama_backend_init``, once, with ``BROKEN_CPU_BUFFER_TYPES`` taken out of the CPU's
    extra buffer types (the array is the CPU backend's own: every later model load, adapter and
    fit estimate reads it without them); the names taken out."""
    llama_cpp.llama_backend_init()
    array, entries = _extra_bufts()
    names = _names(entries)
    keep = [b for b, name in zip(entries, names) if name not in BROKEN_CPU_BUFFER_TYPES]
    for i in range(len(entries)):  # in place, still NULL-terminated: it only gets shorter
        array[i] = keep[i] if i < len(keep) else None
    return tuple(name for name in names if name in BROKEN_CPU_BUFFER_TYPES)
