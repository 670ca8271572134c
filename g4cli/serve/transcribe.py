"""``POST /v1/audio/transcriptions`` (Whisper-compatible multipart) on Gemma 4's audio input.

Thinking is always off here: a thinking model writes its musings into transcripts (ollama
#16584). Greedy decoding, so the same clip gives the same text.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from g4cli.chat.conversation import Turn
from g4cli.chat.settings import Sampling
from g4cli.serve.body import BadRequest
from g4cli.serve.engine import GenRequest
from g4cli.serve.openai_api import ChatCall

if TYPE_CHECKING:
    from starlette.requests import Request

    from g4cli.serve.app import Server

FORMATS = ("json", "text")


def instruction(language: str | None, prompt: str | None) -> str:
    text = "Transcribe this audio exactly as spoken. Write only the transcript."
    if language:
        text += f" The language is {language}."
    if prompt:
        text += f" Context (names and spellings to use): {prompt}"
    return text


async def handle(server: Server, request: Request, meta: dict[str, Any]) -> tuple[str, str]:
    from g4cli.chat import media
    from g4cli.serve.stream import answer, collect

    size = int(request.headers.get("content-length") or 0)
    if size > server.settings.max_body:
        raise BadRequest(f"the upload is larger than {server.settings.max_body >> 20} MB")
    try:
        form = await request.form(max_files=1, max_fields=16, max_part_size=server.settings.max_body)
    except Exception as e:  # a malformed multipart body
        raise BadRequest(f"expected multipart/form-data with a file ({type(e).__name__})") from None
    upload = form.get("file")
    if upload is None or isinstance(upload, str):
        raise BadRequest("file is required (multipart field 'file')", param="file")
    model = form.get("model")
    if not isinstance(model, str) or not model:
        raise BadRequest("model is required", param="model")
    fmt = form.get("response_format") or "json"
    if fmt not in FORMATS:
        raise BadRequest(f"response_format must be one of {', '.join(FORMATS)}", param="response_format")
    meta["model"], meta["format"] = model, fmt
    data = await upload.read()
    clip = media.decode(upload.filename or "upload", data, "audio")
    language, prompt = form.get("language"), form.get("prompt")
    sampling = Sampling(temperature=0.0, think=False)
    turn = Turn(
        "user",
        instruction(language if isinstance(language, str) else None, prompt if isinstance(prompt, str) else None),
        [clip],
    )
    call = ChatCall(model=model, request=GenRequest([turn], sampling))
    worker, name = await server.start(call)
    result = await server.until_disconnect(request, collect(answer(worker, call.request)))
    meta["tokens"] = result.stats.gen_tokens
    return result.content.strip(), name
