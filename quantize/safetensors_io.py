"""Streaming, validating safetensors reader and writer (numpy only).

Why our own: the ``safetensors`` package maps or loads whole tensors, and it cannot write BF16 from
numpy. A converter must read the 5 GiB PLE table of E4B in slices, and a downloaded header is
untrusted: its length, dtypes, shapes and offsets are all checked against the file before a byte
of tensor data is read.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import struct
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from g4cli.errors import CheckpointError
from g4cli.fsutil import atomic_output

MAX_HEADER_BYTES = 100 * 1024 * 1024  # the safetensors spec's own limit
CHUNK_BYTES = 16 * 1024 * 1024

# safetensors dtype -> (bytes per element, numpy dtype holding the raw bits)
DTYPES: dict[str, tuple[int, np.dtype]] = {
    "F32": (4, np.dtype("<f4")),
    "F16": (2, np.dtype("<f2")),
    "BF16": (2, np.dtype("<u2")),  # numpy has no bfloat16: keep the raw 16 bits
    "F64": (8, np.dtype("<f8")),
    "I64": (8, np.dtype("<i8")),
    "I32": (4, np.dtype("<i4")),
    "I16": (2, np.dtype("<i2")),
    "I8": (1, np.dtype("i1")),
    "U8": (1, np.dtype("u1")),
    "BOOL": (1, np.dtype("?")),
}
FLOAT_DTYPES = ("F32", "F16", "BF16")


@dataclass(frozen=True)
class TensorRef:
    """Where one tensor's bytes are: file, dtype, shape, absolute offset, size."""

    name: str
    path: Path
    dtype: str
    shape: tuple[int, ...]
    offset: int
    nbytes: int

    @property
    def n_elements(self) -> int:
        return math.prod(self.shape)


def _fail(path: Path, what: str) -> CheckpointError:
    return CheckpointError(f"{path.name}: {what}", hint=f"the file may be damaged; file: {path}")


def read_header(path: Path) -> dict[str, TensorRef]:  # long: one check per way a header can lie, in order
    """Parse and validate the header of one ``.safetensors`` file."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise _fail(path, "truncated safetensors file (no header)")
            (header_len,) = struct.unpack("<Q", head)
            if header_len > MAX_HEADER_BYTES or header_len > size - 8:
                raise _fail(path, f"safetensors header length {header_len} points outside the file")
            raw = f.read(header_len)
    except OSError as e:
        raise CheckpointError(f"{path.name}: cannot read: {e.strerror or e}") from e
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise _fail(path, f"safetensors header is not valid JSON ({e})") from e
    if not isinstance(header, dict):
        raise _fail(path, "safetensors header is not a JSON object")

    data_start = 8 + header_len
    data_size = size - data_start
    refs: dict[str, TensorRef] = {}
    spans: list[tuple[int, int, str]] = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(info, dict):
            raise _fail(path, f"tensor {name!r}: malformed entry")
        dtype, shape, offs = info.get("dtype"), info.get("shape"), info.get("data_offsets")
        if dtype not in DTYPES:
            raise _fail(path, f"tensor {name!r}: unsupported dtype {dtype!r}")
        if not isinstance(shape, list) or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
        ):
            raise _fail(path, f"tensor {name!r}: malformed shape {shape!r}")
        if (
            not isinstance(offs, list)
            or len(offs) != 2
            or not all(isinstance(o, int) and not isinstance(o, bool) for o in offs)
        ):
            raise _fail(path, f"tensor {name!r}: malformed data_offsets {offs!r}")
        begin, end = offs
        itemsize = DTYPES[dtype][0]
        if begin < 0 or end < begin:
            raise _fail(path, f"tensor {name!r}: data_offsets {offs} are invalid")
        if end - begin != math.prod(shape) * itemsize:
            raise _fail(path, f"tensor {name!r}: data_offsets {offs} do not match shape {shape}")
        if end > data_size:
            raise _fail(
                path,
                f"tensor {name!r}: data_offsets {offs} point outside the file (truncated? {data_size} data bytes)",
            )
        refs[name] = TensorRef(name, path, dtype, tuple(shape), data_start + begin, end - begin)
        spans.append((begin, end, name))
    spans.sort()
    for (_, end_a, a), (begin_b, _, b) in itertools.pairwise(spans):
        if begin_b < end_a:
            raise _fail(path, f"tensors {a!r} and {b!r} overlap")
    return refs


def iter_raw(ref: TensorRef, n_elements: int | None = None, chunk_bytes: int = CHUNK_BYTES) -> Iterator[np.ndarray]:
    """Yield the first ``n_elements`` (default: all) of a tensor as flat raw arrays, in chunks.

    Never holds more than ``chunk_bytes`` of the tensor at once.
    """
    itemsize, raw_dtype = DTYPES[ref.dtype]
    total = ref.n_elements if n_elements is None else n_elements
    step = max(1, chunk_bytes // itemsize)
    with open(ref.path, "rb", buffering=0) as f:
        done = 0
        while done < total:
            n = min(step, total - done)
            buf = os.pread(f.fileno(), n * itemsize, ref.offset + done * itemsize)
            if len(buf) != n * itemsize:
                raise _fail(ref.path, f"tensor {ref.name!r}: file ends early (truncated)")
            yield np.frombuffer(buf, dtype=raw_dtype)
            done += n


def load(ref: TensorRef) -> np.ndarray:
    """A whole (small) tensor as a float32 array of its shape (BF16/F16 widened)."""
    parts = [to_f32(chunk, ref.dtype) for chunk in iter_raw(ref)]
    flat = np.concatenate(parts) if parts else np.zeros(0, np.float32)
    return flat.reshape(ref.shape)


# --- numeric conversions on raw arrays --------------------------------------------------------


def to_f32(raw: np.ndarray, dtype: str) -> np.ndarray:
    """Raw elements of safetensors ``dtype`` -> float32."""
    if dtype == "BF16":
        return (raw.astype(np.uint32) << 16).view(np.float32)
    return raw.astype(np.float32)


def f32_to_bf16(x: np.ndarray) -> np.ndarray:
    """float32 -> raw bfloat16 bits, round to nearest even (NaN stays NaN)."""
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
    nan = np.isnan(x)
    if nan.any():
        rounded[nan.reshape(rounded.shape)] = 0x7FC0
    return rounded


def convert_raw(raw: np.ndarray, src: str, dst: str) -> np.ndarray:
    """Raw elements of safetensors dtype ``src`` -> raw elements of ``dst`` (F32/F16/BF16)."""
    if src == dst:
        return raw
    x = to_f32(raw, src)
    if dst == "F32":
        return x
    if dst == "F16":
        return x.astype(np.float16)
    if dst == "BF16":
        return f32_to_bf16(x)
    raise ValueError(f"unsupported target dtype {dst}")


# --- writer ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * DTYPES[self.dtype][0]


def write(
    path: Path,
    specs: Iterable[TensorSpec],
    fill: Callable[[TensorSpec], Iterable[np.ndarray]],
    metadata: dict[str, str] | None = None,
) -> None:
    """Write a safetensors file, streaming each tensor's data from ``fill(spec)``.

    ``fill`` yields raw arrays (uint16 bits for BF16) whose concatenation is the tensor, so a
    10 GB checkpoint is written without holding more than one chunk. Written to a temporary
    file beside ``path`` and renamed into place.
    """
    specs = list(specs)
    header: dict[str, object] = {"__metadata__": metadata or {"format": "pt"}}
    offset = 0
    for s in specs:
        header[s.name] = {"dtype": s.dtype, "shape": list(s.shape), "data_offsets": [offset, offset + s.nbytes]}
        offset += s.nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    with atomic_output(Path(path)) as tmp, open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for s in specs:
            written = 0
            raw_dtype = DTYPES[s.dtype][1]
            for chunk in fill(s):
                data = np.ascontiguousarray(chunk, dtype=raw_dtype)
                f.write(data.tobytes())
                written += data.nbytes
            if written != s.nbytes:
                raise ValueError(f"{s.name}: wrote {written} bytes, expected {s.nbytes}")
