"""``g4 serve``'s ASGI application (Starlette): routes, the API key, body limits, request logs,
and every failure as a JSON error with a 4xx status (OpenAI's error object on /v1, Ollama's on
/api) — never a traceback, and the server goes on serving."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from g4cli.errors import CapabilityError, MediaError, ModelNotFound, RuntimeFailure, UsageError
from g4cli.serve import media_in, ollama_api, openai_api
from g4cli.serve.body import BadRequest
from g4cli.serve.engine import Busy, ContextExceeded
from g4cli.serve.pool import Pool
from g4cli.serve.stream import answer, collect

MAX_BODY = 64 << 20


@dataclass
class Settings:
    api_key: str | None = None
    max_body: int = MAX_BODY
    media: media_in.MediaPolicy = field(default_factory=media_in.MediaPolicy)
    log_json: bool = False


class HTTPError(Exception):
    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.kind, self.code = status, message, kind, code


def _status(e: Exception) -> tuple[int, str, str | None]:
    """(HTTP status, OpenAI error type, code) for a domain error."""
    if isinstance(e, HTTPError):
        return e.status, e.kind, e.code
    if isinstance(e, ModelNotFound):
        return 404, "invalid_request_error", "model_not_found"
    if isinstance(e, ContextExceeded):
        return 400, "invalid_request_error", "context_length_exceeded"
    if isinstance(e, Busy):
        return 503, "server_error", "overloaded"
    if isinstance(e, (BadRequest, UsageError, MediaError, CapabilityError)):
        return 400, "invalid_request_error", getattr(e, "code", None)
    if isinstance(e, RuntimeFailure):
        return 500, "server_error", None
    return 500, "server_error", None


def error_response(request: Request, e: Exception) -> Response:
    status, kind, code = _status(e)
    message = getattr(e, "message", None) or str(e) or type(e).__name__
    headers = {"Retry-After": "2"} if status == 503 else None
    if request.url.path.startswith("/api/"):
        return JSONResponse({"error": message}, status_code=status, headers=headers)
    param = getattr(e, "param", None)
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


class Server:
    def __init__(self, pool: Pool, settings: Settings) -> None:
        self.pool, self.settings = pool, settings

    # --- plumbing -------------------------------------------------------------------------------

    async def body(self, request: Request) -> Any:
        size = int(request.headers.get("content-length") or 0)
        if size > self.settings.max_body:
            raise HTTPError(413, f"the request body is larger than {self.settings.max_body >> 20} MB")
        data = bytearray()
        async for chunk in request.stream():
            data += chunk
            if len(data) > self.settings.max_body:
                raise HTTPError(413, f"the request body is larger than {self.settings.max_body >> 20} MB")
        try:
            return json.loads(data or b"{}")
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise HTTPError(400, f"the request body is not valid JSON ({e})") from None

    def log(self, request: Request, status: int, started: float, model: str | None = None, tokens: int = 0) -> None:
        ms = (time.perf_counter() - started) * 1000
        fields = {"method": request.method, "route": request.url.path, "model": model, "tokens": tokens}
        fields |= {"ms": round(ms, 1), "status": status}
        if self.settings.log_json:
            line = json.dumps(fields)
        else:
            line = f"{request.method} {request.url.path} {model or '-'} {tokens} tokens {ms:.0f} ms {status}"
        sys.stderr.write(line + "\n")
        sys.stderr.flush()

    def authorized(self, request: Request) -> bool:
        key = self.settings.api_key
        if not key or request.url.path == "/health":
            return True
        given = request.headers.get("authorization", "")
        token = given[7:] if given.lower().startswith("bearer ") else ""
        return hmac.compare_digest(token.encode(), key.encode())

    def route(self, handler: Callable) -> Callable:
        """Wrap a handler: the API key, error responses, one log line per request."""

        async def endpoint(request: Request) -> Response:
            started = time.perf_counter()
            meta: dict[str, Any] = {}
            try:
                if not self.authorized(request):
                    raise HTTPError(401, "missing or wrong API key (Authorization: Bearer …)", "authentication_error")
                response = await handler(request, meta)
            except Exception as e:  # every failure is a JSON error; the server goes on
                response = error_response(request, e)
            if isinstance(response, StreamingResponse):
                response.background = None
                inner = response.body_iterator

                async def logged() -> AsyncIterator[Any]:
                    try:
                        async for chunk in inner:
                            yield chunk
                    finally:
                        self.log(request, response.status_code, started, meta.get("model"), meta.get("tokens", 0))

                response.body_iterator = logged()
            else:
                self.log(request, response.status_code, started, meta.get("model"), meta.get("tokens", 0))
            return response

        return endpoint

    # --- generation -----------------------------------------------------------------------------

    async def start(self, call: openai_api.ChatCall) -> tuple[Any, str]:
        worker = await self.pool.worker(call.model)
        if call.keep_alive is not None:
            worker.keep_alive = call.keep_alive
        model = worker.model
        assert model is not None
        for t in call.request.turns:
            model.check_media(t.media)
        return worker, self.pool.canonical(call.model)

    async def pieces(self, worker: Any, call: openai_api.ChatCall, meta: dict[str, Any]) -> AsyncIterator[Any]:
        """The answer's pieces, its first one already there: a request that fails before it
        starts (a prompt too long, a bad image) is a 4xx, not a broken stream."""
        source = answer(worker, call.request, stop=call.stop)
        first = await source.__anext__()

        async def counted() -> AsyncIterator[Any]:
            try:
                p = first
                while True:
                    if p.kind == "done" and p.stats is not None:
                        meta["tokens"] = p.stats.gen_tokens
                    yield p
                    p = await source.__anext__()
            except StopAsyncIteration:
                pass
            finally:
                await source.aclose()
                if call.keep_alive == 0:
                    self.pool.unload(call.model)

        return counted()

    async def chat_completions(self, request: Request, meta: dict[str, Any]) -> Response:
        call = openai_api.chat_call(await self.body(request), self.settings.media)
        meta["model"] = call.model
        worker, name = await self.start(call)
        cid = openai_api.completion_id()
        pieces = await self.pieces(worker, call, meta)
        if call.stream:
            stream = openai_api.completion_stream(name, pieces, cid, call.include_usage)
            return StreamingResponse(stream, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        result = await self.until_disconnect(request, collect(pieces))
        return JSONResponse(openai_api.completion(name, result, cid, int(time.time())))

    async def until_disconnect(self, request: Request, work: Any) -> Any:
        """Await ``work``; a client that hangs up cancels it (and so frees its sequence)."""
        task = asyncio.ensure_future(work)
        while not task.done():
            done, _ = await asyncio.wait({task}, timeout=0.25)
            if not done and await request.is_disconnected():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
                raise HTTPError(499, "the client went away")
        return task.result()

    async def ollama_chat(self, request: Request, meta: dict[str, Any]) -> Response:
        return await self._ollama(request, meta, chat=True)

    async def ollama_generate(self, request: Request, meta: dict[str, Any]) -> Response:
        return await self._ollama(request, meta, chat=False)

    async def _ollama(self, request: Request, meta: dict[str, Any], *, chat: bool) -> Response:
        data = await self.body(request)
        parse = ollama_api.chat_call if chat else ollama_api.generate_call
        call = parse(data, self.settings.media)
        meta["model"] = call.model
        if not chat and not call.request.turns[-1].text and not call.request.turns[-1].media:
            await self.pool.worker(call.model)  # an empty prompt loads the model (Ollama's way to preload)
            return JSONResponse({"model": call.model, "created_at": ollama_api.now(), "response": "", "done": True})
        worker, name = await self.start(call)
        pieces = await self.pieces(worker, call, meta)
        if call.stream:
            return StreamingResponse(ollama_api.stream(name, pieces, chat=chat), media_type="application/x-ndjson")
        result = await self.until_disconnect(request, collect(pieces))
        return JSONResponse(ollama_api.final(name, result, chat=chat))

    # --- listings ---------------------------------------------------------------------------------

    async def health(self, request: Request, meta: dict[str, Any]) -> Response:
        return JSONResponse({"status": "ok"})

    async def models(self, request: Request, meta: dict[str, Any]) -> Response:
        from g4cli.serve import catalog_view

        names = catalog_view.names(self.pool)
        return JSONResponse({"object": "list", "data": [openai_api.model_entry(n, self.pool.started) for n in names]})

    async def tags(self, request: Request, meta: dict[str, Any]) -> Response:
        from g4cli.serve import catalog_view

        return JSONResponse({"models": catalog_view.tags(self.pool)})

    async def show(self, request: Request, meta: dict[str, Any]) -> Response:
        from g4cli.serve import catalog_view

        data = await self.body(request)
        name = data.get("model") or data.get("name") if isinstance(data, dict) else None
        return JSONResponse(catalog_view.show(self.pool, name))

    async def ps(self, request: Request, meta: dict[str, Any]) -> Response:
        from g4cli.serve import catalog_view

        return JSONResponse({"models": catalog_view.running(self.pool)})

    async def version(self, request: Request, meta: dict[str, Any]) -> Response:
        return JSONResponse({"version": ollama_api.VERSION})

    async def transcriptions(self, request: Request, meta: dict[str, Any]) -> Response:
        from g4cli.serve import transcribe

        text, _ = await transcribe.handle(self, request, meta)
        if meta.get("format") == "text":
            return PlainTextResponse(text)
        return JSONResponse({"text": text})

    def app(self) -> Starlette:
        routes = [
            Route("/health", self.route(self.health)),
            Route("/v1/models", self.route(self.models)),
            Route("/v1/chat/completions", self.route(self.chat_completions), methods=["POST"]),
            Route("/v1/audio/transcriptions", self.route(self.transcriptions), methods=["POST"]),
            Route("/api/chat", self.route(self.ollama_chat), methods=["POST"]),
            Route("/api/generate", self.route(self.ollama_generate), methods=["POST"]),
            Route("/api/tags", self.route(self.tags)),
            Route("/api/show", self.route(self.show), methods=["POST"]),
            Route("/api/ps", self.route(self.ps)),
            Route("/api/version", self.route(self.version)),
        ]

        async def not_found(request: Request, exc: Exception) -> Response:
            status = getattr(exc, "status_code", 404)
            message = "no such route" if status == 404 else f"{request.method} is not allowed on {request.url.path}"
            return error_response(request, HTTPError(status, message))

        return Starlette(routes=routes, exception_handlers={404: not_found, 405: not_found})
