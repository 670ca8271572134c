"""The GGUF writer: planned tensors streamed into a file, atomically (temp file beside it, then rename).

``OutTensor`` and ``Plan`` are what a family file (``gemma4.py``) or the projector (``mmproj.py``)
plans; ``write_gguf`` writes them.

The header (KV data and tensor infos) is packed here, not by gguf-py's ``GGUFWriter``: that
packs an array one item at a time (a ``struct.pack`` call and two bytes copies per item): 3-4 s
for Gemma 4's 262,144 tokens and 514,906 merges on a 2-core machine, the largest fixed cost of a
conversion. Here an array is packed a chunk at a time (0.3-0.5 s), on a thread while the tensor
data is copied into place (its size is known first); tests/test_gguf_header.py checks that the
bytes equal GGUFWriter's.
"""

from __future__ import annotations

import errno
import itertools
import math
import os
import re
import struct
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from gguf import GGUF_MAGIC, GGUF_VERSION, GGMLQuantizationType, GGUFValueType, Keys

from g4cli.errors import OutputError
from g4cli.fsutil import atomic_output
from quantize.safetensors_io import TensorRef, convert_raw, iter_raw, load, to_f32

ALIGNMENT = 32  # GGUF default
GGML_TYPES = {
    "F32": GGMLQuantizationType.F32,
    "F16": GGMLQuantizationType.F16,
    "BF16": GGMLQuantizationType.BF16,
    "Q8_0": GGMLQuantizationType.Q8_0,
    "Q4_0": GGMLQuantizationType.Q4_0,  # written by an ``encode`` function (quantize/qat.py)
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


BYTES_PER_BLOCK = {"F32": (1, 4), "F16": (1, 2), "BF16": (1, 2), "Q8_0": (32, 34), "Q4_0": (32, 18)}  # (block, bytes)


@dataclass
class OutTensor:
    """One tensor of the output GGUF: streamed from ``source``, or ``transform(source)`` loaded
    whole when it is written (small tensors only), or given as ``data``; ``encode`` turns each
    streamed float32 chunk (whole blocks) into the output type's bytes (QAT-aware Q4_0)."""

    name: str
    shape: tuple[int, ...]  # row-major (numpy) order
    dtype: str  # F32 / F16 / BF16 / Q8_0
    source: TensorRef | None = None
    data: np.ndarray | None = None
    transform: Callable[[np.ndarray], np.ndarray] | None = None
    encode: Callable[[np.ndarray], np.ndarray] | None = None

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
    if t.encode is not None:
        for chunk in iter_raw(t.source, n_elements=t.n_elements):
            yield memoryview(np.ascontiguousarray(t.encode(to_f32(chunk, t.source.dtype)))).cast("B")
        return
    if t.dtype == "Q8_0":
        yield memoryview(np.ascontiguousarray(_encode(load(t.source).reshape(t.shape), "Q8_0"))).cast("B")
        return
    for chunk in iter_raw(t.source, n_elements=t.n_elements):
        yield memoryview(np.ascontiguousarray(convert_raw(chunk, t.source.dtype, t.dtype))).cast("B")


def _copy_range(
    src, nbytes: int, fd: int, pos: int, report: Callable[[int], object], wrote: Callable[[int], None]
) -> None:
    """Copy ``nbytes`` of a source tensor to ``fd`` at ``pos``, in kernel space (the GIL released);
    ``report(bytes copied so far)`` and ``wrote(n)`` after each chunk."""
    step = 64 * 1024 * 1024
    with open(src.path, "rb", buffering=0) as f:
        copied = 0
        while copied < nbytes:
            want = min(step, nbytes - copied)
            try:
                n = os.copy_file_range(f.fileno(), fd, want, src.offset + copied, pos + copied)
            except OSError as e:
                if e.errno not in (errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL):
                    raise
                n = os.pwrite(fd, os.pread(f.fileno(), want, src.offset + copied), pos + copied)
            if n <= 0:
                raise OutputError(f"{src.path.name}: file ends early while copying {src.name!r} (truncated)")
            copied += n
            report(copied)
            wrote(n)


def _aligned(n: int) -> int:
    """``n`` rounded up to the tensor-data alignment."""
    return -(-n // ALIGNMENT) * ALIGNMENT


def _pwrite_all(fd: int, data: bytes | memoryview, pos: int) -> int:
    """Write all of ``data`` at ``pos``; returns the position after it."""
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, pos)
        view, pos = view[n:], pos + n
    return pos


class _Background(threading.Thread):
    """``fn(*args)`` on a thread; ``check()`` re-raises what it raised."""

    def __init__(self, fn: Callable[..., object], *args: object) -> None:
        super().__init__(daemon=True)
        self.fn, self.args, self.error = fn, args, None

    def run(self) -> None:
        try:
            self.fn(*self.args)
        except BaseException as e:  # handed to the thread that checks
            self.error = e

    def check(self) -> None:
        if self.error is not None:
            raise self.error


# --- the header: KV data and tensor infos (GGUF v3, little-endian) -----------------------------

V = GGUFValueType
SCALAR_FORMATS = {
    V.UINT8: "<B", V.INT8: "<b", V.UINT16: "<H", V.INT16: "<h", V.UINT32: "<I", V.INT32: "<i",
    V.FLOAT32: "<f", V.UINT64: "<Q", V.INT64: "<q", V.FLOAT64: "<d", V.BOOL: "<?",
}  # fmt: skip
ARRAY_DTYPES = {vtype: np.dtype(fmt) for vtype, fmt in SCALAR_FORMATS.items()}
U64 = struct.Struct("<Q")
STRINGS_PER_CHUNK = 1 << 16  # bounds the temporary bytes objects of a large string array


def _pack_string(value: str | bytes) -> bytes:
    data = value.encode("utf-8") if isinstance(value, str) else bytes(value)
    return U64.pack(len(data)) + data


def _pack_strings(values: Sequence[str]) -> Iterator[bytes]:
    """Each string as (u64 byte length, UTF-8 bytes), a chunk of strings per bytes object."""
    for start in range(0, len(values), STRINGS_PER_CHUNK):
        encoded = list(map(str.encode, values[start : start + STRINGS_PER_CHUNK]))
        yield b"".join(itertools.chain.from_iterable(zip(map(U64.pack, map(len, encoded)), encoded)))


@dataclass
class _Strings:
    """A string array's items, packed only when written; its size is known before (``nbytes``)."""

    values: Sequence[str]

    @property
    def nbytes(self) -> int:
        return U64.size * len(self.values) + sum(map(len, map(str.encode, self.values)))  # ~50 ms for 777k

    def __iter__(self) -> Iterator[bytes]:
        return _pack_strings(self.values)


def _pack_value(value: object, vtype: GGUFValueType, sub: GGUFValueType | None) -> Iterator[bytes | _Strings]:
    """One KV value (without its type tag), in pieces (a string array's items: one ``_Strings``)."""
    if vtype == V.STRING:
        yield _pack_string(value)
    elif vtype == V.ARRAY:
        if not isinstance(value, Sequence) or isinstance(value, (str, bytes)) or not value:
            raise ValueError(f"GGUF array value must be a non-empty sequence, got {type(value).__name__}")
        if sub not in ARRAY_DTYPES and sub != V.STRING:
            raise ValueError(f"GGUF array item type {sub!r} is not supported")  # nested arrays: unused
        yield struct.pack("<IQ", sub, len(value))
        if sub == V.STRING:
            yield _Strings(value)
        else:
            yield np.asarray(value, dtype=ARRAY_DTYPES[sub]).tobytes()
    elif vtype in SCALAR_FORMATS:
        yield struct.pack(SCALAR_FORMATS[vtype], value)
    else:
        raise ValueError(f"GGUF value type {vtype!r} is not supported")


def _header_pieces(arch: str, kv: Iterable[KV], tensors: Sequence) -> Iterator[bytes | _Strings]:
    """The bytes before the tensor data, in pieces: what gguf-py's ``GGUFWriter(None, arch)`` writes
    after ``add_key_value`` of each ``kv`` and ``add_tensor_info`` of each tensor.

    As there: ``general.architecture`` comes first, a repeated key keeps its first place and
    takes the last value, tensor offsets are aligned to 32 bytes. Not included: the padding
    before the first tensor. A string array comes as one ``_Strings`` piece.
    """
    entries: dict[str, tuple[object, GGUFValueType, GGUFValueType | None]] = {
        Keys.General.ARCHITECTURE: (arch, V.STRING, None)
    }
    for key, value, vtype, sub in kv:
        entries[key] = (value, vtype, sub)
    names = [t.name for t in tensors]
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise ValueError(f"duplicated tensor name {dup!r}")
    yield struct.pack("<IIQQ", GGUF_MAGIC, GGUF_VERSION, len(tensors), len(entries))
    for key, (value, vtype, sub) in entries.items():
        yield _pack_string(key) + struct.pack("<I", vtype)
        yield from _pack_value(value, vtype, sub)
    offset = 0
    for t in tensors:
        dims = tuple(reversed(t.shape))  # GGUF lists the fastest-varying dimension first
        yield _pack_string(t.name) + struct.pack(f"<I{len(dims)}QIQ", len(dims), *dims, GGML_TYPES[t.dtype], offset)
        offset += _aligned(t.nbytes)


def gguf_header(arch: str, kv: Iterable[KV], tensors: Sequence) -> Iterator[bytes]:
    """The header's bytes, in pieces (see ``_header_pieces``)."""
    for piece in _header_pieces(arch, kv, tensors):
        yield from piece if isinstance(piece, _Strings) else (piece,)


class _WriteBehind(threading.Thread):
    """Flushes a file being written (fdatasync) on a thread each time ``step`` more bytes are
    written: the disk writes while the copy goes on, and the final fsync waits for the last
    stretch only, not for the whole file."""

    def __init__(self, fd: int, step: int = 256 << 20) -> None:
        super().__init__(daemon=True)
        self.fd, self.step, self.pending = fd, step, 0
        self.kick, self.stop = threading.Event(), False

    def wrote(self, n: int) -> None:
        self.pending += n
        if self.pending >= self.step:
            self.pending = 0
            self.kick.set()

    def run(self) -> None:
        while True:
            self.kick.wait()
            self.kick.clear()
            if self.stop:
                return
            try:
                os.fdatasync(self.fd)
            except OSError:
                return  # only an early start: the final fsync reports the error

    def close(self) -> None:
        self.stop = True
        self.kick.set()
        self.join()


def _write_header(fd: int, pieces: list[bytes | _Strings], size: int) -> None:
    """The header's pieces at the file's start, then zeros up to the tensor data; each piece is
    dropped once written (a vocabulary's strings are freed while the tensor data streams)."""
    pos, buffer = 0, bytearray()
    pieces.reverse()
    while pieces:
        piece = pieces.pop()
        for chunk in piece if isinstance(piece, _Strings) else (piece,):
            buffer += chunk
            if len(buffer) >= 1 << 20:
                pos = _pwrite_all(fd, buffer, pos)
                buffer.clear()
        del piece
    pos = _pwrite_all(fd, buffer, pos)
    if pos != size:  # _Strings.nbytes and the packing disagree: a bug, never a valid file
        raise OutputError(f"GGUF header: wrote {pos} bytes, planned {size}")
    _pwrite_all(fd, b"\0" * (-pos % ALIGNMENT), pos)


def write_gguf(
    path: Path,
    arch: str,
    kv: list[KV],
    tensors: list,
    on_progress: Progress | None = None,
    *,
    durable: bool = True,
) -> None:
    """Write ``tensors`` (objects with name, shape, dtype, nbytes, and data or source) to ``path``.

    The header's size is known before it is packed, so the tensor data is written at its place
    while a second thread packs and writes the header (the data copy runs in the kernel, without
    the GIL): the packing of a 262k-token vocabulary costs no wall time. ``kv`` is consumed
    (cleared). ``durable=False`` skips the fsync (an intermediate that is deleted anyway).
    """
    total = sum(t.nbytes for t in tensors)
    pieces = list(_header_pieces(arch, kv, tensors))
    kv.clear()  # the header thread drops each piece once written: no other reference may keep it
    size = sum(p.nbytes if isinstance(p, _Strings) else len(p) for p in pieces)
    with atomic_output(path, durable=durable) as tmp:
        with open(tmp, "wb", buffering=0) as f:  # positional writes; copy_file_range refuses O_APPEND
            fd = f.fileno()
            header = _Background(_write_header, fd, pieces, size)
            del pieces
            flusher = _WriteBehind(fd)
            header.start()
            if durable:
                flusher.start()
            try:
                _write_tensors(fd, _aligned(size), tensors, on_progress, total, flusher.wrote)
            finally:  # before the file closes, on failure too: never a write to a reused fd
                header.join()
                if durable:
                    flusher.close()
            header.check()


def _write_tensors(
    fd: int, pos: int, tensors: list, on_progress: Progress | None, total: int, wrote: Callable[[int], None]
) -> None:
    """Each tensor's bytes at its aligned offset from ``pos``, then the file padded to alignment;
    ``wrote(n)`` for every ``n`` bytes written."""
    done = 0
    for t in tensors:
        if t.data is None and t.transform is None and t.source.dtype == t.dtype:
            # same type: let the kernel copy the bytes (as fast as `cp`, no user-space buffer)
            report = lambda n, base=done: on_progress and on_progress(base + n, total)  # noqa: E731
            _copy_range(t.source, t.nbytes, fd, pos, report, wrote)
            written = t.nbytes
        else:
            start = pos
            for chunk in _tensor_bytes(t):
                pos = _pwrite_all(fd, chunk, pos)
                if on_progress:
                    on_progress(done + pos - start, total)
            written, pos = pos - start, start
            if written != t.nbytes:
                raise OutputError(f"{t.name}: wrote {written} bytes, expected {t.nbytes}")
            wrote(written)
        done += written
        pos += _aligned(written)  # the gap reads as zeros
    os.ftruncate(fd, pos)
