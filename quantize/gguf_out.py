"""The GGUF writer: planned tensors streamed into a file, atomically (temp file beside it, then rename).

``OutTensor`` and ``Plan`` are what a family file (``gemma4.py``) or the projector (``mmproj.py``)
plans; ``write_gguf`` writes them.
"""

from __future__ import annotations

import errno
import math
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType, GGUFValueType, GGUFWriter

from g4cli.errors import OutputError
from g4cli.fsutil import atomic_output
from quantize.safetensors_io import TensorRef, convert_raw, iter_raw, load

ALIGNMENT = 32  # GGUF default
GGML_TYPES = {
    "F32": GGMLQuantizationType.F32,
    "F16": GGMLQuantizationType.F16,
    "BF16": GGMLQuantizationType.BF16,
    "Q8_0": GGMLQuantizationType.Q8_0,
}
Progress = Callable[[int, int], None]
KV = tuple[str, object, GGUFValueType, GGUFValueType | None]


F32_ALWAYS = re.compile(
    r"(_norm(_\d)?\.weight|\.scale|ffn_gate_inp\.weight|layer_output_scale\.weight|rope_freqs\.weight)$"
)


def output_dtype(name: str, shape: tuple[int, ...], outtype: str) -> str:
    """Norms, scales, the router and every 1-D tensor stay F32 (llama.cpp never quantizes them)."""
    if len(shape) <= 1 or F32_ALWAYS.search(name):
        return "F32"
    return outtype


BYTES_PER_BLOCK = {"F32": (1, 4), "F16": (1, 2), "BF16": (1, 2), "Q8_0": (32, 34)}  # (block, bytes)


@dataclass
class OutTensor:
    """One tensor of the output GGUF: streamed from ``source``, or ``transform(source)`` loaded
    whole when it is written (small tensors only), or given as ``data``."""

    name: str
    shape: tuple[int, ...]  # row-major (numpy) order
    dtype: str  # F32 / F16 / BF16 / Q8_0
    source: TensorRef | None = None
    data: np.ndarray | None = None
    transform: Callable[[np.ndarray], np.ndarray] | None = None

    @property
    def n_elements(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        block, size = BYTES_PER_BLOCK[self.dtype]
        return self.n_elements // block * size


@dataclass
class Plan:
    tensors: list[OutTensor]
    dropped: list[tuple[str, str]] = field(default_factory=list)  # (source name, rule)


def _encode(arr: np.ndarray, dtype: str) -> np.ndarray:
    """A whole float32 array in the output type (Q8_0 through gguf's reference quantizer)."""
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    if dtype == "Q8_0":
        from gguf.quants import quantize

        return quantize(arr, GGMLQuantizationType.Q8_0)
    return convert_raw(arr.reshape(-1), "F32", dtype)


def _tensor_bytes(t) -> Iterator[memoryview]:
    """The output bytes of one planned tensor, a chunk at a time."""
    if t.data is not None or t.transform is not None:
        arr = t.data if t.data is not None else t.transform(load(t.source))
        if tuple(arr.shape) != tuple(t.shape) and arr.size != t.n_elements:
            raise OutputError(f"{t.name}: transform produced shape {list(arr.shape)}, planned {list(t.shape)}")
        yield memoryview(np.ascontiguousarray(_encode(arr, t.dtype))).cast("B")
        return
    if t.dtype == "Q8_0":
        yield memoryview(np.ascontiguousarray(_encode(load(t.source).reshape(t.shape), "Q8_0"))).cast("B")
        return
    for chunk in iter_raw(t.source, n_elements=t.n_elements):
        yield memoryview(np.ascontiguousarray(convert_raw(chunk, t.source.dtype, t.dtype))).cast("B")


def _copy_range(src, nbytes: int, dst, report: Callable[[int], object], base: int) -> int:
    """Copy ``nbytes`` of a source tensor into ``dst`` at its current position, in kernel space."""
    step = 64 * 1024 * 1024
    with open(src.path, "rb", buffering=0) as f:
        copied = 0
        while copied < nbytes:
            want = min(step, nbytes - copied)
            try:
                n = os.copy_file_range(f.fileno(), dst.fileno(), want, src.offset + copied)
            except OSError as e:
                if e.errno not in (errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL):
                    raise
                n = dst.write(os.pread(f.fileno(), want, src.offset + copied))
            if n <= 0:
                raise OutputError(f"{src.path.name}: file ends early while copying {src.name!r} (truncated)")
            copied += n
            report(base + copied)
    return copied


def write_gguf(path: Path, arch: str, kv: list[KV], tensors: list, on_progress: Progress | None = None) -> None:
    """Write ``tensors`` (objects with name, shape, dtype, nbytes, and data or source) to ``path``.

    ``kv`` is consumed (cleared), so that large metadata is freed before tensor data streams.
    """
    writer = GGUFWriter(None, arch)
    for key, value, vtype, sub in kv:
        writer.add_key_value(key, value, vtype, sub_type=sub)
    kv.clear()  # the writer holds the values now; it lets them go once they are on disk
    for t in tensors:
        writer.add_tensor_info(t.name, t.shape, np.dtype(np.float32), t.nbytes, raw_dtype=GGML_TYPES[t.dtype])
    total = sum(t.nbytes for t in tensors)
    with atomic_output(path) as tmp:
        writer.write_header_to_file(tmp)
        writer.write_kv_data_to_file()
        writer.kv_data = [{}]  # a 262k-token vocabulary is 100+ MB of Python objects: free it first
        writer.write_ti_data_to_file()
        writer.close()
        done = 0
        with open(tmp, "r+b", buffering=0) as f:  # not "ab": copy_file_range refuses O_APPEND
            f.seek(0, os.SEEK_END)
            for t in tensors:
                pos = f.tell()
                f.write(b"\0" * (-pos % ALIGNMENT))
                if t.data is None and t.transform is None and t.source.dtype == t.dtype:
                    # same type: let the kernel copy the bytes (as fast as `cp`, no user-space buffer)
                    done += _copy_range(t.source, t.nbytes, f, lambda n: on_progress and on_progress(n, total), done)
                    continue
                written = 0
                for chunk in _tensor_bytes(t):
                    while chunk:
                        n = f.write(chunk)
                        chunk = chunk[n:]
                        written += n
                        done += n
                    if on_progress:
                        on_progress(done, total)
                if written != t.nbytes:
                    raise OutputError(f"{t.name}: wrote {written} bytes, expected {t.nbytes}")
            f.write(b"\0" * (-f.tell() % ALIGNMENT))
