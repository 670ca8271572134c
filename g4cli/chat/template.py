"""Render a model's chat template (untrusted Jinja from a download) in jinja2's sandbox."""

from __future__ import annotations

import re
from datetime import datetime
from functools import cache, lru_cache
from typing import TYPE_CHECKING, Any

from g4cli.chat.conversation import PLACEHOLDERS, to_template_messages
from g4cli.errors import RuntimeFailure

if TYPE_CHECKING:
    from g4cli.chat.conversation import Turn

_SLOT = re.compile("|".join(map(re.escape, PLACEHOLDERS)))


@cache
def _environment() -> Any:
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])

    def raise_exception(message: str) -> None:
        raise RuntimeFailure(f"chat template: {message}")

    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env


@lru_cache(maxsize=8)
def compile_template(template: str) -> Any:
    """The compiled template (cached: compiling a large template takes milliseconds)."""
    from jinja2 import TemplateError

    try:
        return _environment().from_string(template)
    except TemplateError as e:
        raise RuntimeFailure(f"chat template cannot be compiled: {e}") from e


def render(
    template: str,
    messages: list[dict[str, Any]],
    *,
    add_generation_prompt: bool = True,
    enable_thinking: bool = False,
    bos_token: str = "<bos>",
    eos_token: str = "<eos>",
    **extra: Any,
) -> str:
    """The prompt text for ``messages``, as transformers' ``apply_chat_template`` renders it."""
    from jinja2 import TemplateError

    try:
        compiled = compile_template(template)
        return compiled.render(
            messages=messages,
            add_generation_prompt=add_generation_prompt,
            enable_thinking=enable_thinking,
            bos_token=bos_token,
            eos_token=eos_token,
            **extra,
        )
    except TemplateError as e:
        raise RuntimeFailure(f"chat template cannot be rendered: {e}") from e


def prompt_text(
    template: str,
    turns: list[Turn],
    *,
    think: bool,
    bos: str,
    marker: str,
    tools: list[dict[str, Any]] | None = None,
) -> str:
    """The prompt for ``turns``, with ``marker`` where each media item goes (one per audio piece);
    ``tools`` (OpenAI function specs) are declared in the system turn when given."""
    extra = {"tools": tools} if tools else {}
    text = render(
        template, to_template_messages(turns), add_generation_prompt=True, enable_thinking=think, bos_token=bos, **extra
    )
    media = [m for t in turns for m in t.media]
    slots = list(_SLOT.finditer(text))
    if len(slots) != len(media):
        raise RuntimeFailure(f"chat template placed {len(slots)} media slots for {len(media)} attachments")
    out, last = [], 0
    for slot, m in zip(slots, media):  # an audio file split in pieces takes one marker a piece
        out += [text[last : slot.start()], marker * max(1, len(m.pieces)) if m.kind == "audio" else marker]
        last = slot.end()
    out.append(text[last:])
    return "".join(out)
