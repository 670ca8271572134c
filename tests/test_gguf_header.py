"""g4's own GGUF header packing is byte-identical to gguf-py's GGUFWriter, and reads back."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
from gguf import GGUFReader, GGUFValueType, GGUFWriter

from g4cli import fsutil
from g4cli.errors import OutputError
from quantize import gguf_out
from quantize.gguf_out import GGML_TYPES, OutTensor, gguf_header, write_gguf

V = GGUFValueType
TOKENS = ["<pad>", "<eos>", "", " ", "▁the", "日本語", "emoji 🙂", "<0x0A>", "a\x00b", "ü" * 40]
KV_CASES = [
    ("u8", 7, V.UINT8, None),
    ("i8", -7, V.INT8, None),
    ("u16", 65535, V.UINT16, None),
    ("i16", -32768, V.INT16, None),
    ("u32", 4_000_000_000, V.UINT32, None),
    ("i32", -2_000_000_000, V.INT32, None),
    ("f32", 1e-6, V.FLOAT32, None),
    ("u64", 2**63 + 5, V.UINT64, None),
    ("i64", -(2**62), V.INT64, None),
    ("f64", 0.1, V.FLOAT64, None),
    ("bool", True, V.BOOL, None),
    ("str", "Gemma 4 — «chat»", V.STRING, None),
    ("str.empty", "", V.STRING, None),
    ("arr.str", TOKENS, V.ARRAY, V.STRING),
    ("arr.f32", [-1000.0, 0.1, 3.4e38, -0.0], V.ARRAY, V.FLOAT32),
    ("arr.i32", [1, 2, 3, 6, -5], V.ARRAY, V.INT32),
    ("arr.u32", [6144, 12288], V.ARRAY, V.UINT32),
    ("arr.bool", [True, False, True], V.ARRAY, V.BOOL),
    ("arr.u8", [0, 255], V.ARRAY, V.UINT8),
    ("arr.f64", [0.1, 0.2], V.ARRAY, V.FLOAT64),
    ("arr.i64", [-1, 2**40], V.ARRAY, V.INT64),
    ("u32", 9, V.UINT32, None),  # a repeated key: first place, last value (as GGUFWriter)
]
TENSORS = [
    OutTensor("token_embd.weight", (10, 64), "BF16", data=np.zeros((10, 64), np.float32)),
    OutTensor("blk.0.attn_norm.weight", (64,), "F32", data=np.arange(64, dtype=np.float32)),
    OutTensor("blk.0.ffn_up.weight", (3, 2, 32), "F16", data=np.ones((3, 2, 32), np.float32)),
    OutTensor("v.patch_embd.weight", (2, 64), "Q8_0", data=np.full((2, 64), 0.5, np.float32)),
]


def _reference_header(tmp_path: Path, arch: str, kv: list, tensors: list) -> bytes:
    """What gguf-py's GGUFWriter writes before the tensor data."""
    path = tmp_path / "reference.gguf"
    writer = GGUFWriter(path, arch)
    for key, value, vtype, sub in kv:
        writer.add_key_value(key, value, vtype, sub_type=sub)
    for t in tensors:
        writer.add_tensor_info(t.name, t.shape, np.dtype(np.float32), t.nbytes, raw_dtype=GGML_TYPES[t.dtype])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    writer.close()
    return path.read_bytes()


def test_header_bytes_equal_gguf_writer(tmp_path: Path) -> None:
    assert b"".join(gguf_header("gemma4", KV_CASES, TENSORS)) == _reference_header(
        tmp_path, "gemma4", KV_CASES, TENSORS
    )


def test_large_string_arrays_are_packed_in_chunks_with_the_same_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(gguf_out, "STRINGS_PER_CHUNK", 7)
    tokens = [f"▁tok{i}" * (i % 5) for i in range(1000)]
    merges = [f"▁t ok{i}" for i in range(1500)]
    kv = [("tokenizer.ggml.tokens", tokens, V.ARRAY, V.STRING), ("tokenizer.ggml.merges", merges, V.ARRAY, V.STRING)]
    pieces = list(gguf_header("gemma4", kv, []))
    assert len(pieces) > 100
    assert b"".join(pieces) == _reference_header(tmp_path, "gemma4", kv, [])


@pytest.mark.parametrize(
    ("value", "vtype", "sub"),
    [([], V.ARRAY, V.INT32), ("abc", V.ARRAY, V.STRING), ([[1]], V.ARRAY, V.ARRAY), ([1], V.ARRAY, None)],
)
def test_arrays_gguf_cannot_hold_are_refused(value: object, vtype: V, sub: V | None) -> None:
    with pytest.raises(ValueError):
        b"".join(gguf_header("gemma4", [("k", value, vtype, sub)], []))


def test_duplicated_tensor_names_are_refused() -> None:
    with pytest.raises(ValueError, match="duplicated tensor name"):
        b"".join(gguf_header("gemma4", [], [TENSORS[1], TENSORS[1]]))


def _fsyncs(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    calls: list[Path] = []
    real = fsutil.fsync_file
    monkeypatch.setattr(fsutil, "fsync_file", lambda p: (calls.append(Path(p)), real(p)))
    return calls


@pytest.mark.parametrize("durable", [True, False])
def test_written_gguf_reads_back_with_the_same_values(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, durable: bool
) -> None:
    fsyncs = _fsyncs(monkeypatch)
    out = tmp_path / "out.gguf"
    kv = list(KV_CASES)
    write_gguf(out, "gemma4", kv, TENSORS, durable=durable)
    assert kv == []  # consumed
    assert len(fsyncs) == (1 if durable else 0)
    assert [p.name for p in tmp_path.iterdir()] == ["out.gguf"]
    reader = GGUFReader(out)
    fields = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    assert fields.pop("general.architecture") == "gemma4"
    expected = {key: value for key, value, _, _ in KV_CASES}
    assert fields.keys() == expected.keys()
    for key, value in expected.items():
        if isinstance(value, float) or (isinstance(value, list) and isinstance(value[0], float)):
            assert np.asarray(fields[key], np.float32).tolist() == np.asarray(value, np.float32).tolist(), key
        else:
            assert fields[key] == value, key
    tensors = {t.name: t for t in reader.tensors}
    assert list(tensors) == [t.name for t in TENSORS]
    assert np.array_equal(tensors["blk.0.attn_norm.weight"].data, np.arange(64, dtype=np.float32))
    assert np.array_equal(tensors["blk.0.ffn_up.weight"].data, np.ones((3, 2, 32), np.float16))
    assert out.stat().st_size % gguf_out.ALIGNMENT == 0


def test_a_header_that_disagrees_with_its_planned_size_fails_and_leaves_no_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The tensor data is written at offsets computed from the header's size before the header
    is packed (on another thread): a size that is off would shift every tensor."""
    real = gguf_out._Strings.nbytes
    monkeypatch.setattr(gguf_out._Strings, "nbytes", property(lambda self: real.fget(self) - 1))
    out = tmp_path / "out.gguf"
    with pytest.raises(OutputError, match="GGUF header: wrote"):
        write_gguf(out, "gemma4", list(KV_CASES), TENSORS)
    assert list(tmp_path.iterdir()) == []


def test_a_tensor_that_fails_mid_write_waits_for_the_header_thread_and_leaves_no_file(tmp_path: Path) -> None:
    bad = OutTensor("blk.0.attn_q.weight", (2, 64), "F32", data=np.zeros(3, np.float32))  # not its shape
    tokens = [f"▁tok{i}" for i in range(200_000)]  # a header that takes a while to pack
    before = threading.active_count()
    with pytest.raises(OutputError, match=r"attn_q\.weight: transform produced shape"):
        write_gguf(tmp_path / "out.gguf", "gemma4", [("tokenizer.ggml.tokens", tokens, V.ARRAY, V.STRING)], [bad])
    assert threading.active_count() == before  # the header thread was joined before the file closed
    assert list(tmp_path.iterdir()) == []
