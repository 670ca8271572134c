"""A conversation: turns with text and attachments, sampling settings, and streamed events."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from g4cli.media import Media

IMAGE_PLACEHOLDER = "<|image|>"  # what Gemma 4's chat template emits for an image part
AUDIO_PLACEHOLDER = "<|audio|>"
PLACEHOLDERS = (IMAGE_PLACEHOLDER, AUDIO_PLACEHOLDER, "<|video|>")


@dataclass
class Turn:
    role: Literal["system", "user", "assistant"]
    text: str = ""
    media: list[Media] = field(default_factory=list)
    thought: str | None = None  # the assistant's thinking, kept for display; never re-sent


@dataclass
class Sampling:
    """Gemma 4's recommended defaults: temperature 1.0, top-k 64, top-p 0.95."""

    temperature: float = 1.0
    top_p: float = 0.95
    top_k: int = 64
    min_p: float = 0.0
    repeat_penalty: float = 1.0
    seed: int | None = None
    max_tokens: int | None = None
    think: bool = False


@dataclass
class Stats:
    load_s: float = 0.0
    prompt_tokens: int = 0  # in the prompt
    prompt_eval_tokens: int = 0  # evaluated this turn (the rest came from the KV cache)
    prompt_s: float = 0.0
    gen_tokens: int = 0
    gen_s: float = 0.0
    ttft_s: float = 0.0
    dropped_turns: int = 0

    @property
    def prompt_tps(self) -> float:
        return self.prompt_eval_tokens / self.prompt_s if self.prompt_s > 0 else 0.0

    @property
    def gen_tps(self) -> float:
        return (self.gen_tokens - 1) / self.gen_s if self.gen_s > 0 and self.gen_tokens > 1 else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "load_s": round(self.load_s, 4),
            "prompt_tokens": self.prompt_tokens,
            "prompt_eval_tokens": self.prompt_eval_tokens,
            "prompt_s": round(self.prompt_s, 4),
            "prompt_tokens_per_s": round(self.prompt_tps, 2),
            "generated_tokens": self.gen_tokens,
            "generation_s": round(self.gen_s, 4),
            "generation_tokens_per_s": round(self.gen_tps, 2),
            "time_to_first_token_s": round(self.ttft_s, 4),
            "dropped_turns": self.dropped_turns,
        }


@dataclass
class Event:
    """One piece of a streamed answer: answer text, thinking text, a notice, or the end."""

    kind: Literal["text", "thought", "notice", "done"]
    text: str = ""
    finish: str | None = None  # "stop", "length" (max tokens), "context" (context full)
    stats: Stats | None = None


def escape_placeholders(text: str) -> str:
    """Keep typed text from posing as a media slot (a zero-width joiner breaks the pattern)."""
    for p in PLACEHOLDERS:
        text = text.replace(p, p[:-1] + "\u2060" + p[-1])
    return text


def to_template_messages(turns: list[Turn]) -> list[dict[str, Any]]:
    """Turns -> the messages a Hugging Face chat template expects (content parts for media)."""
    out: list[dict[str, Any]] = []
    for t in turns:
        text = escape_placeholders(t.text)
        if not t.media:
            out.append({"role": t.role, "content": text})
            continue
        parts: list[dict[str, Any]] = [{"type": m.kind} for m in t.media]
        if text:
            parts.append({"type": "text", "text": text})
        out.append({"role": t.role, "content": parts})
    return out
