"""``g4 doctor``: is this install working? (No download needed.)"""

from __future__ import annotations


def doctor() -> None:
    """Check the install end to end on a tiny model it makes itself.

    Writes a tiny random Gemma 4 checkpoint, converts and quantizes it with llama.cpp, chats
    with it about an image and an audio clip, and reports llama.cpp's build (CPU features, GPU
    backends), the microphones, free disk and memory. Exit code 1 if any check fails.

    Example:

    \b
      g4 doctor
    """
    import sys

    import typer

    from g4cli import doctor as checks
    from g4cli.render import colors_ok, out

    results = checks.run()
    color = colors_ok(sys.stdout)
    for c in results:
        mark = ("\x1b[32m✓\x1b[0m" if c.ok else "\x1b[31m✗\x1b[0m") if color else ("ok  " if c.ok else "FAIL")
        out(f"{mark} {c.name:<20} {c.detail}\n")
    if not all(c.ok for c in results):
        raise typer.Exit(1)
