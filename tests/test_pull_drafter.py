"""``g4 pull e2b`` also fetches the assistant drafter (``<repo>-assistant``) from the local Hub,
converts it beside the model, lists it in the manifest, ``g4 show`` and ``g4 list``, counts it
in the fit estimate; ``g4 chat`` then drafts with it. ``--no-draft`` skips it; a Hub without it
is one warning."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from hub_server import HubServer

REPO = "google/gemma-4-E2B-it"
ASSISTANT = REPO + "-assistant"


@pytest.fixture
def hub(tiny, tiny_drafter, monkeypatch):
    server = HubServer()
    server.add_repo(REPO, tiny("e2b", dtype="BF16", shard_bytes=16_000_000))
    server.add_repo(ASSISTANT, tiny_drafter("e2b"))
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    yield server
    server.close()


def model_dir() -> Path:
    return Path(os.environ["G4_HOME"]) / "models/e2b/Q8_0"


def test_pull_fetches_converts_and_lists_the_drafter(hub, run_g4) -> None:
    r = run_g4("pull", "e2b:q8_0")
    assert r.returncode == 0, r.err
    assert any(line.strip().startswith("drafter") and ASSISTANT in line for line in r.err_lines), r.err
    m = json.loads((model_dir() / "manifest.json").read_text())
    assert set(m["files"]) == {"model", "mmproj", "drafter"}
    assert m["files"]["drafter"]["name"] == "drafter.gguf" and (model_dir() / "drafter.gguf").is_file()
    assert m["memory"]["drafter"] == m["files"]["drafter"]["size"] > 0
    assert m["memory"]["total"] >= m["memory"]["weights"] + m["memory"]["drafter"]
    shown = run_g4("show", "e2b:q8_0")
    assert "file (draft)  drafter.gguf" in shown.out
    listed = json.loads(run_g4("list", "--json").out)
    assert listed[0]["drafter"] == str(model_dir() / "drafter.gguf")
    assert "draft" in run_g4("list").out
    chat = run_g4("chat", "e2b:q8_0", "hi", "--local", "--temp", "0", "-n", "8", "--json")
    assert chat.returncode == 0 and json.loads(chat.out)["timings"]["draft_tokens"] > 0, chat.err


def test_no_draft_skips_it(hub, run_g4) -> None:
    r = run_g4("pull", "e2b:q8_0", "--no-draft")
    assert r.returncode == 0, r.err
    assert not (model_dir() / "drafter.gguf").exists()
    assert not [q for q in hub.log if "assistant" in q.path]


def test_a_hub_without_the_drafter_is_one_warning(hub, run_g4) -> None:
    del hub.repos[ASSISTANT]
    r = run_g4("pull", "e2b:q8_0")
    assert r.returncode == 0, r.err
    assert len([line for line in r.err_lines if "no drafter" in line]) == 1
    assert set(json.loads((model_dir() / "manifest.json").read_text())["files"]) == {"model", "mmproj"}
