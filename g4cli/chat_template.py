"""Render a model's chat template (untrusted Jinja from a download) in jinja2's sandbox."""

from __future__ import annotations

from datetime import datetime
from functools import cache, lru_cache
from typing import Any

from g4cli.errors import RuntimeFailure


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
