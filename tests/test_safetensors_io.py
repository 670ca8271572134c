"""Our streaming safetensors reader/writer: exact bytes, bounded chunks, hostile headers refused."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from g4cli.errors import CheckpointError
from quantize import safetensors_io as st


def test_reader_matches_the_safetensors_library(tmp_path: Path) -> None:
    arrays = {
        "a": np.arange(24, dtype=np.float32).reshape(2, 3, 4),
        "b": np.arange(10, dtype=np.float16),
        "c": np.zeros((0, 5), dtype=np.float32),
    }
    save_file(arrays, tmp_path / "x.safetensors")
    refs = st.read_header(tmp_path / "x.safetensors")
    assert set(refs) == set(arrays)
    for name, arr in arrays.items():
        assert refs[name].shape == arr.shape
        np.testing.assert_array_equal(st.load(refs[name]), arr.astype(np.float32))


def test_iter_raw_streams_in_bounded_chunks_and_prefixes(tmp_path: Path) -> None:
    data = np.arange(1000, dtype=np.float32)
    save_file({"t": data}, tmp_path / "x.safetensors")
    ref = st.read_header(tmp_path / "x.safetensors")["t"]
    chunks = list(st.iter_raw(ref, chunk_bytes=64))
    assert all(c.nbytes <= 64 for c in chunks) and len(chunks) == 1000 * 4 // 64 + 1
    np.testing.assert_array_equal(np.concatenate(chunks), data)
    np.testing.assert_array_equal(np.concatenate(list(st.iter_raw(ref, n_elements=37, chunk_bytes=40))), data[:37])


def test_writer_round_trips_through_the_safetensors_library(tmp_path: Path) -> None:
    specs = [st.TensorSpec("w", "F32", (3, 5)), st.TensorSpec("h", "F16", (7,)), st.TensorSpec("b", "BF16", (4, 2))]
    values = {"w": np.arange(15, dtype=np.float32), "h": np.arange(7, dtype=np.float16), "b": np.arange(8)}

    def fill(spec: st.TensorSpec):
        v = values[spec.name]
        if spec.dtype == "BF16":
            v = st.f32_to_bf16(v.astype(np.float32))
        yield v[:3]
        yield v[3:]

    st.write(tmp_path / "o.safetensors", specs, fill)
    from safetensors import safe_open

    with safe_open(tmp_path / "o.safetensors", framework="np") as f:  # the reference reader
        w, h = f.get_tensor("w"), f.get_tensor("h")
    assert w.shape == (3, 5) and h.dtype == np.float16
    np.testing.assert_array_equal(w.reshape(-1), values["w"])
    refs = st.read_header(tmp_path / "o.safetensors")
    np.testing.assert_array_equal(st.load(refs["b"]).reshape(-1), np.arange(8, dtype=np.float32))
    assert not list(tmp_path.glob(".*partial"))


def test_bf16_rounding_is_round_to_nearest_even() -> None:
    x = np.array([1.0, 1.00390625, 1.01171875, -2.5, np.inf, np.nan, 3.0e38], dtype=np.float32)
    bits = st.f32_to_bf16(x)
    back = st.to_f32(bits, "BF16")
    # 1 + 2^-8 is exactly halfway between 1 and 1 + 2^-7: ties go to the even mantissa (1.0)
    assert back[0] == 1.0 and back[1] == 1.0 and back[2] == 1.015625
    assert back[3] == -2.5 and np.isinf(back[4]) and np.isnan(back[5])
    assert abs(back[6] - 3.0e38) / 3.0e38 < 2**-8


def test_convert_raw_between_float_types() -> None:
    x = np.linspace(-3, 3, 13, dtype=np.float32)
    for dst in ("F32", "F16", "BF16"):
        out = st.convert_raw(x, "F32", dst)
        back = st.to_f32(out, dst) if dst != "F16" else out.astype(np.float32)
        np.testing.assert_allclose(back, x, rtol=2**-7)
    assert st.convert_raw(x, "F32", "F32") is x  # same type: no copy


def _write_raw(path: Path, header: object, data: bytes = b"", header_len: int | None = None) -> Path:
    blob = json.dumps(header).encode() if not isinstance(header, bytes) else header
    path.write_bytes(struct.pack("<Q", len(blob) if header_len is None else header_len) + blob + data)
    return path


@pytest.mark.parametrize(
    ("header", "data", "header_len", "message"),
    [
        ({"t": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 4, None, "outside the file"),
        ({"t": {"dtype": "F32", "shape": [2], "data_offsets": [0, 12]}}, b"\0" * 12, None, "do not match shape"),
        ({"t": {"dtype": "F32", "shape": [2], "data_offsets": [8, 0]}}, b"\0" * 8, None, "invalid"),
        ({"t": {"dtype": "Q4", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 8, None, "unsupported dtype"),
        ({"t": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}}, b"\0" * 8, None, "malformed shape"),
        ({"t": {"dtype": "F32", "shape": [2], "data_offsets": "x"}}, b"\0" * 8, None, "malformed data_offsets"),
        (b"not json", b"", None, "not valid JSON"),
        ([1, 2], b"", None, "not a JSON object"),
        ({}, b"", 1 << 40, "points outside the file"),
        (
            {
                "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]},
            },
            b"\0" * 12,
            None,
            "overlap",
        ),
    ],
)
def test_hostile_headers_are_refused_with_the_file_name(
    tmp_path: Path, header: object, data: bytes, header_len: int | None, message: str
) -> None:
    path = _write_raw(tmp_path / "bad.safetensors", header, data, header_len)
    with pytest.raises(CheckpointError) as e:
        st.read_header(path)
    assert "bad.safetensors" in str(e.value) and message in str(e.value)


def test_truncated_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "t.safetensors").write_bytes(b"\x10\0\0")
    with pytest.raises(CheckpointError, match="truncated"):
        st.read_header(tmp_path / "t.safetensors")
