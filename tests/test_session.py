"""Session: the conversation around a real tiny model — context overflow, /regen, save and load."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from g4cli.chat.runtime.model import Model
from g4cli.chat.session import Session
from g4cli.chat.settings import Sampling
from g4cli.errors import G4Error, UsageError


@pytest.fixture(scope="module")
def model(gguf):
    path = gguf("e2b", "Q8_0")
    with Model(path, path.with_name("mmproj-e2b-Q8_0.gguf"), n_ctx=4096) as m:
        yield m


def _send(session: Session, text: str) -> list:
    return list(session.send(text))


def test_context_full_drops_the_oldest_turns_with_a_notice(gguf) -> None:
    with Model(gguf("31b", "Q8_0"), n_ctx=512) as small:
        session = Session(small, system="Be brief.", sampling=Sampling(temperature=0, max_tokens=8))
        long_text = "The quick brown fox jumps over the lazy dog. " * 12  # ~100 tokens
        notices = []
        for _ in range(8):
            events = _send(session, long_text)
            notices += [e.text for e in events if e.kind == "notice"]
            assert events[-1].kind == "done"
        assert notices and "dropped" in notices[0]
        assert len(session.turns) < 16 and session.turns[-2].text == long_text
        assert session.system == "Be brief."  # the system prompt is never dropped


def test_a_message_larger_than_the_context_is_refused_without_damage(gguf) -> None:
    with Model(gguf("31b", "Q8_0"), n_ctx=256) as small:
        session = Session(small, sampling=Sampling(temperature=0, max_tokens=4))
        _send(session, "hello")
        with pytest.raises(G4Error, match="does not fit the context"):
            _send(session, "word " * 400)
        assert len(session.turns) == 2
        assert _send(session, "again")[-1].kind == "done"


def test_regen_answers_the_last_message_again(model) -> None:
    session = Session(model, sampling=Sampling(temperature=0, max_tokens=6))
    _send(session, "first")
    _send(session, "second")
    before = session.turns[-1].text
    text = session.regen()
    assert text == "second" and len(session.turns) == 2
    _send(session, text)
    assert session.turns[-1].text == before  # greedy: the same answer again
    with pytest.raises(UsageError):
        Session(model).regen()


def test_save_and_load_restore_turns_settings_and_attachments(model, media_dir, tmp_path: Path) -> None:
    img = tmp_path / "pic.png"
    shutil.copy(media_dir["alpha"], img)
    session = Session(model, system="sys", sampling=Sampling(temperature=0.3, top_k=7, max_tokens=4))
    session.attach(img)
    _send(session, "look")
    path = tmp_path / "c.json"
    session.save(path, "tiny")
    restored = Session(model)
    assert restored.load(path) == []
    assert restored.system == "sys" and restored.sampling.top_k == 7 and restored.sampling.temperature == 0.3
    assert [t.text for t in restored.turns] == [t.text for t in session.turns]
    assert restored.turns[0].media[0].sha256 == session.turns[0].media[0].sha256
    img.write_bytes(media_dir[".gif"].read_bytes())  # the file changed since
    again = Session(model)
    warnings = again.load(path)
    assert len(warnings) == 1 and "has changed" in warnings[0] and again.turns[0].media == []


def test_loading_a_broken_file_leaves_the_session_alone(model, tmp_path: Path) -> None:
    session = Session(model, sampling=Sampling(temperature=0, max_tokens=3))
    _send(session, "keep me")
    for content in ("{not json", json.dumps({"g4_conversation": 1, "turns": [{"role": "wizard"}]}), "[]"):
        bad = tmp_path / "bad.json"
        bad.write_text(content)
        with pytest.raises(G4Error):
            session.load(bad)
        assert session.turns[0].text == "keep me"
