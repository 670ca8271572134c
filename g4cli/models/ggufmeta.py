"""Read a few metadata values from a GGUF header without parsing the whole file.

GGUFReader builds every key (a 262k-token vocabulary included) and maps all tensors; the chat
needs two numbers before it loads a model, so it scans key by key and stops at what it wants.
"""

from __future__ import annotations

import io
import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
STRING, ARRAY = 8, 9
Source = Path | str | bytes  # a file, or the first bytes of one (a header read over HTTP: gguf_remote)


class Truncated(ValueError):
    """The bytes end inside the header (of a prefix: read more of the file)."""


def _open(source: Source) -> BinaryIO:
    return io.BytesIO(source) if isinstance(source, bytes) else open(source, "rb")


def _name(source: Source) -> str:
    return "GGUF header bytes" if isinstance(source, bytes) else str(source)


def _read(f: BinaryIO, fmt: str) -> Any:
    size = struct.calcsize(fmt)
    data = f.read(size)
    if len(data) != size:
        raise Truncated("truncated GGUF header")
    return struct.unpack(fmt, data)[0]


def _string(f: BinaryIO) -> str:
    n = _read(f, "<Q")
    if n > 1 << 30:
        raise ValueError("implausible string length in GGUF header")
    data = f.read(n)
    if len(data) != n:
        raise Truncated("truncated GGUF header")
    return data.decode("utf-8", "replace")


def _value(f: BinaryIO, vtype: int, keep: bool) -> Any:
    if vtype in _SCALARS:
        return _read(f, _SCALARS[vtype])
    if vtype == STRING:
        if not keep:  # skipped unread (a 262k-token vocabulary is most of a header)
            f.seek(_read(f, "<Q"), 1)
            return None
        return _string(f)
    if vtype == ARRAY:
        etype, n = _read(f, "<I"), _read(f, "<Q")
        if etype in _SCALARS and not keep:
            f.seek(n * struct.calcsize(_SCALARS[etype]), 1)
            return None
        items = [_value(f, etype, keep) for _ in range(n)]
        return items if keep else None
    raise ValueError(f"unknown GGUF value type {vtype}")


def read_values(path: Source, wanted: set[str]) -> dict[str, Any]:
    """The values of ``wanted`` keys (a ``{arch}`` in a key is the file's architecture)."""
    found: dict[str, Any] = {}
    with _open(path) as f:
        if f.read(4) != b"GGUF":
            raise ValueError(f"{_name(path)}: not a GGUF file")
        _read(f, "<I")  # version
        _read(f, "<Q")  # tensor count
        n_kv = _read(f, "<Q")
        arch = None
        for _ in range(n_kv):
            key = _string(f)
            vtype = _read(f, "<I")
            names = {w.replace("{arch}", arch or "\0"): w for w in wanted}  # resolved key -> as asked
            value = _value(f, vtype, keep=key in names or key == "general.architecture")
            if key == "general.architecture":
                arch = value
                names = {w.replace("{arch}", arch): w for w in wanted}
            if key in names:
                found[names[key]] = value
            if len(found) == len(wanted):
                break
    return found


@dataclass
class TensorInfo:
    name: str
    shape: tuple[int, ...]  # ggml order (fastest-varying first)
    ggml_type: int
    offset: int  # from the start of the data section

    @property
    def n_elements(self) -> int:
        return math.prod(self.shape)


def read_tensors(path: Source) -> tuple[dict[str, Any], list[TensorInfo]]:
    """Every scalar and string key (arrays skipped) and every tensor's description."""
    values, tensors, _ = read_header(path)
    return values, tensors


def read_header(source: Source) -> tuple[dict[str, Any], list[TensorInfo], int]:
    """``read_tensors`` plus where the header ends (the tensor data starts at the next
    ``general.alignment`` boundary, 32 by default)."""
    values: dict[str, Any] = {}
    tensors: list[TensorInfo] = []
    path = _name(source)
    with _open(source) as f:
        if f.read(4) != b"GGUF":
            raise ValueError(f"{path}: not a GGUF file")
        _read(f, "<I")
        n_tensors, n_kv = _read(f, "<Q"), _read(f, "<Q")
        if n_tensors > 1 << 20 or n_kv > 1 << 20:
            raise ValueError(f"{path}: implausible GGUF header counts")
        for _ in range(n_kv):
            key = _string(f)
            vtype = _read(f, "<I")
            value = _value(f, vtype, keep=vtype != ARRAY)
            if vtype != ARRAY:
                values[key] = value
        for _ in range(n_tensors):
            name = _string(f)
            n_dims = _read(f, "<I")
            if n_dims > 8:
                raise ValueError(f"{path}: tensor {name!r} has {n_dims} dimensions")
            shape = tuple(_read(f, "<Q") for _ in range(n_dims))
            tensors.append(TensorInfo(name, shape, _read(f, "<I"), _read(f, "<Q")))
        end = f.tell()
    return values, tensors, end
