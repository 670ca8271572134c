"""``g4 pull`` for real: the installed g4 and huggingface_hub against a Hub on 127.0.0.1.

The Hub (tests/hub_server.py) serves a tiny BF16 E2B checkpoint in two shards as
``google/gemma-4-E2B-it``; g4 runs as a subprocess with ``HF_ENDPOINT`` pointing at it and a
temporary G4_HOME and HF_HOME (conftest.hermetic_home). Transfers are cut, stalled and
corrupted by the server; g4 is killed with SIGKILL in each phase.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import queue
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from conftest import g4_executable, stray_files, tmpfs
from hub_server import HubServer

REPO = "google/gemma-4-E2B-it"
SHARD1 = "model-00001-of-00002.safetensors"
SHARD2 = "model-00002-of-00002.safetensors"
WAIT = 120  # seconds a test waits for g4 to reach a point before failing (never a timing assertion)


@pytest.fixture(scope="session")
def checkpoint(tiny) -> Path:
    return tiny("e2b", dtype="BF16", shard_bytes=16_000_000)


@pytest.fixture
def hub(checkpoint: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[HubServer]:
    server = HubServer()
    server.add_repo(REPO, checkpoint)
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    yield server
    server.close()


@pytest.fixture(scope="session")
def reference(checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The manifest of one uninterrupted ``g4 pull e2b:q8_0`` (its own Hub, homes and process)."""
    home = tmp_path_factory.mktemp("reference")
    server = HubServer()
    server.add_repo(REPO, checkpoint)
    env = {**os.environ, "HF_ENDPOINT": server.url, "G4_HOME": str(home / "g4"), "HF_HOME": str(home / "hf")}
    try:
        proc = subprocess.run([*g4_executable(), "pull", "e2b:q8_0"], env=env, capture_output=True, timeout=300)
    finally:
        server.close()
    assert proc.returncode == 0, proc.stderr.decode()
    return json.loads((home / "g4/models/e2b/Q8_0/manifest.json").read_text())


def g4_home() -> Path:
    return Path(os.environ["G4_HOME"])


def hf_cache() -> Path:
    return Path(os.environ["HF_HOME"]) / "hub"


def repo_cache() -> Path:
    return hf_cache() / "models--google--gemma-4-E2B-it"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def model_dir(quant: str = "Q8_0") -> Path:
    return g4_home() / "models" / "e2b" / quant


def manifest(quant: str = "Q8_0") -> dict:
    return json.loads((model_dir(quant) / "manifest.json").read_text())


def no_strays() -> None:
    assert stray_files(g4_home()) == []
    assert stray_files(hf_cache()) == []


def assert_intact(quant: str = "Q8_0") -> dict:
    """The model's files are exactly those of its manifest (size and sha256)."""
    m = manifest(quant)
    for f in m["files"].values():
        path = model_dir(quant) / f["name"]
        assert path.stat().st_size == f["size"] and sha256(path) == f["sha256"], f["name"]
    return m


def generate(gguf: Path, n: int = 16) -> list[int]:
    """``n`` greedy tokens from llama.cpp (all of them, EOS or not)."""
    import llama_cpp

    llm = llama_cpp.Llama(str(gguf), n_ctx=128, logits_all=True, verbose=False)  # else scores stay unfilled
    llm.eval(llm.tokenize(b"The cat sat"))
    out = []
    for _ in range(n):
        row = llm.scores[llm.n_tokens - 1]
        assert np.isfinite(row).all() and row.std() > 0, "llama.cpp gave no real logits"
        token = int(np.argmax(row))
        out.append(token)
        llm.eval([token])
    return out


class Running:
    """A ``g4`` subprocess whose stderr lines can be awaited while it runs."""

    def __init__(self, *args: str, env: dict | None = None) -> None:
        self.proc = subprocess.Popen(
            [*g4_executable(), *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={**os.environ, **(env or {})},
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.err: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for raw in self.proc.stderr:
            line = raw.decode("utf-8", "replace")
            self.err.append(line)
            self.lines.put(line)

    def wait_for(self, text: str) -> None:
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            with contextlib.suppress(queue.Empty):
                if text in self.lines.get(timeout=0.2):
                    return
            assert self.proc.poll() is None or not self.lines.empty(), f"g4 exited early:\n{''.join(self.err)}"
        pytest.fail(f"g4 never printed {text!r}:\n{''.join(self.err)}")

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def finish(self) -> tuple[int, str, str]:
        out = self.proc.stdout.read().decode()
        rc = self.proc.wait(timeout=WAIT)
        self.reader.join(timeout=WAIT)
        return rc, out, "".join(self.err)


def wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.02)


# --- the whole path -------------------------------------------------------------------------


def test_pull_downloads_verifies_converts_and_the_model_generates(hub, run_g4, checkpoint, tmp_path) -> None:
    from huggingface_hub import hf_hub_download, scan_cache_dir

    from quantize.converter import convert

    r = run_g4("pull", "e2b:q8_0")
    assert r.returncode == 0, r.err
    gguf = model_dir() / "model.gguf"
    assert r.out == f"{gguf}\n" and b"\x1b" not in r.stdout + r.stderr
    m = assert_intact()
    assert m["name"] == "e2b" and m["quant"] == "Q8_0"
    assert m["source"] == {"repo": REPO, "revision": "main", "commit": hub.repos[REPO].commit}
    assert set(m["files"]) == {"model", "mmproj"}
    assert m["capabilities"] == {"vision": True, "audio": True, "experts": False, "ple": True}
    assert m["quant_mix"]["Q8_0"]["tensors"] > 50 and m["architecture"]["kv_shared_layers"] == 5
    # the fit estimate came first, on stderr
    assert any(line.strip().startswith("memory") and "KV cache" in line for line in r.err_lines), r.err

    # each weight file crossed the wire once and sits in the HF cache where the library finds it
    for name in (SHARD1, SHARD2, "tokenizer.json"):
        f = hub.repos[REPO].files[name]
        assert hub.served(name) == f.size
        cached = Path(hf_hub_download(REPO, name, cache_dir=hf_cache(), local_files_only=True))
        assert cached.resolve().name == f.sha256 and sha256(cached) == f.sha256
    info = scan_cache_dir(hf_cache())
    assert not info.warnings and [r.repo_id for r in info.repos] == [REPO]
    assert [ref for rev in next(iter(info.repos)).revisions for ref in rev.refs] == ["main"]
    no_strays()

    # the same tensors as converting the checkpoint directly, and llama.cpp generates with them
    from gguf import GGUFReader

    direct = tmp_path / "direct.gguf"
    convert(checkpoint, direct, quant="Q8_0", mmproj_type=None)
    ours = {t.name: np.asarray(t.data) for t in GGUFReader(gguf).tensors}
    theirs = {t.name: np.asarray(t.data) for t in GGUFReader(direct).tensors}
    assert ours.keys() == theirs.keys()
    assert all(np.array_equal(ours[k], theirs[k]) for k in ours)
    assert generate(gguf) == generate(direct)


def test_second_pull_is_a_no_op_that_says_so(hub, run_g4) -> None:
    first = run_g4("pull", "e2b:q8_0")
    assert first.returncode == 0, first.err
    seen = len(hub.log)
    before = {p: p.stat().st_mtime_ns for p in model_dir().iterdir()}
    again = run_g4("pull", "e2b:q8_0")
    assert again.returncode == 0 and again.out == first.out
    assert len(again.err_lines) == 1 and "already pulled" in again.err_lines[0], again.err
    assert hub.log[seen:] == []  # not even a metadata request
    assert {p: p.stat().st_mtime_ns for p in model_dir().iterdir()} == before
    # another spelling of the same model is the same model
    assert run_g4("pull", f"{REPO}:Q8_0").err_lines == again.err_lines


def test_a_cut_transfer_resumes_where_it_stopped_on_the_next_run(hub, run_g4) -> None:
    size = hub.repos[REPO].files[SHARD1].size
    sha = hub.repos[REPO].files[SHARD1].sha256
    hub.cut(SHARD1, 5_000_000)
    first = run_g4("pull", "e2b:q8_0")
    assert first.returncode == 1
    assert len(first.err_lines) and first.err_lines[-1].startswith("Error: download of " + SHARD1), first.err
    assert "interrupted at 5.0 MB" in first.err_lines[-1] and "run the same g4 pull again" in first.err_lines[-1]
    partial = repo_cache() / "blobs" / f"{sha}.g4-partial"
    assert partial.stat().st_size == 5_000_000  # kept, as the resumable state
    assert not (repo_cache() / "blobs" / sha).exists() and not model_dir().exists()

    hub.heal()
    seen = len(hub.log)
    second = run_g4("pull", "e2b:q8_0")
    assert second.returncode == 0, second.err
    gets = [r for r in hub.log[seen:] if r.method == "GET" and r.file == SHARD1 and r.status in (200, 206)]
    assert gets[-1].range == "bytes=5000000-" and gets[-1].status == 206
    assert hub.served(SHARD1) == size  # over both runs: nothing downloaded twice
    assert sha256(repo_cache() / "blobs" / sha) == sha
    assert_intact()
    no_strays()


def test_corrupted_bytes_are_caught_by_sha256_and_deleted(hub, run_g4) -> None:
    sha = hub.repos[REPO].files[SHARD2].sha256
    hub.corrupt(SHARD2, 123_456)
    r = run_g4("pull", "e2b:q8_0")
    assert r.returncode == 1
    assert r.err_lines[-1].startswith(f"Error: {SHARD2} from {REPO} is corrupt: sha256"), r.err
    assert "deleted" in r.err_lines[-1] and "g4 pull again" in r.err_lines[-1]
    assert not list((repo_cache() / "blobs").glob(f"{sha}*"))
    assert not (repo_cache() / "snapshots" / hub.repos[REPO].commit / SHARD2).exists()
    assert not model_dir().exists()
    hub.heal()
    assert run_g4("pull", "e2b:q8_0").returncode == 0
    assert_intact()
    no_strays()


def test_a_corrupt_blob_already_in_the_cache_is_caught_too(hub, run_g4) -> None:
    """huggingface_hub checks sizes only: a same-size corrupt blob from another tool is found."""
    assert run_g4("pull", "e2b:q8_0").returncode == 0
    blob = repo_cache() / "blobs" / hub.repos[REPO].files[SHARD1].sha256
    data = bytearray(blob.read_bytes())
    data[1000] ^= 1
    blob.write_bytes(bytes(data))
    r = run_g4("pull", "e2b:q4_0")
    assert r.returncode == 1 and "in the Hugging Face cache is corrupt" in r.err_lines[-1], r.err
    assert not blob.exists()
    r = run_g4("pull", "e2b:q4_0")
    assert r.returncode == 0, r.err
    assert hub.served(SHARD1) == 2 * hub.repos[REPO].files[SHARD1].size
    assert_intact("Q4_0")


# --- the Hub says no ------------------------------------------------------------------------


def test_gated_repo_explains_licence_and_login_and_never_prints_the_token(hub, run_g4, checkpoint) -> None:
    hub.add_repo("acme/gemma-gated", checkpoint, gated=True, tokens=("hf_granted_0123456789",))
    r = run_g4("pull", "acme/gemma-gated")
    assert r.returncode == 1 and len(r.err_lines) == 2, r.err  # the source line, then the error
    line = r.err_lines[-1]
    assert line.startswith("Error: acme/gemma-gated is gated (HTTP 401)")
    assert f"{hub.url}/acme/gemma-gated" in line and "hf auth login" in line and "HF_TOKEN" in line

    secret = "hf_wrong_secret_9876543210"
    r = run_g4("pull", "acme/gemma-gated", env={"HF_TOKEN": secret})
    assert r.returncode == 1 and "(HTTP 403)" in r.err_lines[-1] and "licence" in r.err_lines[-1], r.err
    assert secret not in r.out + r.err
    assert any(req.auth for req in hub.log)  # the token did go to the Hub

    r = run_g4("pull", "acme/gemma-gated:q8_0", env={"HF_TOKEN": "hf_granted_0123456789"})
    assert r.returncode == 0, r.err
    assert "hf_granted" not in r.out + r.err
    assert (g4_home() / "models" / "acme--gemma-gated" / "Q8_0" / "model.gguf").is_file()


def test_unknown_repos_revisions_and_names_get_one_line_and_a_suggestion(hub, run_g4) -> None:
    r = run_g4("pull", "google/gemma-4-E2C-it")
    assert r.returncode == 1 and len(r.err_lines) == 1, r.err
    assert r.err_lines[0].startswith(f"Error: google/gemma-4-E2C-it does not exist on {hub.url}")
    assert "did you mean google/gemma-4-E2B-it (g4 pull e2b)?" in r.err_lines[0]

    r = run_g4("pull", "e2b", "--revision", "no-such-branch")
    assert r.returncode == 1 and r.err_lines == [f"Error: {REPO} has no revision 'no-such-branch' (check --revision)"]

    seen = len(hub.log)
    r = run_g4("pull", "e2c")
    assert r.returncode == 1 and len(r.err_lines) == 1 and "did you mean e2b?" in r.err_lines[0], r.err
    r = run_g4("pull", "e2b:q9_k")
    assert r.returncode == 2 and len(r.err_lines) == 1 and "unknown quantization type" in r.err_lines[0], r.err
    r = run_g4("pull", "e2b:q8_0", "--quant", "q4_0")
    assert r.returncode == 2 and "asks for q8_0 but --quant says q4_0" in r.err_lines[0], r.err
    assert hub.log[seen:] == []
    assert not (g4_home() / "models").exists()


def test_a_repo_that_is_not_gemma_4_is_refused_before_its_weights_download(hub, run_g4, checkpoint, tmp_path) -> None:
    other = tmp_path / "llama"
    shutil.copytree(checkpoint, other)
    (other / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"], "model_type": "llama"}))
    hub.add_repo("acme/llama", other)
    r = run_g4("pull", "acme/llama")
    assert r.returncode == 1 and r.err_lines[-1].startswith("Error: config.json: architecture LlamaForCausalLM"), r.err
    assert "is not Gemma 4" in r.err_lines[-1]
    assert not [req for req in hub.log if req.file and req.file.endswith(".safetensors")]


# --- offline, the disk, kills, concurrency ---------------------------------------------------


def test_offline_pull_works_from_the_cache(hub, run_g4) -> None:
    assert run_g4("pull", "e2b:q8_0").returncode == 0
    hub.close()  # from here on nothing answers on the Hub's port
    r = run_g4("pull", "e2b:q4_0", env={"HF_HUB_OFFLINE": "1"})
    assert r.returncode == 0, r.err
    assert "(from the cache: HF_HUB_OFFLINE is set)" in r.err
    assert_intact("Q4_0")
    r = run_g4("pull", "e2b:q5_0")  # not offline, but the Hub is unreachable: the cache still serves
    assert r.returncode == 0, r.err
    assert "(from the cache: the Hub is unreachable)" in r.err
    assert_intact("Q5_0")
    r = run_g4("pull", "e4b", env={"HF_HUB_OFFLINE": "1"})
    assert r.returncode == 1 and len(r.err_lines) == 1, r.err
    assert "google/gemma-4-E4B-it@main is not in the Hugging Face cache" in r.err_lines[0]
    assert "HF_HUB_OFFLINE is set" in r.err_lines[0]


def test_a_disk_too_small_is_refused_before_any_weight_is_downloaded(hub, run_g4, tmp_path) -> None:
    with tmpfs(tmp_path / "small", "size=8m") as small:
        env = {"G4_HOME": str(small / "g4"), "HF_HOME": str(small / "hf")}
        r = run_g4("pull", "e2b:q8_0", env=env)
        assert r.returncode == 1, r.err
        assert r.err_lines[-1].startswith("Error: not enough disk space for e2b:q8_0:"), r.err
        assert f"needed on {small}" in r.err_lines[-1] and "--force" in r.err_lines[-1]
        assert any(line.strip().startswith("disk") for line in r.err_lines)
        assert not [req for req in hub.log if req.file and req.file.endswith(".safetensors")]
        assert not (small / "g4" / "models").exists()

        r = run_g4("pull", "e2b:q8_0", "--force", env=env)  # tries, and the full disk is one line
        assert r.returncode == 1 and r.err_lines[-1].startswith("Error: "), r.err
        assert "no space left on device" in r.err_lines[-1]
        assert "Traceback" not in r.err


@pytest.mark.parametrize("phase", ["small-file download", "weights download", "projector", "convert", "quantize"])
def test_killed_anywhere_then_pulled_again_gives_the_same_model(hub, run_g4, reference, phase: str) -> None:
    seen = 0
    if phase == "small-file download":  # inside huggingface_hub's own download: it leaves .incomplete
        release = hub.stall("tokenizer_config.json", 100)
        g4 = Running("pull", "e2b:q8_0")
        wait_until(lambda: list((repo_cache() / "blobs").glob("*.incomplete")), "huggingface_hub's .incomplete")
    elif phase == "weights download":
        release = hub.stall(SHARD1, 3_000_000)
        g4 = Running("pull", "e2b:q8_0")
        sha = hub.repos[REPO].files[SHARD1].sha256
        partial = repo_cache() / "blobs" / f"{sha}.g4-partial"
        wait_until(lambda: partial.is_file() and partial.stat().st_size == 3_000_000, "3 MB of the first shard")
    else:
        release = None
        g4 = Running("pull", "e2b:q8_0", env={"G4_TEST_PAUSE_AT": phase})
        g4.wait_for(f"G4_TEST_PAUSE_AT: paused in {phase}")
        assert [p for p in stray_files(g4_home()) if p.startswith("models/e2b/Q8_0/")], "nothing half-written?"
    g4.kill()
    assert stray_files(g4_home()) + stray_files(hf_cache()), "the kill should leave something behind"
    if release is not None:
        release.set()
    hub.heal()
    seen = len(hub.log)

    r = run_g4("pull", "e2b:q8_0")
    assert r.returncode == 0, r.err
    m = assert_intact()
    assert {k: v["sha256"] for k, v in m["files"].items()} == {k: v["sha256"] for k, v in reference["files"].items()}
    no_strays()
    if phase == "weights download":
        gets = [q for q in hub.log[seen:] if q.method == "GET" and q.file == SHARD1 and q.status != 302]
        assert [(q.range, q.status) for q in gets] == [("bytes=3000000-", 206)]
        assert hub.served(SHARD1) == hub.repos[REPO].files[SHARD1].size
    assert len(generate(model_dir() / "model.gguf")) == 16


def test_two_concurrent_pulls_serialise_and_the_second_finds_the_model(hub) -> None:
    release = hub.stall(SHARD1, 1_000_000)
    first = Running("pull", "e2b:q8_0")
    sha = hub.repos[REPO].files[SHARD1].sha256
    wait_until(lambda: (repo_cache() / "blobs" / f"{sha}.g4-partial").is_file(), "the first pull downloading")
    second = Running("pull", "e2b:q8_0")
    second.wait_for("waiting for another g4 process to finish with e2b:q8_0")
    release.set()
    hub.heal()
    (rc1, out1, err1), (rc2, out2, err2) = first.finish(), second.finish()
    assert rc1 == 0 and rc2 == 0, err1 + err2
    assert out1 == out2 == f"{model_dir() / 'model.gguf'}\n"
    assert "pulled e2b:q8_0" in err1 and "already pulled" in err2 and "pulled e2b:q8_0 (" not in err2
    assert hub.served(SHARD1) == hub.repos[REPO].files[SHARD1].size
    assert_intact()
    no_strays()


def test_orphaned_incomplete_files_are_removed_unless_their_download_is_alive(hub, run_g4) -> None:
    blobs = repo_cache() / "blobs"
    blobs.mkdir(parents=True)
    dead = blobs / "0123abcd.5f3e9a1b.incomplete"
    alive = blobs / "4567cdef.0a1b2c3d.incomplete"
    dead.write_bytes(b"x" * 100)
    alive.write_bytes(b"y" * 100)
    lock = hf_cache() / ".locks" / repo_cache().name / "4567cdef.lock"
    lock.parent.mkdir(parents=True)
    with open(lock, "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # as huggingface_hub holds it while it downloads
        assert run_g4("pull", "e2b:q8_0").returncode == 0
    assert not dead.exists() and alive.exists()


# --- options --------------------------------------------------------------------------------


def test_remove_download_and_keep_source(hub, run_g4) -> None:
    r = run_g4("pull", "e2b", "--remove-download", "--keep-source")
    assert r.returncode == 0, r.err
    m = assert_intact("Q4_K_M")
    assert set(m["files"]) == {"model", "mmproj", "source"} and m["files"]["source"]["name"] == "source-BF16.gguf"
    snapshot = repo_cache() / "snapshots" / hub.repos[REPO].commit
    assert not list(snapshot.glob("*.safetensors")) and (snapshot / "config.json").is_file()
    for name in (SHARD1, SHARD2):
        assert not (repo_cache() / "blobs" / hub.repos[REPO].files[name].sha256).exists()
    assert "removed the downloaded weights" in r.err
    no_strays()


def test_pull_a_local_checkpoint_directory(run_g4, checkpoint) -> None:
    r = run_g4("pull", checkpoint, "--name", "mine", "-q", "q8_0")
    assert r.returncode == 0, r.err
    m = json.loads((g4_home() / "models" / "mine" / "Q8_0" / "manifest.json").read_text())
    assert m["source"] == {"path": str(checkpoint.resolve())}
    assert not hf_cache().exists()  # no Hub, no cache
    again = run_g4("pull", checkpoint, "--name", "mine", "-q", "q8_0")
    assert again.returncode == 0 and "already pulled" in again.err
    r = run_g4("pull", checkpoint, "--revision", "v1")
    assert r.returncode == 2 and "apply to models from the Hub" in r.err_lines[0]
    r = run_g4("pull", checkpoint, "--name", "../outside")
    assert r.returncode == 2 and "invalid model name" in r.err_lines[0]
    assert sorted(p.name for p in (g4_home() / "models").iterdir()) == ["mine"]
