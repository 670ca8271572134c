"""`g4 chat` in pipes and one-shot mode, run as the installed command: byte-clean stdout, the
answer and nothing else, JSON that parses, the right exit codes and one-line errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import g4_executable

SPINNER = set("⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏")
TERM_ENV = {"TERM": "xterm-256color", "FORCE_COLOR": "", "NO_COLOR": "", "COLUMNS": "80"}


def _env(extra: dict | None = None) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "NO_COLOR")}
    env.update({"TERM": "xterm-256color"})
    env.update(extra or {})
    return env


@pytest.fixture(scope="module")
def model(gguf) -> Path:
    return gguf("e2b", "Q8_0")


def _clean(stdout: bytes) -> None:
    assert b"\x1b" not in stdout
    assert not SPINNER & set(stdout.decode("utf-8", "replace"))


def test_piped_stdin_goes_before_the_prompt_and_stdout_is_the_answer_only(run_g4, model) -> None:
    r = run_g4("chat", model, "summarize", "-n", "12", "--temp", "0", "--json", input=b"notes: buy milk\n")
    doc = json.loads(r.stdout)
    assert r.returncode == 0 and doc["tokens"]["generated"] == 12
    plain = run_g4("chat", model, "summarize", "-n", "12", "--temp", "0", input=b"notes: buy milk\n", env=_env())
    assert plain.returncode == 0
    _clean(plain.stdout)
    assert plain.stdout.decode() == doc["response"] + ("" if doc["response"].endswith("\n") else "\n")
    # the same prompt typed out in full gives the same greedy answer: stdin really went first
    whole = run_g4("chat", model, "notes: buy milk\n\n\nsummarize", "-n", "12", "--temp", "0", "--json")
    assert json.loads(whole.stdout)["response"] == doc["response"]


def test_prompt_argument_redirected_to_a_file(model, tmp_path: Path) -> None:
    out = tmp_path / "out.txt"
    with open(out, "wb") as f:
        proc = subprocess.run(
            [*g4_executable(), "chat", str(model), "Say hello", "-n", "8", "--temp", "0", "--verbose"],
            stdout=f,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            env=_env(),
        )
    assert proc.returncode == 0
    data = out.read_bytes()
    _clean(data)
    assert data.endswith(b"\n") and data.count(b"\n") >= 1
    assert b"tok/s" in proc.stderr and b"tok/s" not in data  # stats go to stderr only


def test_json_envelope(run_g4, model, media_dir) -> None:
    r = run_g4("chat", model, "What is this?", "--image", media_dir["alpha"], "-n", "5", "--json", "--seed", "7")
    assert r.returncode == 0, r.err
    doc = json.loads(r.stdout)
    assert set(doc) >= {"model", "response", "thinking", "tokens", "timings", "attachments"}
    assert doc["attachments"][0]["kind"] == "image" and len(doc["attachments"][0]["sha256"]) == 64
    assert doc["tokens"]["prompt"] > 130 and doc["timings"]["time_to_first_token_s"] > 0
    _clean(r.stdout)


def test_attachment_from_stdin(run_g4, model, media_dir) -> None:
    r = run_g4("chat", model, "Transcribe", "--audio", "-", "-n", "3", "--json", input=media_dir["speech"].read_bytes())
    assert r.returncode == 0, r.err
    doc = json.loads(r.stdout)
    assert doc["attachments"][0]["path"] == "<stdin>" and doc["tokens"]["prompt"] > 100


def test_default_model_is_used_when_only_a_prompt_is_given(run_g4, model) -> None:
    r = run_g4("chat", "Say hi", "-n", "3", "--json", env={"G4_MODEL": str(model)})
    assert r.returncode == 0, r.err
    assert json.loads(r.stdout)["model"] == str(model)


def test_thinking_goes_to_stderr_only(run_g4, model) -> None:
    r = run_g4("chat", model, "Think about it", "--think", "-n", "6", "--temp", "0")
    assert r.returncode == 0
    assert "<|channel>" not in r.out and "thought" not in r.out.split("\n")[0][:8]


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["chat", "e4b", "hi"], 1, "g4 pull e4b"),
        (["chat", "MODEL", "hi", "--ctx", "0"], 2, "--ctx 0 is too small"),
        (["chat", "MODEL", "hi", "--temp", "-1"], 2, "--temp must be >= 0"),
        (["chat", "MODEL", "hi", "--image", "/nonexistent/cat.png"], 1, "/nonexistent/cat.png: no such file"),
        (["chat", "MODEL", "hi", "--image", "ALPHA_DIR"], 1, "is a directory"),
        (["chat", "MODEL31", "hi", "--audio", "SPEECH"], 1, "cannot take audio"),
        (["chat", "CORRUPT", "hi"], 1, "cannot load the model"),
    ],
    ids=["not-pulled", "ctx-0", "negative-temp", "missing-attachment", "directory", "audio-no-encoder", "corrupt"],
)
def test_bad_input_is_one_line_with_the_right_exit_code(run_g4, gguf, media_dir, tmp_path, args, code, message):
    corrupt = tmp_path / "corrupt.gguf"
    corrupt.write_bytes(b"GGUF\x03\x00\x00\x00" + os.urandom(4000))
    subs = {
        "MODEL": str(gguf("e2b", "Q8_0")),
        "MODEL31": str(gguf("31b", "Q8_0")),
        "CORRUPT": str(corrupt),
        "ALPHA_DIR": str(media_dir["alpha"].parent),
        "SPEECH": str(media_dir["speech"]),
    }
    r = run_g4(*[subs.get(a, a) for a in args])
    assert r.returncode == code, r.err
    assert len(r.err_lines) == 1 and r.err_lines[0].startswith("Error: "), r.err
    assert message in r.err_lines[0]
    assert r.stdout == b""


def test_ctrl_c_during_an_answer_exits_130(gguf, tmp_path: Path, tiny) -> None:
    from quantize.converter import convert

    endless = tmp_path / "endless.gguf"
    convert(tiny("e2b", endless=True), endless, quant="Q8_0", mmproj_type=None)
    proc = subprocess.Popen(
        [*g4_executable(), "chat", str(endless), "Tell me everything", "--temp", "0", "-n", "100000", "--ctx", "8192"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        env=_env(),
    )
    first = proc.stdout.read(1)  # the answer has started streaming
    assert first
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err.decode()
    _clean(first + out)
    assert b"Traceback" not in err


def test_doctor_checks_the_install_end_to_end(run_g4) -> None:
    r = run_g4("doctor", env=_env())
    assert r.returncode == 0, r.out + r.err
    _clean(r.stdout)
    lines = r.out.splitlines()
    for name in ("llama.cpp", "checkpoint", "convert + quantize", "chat", "microphone", "disk and memory"):
        assert any(line.startswith("ok") and name in line for line in lines), (name, lines)
    assert "prompt tokens" in r.out and "Q4_K_M" in r.out


def test_shell_completion_offers_commands_and_options() -> None:
    env = _env({"_G4_COMPLETE": "complete_bash", "COMP_WORDS": "g4 ch", "COMP_CWORD": "1"})
    proc = subprocess.run([*g4_executable(), "ch"], env=env, capture_output=True, stdin=subprocess.DEVNULL)
    assert "chat" in proc.stdout.decode().split()
    env.update({"COMP_WORDS": "g4 chat --ma", "COMP_CWORD": "2"})
    proc = subprocess.run([*g4_executable()], env=env, capture_output=True, stdin=subprocess.DEVNULL)
    assert "--max-tokens" in proc.stdout.decode().split() and "--max-seconds" in proc.stdout.decode().split()


def test_schema_and_format_json_give_valid_json_every_time(run_g4, gguf, tmp_path: Path) -> None:
    import jsonschema

    schema = {
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 10}, "sunny": {"type": "boolean"}},
        "required": ["city", "sunny"],
        "additionalProperties": False,
    }
    path = tmp_path / "schema.json"
    path.write_text(json.dumps(schema))
    model = gguf("31b", "Q8_0")
    for seed in range(4):  # sampled, not only greedy
        r = run_g4("chat", model, "The weather?", "--schema", path, "--seed", seed, "-n", "120", input=b"")
        assert r.returncode == 0, r.err
        jsonschema.validate(json.loads(r.stdout), schema)
    inline = run_g4("chat", model, "The weather?", "--schema", json.dumps(schema), "--temp", "0", "-n", "120")
    jsonschema.validate(json.loads(inline.stdout), schema)
    bad = run_g4("chat", model, "x", "--schema", '{"type": "string", "pattern": "a"}')
    assert bad.returncode == 2 and "pattern" in bad.err_lines[0]
    both = run_g4("chat", model, "x", "--format", "json", "--think")
    assert both.returncode == 2 and "--think" in both.err_lines[0]
