"""One-shot and pipe mode: answer once, the answer alone on stdout, then exit.

When a ``g4 serve`` is reachable and serves the model, the request goes there (the model stays
loaded between calls); otherwise the model is loaded here. Either way the output is the same.
"""

from __future__ import annotations

import sys
from pathlib import Path

from g4cli.chat.media import Media
from g4cli.chat.session import Reply
from g4cli.chat.settings import ChatOptions
from g4cli.errors import UsageError


def _stdin_text(opts: ChatOptions) -> str | None:
    if sys.stdin.isatty() or "-" in (*opts.image, *opts.audio):
        return None
    data = sys.stdin.buffer.read()
    return data.decode("utf-8", "replace") if data else None


def one_shot(name: str | None, prompt: str | None, opts: ChatOptions) -> None:
    """Answer once: piped stdin before PROMPT, the answer alone on stdout."""
    from g4cli.chat import media

    stdin_data = sys.stdin.buffer.read() if "-" in (*opts.image, *opts.audio) and not sys.stdin.isatty() else None
    attachments = [media.load(p, "image", stdin=stdin_data) for p in opts.image]
    attachments += [media.load(p, "audio", stdin=stdin_data) for p in opts.audio]
    piped = _stdin_text(opts)
    text = "\n\n".join(part for part in (piped, prompt) if part)
    if not text and not attachments and not opts.record:
        raise UsageError("nothing to answer: give a PROMPT, pipe text in, or attach a file")
    if not _through_server(name, text, attachments, opts):
        _in_process(name, text, attachments, opts)


def _through_server(name: str | None, text: str, attachments: list[Media], opts: ChatOptions) -> bool:
    """Answer through a running server; False when there is none serving this model."""
    from g4cli.chat import remote
    from g4cli.chat.select import default_name

    if not remote.eligible(opts) or opts.record:  # a recording is answered where it was made
        return False
    name = name or default_name()
    if name is None or name.endswith(".gguf") or Path(name).expanduser().exists():
        return False  # a file is answered where it is
    ep = remote.endpoint()
    if ep is None or not remote.reachable(ep):
        return False
    from g4cli.chat.show import answer_remote

    try:
        answer_remote(ep, name, text, attachments, opts)
    except remote.Unavailable:
        return False
    return True


def _in_process(name: str | None, text: str, attachments: list[Media], opts: ChatOptions) -> None:
    from g4cli.chat.load import loaded
    from g4cli.chat.select import choose
    from g4cli.chat.session import Session
    from g4cli.chat.show import print_json, print_stats, stream_reply

    choice = choose(name, opts.load.mmproj)
    needs = {"vision" if m.kind == "image" else "audio" for m in attachments} | opts.needs
    with loaded(choice, opts.load, needs=needs, verbose=opts.verbose) as model:
        session = Session(model, system=opts.system, sampling=opts.sampling)
        for m in attachments:
            session.attach_media(m)
        if opts.record:
            from g4cli.chat import mic

            session.attach_media(mic.record_for_chat(opts.mic))
        reply = Reply()
        try:
            if opts.json:
                for _ in session.send(text, reply):
                    pass
                print_json(choice.name, reply, [m for t in session.turns[-2:-1] for m in t.media])
            else:
                from g4cli.render import warn

                stream_reply(session, text, reply, show_thoughts=opts.sampling.think, notice=warn)
        finally:
            if opts.verbose:  # also for an answer stopped by Ctrl-C (marked as stopped)
                print_stats(reply.stats)
