"""`g4 serve` as a real subprocess on 127.0.0.1 with tiny real models, driven by the official
`openai` and `ollama` Python clients (and raw HTTP for what a client would never send)."""

from __future__ import annotations

import base64
import json
import socket
import threading
import time

import httpx
import pytest
from serving import Served, data_uri

E2B, M31 = "e2b-Q8_0", "31b-Q8_0"


@pytest.fixture(scope="module")
def server(gguf):
    with Served(gguf("e2b", "Q8_0"), gguf("31b", "Q8_0"), "--parallel", "2", "--ctx", "2048") as s:
        yield s


@pytest.fixture(scope="module")
def oa(server):
    from openai import OpenAI

    return OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def ol(server):
    import ollama

    return ollama.Client(host=server.url, timeout=120)


def _greedy(**extra: object) -> dict:
    return {"temperature": 0, "max_tokens": 12, **extra}


def test_openai_chat_with_and_without_streaming(oa) -> None:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello there"}]
    r = oa.chat.completions.create(model=E2B, messages=messages, **_greedy())
    assert r.object == "chat.completion" and r.model == E2B and r.id.startswith("chatcmpl-")
    choice = r.choices[0]
    assert choice.message.role == "assistant" and choice.finish_reason == "length" and choice.message.content
    assert r.usage.completion_tokens == 12 and r.usage.prompt_tokens > 5
    assert r.usage.total_tokens == r.usage.prompt_tokens + 12
    chunks = list(oa.chat.completions.create(model=E2B, messages=messages, stream=True, **_greedy()))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == choice.message.content  # greedy: the same tokens streamed
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices[0].finish_reason == "length"
    # the resent history is in the KV cache: only the new tokens are evaluated
    again = oa.chat.completions.create(model=E2B, messages=messages, **_greedy())
    assert again.usage.prompt_tokens_details.cached_tokens >= again.usage.prompt_tokens - 2


def test_stream_usage_when_asked(oa) -> None:
    chunks = list(
        oa.chat.completions.create(
            model=E2B,
            messages=[{"role": "user", "content": "Count"}],
            stream=True,
            stream_options={"include_usage": True},
            **_greedy(max_tokens=5),
        )
    )
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 5 and not chunks[-1].choices


def test_models_listing(oa) -> None:
    ids = {m.id for m in oa.models.list()}
    assert {E2B, M31} <= ids


def test_images_and_audio_as_content_parts(oa, media_dir) -> None:
    content = [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": data_uri(media_dir["alpha"], "image/png")}},
    ]
    r = oa.chat.completions.create(model=E2B, messages=[{"role": "user", "content": content}], **_greedy())
    assert r.usage.prompt_tokens > 100  # the image's tokens
    audio = base64.b64encode(media_dir["mp3"].read_bytes()).decode()
    content = [
        {"type": "text", "text": "Transcribe"},
        {"type": "input_audio", "input_audio": {"data": audio, "format": "mp3"}},
    ]
    r = oa.chat.completions.create(model=E2B, messages=[{"role": "user", "content": content}], **_greedy())
    assert r.usage.prompt_tokens > 60


def test_transcription_endpoint(oa, media_dir) -> None:
    # once first, so that both calls below reuse the cached prompt alike: a random tiny model's
    # near-tied logits can flip between a fresh prompt and a cached one (flash attention takes
    # other kernels for one token than for a batch)
    for fmt in ("json", "json"):
        with open(media_dir["speech"], "rb") as f:
            t = oa.audio.transcriptions.create(model=E2B, file=f, language="en", response_format=fmt)
    assert isinstance(t.text, str) and t.text
    with open(media_dir["speech"], "rb") as f:
        plain = oa.audio.transcriptions.create(model=E2B, file=f, language="en", response_format="text")
    assert plain.strip() == t.text  # greedy, thinking off: the same transcript


def test_ollama_client(ol, media_dir) -> None:
    r = ol.chat(
        model=E2B, messages=[{"role": "user", "content": "Hello"}], options={"temperature": 0, "num_predict": 6}
    )
    assert r.message.role == "assistant" and r.done and r.eval_count == 6 and r.prompt_eval_count > 3
    parts = list(
        ol.chat(
            model=E2B,
            messages=[{"role": "user", "content": "Hello"}],
            stream=True,
            options={"temperature": 0, "num_predict": 6},
        )
    )
    assert "".join(p.message.content for p in parts) == r.message.content and parts[-1].done
    g = ol.generate(model=E2B, prompt="Hello", options={"temperature": 0, "num_predict": 4})
    assert g.done and g.eval_count == 4 and isinstance(g.response, str)
    img = ol.generate(
        model=M31, prompt="Describe", images=[media_dir["alpha"].read_bytes()], options={"num_predict": 2}
    )
    assert img.prompt_eval_count > 100
    names = {m.model for m in ol.list().models}
    assert {E2B, M31} <= names
    shown = ol.show(E2B)
    assert shown.details.family == "gemma4" and "vision" in shown.capabilities and "audio" in shown.capabilities
    assert shown.modelinfo["general.architecture"] == "gemma4"
    running = {m.model for m in ol.ps().models}
    assert E2B in running


def test_greedy_output_is_the_same_on_both_apis_and_in_g4_chat(oa, server, run_g4, gguf) -> None:
    prompt = "Tell me about the sea"
    openai_text = (
        oa.chat.completions.create(model=E2B, messages=[{"role": "user", "content": prompt}], **_greedy(max_tokens=20))
        .choices[0]
        .message.content
    )
    r = httpx.post(
        server.url + "/api/chat",
        json={
            "model": E2B,
            "stream": False,
            "messages": [{"role": "user", "content": prompt}],
            "options": {"temperature": 0, "num_predict": 20},
        },
        timeout=60,
    )
    assert r.json()["message"]["content"] == openai_text
    local = run_g4("chat", gguf("e2b", "Q8_0"), prompt, "--temp", "0", "-n", "20", "--json", "--local")
    assert json.loads(local.stdout)["response"] == openai_text


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        (b"{not json", 400, "not valid JSON"),
        (b'{"model": "e2b-Q8_0", "messages": "hi"}', 400, "messages must be list"),
        (
            b'{"model": "e2b-Q8_0", "messages": [{"role": "user", "content": "x"}], "temperature": "hot"}',
            400,
            "temperature",
        ),
        (b'{"model": "nope", "messages": [{"role": "user", "content": "x"}]}', 404, "not pulled"),
        (b'{"model": "../../etc/passwd", "messages": [{"role": "user", "content": "x"}]}', 400, "invalid model name"),
        (b'{"model": "e2b-Q8_0", "n": 2, "messages": [{"role": "user", "content": "x"}]}', 400, "n must be 1"),
    ],
    ids=["malformed", "wrong-type", "bad-temperature", "unknown-model", "path-as-name", "n"],
)
def test_bad_requests_are_4xx_json(server, body: bytes, status: int, message: str) -> None:
    r = httpx.post(server.url + "/v1/chat/completions", content=body, headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    assert message in r.json()["error"]["message"]
    assert server.alive()


def _parts(*parts: dict) -> bytes:
    return json.dumps({"model": E2B, "max_tokens": 2, "messages": [{"role": "user", "content": list(parts)}]}).encode()


def test_bad_media_is_refused(server, media_dir, tmp_path) -> None:
    cases = [
        (
            _parts({"type": "image_url", "image_url": {"url": "data:image/png;base64,!!notbase64!!"}}),
            "not valid base64",
        ),
        (
            _parts({"type": "image_url", "image_url": {"url": "http://169.254.169.254/latest"}}),
            "remote URLs are not fetched",
        ),
        (_parts({"type": "image_url", "image_url": {"url": "/etc/passwd"}}), "file paths need"),
        (_parts({"type": "image_url", "image_url": {"url": "data:image/png;base64,aGVsbG8="}}), "not an image"),
    ]
    for body, message in cases:
        r = httpx.post(server.url + "/v1/chat/completions", content=body)
        assert r.status_code == 400 and message in r.json()["error"]["message"], r.text
    audio = base64.b64encode(media_dir["speech"].read_bytes()).decode()
    body = json.dumps(
        {
            "model": M31,
            "messages": [
                {"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": audio, "format": "wav"}}]}
            ],
        }
    )
    r = httpx.post(server.url + "/v1/chat/completions", content=body)
    assert r.status_code == 400 and "cannot take audio" in r.json()["error"]["message"]
    with open(media_dir["speech"], "rb") as f:
        r = httpx.post(server.url + "/v1/audio/transcriptions", data={"model": M31}, files={"file": f})
    assert r.status_code == 400 and "cannot take audio" in r.json()["error"]["message"]
    r = httpx.post(server.url + "/api/chat", content=b'{"model": "e2b-Q8_0", "messages": 3}')
    assert r.status_code == 400 and isinstance(r.json()["error"], str)  # Ollama's error shape


def test_a_body_over_the_limit_is_413(gguf) -> None:
    with Served(gguf("31b", "Q8_0"), "--max-body", "1") as s:
        big = json.dumps({"model": M31, "messages": [{"role": "user", "content": "x" * (2 << 20)}]})
        r = httpx.post(s.url + "/v1/chat/completions", content=big)
        assert r.status_code == 413 and "larger than 1 MB" in r.json()["error"]["message"]
        ok = httpx.post(
            s.url + "/v1/chat/completions",
            json={"model": M31, "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]},
            timeout=60,
        )
        assert ok.status_code == 200


def test_api_key_is_required_except_for_health(gguf) -> None:
    with Served(gguf("31b", "Q8_0"), env={"G4_API_KEY": "s3cret-token"}) as s:
        assert httpx.get(s.url + "/health").status_code == 200
        assert httpx.get(s.url + "/v1/models").status_code == 401
        bad = httpx.get(s.url + "/v1/models", headers={"Authorization": "Bearer wrong"})
        assert bad.status_code == 401 and bad.json()["error"]["type"] == "authentication_error"
        good = httpx.get(s.url + "/v1/models", headers={"Authorization": "Bearer s3cret-token"})
        assert good.status_code == 200
        assert "s3cret-token" not in s.log  # a token is never logged


def test_a_client_killed_mid_stream_frees_its_sequence(gguf, tiny, tmp_path) -> None:
    from quantize.converter import convert

    endless = tmp_path / "endless.gguf"
    convert(tiny("31b", endless=True), endless, quant="Q8_0", mmproj_type=None)
    with Served(endless, "--parallel", "1", "--max-queue", "0") as s:
        body = json.dumps(
            {
                "model": "endless",
                "stream": True,
                "max_tokens": 100000,
                "messages": [{"role": "user", "content": "Go on forever"}],
            }
        ).encode()
        sock = socket.create_connection(("127.0.0.1", s.port))
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        received = b""
        while b"data:" not in received:  # streaming
            chunk = sock.recv(4096)
            assert chunk, received
            received += chunk
        time.sleep(0.5)
        sock.close()  # the client dies
        # the only sequence is free again: a new request is answered (not 503)
        deadline = time.monotonic() + 10
        while True:
            r = httpx.post(
                s.url + "/v1/chat/completions",
                json={"model": "endless", "max_tokens": 3, "messages": [{"role": "user", "content": "hi"}]},
                timeout=60,
            )
            if r.status_code == 200 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 3
        assert s.alive()


def test_fifty_requests_at_once_are_answered_or_503(gguf) -> None:
    with Served(gguf("31b", "Q8_0"), "--parallel", "2", "--max-queue", "8") as s:
        results: list[int] = []
        lock = threading.Lock()

        def one(i: int) -> None:
            r = httpx.post(
                s.url + "/v1/chat/completions",
                timeout=120,
                json={
                    "model": M31,
                    "max_tokens": 4,
                    "temperature": 0,
                    "messages": [{"role": "user", "content": f"n{i}"}],
                },
            )
            with lock:
                results.append(r.status_code)
                if r.status_code == 503:
                    assert r.headers.get("retry-after")
                elif r.status_code == 200:
                    assert r.json()["usage"]["completion_tokens"] == 4

        threads = [threading.Thread(target=one, args=(i,)) for i in range(50)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(results) == 50 and set(results) <= {200, 503} and results.count(200) >= 10
        assert s.alive()
        after = httpx.post(
            s.url + "/v1/chat/completions",
            timeout=60,
            json={"model": M31, "max_tokens": 3, "messages": [{"role": "user", "content": "still there?"}]},
        )
        assert after.status_code == 200


def test_keep_alive_zero_unloads_after_the_answer(gguf) -> None:
    with Served(gguf("31b", "Q8_0")) as s:
        r = httpx.post(
            s.url + "/api/generate",
            timeout=60,
            json={"model": M31, "prompt": "hi", "stream": False, "keep_alive": 0, "options": {"num_predict": 2}},
        )
        assert r.status_code == 200 and r.json()["done"], r.text + s.log
        deadline = time.monotonic() + 5
        while httpx.get(s.url + "/api/ps").json()["models"] and time.monotonic() < deadline:
            time.sleep(0.1)
        assert httpx.get(s.url + "/api/ps").json()["models"] == []
        again = httpx.post(
            s.url + "/api/generate",
            timeout=60,
            json={"model": M31, "prompt": "hi", "stream": False, "options": {"num_predict": 2}},
        )
        assert again.status_code == 200  # loaded again on use


def test_g4_chat_answers_through_a_running_server(server, run_g4, gguf, media_dir) -> None:
    env = {"G4_HOST": server.url.removeprefix("http://")}
    prompt = "Tell me about the sea"
    before = server.log.count("POST /v1/chat/completions")
    r = run_g4("chat", E2B, prompt, "--temp", "0", "-n", "20", "--json", env=env)
    assert r.returncode == 0, r.err
    assert server.log.count("POST /v1/chat/completions") == before + 1  # it went through the server
    doc = json.loads(r.stdout)
    local = json.loads(run_g4("chat", gguf("e2b", "Q8_0"), prompt, "--temp", "0", "-n", "20", "--json").stdout)
    assert doc["response"] == local["response"] and doc["tokens"] == local["tokens"]
    assert doc["finish_reason"] == "length" and doc["timings"]["generation_tokens_per_s"] > 0
    plain = run_g4("chat", E2B, prompt, "--temp", "0", "-n", "20", env=env)
    assert plain.stdout.decode() == doc["response"] + ("" if doc["response"].endswith("\n") else "\n")
    assert b"\x1b" not in plain.stdout
    bad = run_g4("chat", M31, "hi", "--audio", media_dir["speech"], env=env)
    assert bad.returncode == 1 and len(bad.err_lines) == 1 and "cannot take audio" in bad.err_lines[0]
    with_image = run_g4("chat", E2B, "What is it?", "--image", media_dir["alpha"], "-n", "3", "--json", env=env)
    image_doc = json.loads(with_image.stdout)
    assert image_doc["tokens"]["prompt"] > 100 and image_doc["attachments"][0]["kind"] == "image"
    forced = run_g4("chat", E2B, prompt, "-n", "2", "--local", env=env)  # the server has it, this machine not
    assert forced.returncode == 1 and "not pulled" in forced.err
    assert server.log.count("POST /v1/chat/completions") == before + 4  # --local did not use it


def _margin_prompts(gguf_path, candidates: list[str], n: int, tokens: int, margin: float) -> list[str]:
    """Prompts whose greedy answer has a clear top-2 logit margin at every step (batching shifts
    logits by up to ~2.4e-2 on tiny models; a margin of 0.2 leaves no room for a flip)."""
    import numpy as np

    from g4cli.chat.conversation import Turn
    from g4cli.chat.runtime.model import Model

    chosen = []
    with Model(gguf_path, n_ctx=1024) as m:
        for text in candidates:
            m.reset()
            m.eval_prompt(m.render([Turn("user", text)]), [])
            seq, ok = m.sequences[0], True
            for _ in range(tokens):
                logits = m.last_logits()
                top2 = np.sort(logits)[-2:]
                if top2[1] - top2[0] < margin:
                    ok = False
                    break
                tok = int(np.argmax(logits))
                if m.is_eog(tok):
                    break
                m.decode(seq, [tok], logits_last=True)
            if ok:
                chosen.append(text)
            if len(chosen) == n:
                return chosen
    raise AssertionError(f"only {len(chosen)} of {len(candidates)} prompts have a clear margin")


def test_greedy_output_is_the_same_with_four_parallel_requests(gguf) -> None:
    path = gguf("31b", "Q8_0")
    prompts = _margin_prompts(path, [f"Question number {i}: what is {i} plus {i}?" for i in range(40)], 4, 16, 0.2)
    with Served(path, "--parallel", "1") as one:
        alone = [
            httpx.post(
                one.url + "/v1/chat/completions",
                timeout=60,
                json={"model": M31, "temperature": 0, "max_tokens": 16, "messages": [{"role": "user", "content": p}]},
            ).json()["choices"][0]["message"]["content"]
            for p in prompts
        ]
    with Served(path, "--parallel", "4") as four:
        out: dict[int, str] = {}

        def one_request(i: int) -> None:
            r = httpx.post(
                four.url + "/v1/chat/completions",
                timeout=120,
                json={
                    "model": M31,
                    "temperature": 0,
                    "max_tokens": 16,
                    "messages": [{"role": "user", "content": prompts[i]}],
                },
            )
            out[i] = r.json()["choices"][0]["message"]["content"]

        threads = [threading.Thread(target=one_request, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert [out[i] for i in range(4)] == alone


@pytest.fixture(scope="module")
def tool_model(tmp_path_factory, gemma4_template):
    """A scripted model that always calls get_weather(city="Paris"), with the real Gemma 4 template."""
    from scripted import scripted_checkpoint

    from quantize.converter import convert

    d = tmp_path_factory.mktemp("toolcaller")
    script = ['<|tool_call>call:get_weather{city:<|"|>', "Paris", '<|"|>,days:', "3}<tool_call|>"]
    ckpt = scripted_checkpoint(d / "ckpt", script)
    (ckpt / "chat_template.jinja").write_text(gemma4_template, encoding="utf-8")
    out = d / "toolcaller.gguf"
    convert(ckpt, out, quant="Q8_0", mmproj_type=None)
    return out


WEATHER = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The weather in a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
                "required": ["city"],
            },
        },
    }
]


def test_tool_calls_streamed_and_not_and_fed_back(tool_model) -> None:
    from openai import OpenAI

    with Served(tool_model) as s:
        oa = OpenAI(base_url=s.url + "/v1", api_key="unused", max_retries=0)
        messages = [{"role": "user", "content": "Weather in Paris?"}]
        r = oa.chat.completions.create(model="toolcaller", messages=messages, tools=WEATHER, temperature=0)
        choice = r.choices[0]
        assert choice.finish_reason == "tool_calls" and not choice.message.content
        (call,) = choice.message.tool_calls
        assert call.type == "function" and call.function.name == "get_weather" and call.id.startswith("call_")
        assert json.loads(call.function.arguments) == {"city": "Paris", "days": 3}
        chunks = list(oa.chat.completions.create(model="toolcaller", messages=messages, tools=WEATHER, stream=True))
        deltas = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
        assert deltas[0].function.name == "get_weather" and deltas[0].id.startswith("call_")
        assert json.loads("".join(d.function.arguments or "" for d in deltas)) == {"city": "Paris", "days": 3}
        assert chunks[-1].choices[0].finish_reason == "tool_calls"
        follow = [
            *messages,
            {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
            {"role": "tool", "tool_call_id": call.id, "content": "sunny, 24 C"},
        ]
        again = oa.chat.completions.create(model="toolcaller", messages=follow, tools=WEATHER, temperature=0)
        assert again.usage.prompt_tokens > r.usage.prompt_tokens  # the call and its result went in
        # without tools offered the same text is plain content
        plain = oa.chat.completions.create(model="toolcaller", messages=messages, temperature=0)
        assert plain.choices[0].message.tool_calls is None and "call:get_weather" in plain.choices[0].message.content
        bad = httpx.post(
            s.url + "/v1/chat/completions",
            json={
                "model": "toolcaller",
                "messages": messages,
                "tools": [{"type": "function", "function": {"name": "bad name"}}],
            },
        )
        assert bad.status_code == 400 and "tools[0].function.name" in bad.json()["error"]["message"]


PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 12},
        "age": {"type": "integer"},
        "role": {"enum": ["admin", "user"]},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 6}, "maxItems": 3},
    },
    "required": ["name", "age", "role"],
    "additionalProperties": False,
}


def test_json_schema_answers_validate_sampled_and_greedy(oa, ol) -> None:
    import jsonschema

    fmt = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON}}
    for seed in range(6):
        r = oa.chat.completions.create(
            model=M31,
            messages=[{"role": "user", "content": "A person as JSON"}],
            response_format=fmt,
            temperature=1.0,
            seed=seed,
            max_tokens=200,
        )
        assert r.choices[0].finish_reason == "stop", r.choices[0].message.content
        jsonschema.validate(json.loads(r.choices[0].message.content), PERSON)
    obj = oa.chat.completions.create(
        model=M31,
        messages=[{"role": "user", "content": "JSON please"}],
        response_format={"type": "json_object"},
        temperature=0,
        max_tokens=200,
    )
    if obj.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(obj.choices[0].message.content), dict)
    g = ol.chat(
        model=M31,
        messages=[{"role": "user", "content": "A person"}],
        format=PERSON,
        options={"temperature": 0.8, "seed": 3, "num_predict": 200},
    )
    jsonschema.validate(json.loads(g.message.content), PERSON)


def test_unsupported_schema_features_are_400(server) -> None:
    for schema, word in (({"type": "string", "pattern": "^a+$"}, "pattern"), ({"not": {"type": "null"}}, "not")):
        r = httpx.post(
            server.url + "/v1/chat/completions",
            json={
                "model": M31,
                "messages": [{"role": "user", "content": "x"}],
                "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}},
            },
        )
        assert r.status_code == 400 and word in r.json()["error"]["message"], r.text


@pytest.fixture(scope="module")
def thinker(tmp_path_factory):
    """A scripted model that, asked to think, thinks "Counting the legs." and answers "Four legs.";
    not asked, it answers "Four legs." at once."""
    from scripted import scripted_gguf

    d = tmp_path_factory.mktemp("thinker")
    return scripted_gguf(d, ["<|channel>", "thought\nCounting the legs.", "<channel|>", "Four", " legs."])


def test_thinking_goes_to_reasoning_content_never_into_content(thinker, run_g4) -> None:
    import ollama
    from openai import OpenAI

    ask = [{"role": "user", "content": "How many legs has a cat?"}]
    with Served(thinker) as s:
        oa = OpenAI(base_url=s.url + "/v1", api_key="unused", max_retries=0)
        name = thinker.stem
        plain = oa.chat.completions.create(model=name, messages=ask, temperature=0)
        assert plain.choices[0].message.content == "Four legs."  # thinking is off by default
        assert getattr(plain.choices[0].message, "reasoning_content", None) in (None, "")
        for extra in (
            {"reasoning_effort": "high"},
            {"extra_body": {"chat_template_kwargs": {"enable_thinking": True}}},
        ):
            r = oa.chat.completions.create(model=name, messages=ask, temperature=0, **extra)
            msg = r.choices[0].message
            assert msg.content == "Four legs." and msg.reasoning_content == "Counting the legs.", extra
            chunks = list(oa.chat.completions.create(model=name, messages=ask, temperature=0, stream=True, **extra))
            deltas = [c.choices[0].delta for c in chunks if c.choices]
            assert "".join(d.content or "" for d in deltas) == "Four legs."
            assert "".join(getattr(d, "reasoning_content", None) or "" for d in deltas) == "Counting the legs."
        ol = ollama.Client(host=s.url)
        r = ol.chat(model=name, messages=ask, think=True, options={"temperature": 0})
        assert r.message.content == "Four legs." and r.message.thinking == "Counting the legs."
        assert ol.chat(model=name, messages=ask, options={"temperature": 0}).message.content == "Four legs."
        bad = httpx.post(
            s.url + "/v1/chat/completions",
            json={"model": name, "messages": ask, "reasoning_effort": "very"},
        )
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "reasoning_effort"
    # g4 chat itself: the thought on stderr, the answer alone on stdout
    r = run_g4("chat", thinker, "How many legs has a cat?", "--think", "--temp", "0", "--local")
    assert r.returncode == 0 and r.out == "Four legs.\n" and "Counting the legs." in r.err


def test_a_model_beyond_max_memory_is_503_and_the_server_goes_on(run_g4, tiny) -> None:
    pulled = run_g4("pull", tiny("31b"), "--name", "mini", "-q", "q8_0")
    assert pulled.returncode == 0, pulled.err
    ask = {"model": "mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    with Served("--max-memory", "0.001", "--log-format", "json", "--host", "0.0.0.0") as s:
        assert "without --api-key" in s.log  # bound beyond loopback with no key: warned
        r = httpx.post(s.url + "/v1/chat/completions", json=ask, timeout=60)
        assert r.status_code == 503 and "not enough memory to load mini" in r.json()["error"]["message"]
        missing = httpx.post(s.url + "/v1/chat/completions", json={**ask, "model": "../../etc/passwd"}, timeout=60)
        assert missing.status_code in (400, 404) and missing.json()["error"]["message"]
        assert httpx.get(s.url + "/health").status_code == 200
        assert s.wait_log('"status": 200')
        entries = [json.loads(line) for line in s.lines if line.startswith("{")]
        by_status = {e["status"]: e for e in entries}
        assert by_status[503]["route"] == "/v1/chat/completions" and by_status[503]["model"] == "mini"
    with Served("--max-memory", "8") as s:  # room enough: loaded from the store on first use
        r = httpx.post(s.url + "/v1/chat/completions", json=ask, timeout=60)
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 2
