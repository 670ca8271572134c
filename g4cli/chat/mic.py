"""The microphone: record one utterance with sounddevice (PortAudio) -> 16 kHz mono float32.

Recording runs at the device's own rate and channel count; libsoxr converts afterwards. It
stops when Enter is pressed (on a terminal), after ``silence`` seconds of quiet once speech was
heard (energy-based: the noise floor is the quiet end of the first 0.3 s, lowered
whenever the room gets quieter), or at ``max_seconds``.
A level meter and the elapsed time are drawn on stderr; Ctrl-C cancels (nothing is sent).
"""

from __future__ import annotations

import queue
import select
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from g4cli.errors import AudioDeviceError

if TYPE_CHECKING:
    from g4cli.chat.media import Media
    from g4cli.chat.settings import MicOptions

FRAME_S = 0.02  # VAD frames of 20 ms
CALIBRATE_S = 0.3
SPEECH_MIN_S = 0.1  # this much voice before silence can end the recording
ABS_FLOOR = 2e-3  # below this RMS nothing counts as speech (digital silence, hiss)
FLOOR_FACTOR = 4.0


def _sd() -> Any:
    try:
        import sounddevice
    except OSError as e:  # the PortAudio library itself is missing
        raise AudioDeviceError(
            f"PortAudio is not available ({e})", hint="install it: apt install libportaudio2"
        ) from None
    return sounddevice


def input_devices() -> list[dict[str, Any]]:
    """Input-capable devices: index, name, channels, default rate, host API, default flag."""
    sd = _sd()
    try:
        devices = sd.query_devices()
        default_in = sd.default.device[0]
        apis = sd.query_hostapis()
    except sd.PortAudioError as e:
        raise AudioDeviceError(f"PortAudio cannot list audio devices ({e})") from None
    return [
        {
            "index": d["index"],
            "name": d["name"],
            "channels": d["max_input_channels"],
            "default_samplerate": d["default_samplerate"],
            "hostapi": apis[d["hostapi"]]["name"],
            "default": d["index"] == default_in,
        }
        for d in devices
        if d["max_input_channels"] > 0
    ]


def pick_device(spec: str | None) -> dict[str, Any]:
    """The device for ``--input-device`` (an index or a name, exact or unique substring)."""
    devices = input_devices()
    if not devices:
        raise AudioDeviceError("no audio input device", hint="connect a microphone; g4 devices lists them")
    if spec is None:
        chosen = [d for d in devices if d["default"]] or devices[:1]
        return chosen[0]
    if spec.isdigit():
        found = [d for d in devices if d["index"] == int(spec)]
    else:
        found = [d for d in devices if d["name"] == spec] or [d for d in devices if spec.lower() in d["name"].lower()]
    if len(found) != 1:
        names = ", ".join(f"{d['index']}: {d['name']}" for d in devices)
        what = "matches several" if found else "matches no"
        raise AudioDeviceError(f"--input-device {spec!r} {what} input device ({names})")
    return found[0]


@dataclass
class Recording:
    pcm: np.ndarray  # 16 kHz mono float32
    seconds: float
    stopped_by: str  # "silence", "enter", "limit"
    device: str
    rate: int
    channels: int


class Meter:
    """``● 00:03.2 ▁▃▅▇█▅▃`` on stderr (a terminal), or one plain line otherwise."""

    BARS = " ▁▂▃▄▅▆▇█"

    def __init__(self, hint: str) -> None:
        from g4cli.render import colors_ok

        self.tty = sys.stderr.isatty()
        self.color = colors_ok(sys.stderr)
        self.levels: list[float] = []
        self.hint = hint
        self._last = 0.0
        self._announced = False

    def update(self, elapsed: float, rms: float, speaking: bool) -> None:
        if not self.tty:
            if not self._announced:  # once the device delivers sound: "speak now"
                self._announced = True
                sys.stderr.write(f"recording… ({self.hint})\n")
                sys.stderr.flush()
            return
        self.levels = [*self.levels, rms][-24:]
        now = time.monotonic()
        if now - self._last < 0.05:
            return
        self._last = now
        bars = "".join(self.BARS[min(8, int(np.sqrt(min(level, 0.5) / 0.5) * 8))] for level in self.levels)
        dot = ("\x1b[31m●\x1b[0m" if self.color else "●") if speaking else "○"
        sys.stderr.write(f"\r{dot} {int(elapsed // 60):02d}:{elapsed % 60:04.1f} {bars:<24} {self.hint}\x1b[K")
        sys.stderr.flush()

    def close(self) -> None:
        if self.tty:
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()


def _enter_pressed() -> bool:
    """A line typed on the terminal (non-blocking); never reads a pipe (it may be the prompt)."""
    if not sys.stdin.isatty():
        return False
    ready, _, _ = select.select([sys.stdin], [], [], 0)
    if ready:
        sys.stdin.readline()
        return True
    return False


class VoiceDetector:
    """Energy-based voice detection in 20 ms frames: the noise floor is the quiet end of the first
    0.3 s (voice already there counts as voice), lowered whenever the room gets quieter; ``done``
    once ``silence`` seconds of quiet follow at least 0.1 s of voice."""

    def __init__(self, rate: int, silence: float) -> None:
        self.frame = max(1, int(rate * FRAME_S))
        self.silence = silence
        self.pending: np.ndarray | None = None
        self.frame_rms: list[float] = []
        self.floor: float | None = None
        self.voiced_s = self.quiet_s = 0.0

    @property
    def done(self) -> bool:
        return self.voiced_s >= SPEECH_MIN_S and self.quiet_s >= self.silence

    def feed(self, block: np.ndarray) -> list[tuple[float, bool]]:
        """(rms, speaking) for every whole frame in ``block`` (frames: (n, channels) float32)."""
        pending = block if self.pending is None else np.concatenate([self.pending, block])
        levels = []
        while len(pending) >= self.frame:
            f, pending = pending[: self.frame], pending[self.frame :]
            rms = float(np.sqrt(np.mean(np.square(f.mean(axis=1)))))
            self.frame_rms.append(rms)
            if self.floor is None:
                if len(self.frame_rms) * FRAME_S >= CALIBRATE_S:
                    self.floor = float(np.percentile(self.frame_rms, 10))
                    threshold = max(ABS_FLOOR, self.floor * FLOOR_FACTOR)
                    self.voiced_s = FRAME_S * sum(r > threshold for r in self.frame_rms)
                continue
            self.floor = min(self.floor, rms) if rms > 0 else self.floor  # a quieter room lowers the bar
            speaking = rms > max(ABS_FLOOR, self.floor * FLOOR_FACTOR)
            if speaking:
                self.voiced_s += FRAME_S
                self.quiet_s = 0.0
            elif self.voiced_s >= SPEECH_MIN_S:
                self.quiet_s += FRAME_S
            levels.append((rms, speaking))
        self.pending = pending
        return levels


def record(
    device: str | None = None,
    *,
    max_seconds: float = 30.0,
    silence: float = 1.5,
    on_level: Callable[[float, float, bool], None] | None = None,
) -> Recording:
    """Record one utterance (see the module docstring for when it stops)."""
    sd = _sd()
    info = pick_device(device)
    rate = int(info["default_samplerate"]) or 48000
    channels = max(1, min(2, int(info["channels"])))  # plug-in devices claim 32 channels
    blocks: queue.Queue[np.ndarray] = queue.Queue()

    def callback(indata: np.ndarray, frames: int, t: Any, status: Any) -> None:
        blocks.put(indata.copy())  # an overflow (status) loses a block at worst: keep going

    vad = VoiceDetector(rate, silence)
    chunks: list[np.ndarray] = []
    stopped_by = "limit"
    total = 0
    try:
        stream = sd.InputStream(
            device=info["index"], samplerate=rate, channels=channels, dtype="float32", callback=callback
        )
    except (sd.PortAudioError, ValueError) as e:
        raise AudioDeviceError(f"cannot open input device {info['name']!r} ({e})") from None
    with stream:
        started = time.monotonic()
        while True:
            try:
                block = blocks.get(timeout=2.0)
            except queue.Empty:
                raise AudioDeviceError(f"input device {info['name']!r} stopped delivering audio") from None
            if not stream.active and blocks.empty():
                raise AudioDeviceError(f"input device {info['name']!r} failed while recording")
            chunks.append(block)
            total += len(block)
            for rms, speaking in vad.feed(block):
                if on_level:
                    on_level(total / rate, rms, speaking)
            if vad.done:
                stopped_by = "silence"
                break
            if total / rate >= max_seconds:
                break
            if _enter_pressed():
                stopped_by = "enter"
                break
            if time.monotonic() - started > max_seconds + 10:
                raise AudioDeviceError(f"input device {info['name']!r} is not keeping time")
    if not chunks:
        raise AudioDeviceError(f"input device {info['name']!r} recorded nothing")
    raw = np.concatenate(chunks)[: int(max_seconds * rate)]
    from g4cli.chat.media import to_16k_mono

    pcm = to_16k_mono(raw, rate)
    return Recording(pcm, len(raw) / rate, stopped_by, info["name"], rate, channels)


def save_wav(path: Path, pcm: np.ndarray) -> None:
    import soundfile

    from g4cli.fsutil import atomic_output

    path = Path(path).expanduser()
    with atomic_output(path, error=AudioDeviceError) as tmp:
        try:
            soundfile.write(tmp, pcm, 16000, subtype="PCM_16", format="WAV")
        except RuntimeError as e:  # libsndfile's own errors
            raise AudioDeviceError(f"{path}: cannot save the recording ({e})") from None


def record_for_chat(opts: MicOptions) -> Media:
    """Record per the chat's microphone options (checked by ``MicOptions.validate``); returns a
    Media attachment (and saves the recording if asked)."""
    from g4cli.chat.media import from_pcm

    hint = "Enter or a pause stops · Ctrl-C cancels" if sys.stdin.isatty() else "a pause stops · Ctrl-C cancels"
    meter = Meter(hint)
    try:
        rec = record(opts.input_device, max_seconds=opts.max_seconds, silence=opts.silence, on_level=meter.update)
    finally:
        meter.close()
    if opts.save_audio:
        save_wav(opts.save_audio, rec.pcm)
    from g4cli.render import info

    info(
        f"[dim]recorded {rec.seconds:.1f} s from {rec.device} "
        f"({rec.rate} Hz, {rec.channels} ch; stopped by {rec.stopped_by})[/]"
    )
    return from_pcm("microphone", rec.pcm)
