"""``g4 pull hf.co/ORG/REPO[:QUANT]`` against the local Hub: a repo of several quantizations, two
projectors and a split file; a non-Gemma GGUF, a missing tag, a corrupt transfer and a header
that lies, each refused with nothing left in the store."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from conftest import stray_files
from gguf_files import lie_about_shape, rewrite
from hub_server import HubServer

from g4cli.render import human_bytes

REPO = "acme/gemma-4-tiny-it-GGUF"
STEM = "gemma-4-tiny-it"


@pytest.fixture(scope="module")
def repos(gguf, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    good = tmp_path_factory.mktemp("gguf-repo")
    q8, q4, f16 = gguf("e2b", "Q8_0"), gguf("e2b", "Q4_K_M"), gguf("e2b", "F16")
    shutil.copy(q8, good / f"{STEM}-Q8_0.gguf")
    shutil.copy(q4, good / f"{STEM}-Q4_K_M.gguf")
    shutil.copy(gguf("e2b", "Q4_0"), good / f"{STEM}-UD-Q4_K_XL.gguf")
    parts = rewrite(f16, good / f"{STEM}-F16.gguf", split_max_tensors=100)
    assert [p.name for p in parts] == [f"{STEM}-F16-00001-of-00002.gguf", f"{STEM}-F16-00002-of-00002.gguf"]
    shutil.copy(q8.with_name(f"mmproj-{q8.name}"), good / f"mmproj-{STEM}-F16.gguf")
    shutil.copy(gguf("e2b", "F32").with_name("mmproj-e2b-F32.gguf"), good / f"mmproj-{STEM}-F32.gguf")
    llama = tmp_path_factory.mktemp("llama-repo")
    rewrite(q8, llama / "llama-tiny-Q8_0.gguf", arch="llama")
    liar = tmp_path_factory.mktemp("lie-repo")
    lie_about_shape(q8, liar / f"{STEM}-Q8_0.gguf", "output_norm.weight")
    long = tmp_path_factory.mktemp("long-header-repo")  # a header of 3 MB: read in growing prefixes
    rewrite(q8, long / f"{STEM}-Q8_0.gguf", strings={"general.description": "A long header. " * 200_000})
    return {"good": good, "llama": llama, "liar": liar, "long": long, "f16": f16}


@pytest.fixture
def hub(repos: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> Iterator[HubServer]:
    server = HubServer()
    server.add_repo(REPO, repos["good"])
    server.add_repo("acme/llama-tiny-GGUF", repos["llama"])
    server.add_repo("acme/liar-GGUF", repos["liar"])
    server.add_repo("acme/long-GGUF", repos["long"])
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    yield server
    server.close()


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def store_dir(quant: str) -> Path:
    return Path(os.environ["G4_HOME"]) / "models" / REPO.replace("/", "--") / quant


def gguf_gets(hub: HubServer) -> list[tuple[str, str | None, int]]:
    """(file, Range, bytes sent) of each GET that brought a GGUF's bytes (the Hub's 302s bring none)."""
    return [
        (q.file, q.range, q.sent)
        for q in hub.requests("GET")
        if q.file and q.file.endswith(".gguf") and q.status != 302
    ]


def assert_headers_only(hub: HubServer) -> None:
    """Of the GGUFs, only header ranges were fetched (bounded Range requests, the first MiB each)."""
    gets = gguf_gets(hub)
    assert gets and all(r and re.fullmatch(r"bytes=\d+-\d+", r) for _, r, _ in gets), gets
    assert all(sent <= 1 << 20 for _, _, sent in gets), gets


def assert_nothing_stored() -> None:
    models = Path(os.environ["G4_HOME"]) / "models"
    assert not list(models.rglob("*.gguf")) and not list(models.rglob("manifest.json"))
    assert stray_files(Path(os.environ["G4_HOME"])) == [] and stray_files(Path(os.environ["HF_HOME"])) == []


def test_pull_a_tag_with_its_projector_then_list_show_chat_rm(hub, repos, run_g4) -> None:
    r = run_g4("pull", f"hf.co/{REPO}:q8_0")
    assert r.returncode == 0, r.err
    model = store_dir("Q8_0") / "model.gguf"
    assert r.out == f"{model}\n"
    assert sha256(model) == sha256(repos["good"] / f"{STEM}-Q8_0.gguf")
    assert sha256(model.with_name("mmproj.gguf")) == sha256(repos["good"] / f"mmproj-{STEM}-F16.gguf")  # F16 default
    manifest = json.loads((store_dir("Q8_0") / "manifest.json").read_text())
    assert manifest["source"]["repo"] == REPO and len(manifest["source"]["commit"]) == 40
    assert manifest["source"]["gguf"] == [f"{STEM}-Q8_0.gguf", f"mmproj-{STEM}-F16.gguf"]
    assert {f["name"]: f["sha256"] for f in manifest["files"].values()} == {
        p.name: sha256(p) for p in (model, model.with_name("mmproj.gguf"))
    }  # the Hub's listed hashes, which are the stored files' own
    assert manifest["capabilities"] == {"vision": True, "audio": True, "experts": False, "ple": True}
    assert manifest["architecture"]["arch"] == "gemma4" and manifest["memory"]["total"] > 0
    assert "Q8_0" in manifest["quant_mix"]
    memory = [line for line in r.err_lines if line.strip().startswith("memory")]  # printed once, before
    assert len(memory) == 1 and memory[0].split()[1:3] == human_bytes(manifest["memory"]["total"]).split(), memory

    listed = json.loads(run_g4("list", "--json").out)
    assert [(m["tag"], m["source"]["repo"], m["path"]) for m in listed] == [(f"{REPO}:q8_0", REPO, str(model))]
    shown = run_g4("show", f"{REPO}:q8_0")
    assert shown.returncode == 0 and f"source        {REPO} @" in shown.out and "memory" in shown.out
    chat = run_g4("chat", f"hf.co/{REPO}:Q8_0", "hello", "--max-tokens", "4", "--temp", "0")
    assert chat.returncode == 0, chat.err
    again = run_g4("pull", f"{REPO}:Q8_0")
    assert again.returncode == 0 and "already pulled" in again.err
    gone = run_g4("rm", f"{REPO}:q8_0", "--yes")
    assert gone.returncode == 0, gone.err
    assert not store_dir("Q8_0").exists()


def test_default_tag_and_a_case_insensitive_unsloth_tag(hub, run_g4) -> None:
    r = run_g4("pull", f"hf.co/{REPO}")
    assert r.returncode == 0, r.err
    assert r.out.strip() == str(store_dir("Q4_K_M") / "model.gguf")
    r = run_g4("pull", f"{REPO}:ud-q4_k_xl")
    assert r.returncode == 0, r.err
    assert (store_dir("UD-Q4_K_XL") / "model.gguf").is_file()


def test_split_files_are_pulled_together_and_load(hub, repos, run_g4) -> None:
    r = run_g4("pull", f"hf.co/{REPO}:f16")
    assert r.returncode == 0, r.err
    d = store_dir("F16")
    first, second = d / "model-00001-of-00002.gguf", d / "model-00002-of-00002.gguf"
    assert r.out.strip() == str(first)
    assert sha256(second) == sha256(repos["good"] / f"{STEM}-F16-00002-of-00002.gguf")
    manifest = json.loads((d / "manifest.json").read_text())
    assert set(manifest["files"]) == {"model", "model-2", "mmproj"}
    import llama_cpp

    # llama.cpp finds the second split by its name; logits_all: the bindings keep logits only then
    llm = llama_cpp.Llama(str(first), n_ctx=64, logits_all=True, verbose=False)
    reference = llama_cpp.Llama(str(repos["f16"]), n_ctx=64, logits_all=True, verbose=False)
    tokens = llm.tokenize(b"The cat sat")
    llm.eval(tokens)
    reference.eval(tokens)
    got, want = llm.scores[: len(tokens)], reference.scores[: len(tokens)]
    assert np.abs(want).max() > 0 and np.allclose(got, want, rtol=0, atol=1e-5)


def test_a_missing_tag_lists_the_tags_there_are(hub, run_g4) -> None:
    r = run_g4("pull", f"hf.co/{REPO}:Q5_K_M")
    assert r.returncode == 1
    line = r.err_lines[0]
    assert "has no Q5_K_M GGUF" in line
    for tag in ("F16", "Q4_K_M", "Q8_0", "UD-Q4_K_XL"):
        assert tag in line
    assert "MMPROJ" not in line.upper()
    assert_nothing_stored()


def test_a_gguf_of_another_architecture_is_refused(hub, run_g4) -> None:
    r = run_g4("pull", "hf.co/acme/llama-tiny-GGUF:Q8_0")
    assert r.returncode == 1
    assert "architecture 'llama', not Gemma 4" in r.err
    assert_headers_only(hub)  # refused before the download
    assert_nothing_stored()


def test_a_header_that_lies_about_its_tensors_is_refused_before_loading(hub, run_g4) -> None:
    r = run_g4("pull", "hf.co/acme/liar-GGUF:Q8_0")
    assert r.returncode == 1
    assert "output_norm.weight" in r.err and ("overlap" in r.err or "outside the file" in r.err)
    assert_headers_only(hub)  # refused before the download, from the header and the listed size
    assert_nothing_stored()


def test_a_corrupt_download_is_deleted_and_the_next_pull_succeeds(hub, run_g4) -> None:
    hub.corrupt(f"{STEM}-Q8_0.gguf", 5_000_000)  # in the tensor data (a header byte is refused before the download)
    r = run_g4("pull", f"hf.co/{REPO}:Q8_0")
    assert r.returncode == 1
    assert "corrupt" in r.err and "sha256" in r.err
    assert_nothing_stored()
    hub.heal()
    r = run_g4("pull", f"hf.co/{REPO}:Q8_0")
    assert r.returncode == 0, r.err


def test_the_memory_estimate_is_the_converted_model_s(hub, tiny, run_g4) -> None:
    """The same Q8_0 model pulled as a checkpoint (converted) and as a GGUF: the manifests' layout
    and memory agree (the GGUF's Layout is read from its header, the checkpoint's from config.json)."""
    hub.add_repo("google/gemma-4-E2B-it", tiny("e2b"))
    assert run_g4("pull", "e2b:q8_0").returncode == 0
    assert run_g4("pull", f"hf.co/{REPO}:Q8_0").returncode == 0
    home = Path(os.environ["G4_HOME"]) / "models"
    converted = json.loads((home / "e2b/Q8_0/manifest.json").read_text())
    pulled = json.loads((store_dir("Q8_0") / "manifest.json").read_text())
    assert pulled["architecture"] == converted["architecture"]
    assert pulled["capabilities"] == converted["capabilities"]
    for key in ("ctx", "kv_cache", "compute", "ple"):
        assert pulled["memory"][key] == converted["memory"][key], key
    for key in ("projector", "weights", "total"):  # the files differ in their headers' names only
        assert abs(pulled["memory"][key] - converted["memory"][key]) < 1024, key


@pytest.mark.parametrize(
    ("path", "tag"),
    [
        ("gemma-4-E4B-it-Q4_K_M.gguf", "Q4_K_M"),
        ("gemma-4-E4B-it-UD-Q4_K_XL.gguf", "UD-Q4_K_XL"),
        ("gemma-4-e4b-it-q8_0.gguf", "q8_0"),
        ("BF16/gemma-4-31B-it-BF16-00002-of-00003.gguf", "BF16"),
        ("gemma-4-E4B-it-IQ4_XS.gguf", "IQ4_XS"),
        ("gemma-4-26B-A4B-it-MXFP4_MOE.gguf", "MXFP4_MOE"),
        ("model.gguf", "model"),
    ],
)
def test_file_tags(path: str, tag: str) -> None:
    from g4cli.models.gguf_repo import file_tag

    assert file_tag(path) == tag


def test_choice_of_files() -> None:
    from g4cli.errors import CheckpointError, UsageError
    from g4cli.models.gguf_repo import choose
    from g4cli.models.hub import RemoteFile

    def files(*names: str) -> list[RemoteFile]:
        return [RemoteFile(n, 1, "0" * 64) for n in names]

    split = [f"Q8_0/m-Q8_0-0000{i}-of-00003.gguf" for i in (3, 1, 2)]
    c = choose("r", files(*split, "m-Q4_K_M.gguf", "mmproj-BF16.gguf", "mmproj-F16.gguf", "mmproj-F32.gguf"), "q8_0")
    assert [f.path for f in c.parts] == sorted(split) and c.mmproj is not None and c.mmproj.path == "mmproj-F16.gguf"
    assert choose("r", files("m-Q4_K_M.gguf", "m-Q8_0.gguf"), None).tag == "Q4_K_M"
    assert choose("r", files("m-Q8_0.gguf"), None).mmproj is None
    assert [f.path for f in choose("r", files("m-assistant-Q8_0.gguf", "m-Q8_0.gguf"), "Q8_0").parts] == ["m-Q8_0.gguf"]
    with pytest.raises(UsageError, match="several quantizations; say which: Q6_K, Q8_0"):
        choose("r", files("m-Q6_K.gguf", "m-Q8_0.gguf"), None)
    with pytest.raises(CheckpointError, match=r"split file Q8_0/m-Q8_0-00002-of-00003\.gguf is missing"):
        choose("r", files(split[0], split[1]), "Q8_0")
    with pytest.raises(CheckpointError, match="has no GGUF files"):
        choose("r", files("mmproj-F16.gguf"), None)


def test_org_repo_quant_of_a_gguf_repo_whose_name_does_not_say_so(hub, repos, run_g4) -> None:
    hub.add_repo("acme/tiny-quants", repos["good"])
    r = run_g4("pull", "acme/tiny-quants:q8_0")
    assert r.returncode == 0, r.err
    manifest = json.loads(Path(r.out.strip()).with_name("manifest.json").read_text())
    assert manifest["source"]["gguf"][0] == f"{STEM}-Q8_0.gguf"
    assert run_g4("show", "acme/tiny-quants:q8_0").returncode == 0


def test_the_quality_reference_of_a_gguf_repo_model_is_its_f16(hub, run_g4) -> None:
    from g4cli.commands.quality import reference
    from g4cli.errors import ModelNotFound
    from g4cli.models import store

    assert run_g4("pull", f"hf.co/{REPO}:Q8_0").returncode == 0
    entry = store.resolve(f"hf.co/{REPO}:q8_0")
    with pytest.raises(ModelNotFound, match="no f16 reference"):
        reference(entry, "f16")
    assert run_g4("pull", f"hf.co/{REPO}:F16").returncode == 0
    assert reference(entry, "f16") == store_dir("F16") / "model-00001-of-00002.gguf"


def test_a_repo_with_neither_checkpoint_nor_gguf(hub, tmp_path, run_g4) -> None:
    (tmp_path / "README.md").write_text("nothing here\n")
    hub.add_repo("acme/empty", tmp_path)
    r = run_g4("pull", "acme/empty")
    assert r.returncode == 1 and "no config.json and .safetensors weights" in r.err
    assert_nothing_stored()


def test_remove_download_keeps_the_stored_files(hub, repos, run_g4) -> None:
    r = run_g4("pull", f"hf.co/{REPO}:Q8_0", "--remove-download")
    assert r.returncode == 0, r.err
    cache = Path(os.environ["HF_HOME"]) / "hub" / f"models--{REPO.replace('/', '--')}"
    assert not [p for p in (cache / "blobs").iterdir() if p.stat().st_size > 1_000_000]
    model = store_dir("Q8_0") / "model.gguf"
    assert sha256(model) == sha256(repos["good"] / f"{STEM}-Q8_0.gguf")


def test_killed_mid_download_then_pulled_again_resumes(hub, repos, run_g4) -> None:
    import signal
    import subprocess
    import time

    from conftest import g4_executable

    name = f"{STEM}-Q8_0.gguf"
    release = hub.stall(name, 3_000_000)
    proc = subprocess.Popen([*g4_executable(), "pull", f"hf.co/{REPO}:Q8_0"], stderr=subprocess.DEVNULL)
    partial = (
        Path(os.environ["HF_HOME"]) / "hub" / f"models--{REPO.replace('/', '--')}" / "blobs"
        / f"{hub.repos[REPO].files[name].sha256}.g4-partial"
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while not (partial.is_file() and partial.stat().st_size == 3_000_000):
        assert time.monotonic() < deadline and proc.poll() is None, "g4 never got 3 MB into the file"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    release.set()
    hub.heal()
    assert not store_dir("Q8_0").joinpath("manifest.json").exists()
    seen = len(hub.log)
    r = run_g4("pull", f"hf.co/{REPO}:Q8_0")
    assert r.returncode == 0, r.err
    gets = [q for q in hub.log[seen:] if q.method == "GET" and q.file == name and q.status != 302]
    assert [(q.range, q.status) for q in gets] == [("bytes=3000000-", 206)]
    assert sha256(store_dir("Q8_0") / "model.gguf") == sha256(repos["good"] / name)
    assert stray_files(Path(os.environ["G4_HOME"])) == [] and stray_files(Path(os.environ["HF_HOME"])) == []


def test_the_fit_estimate_comes_from_the_headers_before_the_download(hub, repos, run_g4) -> None:
    """The headers alone (Range requests) give the estimate, on stderr before the first byte of
    the weights' download arrives (G4_TEST_PAUSE_AT stops g4 there)."""
    from conftest import g4_executable

    name = f"{STEM}-Q8_0.gguf"
    env = {**os.environ, "G4_TEST_PAUSE_AT": name}
    proc = subprocess.Popen([*g4_executable(), "pull", f"hf.co/{REPO}:Q8_0"], stderr=subprocess.PIPE, env=env)
    lines = []
    try:
        assert proc.stderr is not None
        for raw in proc.stderr:
            lines.append(raw.decode())
            if lines[-1].startswith("G4_TEST_PAUSE_AT: paused"):
                break
        gets = gguf_gets(hub)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    starts = [i for i, line in enumerate(lines) if line.strip().startswith(("download", "disk", "memory"))]
    assert len(starts) == 3 and lines[-1].startswith("G4_TEST_PAUSE_AT: paused"), lines
    assert "KV cache" in lines[starts[2]] and "available" in lines[starts[2]]
    # the model's and the projector's first MiB, then the model's whole file
    mmproj = f"mmproj-{STEM}-F16.gguf"
    assert gets[:-1] == [(name, "bytes=0-1048575", 1 << 20), (mmproj, "bytes=0-1048575", 1 << 20)], gets
    assert gets[-1][:2] == (name, None), gets


def test_a_long_header_is_read_in_growing_prefixes(hub, repos, run_g4) -> None:
    r = run_g4("pull", "hf.co/acme/long-GGUF:Q8_0")
    assert r.returncode == 0, r.err
    name = f"{STEM}-Q8_0.gguf"
    ranges = [(q, n) for f, q, n in gguf_gets(hub) if f == name and q]
    assert ranges == [
        ("bytes=0-1048575", 1 << 20),
        ("bytes=1048576-2097151", 1 << 20),
        ("bytes=2097152-4194303", 2 << 20),
    ]
    assert [q for f, q, _ in gguf_gets(hub) if f == name and not q] == [None]  # then the download


def test_a_server_that_ignores_ranges_still_gives_the_header_s_bytes(hub, repos, run_g4) -> None:
    """Each answer is the whole file (200): g4 reads only as far as it asked, and from the right place."""
    hub.ranges = False
    r = run_g4("pull", "hf.co/acme/long-GGUF:Q8_0")
    assert r.returncode == 0, r.err
    long = json.loads((Path(r.out.strip()).with_name("manifest.json")).read_text())
    hub.ranges = True
    assert run_g4("pull", f"hf.co/{REPO}:Q8_0").returncode == 0
    plain = json.loads((store_dir("Q8_0") / "manifest.json").read_text())  # the same model, a shorter header
    for key in ("ctx", "kv_cache", "compute", "ple"):
        assert long["memory"][key] == plain["memory"][key], key
    memory = [line for line in r.err_lines if line.strip().startswith("memory")]
    assert len(memory) == 1 and memory[0].split()[1:3] == human_bytes(long["memory"]["total"]).split(), memory


def test_a_disk_too_small_is_refused_from_the_headers_before_the_download(hub, run_g4, tmp_path) -> None:
    from conftest import tmpfs

    with tmpfs(tmp_path / "small", "size=8m") as small:
        env = {"G4_HOME": str(small / "g4"), "HF_HOME": str(small / "hf")}
        r = run_g4("pull", f"hf.co/{REPO}:Q8_0", env=env)
        assert r.returncode == 1, r.err
        assert r.err_lines[-1].startswith(f"Error: not enough disk space for {REPO}:q8_0:"), r.err
        assert "--force" in r.err_lines[-1]
        assert any(line.strip().startswith("memory") and "KV cache" in line for line in r.err_lines), r.err
        assert_headers_only(hub)
        assert not (small / "g4" / "models").exists() or not list((small / "g4" / "models").rglob("*.gguf"))

        r = run_g4("pull", f"hf.co/{REPO}:Q8_0", "--force", env=env)  # tries, and the full disk is one line
        assert r.returncode == 1 and "going ahead as --force says" in r.err, r.err
        assert "no space left on device" in r.err_lines[-1] and "Traceback" not in r.err
