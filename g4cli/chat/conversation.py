"""A conversation: turns with text and attachments, streamed events, and what a model must do.

``ChatModel`` is the seam between a ``Session`` and a model: ``g4cli.chat.runtime.model.Model``
is the real one; tests also use a scripted fake.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

from g4cli.chat.media import Media

if TYPE_CHECKING:
    from g4cli.chat.settings import Sampling

IMAGE_PLACEHOLDER = "<|image|>"  # what Gemma 4's chat template emits for an image part
AUDIO_PLACEHOLDER = "<|audio|>"
PLACEHOLDERS = (IMAGE_PLACEHOLDER, AUDIO_PLACEHOLDER, "<|video|>")


@dataclass
class Turn:
    role: Literal["system", "user", "assistant", "tool"]
    text: str = ""
    media: list[Media] = field(default_factory=list)
    # the assistant's thinking, kept for display; re-sent only with tool calls (the template
    # keeps it on the tool-call turns after the last user turn, as Gemma 4 expects)
    thought: str | None = None
    # assistant: the calls it made, OpenAI form ({"id", "function": {"name", "arguments"}},
    # arguments a JSON string or, from Ollama, an object)
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None  # tool: the call this result answers
    name: str | None = None  # tool: the function that was called


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
    interrupted: bool = False  # the answer was stopped (Ctrl-C, a closed stream) before it ended
    drafting: bool = False  # an assistant drafter proposed tokens (g4cli/chat/runtime/speculate.py)
    draft_tokens: int = 0  # proposed
    draft_accepted: int = 0  # proposed and kept
    plain_tps: float = 0.0  # --draft auto: this answer's plain rounds, timed (speculate.Pace)
    drafted_tps: float = 0.0  # and its drafted rounds
    draft_paused: bool = False  # drafting measured slower than plain decoding here: stopped

    @property
    def acceptance(self) -> float:
        return self.draft_accepted / self.draft_tokens if self.draft_tokens else 0.0

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
            "interrupted": self.interrupted,
            **(self.draft_dict() if self.drafting else {}),
        }

    def draft_dict(self) -> dict[str, Any]:
        return {
            "draft_tokens": self.draft_tokens,
            "draft_accepted": self.draft_accepted,
            "draft_acceptance": round(self.acceptance, 4),
            **({"plain_tokens_per_s": round(self.plain_tps, 2)} if self.plain_tps else {}),
            **({"drafted_tokens_per_s": round(self.drafted_tps, 2)} if self.drafted_tps else {}),
            "draft_paused": self.draft_paused,
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
    """Turns -> the messages a Hugging Face chat template expects (content parts for media).

    Gemma 4's template also reads an assistant message's ``tool_calls`` (``id``,
    ``function.name``, ``function.arguments``: a mapping it formats itself, a string it copies
    verbatim between the braces) and ``reasoning_content``; and of each ``tool`` message that
    follows it, ``tool_call_id`` (matched to a call's ``id``, whose name it takes), ``name`` (the
    fallback) and ``content`` (a string).
    """
    out: list[dict[str, Any]] = []
    pending: list[dict[str, Any]] = []  # calls of the last assistant turn no result answered yet
    for k, t in enumerate(turns):
        text = escape_placeholders(t.text)
        if t.role == "tool":
            out.append(_tool_result(t, text, pending))
            continue
        msg: dict[str, Any] = {"role": t.role, "content": text}
        if t.media:
            parts: list[dict[str, Any]] = [{"type": m.kind} for m in t.media]
            msg["content"] = [*parts, {"type": "text", "text": text}] if text else parts
        pending = []
        if t.tool_calls:
            msg["tool_calls"] = [_template_call(c, f"call_{k}_{j}") for j, c in enumerate(t.tool_calls)]
            pending = list(msg["tool_calls"])
            if t.thought:
                msg["reasoning_content"] = t.thought
        out.append(msg)
    return out


def _template_call(call: dict[str, Any], fallback_id: str) -> dict[str, Any]:
    """A call as the template reads it: JSON arguments as a mapping (the template writes them in
    Gemma 4's syntax); an id for every call, so that results can be matched to it."""
    fn = call.get("function") if isinstance(call, dict) else None
    fn = fn if isinstance(fn, dict) else {}
    args = fn.get("arguments")
    if isinstance(args, str):
        try:
            parsed = json.loads(args)
        except ValueError:
            parsed = None
        args = parsed if isinstance(parsed, dict) else args
    elif not isinstance(args, dict):
        args = {}
    cid = call.get("id") if isinstance(call, dict) else None
    return {
        "id": cid if isinstance(cid, str) and cid else fallback_id,
        "type": "function",
        "function": {"name": str(fn.get("name") or ""), "arguments": args},
    }


def _tool_result(t: Turn, text: str, pending: list[dict[str, Any]]) -> dict[str, Any]:
    """A tool turn, paired with the call it answers: by id, else by function name, else the
    next unanswered call (Ollama sends no ids). Without a pair the template would name the
    response after whichever call has the same missing id, or fail on a missing name."""
    match = next((c for c in pending if t.tool_call_id and c["id"] == t.tool_call_id), None)
    match = match or next((c for c in pending if t.name and c["function"]["name"] == t.name), None)
    match = match or (pending[0] if pending else None)
    if match is not None:
        pending.remove(match)
    return {
        "role": "tool",
        "tool_call_id": match["id"] if match else (t.tool_call_id or ""),
        "name": match["function"]["name"] if match else (t.name or "unknown"),
        "content": text,
    }


THOUGHT_LABEL = "thought\n"  # opens Gemma 4's thinking channel: <|channel>thought\n ... <channel|>


class ChannelSplitter:
    """Turns generated pieces into answer and thinking events.

    Feed it each token as ``(control, data)``: ``control`` is "open" for ``<|channel>``, "close"
    for ``<channel|>``, else None with the token's bytes in ``data`` (UTF-8 may split across
    tokens). The "thought" label after ``<|channel>`` is dropped.
    """

    def __init__(self) -> None:
        import codecs

        self.mode: Literal["text", "thought"] = "text"
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._label: str | None = None  # text held back while it may still be the label

    def feed(self, control: str | None, data: bytes = b"") -> list[Event]:
        out: list[Event] = []
        if control == "open":
            out += self._flush()
            self.mode, self._label = "thought", ""
            return out
        if control == "close":
            out += self._flush()
            self.mode = "text"
            return out
        text = self._decoder.decode(data)
        if self._label is not None:
            self._label += text
            if len(self._label) < len(THOUGHT_LABEL) and THOUGHT_LABEL.startswith(self._label):
                return out
            text, self._label = self._label.removeprefix(THOUGHT_LABEL), None
        if text:
            out.append(Event(self.mode, text))
        return out

    def _flush(self) -> list[Event]:
        if self._label is not None:  # the channel ended while its label was still pending
            text = "" if THOUGHT_LABEL.startswith(self._label) else self._label
            self._label = None
        else:
            text = self._decoder.decode(b"", final=True)
        return [Event(self.mode, text)] if text else []

    def finish(self) -> list[Event]:
        return self._flush()


class ChatModel(Protocol):
    """What a ``Session`` needs from a model."""

    name: str
    n_ctx: int
    capabilities: set[str]

    def require(self, capability: str, detail: str = "") -> None:
        """Raise ``CapabilityError`` unless the model takes ``capability`` ("vision", "audio")."""

    def check_media(self, media: list[Media]) -> None:
        """Raise ``CapabilityError`` for an attachment the model cannot take."""

    def prompt_tokens(self, turns: list[Turn], think: bool = False) -> int:
        """Positions the prompt for these turns would take in the context."""

    def generate(
        self, turns: list[Turn], sampling: Sampling | None = None, stats: Stats | None = None
    ) -> Iterator[Event]:
        """Stream the answer to the last user turn; ``stats`` is filled as it goes."""

    def describe(self) -> dict[str, object]:
        """Architecture facts for ``/show``."""
