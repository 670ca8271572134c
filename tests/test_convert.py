"""The converter on tiny checkpoints of every family: complete, loadable, atomic, and strict."""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
from conftest import FAMILIES, stray_files, tmpfs
from gguf import GGUFReader

from quantize import gemma4
from quantize import safetensors_io as st
from quantize.checkpoint import open_checkpoint
from quantize.converter import convert
from quantize.vocab import load_vocab


def _reader_kv(reader: GGUFReader) -> dict[str, object]:
    out = {}
    for name, field in reader.fields.items():
        out[name] = field.contents()
    return out


@pytest.mark.parametrize("family", FAMILIES)
def test_every_source_tensor_is_converted_or_dropped_by_a_named_rule(tiny, family: str) -> None:
    ckpt = open_checkpoint(tiny(family))
    hp = gemma4.text_params(ckpt.config)
    plan = gemma4.plan_text(hp, ckpt.tensors, len(load_vocab(ckpt.root, ckpt.config)), "F32")
    converted = {t.source.name for t in plan.tensors if t.source is not None}
    dropped = {name for name, _ in plan.dropped}
    assert converted | dropped == set(ckpt.tensors)
    assert not converted & dropped
    rules = {rule for _, rule in plan.dropped}
    assert any("vision tower" in r for r in rules)  # every family has a vision tower
    assert any("audio tower" in r for r in rules) == (family in ("e2b", "e4b"))


@pytest.mark.parametrize("family", FAMILIES)
def test_gguf_has_the_keys_and_tensors_llama_cpp_expects(gguf, family: str) -> None:
    reader = GGUFReader(gguf(family, "F32"))
    kv = _reader_kv(reader)
    assert kv["general.architecture"] == "gemma4"
    assert kv["tokenizer.ggml.model"] == "gemma4" and len(kv["tokenizer.ggml.merges"]) > 100
    assert kv["tokenizer.ggml.bos_token_id"] == 2 and kv["tokenizer.ggml.eos_token_id"] == 1
    tokens = kv["tokenizer.ggml.tokens"]
    assert tokens[kv["tokenizer.ggml.mask_token_id"]] == "<mask>"  # as llama.cpp's own converter writes it
    assert "<|turn>" in kv["tokenizer.chat_template"]
    assert isinstance(kv["gemma4.attention.sliding_window_pattern"], list)
    names = {t.name for t in reader.tensors}
    assert "rope_freqs.weight" in names and "token_embd.weight" in names
    assert ("per_layer_token_embd.weight" in names) == (family in ("e2b", "e4b"))
    assert any("ffn_gate_up_exps" in n for n in names) == (family == "26b-a4b")
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    assert all(types[n] == "F32" for n in names)


def test_kv_shared_layers_carry_no_own_kv_weights(gguf) -> None:
    names = {t.name for t in GGUFReader(gguf("e2b", "F32")).tensors}
    assert "blk.4.attn_k.weight" in names and "blk.5.attn_k.weight" not in names
    assert "blk.9.attn_q.weight" in names


def test_token_embeddings_are_exact_rows_of_the_source(gguf, tiny) -> None:
    reader = GGUFReader(gguf("31b", "F32"))
    emb = next(t for t in reader.tensors if t.name == "token_embd.weight")
    ref = st.load(open_checkpoint(tiny("31b")).tensors["model.language_model.embed_tokens.weight"])
    np.testing.assert_array_equal(np.asarray(emb.data).reshape(ref.shape), ref)


@pytest.mark.parametrize("family", FAMILIES)
def test_f32_gguf_loads_and_generates_in_llama_cpp(gguf, family: str) -> None:
    import llama_cpp

    llm = llama_cpp.Llama(str(gguf(family, "F32")), n_ctx=128, verbose=False)
    out = llm.create_completion("The cat", max_tokens=8, temperature=0.0)
    assert out["usage"]["completion_tokens"] >= 1


def test_original_checkpoint_variants_convert_to_the_same_gguf(tiny, tmp_path: Path) -> None:
    """Legacy config keys, unused K/V on shared layers and sharding change nothing in the output."""
    base = tmp_path / "base.gguf"
    convert(tiny("e4b"), base, quant="F32")
    variant_dir = tiny("e4b", legacy_config=True, kv_on_shared_layers=True, shard_bytes=3_000_000)
    assert (variant_dir / "model.safetensors.index.json").exists()
    assert len(list(variant_dir.glob("model-*.safetensors"))) > 1
    variant = tmp_path / "variant.gguf"
    result = convert(variant_dir, variant, quant="F32")
    assert any("KV-shared" in rule for _, rule in result.dropped)
    a = {t.name: np.asarray(t.data) for t in GGUFReader(base).tensors}
    b = {t.name: np.asarray(t.data) for t in GGUFReader(variant).tensors}
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def test_bf16_source_defaults_to_bf16_and_keeps_norms_f32(tiny, tmp_path: Path) -> None:
    src = tiny("31b", dtype="BF16")
    out = tmp_path / "o.gguf"
    convert(src, out, quant="BF16")
    types = {t.name: t.tensor_type.name for t in GGUFReader(out).tensors}
    assert types["blk.0.attn_q.weight"] == "BF16" and types["token_embd.weight"] == "BF16"
    assert types["blk.0.attn_norm.weight"] == "F32" and types["rope_freqs.weight"] == "F32"
    # the BF16 bits pass through untouched
    ref = next(iter(st.iter_raw(open_checkpoint(src).tensors["model.language_model.layers.0.self_attn.q_proj.weight"])))
    got = next(t for t in GGUFReader(out).tensors if t.name == "blk.0.attn_q.weight")
    np.testing.assert_array_equal(np.asarray(got.data).view(np.uint16).reshape(-1)[: ref.size], ref)


# --- bad input: one line, exit 1, no output, no partial files --------------------------------


def _copy(tiny, tmp_path: Path, family: str = "e2b") -> Path:
    d = tmp_path / "ckpt"
    shutil.copytree(tiny(family), d)
    return d


def _edit_config(d: Path, **text: object) -> None:
    cfg = json.loads((d / "config.json").read_text())
    cfg["text_config"].update(text)
    (d / "config.json").write_text(json.dumps(cfg))


def _rewrite_header(path: Path, edit) -> None:
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    edit(header)
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + raw[8 + n :])


def _break(kind: str, d: Path) -> str:
    """Damage checkpoint ``d``; return a substring the error line must contain."""
    st_file = d / "model.safetensors"
    if kind == "no-config":
        (d / "config.json").unlink()
        return "config.json not found"
    if kind == "bad-json":
        (d / "config.json").write_text('{"architectures": [')
        return "config.json: not valid JSON"
    if kind == "not-gemma4":
        cfg = json.loads((d / "config.json").read_text())
        cfg["architectures"] = ["Qwen2ForCausalLM"]
        cfg["model_type"] = "qwen2"
        (d / "config.json").write_text(json.dumps(cfg))
        return "Qwen2ForCausalLM is not Gemma 4"
    if kind == "truncated":
        with open(st_file, "r+b") as f:
            f.truncate(st_file.stat().st_size // 2)
        return "model.safetensors"
    if kind == "offsets-outside":

        def edit(h: dict) -> None:
            name = "model.language_model.norm.weight"
            b, e = h[name]["data_offsets"]
            h[name]["data_offsets"] = [b + 10**12, e + 10**12]

        _rewrite_header(st_file, edit)
        return "outside the file"
    if kind == "header-length":
        raw = st_file.read_bytes()
        st_file.write_bytes(struct.pack("<Q", len(raw) * 4) + raw[8:])
        return "header length"
    if kind == "wrong-shape":
        _edit_config(d, intermediate_size=640)
        return "expected [640, 256]"
    if kind == "kv-layout":
        _edit_config(d, num_kv_shared_layers=4)
        return "llama.cpp would abort"
    if kind == "pickle-only":
        st_file.unlink()
        (d / "pytorch_model.bin").write_bytes(b"\x80\x04K\x01.")  # a pickle: must never be opened
        return "never unpickles"
    if kind == "unknown-tensor":
        raw = st_file.read_bytes()
        (n,) = struct.unpack("<Q", raw[:8])
        end = len(raw) - 8 - n

        def edit(h: dict) -> None:
            h["model.language_model.layers.0.self_attn.q_proj.bias"] = {
                "dtype": "F32",
                "shape": [1],
                "data_offsets": [end, end + 4],
            }

        _rewrite_header(st_file, edit)
        with open(st_file, "ab") as f:
            f.write(b"\0" * 4)
        return "unknown tensor 'model.language_model.layers.0.self_attn.q_proj.bias'"
    if kind == "no-tokenizer":
        (d / "tokenizer.json").unlink()
        return "tokenizer.json not found"
    if kind == "no-merges":
        tok = json.loads((d / "tokenizer.json").read_text())
        tok["model"]["merges"] = []
        (d / "tokenizer.json").write_text(json.dumps(tok))
        return "merges are missing"
    raise AssertionError(kind)


BAD_INPUTS = [
    "no-config",
    "bad-json",
    "not-gemma4",
    "truncated",
    "offsets-outside",
    "header-length",
    "wrong-shape",
    "kv-layout",
    "pickle-only",
    "unknown-tensor",
    "no-tokenizer",
    "no-merges",
]


@pytest.mark.parametrize("kind", BAD_INPUTS)
def test_bad_checkpoints_give_one_line_and_no_output(tiny, tmp_path: Path, run_g4, kind: str) -> None:
    d = _copy(tiny, tmp_path)
    expected = _break(kind, d)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    r = run_g4("convert", d, "-o", out_dir / "m.gguf")
    assert r.returncode == 1, r.err
    assert len(r.err_lines) == 1 and r.err_lines[0].startswith("Error: "), r.err
    assert expected in r.err_lines[0]
    assert r.stdout == b""
    assert list(out_dir.iterdir()) == []


def test_missing_directory_and_file_instead_of_directory(run_g4, tmp_path: Path) -> None:
    r = run_g4("convert", tmp_path / "nope")
    assert r.returncode == 1 and "no such directory" in r.err_lines[0] and len(r.err_lines) == 1
    (tmp_path / "f").write_text("x")
    r = run_g4("convert", tmp_path / "f")
    assert r.returncode == 1 and "not a directory" in r.err_lines[0]


@pytest.mark.parametrize("quant", ["f32", "q8_0"])
def test_full_disk_is_one_line_and_leaves_nothing(tiny, tmp_path: Path, run_g4, quant: str) -> None:
    with tmpfs(tmp_path / "small", "size=2m") as small:
        r = run_g4("convert", tiny("e2b"), "-o", small / "m.gguf", "-q", quant)
        assert r.returncode == 1
        assert len(r.err_lines) == 1 and "no space left on device" in r.err_lines[0], r.err
        assert list(small.iterdir()) == []


def test_read_only_output_directory(tiny, tmp_path: Path, run_g4) -> None:
    with tmpfs(tmp_path / "ro", "ro,size=1m") as ro:
        r = run_g4("convert", tiny("e2b"), "-o", ro / "m.gguf", "-q", "f32")
        assert r.returncode == 1 and len(r.err_lines) == 1, r.err
        assert "not writable" in r.err_lines[0] or "read-only" in r.err_lines[0]


def test_cli_writes_atomically_and_prints_only_the_path(tiny, tmp_path: Path, run_g4) -> None:
    out = tmp_path / "e2b.gguf"
    r = run_g4("convert", tiny("e2b"), "-o", out, "-q", "q8_0")
    assert r.returncode == 0, r.err
    assert r.out == f"{out}\n{tmp_path / 'mmproj-e2b.gguf'}\n"
    assert b"\x1b" not in r.stdout
    assert out.is_file() and stray_files(tmp_path) == []
    assert any("Q8_0" in line for line in r.err_lines)
