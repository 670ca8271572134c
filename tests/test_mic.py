"""The microphone through a real PortAudio input device: a private PulseAudio server with null
sinks; a spoken clip is played into the sink while `g4` records its monitor through
sounddevice -> PortAudio -> ALSA's pulse plugin."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import numpy as np
import pexpect
import pytest
from conftest import g4_executable
from media_files import audio_tokens, read_wav, resample
from pulse import start


@pytest.fixture(scope="module")
def pulse(tmp_path_factory):
    server = start(tmp_path_factory.mktemp("pulse"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def model(gguf) -> Path:
    return gguf("e2b", "Q8_0")


def _spawn(model: Path, pulse, *args: str, extra_env: dict | None = None) -> subprocess.Popen:
    env = {**os.environ, **(pulse.env if pulse else {}), **(extra_env or {})}
    return subprocess.Popen(
        [*g4_executable(), "chat", str(model), "--mic", *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )


def _wait_recording(proc: subprocess.Popen) -> list[str]:
    """Read stderr until the recorder says it hears the device (or the process ends)."""
    lines = []
    while True:
        line = proc.stderr.readline().decode()
        if not line:
            return lines
        lines.append(line)
        if line.startswith("recording…"):
            return lines


def _ncc_after_alignment(recorded: np.ndarray, clip: np.ndarray) -> tuple[float, int]:
    """Best normalised cross-correlation of the clip inside the recording, and where it starts."""
    n = len(clip)
    corr = np.correlate(recorded, clip, mode="valid")
    energy = np.sqrt(np.convolve(recorded**2, np.ones(n), mode="valid"))
    ncc = corr / (energy * np.linalg.norm(clip) + 1e-12)
    lag = int(np.argmax(ncc))
    return float(ncc[lag]), lag


def test_recorded_speech_matches_the_clip_stops_on_silence_and_reaches_the_model(
    model, pulse, media_dir, tmp_path: Path
) -> None:
    saved = tmp_path / "rec.wav"
    proc = _spawn(
        model, pulse, "--silence", "0.5", "--max-seconds", "20", "--save-audio", str(saved), "-n", "3", "--json"
    )
    before = _wait_recording(proc)
    assert before and before[-1].startswith("recording…"), before
    player = pulse.play(media_dir["speech"])
    out, err = proc.communicate(timeout=60)
    player.wait(timeout=10)
    assert proc.returncode == 0, err.decode()
    assert "stopped by silence" in err.decode() and "2 ch" in err.decode()  # the 48 kHz stereo source
    import soundfile

    recorded, rate = soundfile.read(saved, dtype="float32")
    assert rate == 16000
    src, src_rate = read_wav(media_dir["speech"])
    clip = resample(src, src_rate, 16000)
    ncc, lag = _ncc_after_alignment(recorded, clip)
    assert ncc >= 0.9, f"captured audio does not match the clip (ncc {ncc:.3f})"
    # the last audible sample of the clip, and how long after it the recording went on
    voiced = np.flatnonzero(np.abs(clip) > 0.01)
    clip_end = (lag + voiced[-1]) / 16000
    assert len(recorded) / 16000 - clip_end <= 1.0, f"stopped {len(recorded) / 16000 - clip_end:.2f} s after the speech"
    doc = json.loads(out)
    text_only = subprocess.run(
        [*g4_executable(), "chat", str(model), "", "-n", "1", "--json"], capture_output=True, input=b"x"
    )
    base = json.loads(text_only.stdout)["tokens"]["prompt"]
    assert doc["tokens"]["prompt"] - base == audio_tokens(len(recorded)) + 2 - 1  # audio + wrappers; "x" gone


def test_max_seconds_cuts_a_long_recording(model, pulse, media_dir, tmp_path: Path) -> None:
    saved = tmp_path / "cut.wav"
    proc = _spawn(model, pulse, "--max-seconds", "1.5", "--silence", "5", "--save-audio", str(saved), "-n", "1")
    _wait_recording(proc)
    player = pulse.play(media_dir["long"])
    _, err = proc.communicate(timeout=60)
    player.terminate()
    assert proc.returncode == 0, err.decode()
    assert "stopped by limit" in err.decode()
    import soundfile

    info = soundfile.info(saved)
    assert abs(info.duration - 1.5) < 0.05


def test_ctrl_c_cancels_the_recording_and_sends_nothing(model, pulse, tmp_path: Path) -> None:
    saved = tmp_path / "never.wav"
    proc = _spawn(model, pulse, "--save-audio", str(saved))
    _wait_recording(proc)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130
    assert out == b"" and not saved.exists()
    assert b"Traceback" not in err


def test_a_mono_16k_source_works_too(model, pulse, media_dir, tmp_path: Path) -> None:
    saved = tmp_path / "mono.wav"
    proc = _spawn(
        model,
        pulse,
        "--silence",
        "0.5",
        "--save-audio",
        str(saved),
        "-n",
        "1",
        extra_env={"PULSE_SOURCE": "g4mono.monitor"},
    )
    _wait_recording(proc)
    player = pulse.play(media_dir["speech"], sink="g4mono")
    _, err = proc.communicate(timeout=60)
    player.wait(timeout=10)
    assert proc.returncode == 0, err.decode()
    import soundfile

    recorded, _ = soundfile.read(saved, dtype="float32")
    src, src_rate = read_wav(media_dir["speech"])
    assert _ncc_after_alignment(recorded, resample(src, src_rate, 16000))[0] >= 0.9


def test_no_input_device_is_one_line(model, tmp_path: Path) -> None:
    proc = _spawn(model, None, extra_env={"PULSE_SERVER": f"unix:{tmp_path}/no-server"})
    out, err = proc.communicate(timeout=30)
    lines = [line for line in err.decode().splitlines() if line.strip()]
    assert proc.returncode == 1 and out == b""
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "input device" in lines[0], lines


def test_models_without_audio_refuse_before_recording(gguf, pulse) -> None:
    proc = _spawn(gguf("31b", "Q8_0"), pulse)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 1 and "cannot take audio" in err.decode() and "recording" not in err.decode()


def test_mic_in_the_repl_and_a_missing_device_keeps_it_alive(model, pulse, media_dir, tmp_path: Path) -> None:
    exe = g4_executable()
    env = {**os.environ, **pulse.env, "TERM": "xterm-256color", "XDG_STATE_HOME": str(tmp_path)}
    child = pexpect.spawn(exe[0], [*exe[1:], "chat", str(model), "-n", "3", "--silence", "0.5"], env=env, timeout=60)
    child.expect_exact(">>> ")
    child.sendline("/mic what did I say?")
    child.expect_exact("Enter or a pause stops")  # the live meter is drawing
    player = pulse.play(media_dir["speech"])
    child.expect_exact("recorded audio microphone")
    child.expect_exact(">>> ")
    player.wait(timeout=10)
    child.sendline("/mic")
    child.expect_exact("Enter or a pause stops")
    child.sendline("")  # Enter stops it
    child.expect_exact("stopped by enter")
    child.expect_exact(">>> ")
    child.sendline("/bye")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    env["PULSE_SERVER"] = f"unix:{tmp_path}/gone"
    child = pexpect.spawn(exe[0], [*exe[1:], "chat", str(model), "-n", "3"], env=env, timeout=60)
    child.expect_exact(">>> ")
    child.sendline("/mic")
    child.expect_exact("Error: no audio input device")
    child.expect_exact(">>> ")
    child.sendline("still here?")
    child.expect_exact(">>> ")
    child.sendline("/bye")
    child.expect(pexpect.EOF)


def test_a_device_that_fails_mid_recording_is_one_line(model, tmp_path: Path) -> None:
    """The sound server dies while g4 records from it."""
    server = start(tmp_path / "doomed")
    try:
        proc = _spawn(model, server, "--max-seconds", "20")
        _wait_recording(proc)
        server.process.kill()
        out, err = proc.communicate(timeout=60)
    finally:
        server.stop()
    lines = [line for line in err.decode().splitlines() if line.strip()]
    assert proc.returncode == 1 and out == b""
    assert lines[-1].startswith("Error: ") and "input device" in lines[-1], lines
    assert not any("Traceback" in line for line in lines)
