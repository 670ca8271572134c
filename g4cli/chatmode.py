"""Chat options, model loading, and one-shot / pipe mode (answer once, exit)."""

from __future__ import annotations

import json
import resource
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from g4cli.conversation import Sampling, Stats
from g4cli.errors import UsageError


@dataclass
class Options:
    image: list[str] = field(default_factory=list)
    audio: list[str] = field(default_factory=list)
    mic: bool = False
    system: str | None = None
    think: bool = False
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    repeat_penalty: float | None = None
    seed: int | None = None
    max_tokens: int | None = None
    ctx: int | None = None
    gpu_layers: int = 0
    threads: int | None = None
    mmproj: Path | None = None
    json: bool = False
    verbose: bool = False
    input_device: str | None = None
    silence: float = 1.5
    max_seconds: float = 30.0
    save_audio: Path | None = None
    history: bool = True

    def validate(self) -> None:
        """Usage errors, each one line and exit 2, before anything loads."""
        checks = [
            (self.temperature is not None and self.temperature < 0, "--temp must be >= 0"),
            (self.top_p is not None and not 0 < self.top_p <= 1, "--top-p must be in (0, 1]"),
            (self.top_k is not None and self.top_k < 0, "--top-k must be >= 0"),
            (self.min_p is not None and not 0 <= self.min_p <= 1, "--min-p must be in [0, 1]"),
            (self.repeat_penalty is not None and self.repeat_penalty <= 0, "--repeat-penalty must be > 0"),
            (self.max_tokens is not None and self.max_tokens < 1, "--max-tokens must be >= 1"),
            (self.ctx is not None and self.ctx < 64, f"--ctx {self.ctx} is too small (at least 64 tokens)"),
            (self.gpu_layers < 0, "--gpu-layers must be >= 0"),
            (self.silence <= 0, "--silence must be > 0"),
            (self.max_seconds <= 0, "--max-seconds must be > 0"),
            ([*self.image, *self.audio].count("-") > 1, "only one attachment can come from stdin (-)"),
        ]
        for bad, message in checks:
            if bad:
                raise UsageError(message)

    def sampling(self) -> Sampling:
        s = Sampling(think=self.think, seed=self.seed, max_tokens=self.max_tokens)
        for name in ("temperature", "top_p", "top_k", "min_p", "repeat_penalty"):
            value = getattr(self, name)
            if value is not None:
                setattr(s, name, value)
        return s


@contextmanager
def loaded(name: str | None, opts: Options, *, needs: set[str] | None = None) -> Iterator[tuple[Any, Any]]:
    """(choice, Model): resolve the model, check capabilities from the headers, then load it.

    The model is held (a shared lock) while loaded, so ``g4 rm`` cannot delete it meanwhile.
    """
    from g4cli.choose import choose
    from g4cli.runtime import projector_capabilities, require

    choice = choose(name, opts.mmproj)
    caps = projector_capabilities(choice.mmproj)
    for need in sorted(needs or ()):
        require(need, caps, choice.name, choice.mmproj)  # from the headers, before anything loads
    from g4cli import render, store
    from g4cli.runtime import Model

    hold = store.using(choice.entry) if choice.entry is not None else _nothing()
    with hold:
        status = render.err_console().status("loading model…") if render.stderr_is_tty() else _nothing()
        with status:
            model = Model(
                choice.gguf,
                choice.mmproj,
                n_ctx=opts.ctx,
                n_threads=opts.threads,
                n_gpu_layers=opts.gpu_layers,
            )
        try:
            yield choice, model
        finally:
            model.close()


@contextmanager
def _nothing() -> Iterator[None]:
    yield


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def print_stats(stats: Stats) -> None:
    from g4cli.render import info

    info(
        f"[dim]load {stats.load_s:.2f} s · prompt {stats.prompt_tokens} tokens "
        f"({stats.prompt_eval_tokens} evaluated, {stats.prompt_tps:.1f} tok/s) · "
        f"answer {stats.gen_tokens} tokens ({stats.gen_tps:.1f} tok/s) · "
        f"first token {stats.ttft_s * 1000:.0f} ms · peak memory {peak_rss_mb():.0f} MB[/]"
    )


def _stdin_text(opts: Options) -> str | None:
    if sys.stdin.isatty() or "-" in (*opts.image, *opts.audio):
        return None
    data = sys.stdin.buffer.read()
    return data.decode("utf-8", "replace") if data else None


def one_shot(name: str | None, prompt: str | None, opts: Options) -> None:
    """Answer once: piped stdin before PROMPT, the answer alone on stdout."""
    from g4cli import media
    from g4cli.session import Answer, Session

    stdin_data = sys.stdin.buffer.read() if "-" in (*opts.image, *opts.audio) and not sys.stdin.isatty() else None
    attachments = [media.load(p, "image", stdin=stdin_data) for p in opts.image]
    attachments += [media.load(p, "audio", stdin=stdin_data) for p in opts.audio]
    piped = _stdin_text(opts)
    text = "\n\n".join(part for part in (piped, prompt) if part)
    needs = {"vision" if m.kind == "image" else "audio" for m in attachments} | ({"audio"} if opts.mic else set())
    if not text and not attachments and not opts.mic:
        raise UsageError("nothing to answer: give a PROMPT, pipe text in, or attach a file")
    with loaded(name, opts, needs=needs) as (choice, model):
        session = Session(model, system=opts.system, sampling=opts.sampling())
        for m in attachments:
            session.attach_media(m)
        if opts.mic:
            from g4cli import mic

            session.attach_media(mic.record_for_chat(opts))
        if opts.json:
            answer = Answer()
            for _ in session.send(text, answer):
                pass
            print_json(choice.name, answer, session)
        else:
            from g4cli.render import warn

            answer = show_answer(session, text, show_thoughts=opts.think, notice=warn)
        if opts.verbose:
            print_stats(answer.stats)


class _Spinner:
    """A spinner on stderr until the first token (only when stderr is a terminal)."""

    def __init__(self) -> None:
        from g4cli.render import err_console, stderr_is_tty

        self._status = err_console().status("thinking…") if stderr_is_tty() else None
        if self._status is not None:
            self._status.start()

    def stop(self) -> None:
        if self._status is not None:
            self._status.stop()
            self._status = None


def show_answer(session: Any, text: str, *, show_thoughts: bool, notice: Callable[[str], None]) -> Any:
    """Send ``text`` and show the answer as it streams: a spinner until the first token, the
    answer on stdout, thinking on stderr. Returns the ``Answer`` (also after Ctrl-C, which
    propagates once the screen is tidy and the partial answer is recorded)."""
    from g4cli.answer import AnswerPrinter, ThoughtPrinter
    from g4cli.session import Answer

    out, thoughts = AnswerPrinter(), ThoughtPrinter()
    answer = Answer()
    spinner = None
    stream = session.send(text, answer)
    try:
        spinner = _Spinner()
        for ev in stream:
            spinner.stop()
            if ev.kind == "text":
                thoughts.close()
                out.feed(ev.text)
            elif ev.kind == "thought" and show_thoughts:
                thoughts.feed(ev.text)
            elif ev.kind == "notice":
                notice(ev.text)
    finally:
        stream.close()  # an interrupted answer is recorded now, not when garbage-collected
        if spinner is not None:
            spinner.stop()
        thoughts.close()
        out.close()
    return answer


def print_json(model_name: str, answer: Any, session: Any) -> None:
    last = session.turns[-2] if len(session.turns) >= 2 else None
    doc = {
        "model": model_name,
        "response": answer.text,
        "thinking": answer.thought or None,
        "finish_reason": answer.finish,
        "tokens": {"prompt": answer.stats.prompt_tokens, "generated": answer.stats.gen_tokens},
        "timings": {**answer.stats.as_dict(), "peak_memory_mb": round(peak_rss_mb(), 1)},
        "attachments": [{"kind": m.kind, "path": m.name, "sha256": m.sha256} for m in (last.media if last else [])],
        "created": round(time.time(), 3),
    }
    sys.stdout.write(json.dumps(doc, ensure_ascii=False) + "\n")
    sys.stdout.flush()
