"""A private PulseAudio server for microphone tests: null sinks whose monitors are capture
devices, reached by PortAudio through ALSA's pulse plugin (PULSE_SERVER selects this server)."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Pulse:
    socket: Path
    process: subprocess.Popen

    @property
    def env(self) -> dict[str, str]:
        return {"PULSE_SERVER": f"unix:{self.socket}"}

    def play(self, wav: Path, sink: str = "g4mic") -> subprocess.Popen:
        env = {**os.environ, **self.env, "PULSE_SINK": sink}
        return subprocess.Popen(["paplay", "--device", sink, str(wav)], env=env, stderr=subprocess.PIPE)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()


def start(directory: Path) -> Pulse:
    """Start ``pulseaudio`` with a 48 kHz stereo null sink (default source: its monitor) and a
    16 kHz mono one; return once it answers."""
    if not shutil.which("pulseaudio"):
        raise RuntimeError("pulseaudio is not installed (apt install pulseaudio)")
    runtime = directory / "runtime"
    runtime.mkdir(parents=True, exist_ok=True)
    socket = directory / "native"
    env = {**os.environ, "XDG_RUNTIME_DIR": str(runtime), "HOME": str(directory)}
    cmd = [
        "pulseaudio", "--daemonize=no", "-n", "--exit-idle-time=-1", "--disable-shm=yes",
        f"--load=module-native-protocol-unix socket={socket} auth-anonymous=1",
        "--load=module-null-sink sink_name=g4mic rate=48000 channels=2",
        "--load=module-null-sink sink_name=g4mono rate=16000 channels=1",
        "--log-target=stderr", "--log-level=error",
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    pulse = Pulse(socket, proc)
    check_env = {**os.environ, **pulse.env}
    for _ in range(100):
        if proc.poll() is not None:
            raise RuntimeError(f"pulseaudio exited: {proc.stderr.read().decode()}")
        ok = subprocess.run(["pactl", "info"], env=check_env, capture_output=True).returncode == 0
        if ok:
            subprocess.run(["pactl", "set-default-sink", "g4mic"], env=check_env, check=True)
            subprocess.run(["pactl", "set-default-source", "g4mic.monitor"], env=check_env, check=True)
            return pulse
        time.sleep(0.1)
    pulse.stop()
    raise RuntimeError("pulseaudio did not come up")
