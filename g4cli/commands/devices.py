"""``g4 devices``: the audio input devices the microphone can use."""

from __future__ import annotations

from g4cli.options import JsonOpt


def devices(json_out: JsonOpt = False) -> None:
    """List audio input devices (for g4 chat --mic --input-device NAME|INDEX).

    Examples:

    \b
      g4 devices
      g4 devices --json
    """
    import json

    from g4cli.chat.mic import input_devices
    from g4cli.render import info, out

    found = input_devices()
    if json_out:
        out(json.dumps(found, indent=2) + "\n")
        return
    if not found:
        info("no audio input device")
        return
    for d in found:
        mark = "*" if d["default"] else " "
        rate = f"{d['default_samplerate']:.0f} Hz"
        out(f"{mark} {d['index']:>3}  {d['name']}  ({d['channels']} ch, {rate}, {d['hostapi']})\n")
