"""The Ollama-compatible API: /api/chat, /api/generate (NDJSON streams), tags, show, ps, version.

Ollama's own clients and apps work unchanged; model names are g4's (``e4b``, ``e4b:q8_0``).
Streaming is Ollama's default (``"stream": true`` unless said otherwise).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import datetime, timezone
from typing import Any

from g4cli.chat.conversation import Stats, Turn
from g4cli.chat.settings import Sampling
from g4cli.serve import media_in
from g4cli.serve.body import BadRequest, Body
from g4cli.serve.engine import GenRequest
from g4cli.serve.openai_api import ChatCall
from g4cli.serve.stream import Answer, Piece

VERSION = "0.6.3"  # the Ollama API version g4 speaks (what its clients check)


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


def keep_alive(value: Any) -> float | None:
    """Ollama's keep_alive: seconds (a number) or a duration ("5m", "1h", "30s"); < 0 forever."""
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
        text = value.strip()
        for unit in ("ms", "s", "m", "h"):
            if text.endswith(unit) and text[: -len(unit)].lstrip("-").replace(".", "", 1).isdigit():
                return float(text[: -len(unit)]) * units[unit]
        if text.lstrip("-").replace(".", "", 1).isdigit():
            return float(text)
    raise BadRequest(f"keep_alive {value!r} is not a duration (e.g. 5m, 30s, 0, -1)", param="keep_alive")


def sampling_from(options: Body | None, think: Any) -> Sampling:
    s = Sampling()
    if options is not None:
        for key, lo, hi in (("temperature", 0, 2), ("top_p", 0, 1), ("min_p", 0, 1), ("repeat_penalty", 0.01, 10)):
            value = options.number(key, lo, hi)
            if value is not None:
                setattr(s, key, value)
        top_k = options.integer("top_k", 0)
        if top_k is not None:
            s.top_k = top_k
        s.seed = options.get("seed", int)
        n = options.get("num_predict", int)
        s.max_tokens = n if n is not None and n > 0 else None
    if think is not None and not isinstance(think, (bool, str)):
        raise BadRequest("think must be true, false or a level", param="think")
    s.think = think not in (None, False, "none", "false")
    return s


def _grammar(fmt: Any) -> str | None:
    if fmt is None or fmt == "":
        return None
    from g4cli.chat.runtime.grammar import json_grammar

    if fmt == "json":
        return json_grammar(None)
    if isinstance(fmt, dict):
        return json_grammar(fmt)
    raise BadRequest('format must be "json" or a JSON schema', param="format")


def _images(b: Body, where: str, policy: media_in.MediaPolicy) -> list:
    from g4cli.chat import media

    out = []
    for i, raw in enumerate(b.items("images")):
        name = f"{where}.images[{i}]"
        out.append(media.decode(name, media_in.b64decode(raw, name, policy.max_bytes), "image"))
    return out


def chat_call(data: Any, policy: media_in.MediaPolicy) -> ChatCall:
    b = Body(data)
    turns: list[Turn] = []
    for i, raw in enumerate(b.items("messages")):
        m = Body(raw, f"messages[{i}]")
        role = m.get("role", str, required=True)
        text = m.get("content", str, "")
        if role == "system":
            turns.append(Turn("system", text))
        elif role == "tool":
            turns.append(Turn("tool", text, name=m.get("tool_name", str) or m.get("name", str)))
        elif role in ("user", "assistant"):
            from g4cli.serve.openai_api import tool_calls_from

            calls = tool_calls_from(m, f"messages[{i}].tool_calls")
            turns.append(Turn(role, text, _images(m, f"messages[{i}]", policy), tool_calls=calls))
        else:
            raise BadRequest(f"messages[{i}].role {role!r} is not system, user, assistant or tool")
    if not turns:
        raise BadRequest("messages must be a non-empty list", param="messages")
    return _call(b, turns)


def generate_call(data: Any, policy: media_in.MediaPolicy) -> ChatCall:
    b = Body(data)
    turns = [Turn("system", b.get("system", str))] if b.has("system") else []
    turns.append(Turn("user", b.get("prompt", str, ""), _images(b, "request", policy)))
    return _call(b, turns)


def _call(b: Body, turns: list[Turn]) -> ChatCall:
    from g4cli.serve.openai_api import tools_from

    sampling = sampling_from(b.sub("options"), b.data.get("think"))
    offered, _ = tools_from(b.data.get("tools"), None, think=sampling.think)
    sampling.grammar = _grammar(b.data.get("format"))
    if sampling.grammar and sampling.think:
        raise BadRequest("think cannot be combined with format (the JSON has no room for a thought)", param="think")
    options = b.sub("options")
    return ChatCall(
        model=b.get("model", str, required=True),
        request=GenRequest(turns, sampling, tools=offered),
        stream=b.get("stream", bool, True),
        stop=options.strings("stop") if options else [],
        keep_alive=keep_alive(b.data.get("keep_alive")),
    )


def _timings(stats: Stats) -> dict[str, Any]:
    ns = 1e9
    return {
        "total_duration": int(
            (stats.prompt_s + stats.gen_s + (stats.ttft_s - stats.prompt_s if stats.ttft_s else 0)) * ns
        ),
        "load_duration": 0,
        "prompt_eval_count": stats.prompt_tokens,
        "prompt_eval_duration": int(stats.prompt_s * ns),
        "eval_count": stats.gen_tokens,
        "eval_duration": int(stats.gen_s * ns),
    }


def _ollama_calls(calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """OpenAI tool calls -> Ollama's (arguments as an object)."""
    out = []
    for c in calls:
        fn = c.get("function", {})
        try:
            args = json.loads(fn.get("arguments") or "{}")
        except json.JSONDecodeError:
            args = {}
        out.append({"function": {"name": fn.get("name", ""), "arguments": args}})
    return out


def final(model: str, answer: Answer, *, chat: bool) -> dict[str, Any]:
    doc: dict[str, Any] = {"model": model, "created_at": now()}
    if chat:
        msg: dict[str, Any] = {"role": "assistant", "content": answer.content}
        if answer.reasoning:
            msg["thinking"] = answer.reasoning
        if answer.tool_calls:
            msg["tool_calls"] = _ollama_calls(answer.tool_calls)
        doc["message"] = msg
    else:
        doc["response"] = answer.content
        if answer.reasoning:
            doc["thinking"] = answer.reasoning
    reason = {"tool_calls": "stop"}.get(answer.finish, answer.finish)
    return {**doc, "done": True, "done_reason": reason, **_timings(answer.stats)}


async def stream(model: str, pieces: AsyncIterator[Piece], *, chat: bool) -> AsyncIterator[str]:
    """NDJSON: an object per content or thinking piece, then the final one with the counts (and
    the tool calls, which Ollama sends whole)."""
    from g4cli.serve.stream import Collector

    c = Collector()
    async for p in pieces:
        c.add(p)
        if p.kind not in ("content", "reasoning"):
            continue
        text = {"content": p.text if p.kind == "content" else ""}
        if p.kind == "reasoning":
            text["thinking"] = p.text
        body = {"message": {"role": "assistant", **text}} if chat else {"response": text["content"], **text}
        body.pop("content", None)
        yield json.dumps({"model": model, "created_at": now(), **body, "done": False}, ensure_ascii=False) + "\n"
    done = Answer(tool_calls=c.answer.tool_calls, finish=c.answer.finish, stats=c.answer.stats)
    yield json.dumps(final(model, done, chat=chat), ensure_ascii=False) + "\n"
