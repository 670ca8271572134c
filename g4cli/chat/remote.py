"""One-shot ``g4 chat`` through a running ``g4 serve``: the model stays loaded between calls.

Used when a server answers at ``G4_HOST`` (or the default port on 127.0.0.1) and serves the
model; the output, ``--json``, attachments and exit codes are those of the in-process path.
``--local`` (or any load option given explicitly) keeps everything in-process. Plain
``http.client`` keeps the start-up of a shell loop's every call small.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from g4cli.chat.conversation import Stats
from g4cli.chat.media import Media
from g4cli.chat.settings import ChatOptions, LoadOptions
from g4cli.errors import CapabilityError, G4Error, RuntimeFailure

DEFAULT_HOST = "127.0.0.1:11435"
PROBE_TIMEOUT = 0.3  # seconds to wait for /health before answering in-process


@dataclass
class Endpoint:
    host: str
    port: int
    key: str | None

    def connect(self, timeout: float | None) -> http.client.HTTPConnection:
        return http.client.HTTPConnection(self.host, self.port, timeout=timeout)

    def headers(self) -> dict[str, str]:
        h = {"Content-Type": "application/json"}
        if self.key:
            h["Authorization"] = f"Bearer {self.key}"
        return h


def endpoint() -> Endpoint | None:
    """The server to try: ``G4_HOST`` (``host:port`` or a URL), else the default port."""
    text = os.environ.get("G4_HOST") or DEFAULT_HOST
    if "://" not in text:
        text = "http://" + text
    parts = urlsplit(text)
    if parts.scheme != "http" or not parts.hostname:
        return None
    return Endpoint(parts.hostname, parts.port or 11435, os.environ.get("G4_API_KEY"))


def eligible(opts: ChatOptions) -> bool:
    """Through a server unless told otherwise: ``--local``, or a load option set explicitly."""
    return not opts.local and opts.load == LoadOptions()


def reachable(ep: Endpoint) -> bool:
    try:
        conn = ep.connect(PROBE_TIMEOUT)
        conn.request("GET", "/health")
        ok = conn.getresponse().status == 200
        conn.close()
        return ok
    except OSError:
        return False


def _part(m: Media) -> dict[str, Any]:
    if m.kind == "image":
        from io import BytesIO

        from PIL import Image

        buf = BytesIO()
        Image.fromarray(m.pixels).save(buf, "PNG")  # decoded (EXIF applied) exactly as in-process
        return {
            "type": "image_url",
            "image_url": {"url": "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()},
        }
    import io

    import numpy as np
    import soundfile

    buf = io.BytesIO()
    soundfile.write(buf, np.concatenate(m.pieces), 16000, subtype="FLOAT", format="WAV")  # 16 kHz mono, lossless
    return {"type": "input_audio", "input_audio": {"data": base64.b64encode(buf.getvalue()).decode(), "format": "wav"}}


def request_body(model: str, text: str, media: list[Media], opts: ChatOptions) -> dict[str, Any]:
    s = opts.sampling
    content: list[dict[str, Any]] = [_part(m) for m in media] + ([{"type": "text", "text": text}] if text else [])
    messages = ([{"role": "system", "content": opts.system}] if opts.system else []) + [
        {"role": "user", "content": content or ""}
    ]
    body = {
        "model": model,
        "messages": messages,
        "stream": True,
        "stream_options": {"include_usage": True},
        "temperature": s.temperature,
        "top_p": s.top_p,
        "top_k": s.top_k,
        "min_p": s.min_p,
        "repeat_penalty": s.repeat_penalty,
        "chat_template_kwargs": {"enable_thinking": s.think},
    }
    if s.seed is not None:
        body["seed"] = s.seed
    if s.max_tokens is not None:
        body["max_tokens"] = s.max_tokens
    if opts.response_format is not None:
        body["response_format"] = opts.response_format
    return body


class Unavailable(Exception):
    """The server cannot serve this request (no such model, busy): answer in-process instead."""


def events(ep: Endpoint, body: dict[str, Any]) -> Iterator[tuple[str, Any]]:
    """("text" | "thought" | "finish" | "usage", value) from the server's event stream."""
    conn = ep.connect(None)
    try:
        conn.request("POST", "/v1/chat/completions", json.dumps(body).encode(), ep.headers())
        r = conn.getresponse()
        if r.status != 200:
            _fail(r.status, r.read())
        for raw in r:
            line = raw.decode("utf-8", "replace").strip()
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                return
            doc = json.loads(data)
            if "error" in doc:
                raise RuntimeFailure(doc["error"].get("message", "the server failed"))
            if doc.get("usage"):
                yield "usage", doc
            for choice in doc.get("choices", []):
                delta = choice.get("delta", {})
                if delta.get("reasoning_content"):
                    yield "thought", delta["reasoning_content"]
                if delta.get("content"):
                    yield "text", delta["content"]
                if choice.get("finish_reason"):
                    yield "finish", choice["finish_reason"]
    finally:
        conn.close()


def _fail(status: int, raw: bytes) -> None:
    try:
        message = json.loads(raw)["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = raw.decode("utf-8", "replace")[:200]
    if status in (404, 503):
        raise Unavailable(message)
    if "cannot take" in message:
        raise CapabilityError(message)
    raise G4Error(message) if status < 500 else RuntimeFailure(f"the server failed: {message}")


def stats_from(usage_chunk: dict[str, Any], started: float, first: float | None) -> Stats:
    u = usage_chunk.get("usage", {})
    t = usage_chunk.get("timings", {})
    st = Stats(
        prompt_tokens=u.get("prompt_tokens", 0),
        prompt_eval_tokens=u.get("prompt_tokens", 0) - u.get("prompt_tokens_details", {}).get("cached_tokens", 0),
        gen_tokens=u.get("completion_tokens", 0),
    )
    st.prompt_s, st.gen_s = t.get("prompt_s", 0.0), t.get("generation_s", 0.0)
    st.ttft_s = (first - started) if first else t.get("time_to_first_token_s", 0.0)
    return st


def now() -> float:
    return time.perf_counter()
