"""g4's store and its commands (``g4 list``, ``g4 show``, ``g4 rm``), names, and the fit estimate."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from conftest import g4_executable

from g4cli.errors import ModelBusy, ModelNotFound, UsageError
from g4cli.models import catalog, fit, store
from g4cli.render import human_bytes


@pytest.fixture(scope="session")
def checkpoint(tiny) -> Path:
    return tiny("e2b", dtype="BF16")


@pytest.fixture
def pulled(run_g4, checkpoint) -> Path:
    """``mini:q8_0`` pulled from a local checkpoint (no Hub needed)."""
    r = run_g4("pull", checkpoint, "--name", "mini", "-q", "q8_0")
    assert r.returncode == 0, r.err
    return Path(r.out.strip())


# --- list / show / rm through the CLI -------------------------------------------------------


def test_list_shows_nothing_then_the_pulled_models(run_g4, checkpoint, pulled) -> None:
    r = run_g4("pull", checkpoint, "--name", "mini", "-q", "q4_0")
    assert r.returncode == 0, r.err
    r = run_g4("list")
    assert r.returncode == 0 and r.err == ""
    header, *rows = r.out.splitlines()
    assert header.split() == ["NAME", "QUANT", "SIZE", "CAPABILITIES", "PATH"]
    assert [row.split()[:2] for row in rows] == [["mini", "q4_0"], ["mini", "q8_0"]]
    assert rows[1].endswith(str(pulled)) and "vision audio ple" in rows[1]
    assert b"\x1b" not in r.stdout

    data = json.loads(run_g4("list", "--json").out)
    assert [(m["tag"], m["path"]) for m in data][1] == ("mini:q8_0", str(pulled))
    m = data[1]
    assert m["capabilities"] == ["vision", "audio", "ple"] and m["mmproj"] == str(pulled.parent / "mmproj.gguf")
    assert m["size"] == pulled.stat().st_size + (pulled.parent / "mmproj.gguf").stat().st_size


def test_list_of_an_empty_store(run_g4) -> None:
    r = run_g4("list")
    assert r.returncode == 0 and r.out == "" and "g4 pull one of: e2b (2B effective), e4b" in r.err
    assert json.loads(run_g4("list", "--json").out) == []


def test_show_describes_architecture_quant_mix_and_files(run_g4, pulled) -> None:
    r = run_g4("show", "mini")
    assert r.returncode == 0, r.err
    rows = {line[:14].strip(): line[14:] for line in r.out.splitlines()}  # label column, 14 wide
    assert rows["model"] == "mini:q8_0"
    assert rows["architecture"].startswith("gemma4, 10 layers, embedding 256")
    assert "8 sliding (window 8) + 2 full layers" in rows["attention"]
    assert rows["ple"].startswith("256 per layer") and rows["experts"] == "none"
    assert rows["context"].startswith("4096 (g4 chat default 4096)")  # chat never exceeds the trained context
    assert rows["quant mix"].startswith("Q8_0: ")
    assert rows["file (model)"].startswith("model.gguf ") and rows["path"] == str(pulled.parent)

    data = json.loads(run_g4("show", "mini:q8_0", "--json").out)
    assert data["tag"] == "mini:q8_0" and data["architecture"]["layers"] == 10
    assert data["files"]["model"]["size"] == pulled.stat().st_size
    mem = data["memory"]  # a text chat: the projector is counted apart (it loads with the first image)
    assert mem["total"] == mem["weights"] + mem["kv_cache"] + mem["compute"] and mem["projector"] > 0
    assert mem["weights"] >= data["files"]["model"]["size"] - mem["ple"]  # the PLE table is read as used
    assert f"+{human_bytes(mem['projector'])} with images or audio" in rows["memory"]

    r = run_g4("show", "minu")
    assert r.returncode == 1 and r.err_lines == ["Error: minu is not pulled: run g4 pull minu (did you mean mini?)"]


def test_rm_asks_refuses_in_a_pipe_and_removes_with_yes(run_g4, pulled) -> None:
    r = run_g4("rm", "mini")  # stdin is not a terminal and there is no --yes
    assert r.returncode == 2 and len(r.err_lines) == 1, r.err
    assert r.err_lines[0].startswith("Error: not removing mini:q8_0") and "--yes" in r.err_lines[0]
    assert pulled.is_file()

    r = run_g4("rm", "mino", "--yes")
    assert r.returncode == 1 and r.err_lines == ["Error: no pulled model named 'mino' (did you mean mini?)"]

    r = run_g4("rm", "mini:q8_0", "--yes")
    assert r.returncode == 0 and r.out == "" and r.err_lines[0].startswith("removed mini:q8_0"), r.err
    assert not pulled.parent.parent.exists()  # the name's directory went with its last quantization
    assert json.loads(run_g4("list", "--json").out) == []
    r = run_g4("rm", "mini", "--yes")
    assert r.returncode == 1 and "no pulled model named 'mini'" in r.err_lines[0]


def test_rm_asks_on_a_terminal(pulled) -> None:
    import pexpect

    cmd = g4_executable()
    for answer, code in (("n", 1), ("y", 0)):
        child = pexpect.spawn(cmd[0], [*cmd[1:], "rm", "mini"], env=dict(os.environ), timeout=60)
        child.expect(r"Remove mini:q8_0 \(.*\)\? \[y/N\]")
        child.sendline(answer)
        child.expect(pexpect.EOF)
        child.close()
        assert child.exitstatus == code
        assert pulled.is_file() == (answer == "n")


def test_rm_leaves_a_model_in_use_alone(run_g4, pulled) -> None:
    entry = store.resolve("mini")
    with store.using(entry):  # as g4 chat holds it
        r = run_g4("rm", "mini", "--yes")
        assert r.returncode == 1 and len(r.err_lines) == 1, r.err
        assert "mini:q8_0 is in use by another g4 process" in r.err_lines[0]
        assert pulled.is_file()
    assert run_g4("rm", "mini", "--yes").returncode == 0
    assert not pulled.exists()


# --- the store API --------------------------------------------------------------------------


def test_store_root_follows_g4_home_then_xdg(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("G4_HOME", str(tmp_path / "g4home"))
    assert store.store_root() == tmp_path / "g4home"
    monkeypatch.delenv("G4_HOME")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    assert store.store_root() == tmp_path / "data" / "g4"
    monkeypatch.setenv("XDG_DATA_HOME", "relative/dir")  # the XDG spec: ignore relative paths
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert store.store_root() == tmp_path / "home" / ".local" / "share" / "g4"


def test_resolve_finds_pulled_models_and_says_how_to_pull_the_others(run_g4, checkpoint, pulled) -> None:
    e = store.resolve("mini")
    assert (e.name, e.quant, e.gguf, e.mmproj) == ("mini", "Q8_0", pulled, pulled.parent / "mmproj.gguf")
    assert e.manifest["source"]["path"] == str(checkpoint.resolve())
    assert store.resolve("mini:Q8_0").gguf == pulled and store.resolve(pulled.parent).gguf == pulled
    bare = store.resolve(str(pulled))
    assert (bare.gguf, bare.quant, bare.mmproj) == (pulled, "", None)
    renamed = Path(os.environ["G4_HOME"]) / "e4b"  # a GGUF by its content, whatever its name
    renamed.write_bytes(pulled.read_bytes())
    assert store.resolve(renamed).gguf == renamed
    with pytest.raises(ModelNotFound, match="e4b is not pulled: run g4 pull e4b"):
        store.resolve("e4b")
    with pytest.raises(ModelNotFound, match="e4b:q8_0 is not pulled: run g4 pull e4b:q8_0"):
        store.resolve("e4b:q8_0")
    with pytest.raises(ModelNotFound, match="no such GGUF file"):
        store.resolve("missing.gguf")

    assert run_g4("pull", checkpoint, "--name", "mini", "-q", "q4_0").returncode == 0
    with pytest.raises(UsageError, match=r"several quantizations \(mini:q4_0, mini:q8_0\)"):
        store.resolve("mini")
    assert run_g4("pull", checkpoint, "--name", "mini").returncode == 0  # the default, Q4_K_M, wins
    assert store.resolve("mini").quant == "Q4_K_M"
    assert [e.tag for e in store.list_models()] == ["mini:q4_0", "mini:q4_k_m", "mini:q8_0"]


def test_a_directory_without_manifest_is_not_a_model(pulled) -> None:
    (pulled.parent / "manifest.json").unlink()
    assert store.list_models() == []
    with pytest.raises(ModelNotFound):
        store.resolve("mini")


def test_a_pull_in_progress_holds_the_model(pulled) -> None:
    with store.lock("mini", "Q8_0"), pytest.raises(ModelBusy, match="in use by another g4 process"):
        store.remove("mini")
    assert pulled.is_file()


@pytest.mark.parametrize("name", ["../x", "a/../../b", "/etc", "a/b/c", "a--b", ".hidden", "", "a b", "x" * 97, "a/.."])
def test_names_cannot_leave_the_store(name: str) -> None:
    with pytest.raises(UsageError, match="invalid model name"):
        store.model_dir(name, "Q8_0")


# --- names ----------------------------------------------------------------------------------


@pytest.mark.parametrize("model", catalog.MODELS, ids=lambda m: m.name)
def test_the_catalog_says_what_each_family_can_do(tiny, model: catalog.Model) -> None:
    from g4cli.models.pull import capabilities
    from quantize.checkpoint import open_checkpoint

    found = capabilities(open_checkpoint(tiny(model.name.removesuffix("-qat"))))  # a QAT release: same layout
    assert [k for k, v in found.items() if v] == list(model.capabilities)


@pytest.mark.parametrize(
    ("text", "name", "quant", "repo"),
    [
        ("e4b", "e4b", None, "google/gemma-4-E4B-it"),
        ("E2B:Q8_0", "e2b", "Q8_0", "google/gemma-4-E2B-it"),
        ("26b", "26b-a4b", None, "google/gemma-4-26B-A4B-it"),
        ("a4b:q4_k_s", "26b-a4b", "Q4_K_S", "google/gemma-4-26B-A4B-it"),
        ("google/gemma-4-31B-it", "31b", None, "google/gemma-4-31B-it"),
        ("acme/Gemma-4-tuned:q5_k_m", "acme/Gemma-4-tuned", "Q5_K_M", "acme/Gemma-4-tuned"),
    ],
)
def test_names_map_to_repos_and_quant_tags(text: str, name: str, quant: str | None, repo: str) -> None:
    ref = catalog.parse(text)
    assert (ref.name, ref.quant, ref.repo, ref.path) == (name, quant, repo, None)


def test_local_directories_and_unknown_names(tmp_path) -> None:
    d = tmp_path / "Gemma 4 E2B (tuned)"
    d.mkdir()
    (d / "config.json").write_text("{}")
    ref = catalog.parse(str(d) + ":q8_0")
    assert (ref.name, ref.quant, ref.path) == ("gemma-4-e2b-tuned", "Q8_0", d)
    with pytest.raises(ModelNotFound, match=r"unknown model 'e3b'.*") as e:
        catalog.parse("e3b")
    assert e.value.hint in ("did you mean e2b?", "did you mean e4b?")
    with pytest.raises(UsageError, match="unknown quantization type"):
        catalog.parse("e4b:q3")


# --- the fit estimate -----------------------------------------------------------------------


@pytest.mark.parametrize("family", ["e2b", "e4b", "26b-a4b", "31b"])
@pytest.mark.parametrize("quant", ["Q4_K_M", "Q8_0", "Q3_K_M", "F16", "Q4_0_QAT"])
def test_estimated_text_size_is_what_llama_cpp_writes(tiny, tmp_path, family: str, quant: str) -> None:
    from quantize.converter import convert

    src = tiny(family, dtype="BF16")
    out = tmp_path / "m.gguf"
    result = convert(src, out, quant=quant, mmproj_type="F16")
    config = json.loads((src / "config.json").read_text())
    weights = sum(p.stat().st_size for p in src.glob("*.safetensors"))
    est = fit.estimate(config, quant=quant, source_bytes=weights)
    assert est.text == pytest.approx(out.stat().st_size, rel=0.03)
    assert est.projector == pytest.approx(result.mmproj.stat().st_size, rel=0.1)
    if quant == "F16":
        assert est.intermediate == 0
    else:
        convert(src, tmp_path / "bf16.gguf", quant="BF16", mmproj_type=None)  # what the converter goes through
        assert est.intermediate == pytest.approx((tmp_path / "bf16.gguf").stat().st_size, rel=0.03)


@pytest.mark.parametrize("family", ["e2b", "e4b", "26b-a4b", "31b"])
def test_kv_cache_estimate_is_what_llama_cpp_allocates(gguf, tiny, family: str) -> None:
    """Against llama.cpp's own account of its KV buffers, at two context sizes, for each KV type
    (quantized ones need flash attention) and with and without flash attention (V padding)."""
    import json
    import re

    from g4cli.chat.runtime.llama_log import LOG
    from g4cli.chat.runtime.model import Model
    from quantize.gemma4 import text_params

    hp = text_params(json.loads((tiny(family) / "config.json").read_text()))
    for kv_type, flash_attn in (("f16", "off"), ("f16", "on"), ("q8_0", "on"), ("q4_0", "on")):
        for ctx in (1000, 4096):
            LOG.lines.clear()
            Model(gguf(family, "Q8_0"), n_ctx=ctx, kv_type=kv_type, flash_attn=flash_attn).close()
            sizes = re.findall(r"llama_kv_cache: size =\s+([\d.]+) MiB", "".join(LOG.lines))
            assert sizes, "llama.cpp did not report its KV cache"
            expected = fit.kv_cache_bytes(hp, ctx, kv_type=kv_type, flash_attn=flash_attn == "on")
            assert expected == pytest.approx(sum(float(x) for x in sizes) * 2**20, abs=0.01 * 2**20 * len(sizes))


def test_the_ple_table_of_a_real_e2b_is_counted() -> None:
    from quantize.tiny import make_config

    config = make_config("e2b-real", dtype="BF16")
    est = fit.estimate(config, quant="Q4_K_M", source_bytes=10_000_000_000)
    assert est.ple == int(262144 * 35 * 256 * 6.5625 / 8)  # Q6_K under Q4_K_M, as llama.cpp does
    assert 3e9 < est.text < 4e9
    assert fit.estimate(config, quant="Q8_0", source_bytes=10_000_000_000).ple == int(262144 * 35 * 256 * 8.5 / 8)
