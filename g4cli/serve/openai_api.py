"""The OpenAI-compatible API: chat completions (streamed or not), models, audio transcriptions.

Requests become g4 conversations (``Turn``s with media), settings (``Sampling``), tools and a
grammar; answers come back in OpenAI's shapes, with the thought in ``reasoning_content`` and
tool calls parsed from Gemma 4's own syntax.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from g4cli.chat.conversation import Stats, Turn
from g4cli.chat.media import Media
from g4cli.chat.settings import Sampling
from g4cli.serve import media_in
from g4cli.serve.body import BadRequest, Body
from g4cli.serve.engine import GenRequest
from g4cli.serve.stream import Answer, Piece

ROLES = ("system", "developer", "user", "assistant", "tool")
EFFORTS = ("none", "minimal", "low", "medium", "high", "xhigh")


@dataclass
class ChatCall:
    """A parsed chat request: which model, what to generate, how to answer."""

    model: str
    request: GenRequest
    stream: bool = False
    stop: list[str] = field(default_factory=list)
    include_usage: bool = False
    keep_alive: float | None = None


# --- requests ---------------------------------------------------------------------------------


def sampling_from(b: Body, *, max_key: tuple[str, ...] = ("max_completion_tokens", "max_tokens")) -> Sampling:
    """Sampling settings from OpenAI parameters (penalties other than 0 are refused)."""
    s = Sampling()
    for key, attr, lo, hi in (("temperature", "temperature", 0, 2), ("top_p", "top_p", 0, 1), ("min_p", "min_p", 0, 1)):
        value = b.number(key, lo, hi)
        if value is not None:
            setattr(s, attr, value)
    if s.top_p == 0:
        raise BadRequest("top_p must be > 0", param="top_p")
    top_k = b.integer("top_k", 0)
    if top_k is not None:
        s.top_k = top_k
    s.seed = b.get("seed", int)
    for key in max_key:
        if b.has(key):
            s.max_tokens = b.integer(key, 1)
            break
    for key in ("presence_penalty", "frequency_penalty"):
        if b.number(key, -2, 2) not in (None, 0.0):
            raise BadRequest(f"{key} is not supported by g4 serve (use repeat_penalty)", param=key)
    repeat = b.number("repeat_penalty", 0.01, 10)
    if repeat is not None:
        s.repeat_penalty = repeat
    return s


def thinking_from(b: Body) -> bool:
    effort = b.get("reasoning_effort", str)
    if effort is not None and effort not in EFFORTS:
        raise BadRequest(f"reasoning_effort must be one of {', '.join(EFFORTS)}", param="reasoning_effort")
    kwargs = b.sub("chat_template_kwargs")
    enable = kwargs.get("enable_thinking", bool) if kwargs else None
    if enable is not None:
        return enable
    return effort is not None and effort != "none"


def _content(value: Any, where: str, policy: media_in.MediaPolicy) -> tuple[str, list[Media]]:
    """A message's content: a string, or parts (text, image_url, input_audio)."""
    if value is None:
        return "", []
    if isinstance(value, str):
        return value, []
    if not isinstance(value, list):
        raise BadRequest(f"{where} must be a string or a list of content parts", param=where)
    texts, media = [], []
    for i, raw in enumerate(value):
        part = Body(raw, f"{where}[{i}]")
        kind = part.get("type", str, required=True)
        if kind == "text":
            texts.append(part.get("text", str, ""))
        elif kind == "image_url":
            url = part.get("image_url", (dict, str), required=True)
            ref = url if isinstance(url, str) else Body(url, f"{where}[{i}].image_url").get("url", str, required=True)
            media.append(media_in.from_reference(ref, "image", policy, f"{where}[{i}]"))
        elif kind == "input_audio":
            audio = part.sub("input_audio")
            assert audio is not None
            fmt = audio.get("format", str, "wav")
            data = media_in.b64decode(audio.get("data", str, required=True), f"{where}[{i}]", policy.max_bytes)
            from g4cli.chat import media as media_mod

            media.append(media_mod.decode(f"{where}[{i}].{fmt}", data, "audio"))
        else:
            raise BadRequest(f"{where}[{i}].type {kind!r} is not supported (text, image_url, input_audio)")
    return "\n".join(t for t in texts if t), media


def turns_from(messages: list[Any], policy: media_in.MediaPolicy) -> list[Turn]:
    """OpenAI messages -> turns (leading system/developer messages become the system turn)."""
    if not messages:
        raise BadRequest("messages must be a non-empty list", param="messages")
    turns: list[Turn] = []
    for i, raw in enumerate(messages):
        m = Body(raw, f"messages[{i}]")
        role = m.get("role", str, required=True)
        if role not in ROLES:
            raise BadRequest(
                f"messages[{i}].role {role!r} is not one of {', '.join(ROLES)}", param=f"messages[{i}].role"
            )
        text, media = _content(m.data.get("content"), f"messages[{i}].content", policy)
        if role in ("system", "developer"):
            if turns and turns[-1].role != "system":
                raise BadRequest(f"messages[{i}]: system messages must come first", param=f"messages[{i}]")
            if turns:
                turns[-1].text += "\n\n" + text
            else:
                turns.append(Turn("system", text))
            if media:
                raise BadRequest(f"messages[{i}]: a system message cannot carry media", param=f"messages[{i}]")
        elif role == "tool":
            turns.append(Turn("tool", text, tool_call_id=m.get("tool_call_id", str), name=m.get("name", str)))
        elif role == "assistant":
            turns.append(Turn("assistant", text, media, tool_calls=tool_calls_from(m, f"messages[{i}].tool_calls")))
        else:
            turns.append(Turn("user", text, media))
    return turns


def tool_calls_from(m: Body, where: str) -> list[dict] | None:
    if m.data.get("tool_calls") is None:
        return None
    from g4cli.serve import tools

    return tools.check_calls(m.data["tool_calls"], where)


def grammar_from(b: Body) -> str | None:
    """``response_format``: text, json_object or json_schema -> a GBNF grammar (or None)."""
    fmt = b.sub("response_format")
    if fmt is None:
        return None
    kind = fmt.get("type", str, required=True)
    if kind == "text":
        return None
    from g4cli.chat.runtime.grammar import json_grammar

    if kind == "json_object":
        return json_grammar(None)
    if kind == "json_schema":
        spec = fmt.sub("json_schema")
        if spec is None:
            raise BadRequest("response_format.json_schema is required", param="response_format.json_schema")
        return json_grammar(spec.get("schema", dict, required=True))
    raise BadRequest(f"response_format.type {kind!r} is not supported", param="response_format.type")


def tools_from(spec: Any, choice: Any, *, parallel: bool = True, think: bool = False) -> tuple[list | None, str | None]:
    """(the tools the template declares, a grammar forcing a call) from OpenAI ``tools``/``tool_choice``."""
    if spec is None and choice is None:
        return None, None
    from g4cli.serve import tools

    return tools.prepare(spec, choice, parallel=parallel, think=think)


def chat_call(data: Any, policy: media_in.MediaPolicy) -> ChatCall:
    b = Body(data)
    if b.get("n", int, 1) != 1:
        raise BadRequest("n must be 1", param="n")
    sampling = sampling_from(b)
    sampling.think = thinking_from(b)
    stop = b.strings("stop")
    if len(stop) > 4:
        raise BadRequest("stop takes at most 4 sequences", param="stop")
    parallel = b.get("parallel_tool_calls", bool, True)
    offered, forced = tools_from(
        b.data.get("tools"), b.data.get("tool_choice"), parallel=parallel, think=sampling.think
    )
    grammar = grammar_from(b)
    if forced and grammar:
        raise BadRequest("response_format and a forced tool_choice cannot be combined", param="tool_choice")
    if grammar and sampling.think:
        raise BadRequest("thinking cannot be combined with response_format (the JSON has no room for a thought)")
    sampling.grammar = forced or grammar
    options = b.sub("stream_options")
    return ChatCall(
        model=b.get("model", str, required=True),
        request=GenRequest(turns_from(b.items("messages"), policy), sampling, tools=offered),
        stream=b.get("stream", bool, False),
        stop=stop,
        include_usage=bool(options and options.get("include_usage", bool, False)),
    )


# --- responses --------------------------------------------------------------------------------


def completion_id() -> str:
    return "chatcmpl-" + secrets.token_hex(12)


def usage(stats: Stats) -> dict[str, Any]:
    return {
        "prompt_tokens": stats.prompt_tokens,
        "completion_tokens": stats.gen_tokens,
        "total_tokens": stats.prompt_tokens + stats.gen_tokens,
        "prompt_tokens_details": {"cached_tokens": max(stats.prompt_tokens - stats.prompt_eval_tokens, 0)},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "accepted_prediction_tokens": stats.draft_accepted,  # the drafter's, verified and kept
            "rejected_prediction_tokens": stats.draft_tokens - stats.draft_accepted,
        },
    }


def completion(model: str, answer: Answer, cid: str, created: int) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": answer.content or (None if answer.tool_calls else "")}
    if answer.reasoning:
        message["reasoning_content"] = answer.reasoning
    if answer.tool_calls:
        message["tool_calls"] = answer.tool_calls
    return {
        "id": cid,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": answer.finish, "logprobs": None}],
        "usage": usage(answer.stats),
        "system_fingerprint": "g4",
    }


def _chunk(model: str, cid: str, created: int, delta: dict[str, Any], finish: str | None = None) -> str:
    doc = {
        "id": cid,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "system_fingerprint": "g4",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}],
    }
    return f"data: {json.dumps(doc, ensure_ascii=False)}\n\n"


async def completion_stream(
    model: str, pieces: AsyncIterator[Piece], cid: str, include_usage: bool
) -> AsyncIterator[str]:
    """Server-sent events: the role first, then content/reasoning/tool-call deltas, the finish
    reason, usage (when asked), and ``data: [DONE]``."""
    created = int(time.time())
    yield _chunk(model, cid, created, {"role": "assistant", "content": ""})
    async for p in pieces:
        if p.kind == "content":
            yield _chunk(model, cid, created, {"content": p.text})
        elif p.kind == "reasoning":
            yield _chunk(model, cid, created, {"reasoning_content": p.text})
        elif p.kind == "tool_call":
            yield _chunk(model, cid, created, {"tool_calls": [p.tool_call]})
        elif p.kind == "done":
            yield _chunk(model, cid, created, {}, p.finish or "stop")
            if include_usage:
                stats = p.stats or Stats()
                doc = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                       "choices": [], "usage": usage(stats), "timings": stats.as_dict()}  # fmt: skip
                yield f"data: {json.dumps(doc)}\n\n"
    yield "data: [DONE]\n\n"


def model_entry(name: str, created: float) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": int(created), "owned_by": "g4"}
