"""The REPL in a real pseudo-terminal (pexpect) against tiny real models."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pexpect
import pytest
from conftest import g4_executable

PROMPT = ">>> "


@pytest.fixture(scope="module")
def endless(tiny, tmp_path_factory) -> Path:
    """A tiny model whose greedy answers never end by themselves (to interrupt them)."""
    from quantize.converter import convert

    out = tmp_path_factory.mktemp("endless") / "endless.gguf"
    convert(tiny("e2b", endless=True), out, quant="Q8_0")
    return out


def spawn(model: Path, *args: str, home: Path) -> pexpect.spawn:
    exe = g4_executable()
    env = {**os.environ, "TERM": "xterm-256color", "XDG_STATE_HOME": str(home / "state"), "COLUMNS": "100"}
    env.pop("NO_COLOR", None)
    # codec_errors: a random model's answer cut by Ctrl-C may end inside a UTF-8 sequence
    child = pexpect.spawn(
        exe[0], [*exe[1:], "chat", str(model), *args], env=env, encoding="utf-8", codec_errors="replace", timeout=60
    )
    child.expect_exact(PROMPT)
    return child


def test_streaming_multiline_media_save_load_and_ctrl_d(gguf, media_dir, tmp_path: Path) -> None:
    model = gguf("e2b", "Q8_0")
    child = spawn(model, "--temp", "0", "-n", "12", home=tmp_path)
    child.sendline("Hello there")
    child.expect_exact(PROMPT)
    assert "(stopped at --max-tokens)" in child.before  # an answer streamed up to the limit
    child.sendline('"""')
    child.expect_exact("... ")
    child.sendline("first line")
    child.expect_exact("... ")
    child.sendline('second line"""')
    child.expect_exact(PROMPT)
    child.send("\x1b[200~pasted one\npasted two\x1b[201~\r")  # bracketed paste: one message
    child.expect_exact(PROMPT)
    child.sendline(f"/image {media_dir['alpha']}")
    child.expect_exact("attached image alpha.png (640×480)")
    child.expect_exact(PROMPT)
    child.sendline(f"/audio {media_dir['speech']}")
    child.expect_exact("attached audio speech.wav")
    child.expect_exact(PROMPT)
    child.sendline("What do you see and hear?")
    child.expect_exact(PROMPT)
    child.sendline(f"and this? {media_dir['.gif']}")  # a path typed into the message
    child.expect_exact("attached image anim.gif")
    child.expect_exact(PROMPT)
    saved = tmp_path / "conv.json"
    child.sendline(f"/save {saved}")
    child.expect_exact("saved 10 turns")
    child.expect_exact(PROMPT)
    child.sendline("/clear")
    child.expect_exact("conversation cleared")
    child.expect_exact(PROMPT)
    child.sendline(f"/load {saved}")
    child.expect_exact("loaded 10 turns")
    child.expect_exact(PROMPT)
    child.sendline("/stats")
    child.expect_exact("tok/s")
    child.expect_exact(PROMPT)
    child.sendcontrol("d")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    doc = json.loads(saved.read_text())
    users = [t for t in doc["turns"] if t["role"] == "user"]
    assert [u["text"] for u in users] == [
        "Hello there",
        "first line\nsecond line",
        "pasted one\npasted two",  # a bracketed paste is one message, newlines and all
        "What do you see and hear?",
        "and this?",
    ]
    assert [a["kind"] for a in users[3]["attachments"]] == ["image", "audio"]
    assert users[4]["attachments"][0]["path"].endswith("anim.gif")


def test_ctrl_c_stops_the_answer_and_the_repl_goes_on(endless, tmp_path: Path) -> None:
    child = spawn(endless, "--temp", "0", "-n", "100000", "--ctx", "8192", home=tmp_path)
    child.sendline("Tell me everything")
    child.expect_exact("Tell me everything")  # the echo of the line
    child.expect_exact("thinking")  # the spinner; the first token follows within ~0.1 s
    time.sleep(1.5)  # the endless answer streams for ~8 s at this context size
    child.sendintr()
    child.expect_exact("(stopped)")
    child.expect_exact(PROMPT)
    child.sendline("/set max_tokens 5")
    child.expect_exact(PROMPT)
    child.sendline("Shorter please")
    child.expect_exact("(stopped at --max-tokens)")
    child.expect_exact(PROMPT)
    saved = tmp_path / "after.json"
    child.sendline(f"/save {saved}")
    child.expect_exact(PROMPT)
    child.sendline("/bye")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    turns = json.loads(saved.read_text())["turns"]
    assert [t["role"] for t in turns] == ["user", "assistant", "user", "assistant"]
    assert turns[0]["text"] == "Tell me everything" and len(turns[1]["text"]) > 0  # partial answer kept


def test_stats_after_ctrl_c_show_the_stopped_answer(endless, tmp_path: Path) -> None:
    child = spawn(endless, "--temp", "0", "-n", "100000", "--ctx", "8192", "--verbose", home=tmp_path)
    child.sendline("Tell me everything")
    child.expect_exact("thinking")
    time.sleep(2.5)  # the endless answer is streaming by now, even on a busy machine
    child.sendintr()
    child.expect(r"answer (\d+) tokens \(([\d.]+) tok/s\)")  # --verbose: printed for the stopped answer too
    tokens, rate = int(child.match.group(1)), float(child.match.group(2))
    child.expect_exact("stopped")
    child.expect_exact(PROMPT)
    assert tokens > 1 and rate > 0
    child.sendline("/stats")
    child.expect(r"prompt (\d+) tokens.*answer (\d+) tokens")
    assert int(child.match.group(1)) > 5 and int(child.match.group(2)) == tokens  # not zeros: the stopped answer's
    child.expect_exact("stopped")
    child.expect_exact(PROMPT)
    child.sendline("/bye")
    child.expect(pexpect.EOF)


def test_history_persists_across_runs_and_can_be_switched_off(gguf, tmp_path: Path) -> None:
    model = gguf("e2b", "Q8_0")
    child = spawn(model, "-n", "2", home=tmp_path)
    child.sendline("remember this line")
    child.expect_exact(PROMPT)
    child.sendline("/bye")
    child.expect(pexpect.EOF)
    history = tmp_path / "state" / "g4" / "history"
    assert "remember this line" in history.read_text()
    child = spawn(model, "-n", "2", home=tmp_path)
    child.send("\x1b[A")  # up arrow recalls the last line of the previous run
    child.expect_exact("/bye")
    child.sendcontrol("u")
    child.sendline("/bye")
    child.expect(pexpect.EOF)
    child = spawn(model, "-n", "2", "--no-history", home=tmp_path / "other")
    child.sendline("not kept")
    child.expect_exact(PROMPT)
    child.sendline("/bye")
    child.expect(pexpect.EOF)
    assert not (tmp_path / "other" / "state" / "g4" / "history").exists()


def test_tab_completes_paths_and_bad_commands_keep_the_repl_alive(gguf, media_dir, tmp_path: Path) -> None:
    child = spawn(gguf("e2b", "Q8_0"), "-n", "2", home=tmp_path)
    partial = str(media_dir["alpha"])[:-5]  # ".../alph"
    child.send(f"/image {partial}\t")
    child.expect_exact("alpha.png")
    child.sendline("")
    child.expect_exact("attached image alpha.png")
    child.expect_exact(PROMPT)
    child.sendline("/imgae x")
    child.expect_exact("unknown command /imgae; did you mean /image?")
    child.expect_exact(PROMPT)
    child.sendline("/image /no/such/file.png")
    child.expect_exact("Error: /no/such/file.png: no such file")
    child.expect_exact(PROMPT)
    child.sendline("/set temperature -3")
    child.expect_exact("out of range")
    child.expect_exact(PROMPT)
    child.sendline("/exit")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
