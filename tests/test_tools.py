"""Gemma 4 tool calling: request validation, the streaming call parser, the real chat template,
and forced-call grammars run by llama.cpp on a tiny model."""

from __future__ import annotations

import ctypes
import json
import math
import random
import re
import shutil
import time
from collections.abc import Callable, Iterator
from typing import Any

import llama_cpp
import pytest

from g4cli.chat.conversation import Stats, Turn, to_template_messages
from g4cli.chat.settings import Sampling
from g4cli.chat.template import prompt_text, render
from g4cli.errors import UsageError
from g4cli.serve import tool_grammar
from g4cli.serve import tools as T

Q = '<|"|>'  # Gemma 4's string delimiter token

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "description": "City name"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city"],
        },
    },
}
SEARCH = {
    "type": "function",
    "function": {
        "name": "web.search",
        "description": "Search the web",
        "parameters": {"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]},
    },
}


def call(cid: str | None, name: str, args: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "function", "function": {"name": name, "arguments": json.dumps(args)}}
    return {"id": cid, **out} if cid else out


def gemma_call(name: str, body: str) -> str:
    return f"<|tool_call>call:{name}{body}<tool_call|>"


def counting_ids() -> Callable[[], str]:
    n = iter(range(1 << 30))
    return lambda: f"call_{next(n)}"


def run(pieces: list[str], names: list[str] | None = None) -> list[tuple]:
    """Feed ``pieces`` to a parser; its items with content merged and each call's deltas
    merged into ("call", index, id, name, arguments) (checking the OpenAI delta shapes)."""
    p = T.ToolCallParser(names, new_id=counting_ids())
    items: list[tuple[str, Any]] = []
    for piece in pieces:
        items += p.feed(piece)
    items += p.finish()
    out: list[list] = []
    for kind, value in items:
        if kind == "content":
            assert isinstance(value, str) and value
            if out and out[-1][0] == "content":
                out[-1][1] += value
            else:
                out.append(["content", value])
            continue
        assert kind == "tool_call"
        if "id" in value:  # the first delta of a call
            assert value["type"] == "function" and set(value["function"]) == {"name", "arguments"}
            assert value["function"]["arguments"] == ""
            out.append(["call", value["index"], value["id"], value["function"]["name"], ""])
        else:
            assert set(value) == {"index", "function"} and set(value["function"]) == {"arguments"}
            assert out[-1][0] == "call" and out[-1][1] == value["index"]
            out[-1][4] += value["function"]["arguments"]
    assert [c[1:] for c in out if c[0] == "call"] == [
        [i, c["id"], c["function"]["name"], c["function"]["arguments"]] for i, c in enumerate(p.calls)
    ]
    return [tuple(x) for x in out]


# --- the parser ---------------------------------------------------------------------------------


def test_a_call_becomes_an_openai_tool_call_with_json_arguments() -> None:
    content, calls = T.parse(gemma_call("get_weather", f"{{city:{Q}Paris{Q},days:3}}"))
    assert content == ""
    assert len(calls) == 1
    c = calls[0]
    assert re.fullmatch(r"call_[A-Za-z0-9]{24}", c["id"])
    assert c["type"] == "function" and c["function"]["name"] == "get_weather"
    assert isinstance(c["function"]["arguments"], str)
    assert json.loads(c["function"]["arguments"]) == {"city": "Paris", "days": 3}


def test_deltas_have_the_openai_streaming_shape() -> None:
    p = T.ToolCallParser(new_id=counting_ids())
    text = "Let me look. " + gemma_call("f", "{a:1}") + gemma_call("web.search", f"{{q:{Q}x{Q}}}")
    assert p.feed(text) + p.finish() == [
        ("content", "Let me look. "),
        ("tool_call", {"index": 0, "id": "call_0", "type": "function", "function": {"name": "f", "arguments": ""}}),
        ("tool_call", {"index": 0, "function": {"arguments": '{"a":1}'}}),
        (
            "tool_call",
            {"index": 1, "id": "call_1", "type": "function", "function": {"name": "web.search", "arguments": ""}},
        ),
        ("tool_call", {"index": 1, "function": {"arguments": '{"q":"x"}'}}),
    ]


def test_several_calls_and_the_text_around_them() -> None:
    text = "Sure.\n" + gemma_call("a", "{}") + gemma_call("b", "{n:2}") + "\nDone."
    assert run([text]) == [
        ("content", "Sure.\n"),
        ("call", 0, "call_0", "a", "{}"),
        ("call", 1, "call_1", "b", '{"n":2}'),
        ("content", "\nDone."),
    ]
    _, calls = T.parse(text)
    assert len({c["id"] for c in calls}) == 2


VALUES = [
    (f"{Q}{Q}", ""),
    (f'{Q}say "hi"{Q}', 'say "hi"'),
    (f"{Q}C:\\path\\ and \\n{Q}", "C:\\path\\ and \\n"),
    (f"{Q}line 1\nline 2\ttab\r{Q}", "line 1\nline 2\ttab\r"),
    (f"{Q}\x00\x01\x1f\x7f{Q}", "\x00\x01\x1f\x7f"),
    (f"{Q}naïve 日本語 🎉 \u2028{Q}", "naïve 日本語 🎉 \u2028"),
    (
        f"{Q}{{a:1}}, [x], <tool_call|> <|tool_call>call:f{{}} <|channel>{Q}",
        "{a:1}, [x], <tool_call|> <|tool_call>call:f{} <|channel>",
    ),
    ("0", 0),
    ("-12", -12),
    ("3.25", 3.25),
    ("-1.5e-3", -1.5e-3),
    ("2E+10", 2e10),
    ("123456789012345678901234567890", 123456789012345678901234567890),
    ("true", True),
    ("false", False),
    ("null", None),
    ("None", None),  # how jinja2 writes a null the template formats
    ("[]", []),
    ("{}", {}),
    (f"[1,{Q}a{Q},[true,null],{{k:{{}}}}]", [1, "a", [True, None], {"k": {}}]),
    ("{outer:{inner:{deep:[{x:1},[[]]]}}}", {"outer": {"inner": {"deep": [{"x": 1}, [[]]]}}}),
    ("{ a : 1 ,\n b :[ 1 , 2 ] }", {"a": 1, "b": [1, 2]}),  # spaces, as llama.cpp's grammar allows
    (f"{{{Q}quoted: key{Q}:1}}", {"quoted: key": 1}),  # keys as the template writes declarations
    ('{first name:1,"odd":2}', {"first name": 1, '"odd"': 2}),
]


@pytest.mark.parametrize("gemma, expected", VALUES)
def test_values_become_json(gemma: str, expected: object) -> None:
    content, calls = T.parse(gemma_call("f", f"{{v:{gemma}}}"))
    assert content == ""
    args = calls[0]["function"]["arguments"]
    assert json.loads(args) == {"v": expected}  # strict JSON: control characters must be escaped
    if isinstance(expected, (int, float)) and not isinstance(expected, bool):
        assert args == '{"v":' + gemma + "}"  # numbers verbatim


MALFORMED = [
    "<|tool_call>call:f{a:1<tool_call|>",  # dict not closed
    "<|tool_call>call:f{a:1,}<tool_call|>",  # trailing comma
    "<|tool_call>call:f{a:Paris}<tool_call|>",  # a bare word is no value
    "<|tool_call>call:f{a:01}<tool_call|>",
    "<|tool_call>call:f{a:1.}<tool_call|>",
    "<|tool_call>call:f{a:inf}<tool_call|>",
    "<|tool_call>call:f{a:truex}<tool_call|>",
    "<|tool_call>call:f{a:1}}<tool_call|>",
    "<|tool_call>call:f{a:1} x<tool_call|>",
    "<|tool_call>call:f{:1}<tool_call|>",
    "<|tool_call>call:f{a}<tool_call|>",
    "<|tool_call>call:f{a:[1,2}<tool_call|>",
    f"<|tool_call>call:f{{a:{Q}never closed}}<tool_call|>",  # the string swallows the rest
    "<|tool_call>call:f[1]<tool_call|>",  # arguments must be a dict
    "<|tool_call>call:f<tool_call|>",
    "<|tool_call>call:{a:1}<tool_call|>",  # no name
    "<|tool_call>call:get weather{a:1}<tool_call|>",
    "<|tool_call>call:" + "x" * 65 + "{}<tool_call|>",  # names are at most 64 characters
    "<|tool_call>cal:f{a:1}<tool_call|>",
    "<|tool_call>get_weather{a:1}<tool_call|>",
    "<|tool_call>call:f{a:1}",  # never closed
    "<|tool_call>call:f",
    "<|tool_call>",
    "<tool_call|> stray end",
]


@pytest.mark.parametrize("text", MALFORMED)
def test_a_malformed_call_is_content_exactly_as_written(text: str) -> None:
    whole = "before " + text + " after"
    assert run([whole]) == [("content", whole)]
    assert run(list(whole)) == [("content", whole)]


def test_a_function_that_was_not_declared_is_content() -> None:
    text = gemma_call("rm_rf", "{}") + gemma_call("web.search", f"{{query:{Q}x{Q}}}")
    assert run([text], names=["web.search"]) == [
        ("content", gemma_call("rm_rf", "{}")),
        ("call", 0, "call_0", "web.search", '{"query":"x"}'),
    ]
    assert [c[0] for c in run([text])] == ["call", "call"]  # without names, any valid name


def test_a_bad_call_does_not_spoil_the_next_one() -> None:
    bad = gemma_call("f", "{a:}")
    assert run([bad + gemma_call("f", "{a:1}")]) == [("content", bad), ("call", 0, "call_0", "f", '{"a":1}')]
    unclosed = "<|tool_call>call:f{a:1"  # a new call begins before this one ended
    assert run([unclosed + gemma_call("f", "{a:2}")]) == [
        ("content", unclosed),
        ("call", 0, "call_0", "f", '{"a":2}'),
    ]


def test_text_streams_at_once_holding_back_only_a_possible_call_start() -> None:
    p = T.ToolCallParser()
    assert p.feed("Hello wor") == [("content", "Hello wor")]
    assert p.feed("ld <|tool") == [("content", "ld ")]
    assert p.feed("kit> and <") == [("content", "<|toolkit> and ")]
    assert p.feed("b>") == [("content", "<b>")]
    assert p.feed("<|tool_call>call:f{a:") == []  # a call is emitted whole, when it ends
    assert [k for k, _ in p.feed("1}<tool_call|> <")] == ["tool_call", "tool_call", "content"]
    assert p.finish() == [("content", "<")]


STREAM = (
    "Checking < and <|tool_c... now. "
    + gemma_call("get_weather", f'{{city:{Q}Pa"ris\\ <tool_call|> 🎉\n{Q},days:[1,-2.5e3,true,null],opts:{{}}}}')
    + gemma_call("web.search", f"{{query:{Q}{Q}}}")
    + "\n"
    + gemma_call("broken", "{a:<|tool_")
    + gemma_call("web.search", f"{{query:{Q}<|{Q}}}")
    + " <tool_call|> done <|tool_cal"
)


def test_the_result_does_not_depend_on_how_the_stream_is_split() -> None:
    whole = run([STREAM])
    assert [x[0] for x in whole] == ["content", "call", "call", "content", "call", "content"]
    assert whole[1][3:] == (
        "get_weather",
        '{"city":"Pa\\"ris\\\\ <tool_call|> 🎉\\n","days":[1,-2.5e3,true,null],"opts":{}}',
    )
    assert whole[3] == ("content", "\n" + gemma_call("broken", "{a:<|tool_"))
    assert whole[5] == ("content", " <tool_call|> done <|tool_cal")
    assert run(list(STREAM)) == whole  # one character at a time
    for cut in range(len(STREAM) + 1):  # every single boundary
        assert run([STREAM[:cut], STREAM[cut:]]) == whole, cut
    rng = random.Random(11)
    for _ in range(300):  # random pieces
        cuts = sorted(rng.sample(range(1, len(STREAM)), rng.randint(2, 40)))
        pieces = [STREAM[a:b] for a, b in zip([0, *cuts], [*cuts, len(STREAM)])]
        assert run(pieces) == whole, cuts


# --- validation ---------------------------------------------------------------------------------


def test_prepare_says_what_to_declare_and_what_to_force() -> None:
    assert T.prepare(None, None) == (None, None)
    assert T.prepare([], "auto") == (None, None)
    offered, grammar = T.prepare([WEATHER, SEARCH], None)  # the default with tools: auto
    assert offered == [WEATHER, SEARCH] and grammar is None
    assert T.prepare([WEATHER, SEARCH], "auto") == (offered, None)
    assert T.prepare([WEATHER, SEARCH], "none") == (None, None)  # not declared at all
    _, grammar = T.prepare([WEATHER, SEARCH], "required")
    assert grammar is not None and '"get_weather"' in grammar and '"web.search"' in grammar
    assert grammar.startswith("root ::= call+\n")
    _, grammar = T.prepare([WEATHER, SEARCH], "required", parallel=False, think=True)
    assert grammar is not None and grammar.startswith("root ::= thought? call\n")
    _, grammar = T.prepare([WEATHER, SEARCH], {"type": "function", "function": {"name": "web.search"}})
    assert grammar is not None and '"web.search"' in grammar and "get_weather" not in grammar
    assert T.names(offered) == ["get_weather", "web.search"]


def fn(**function: Any) -> dict[str, Any]:
    return {"type": "function", "function": {"name": "f", **function}}


BAD_TOOLS = [
    ({"type": "function"}, "tools must be a list"),
    ([{"function": {"name": "f"}}], 'tools[0].type must be "function"'),
    ([{"type": "function"}], "tools[0].function must be an object"),
    ([fn(name="get weather")], "tools[0].function.name 'get weather' is not a valid function name"),
    ([fn(name="x" * 65)], "is not a valid function name"),
    ([fn(name=7)], "tools[0].function.name 7 is not a valid"),
    ([fn(), fn()], "tools[1].function.name 'f' is declared twice"),
    ([fn(description=["x"])], "tools[0].function.description must be a string"),
    ([fn(parameters={"type": "string"})], 'tools[0].function.parameters must be a JSON schema of "type": "object"'),
    ([fn(parameters={"properties": []})], "tools[0].function.parameters.properties must be an object"),
    ([fn(parameters={"properties": {"a:b": {}}})], "'a:b' cannot be a Gemma 4 key"),
    ([fn(parameters={"properties": {" a": {}}})], "' a' cannot be a Gemma 4 key"),
    ([fn(parameters={"properties": {"a": "string"}})], "parameters.properties.a must be a JSON schema object"),
    ([fn(parameters={"properties": {"a": {"properties": {"b}": {}}}}})], "parameters.properties.a.properties: 'b}'"),
    ([fn(parameters={"properties": {}, "required": "a"})], "parameters.required must be a list of property names"),
    ([fn(parameters={"properties": {"a": {"enum": "x"}}})], "parameters.properties.a.enum must be a list"),
]


@pytest.mark.parametrize("tools, message", BAD_TOOLS)
def test_bad_tools_are_one_line_usage_errors(tools: object, message: str) -> None:
    with pytest.raises(UsageError) as e:
        T.prepare(tools, None)
    assert message in str(e.value) and "\n" not in str(e.value)


BAD_CHOICES = [
    ("sometimes", "tool_choice 'sometimes' is not"),
    ({"type": "function", "function": {"name": "nope"}}, "tool_choice names 'nope', which is not in tools"),
    ({"type": "function"}, "tool_choice must be"),
    ({"function": {"name": "get_weather"}}, "tool_choice must be"),
    (42, "tool_choice must be"),
]


@pytest.mark.parametrize("choice, message", BAD_CHOICES)
def test_bad_tool_choice_is_a_one_line_usage_error(choice: object, message: str) -> None:
    with pytest.raises(UsageError) as e:
        T.prepare([WEATHER], choice)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_a_forced_call_needs_tools() -> None:
    with pytest.raises(UsageError, match='tool_choice "required" needs tools'):
        T.prepare(None, "required")
    with pytest.raises(UsageError, match="not in tools"):
        T.prepare([], {"type": "function", "function": {"name": "f"}})


def test_calls_in_messages_are_checked_openai_and_ollama_forms() -> None:
    where = "messages[1].tool_calls"
    out = T.check_calls([call("c1", "f", {"a": 1}), {"function": {"name": "g", "arguments": {"b": [1]}}}], where)
    assert out is not None and out[0]["id"] == "c1" and "id" not in out[1]
    assert [json.loads(c["function"]["arguments"]) for c in out] == [{"a": 1}, {"b": [1]}]
    assert T.check_calls([{"function": {"name": "f"}}], where)[0]["function"]["arguments"] == "{}"  # type: ignore[index]
    assert T.check_calls(None, where) is None and T.check_calls([], where) is None
    for bad in (
        [{"function": {"name": "f", "arguments": "{not json"}}],
        [{"function": {"name": "f", "arguments": "[1]"}}],
        [{"function": {"arguments": "{}"}}],
        ["f"],
        "f",
    ):
        with pytest.raises(UsageError, match=re.escape(where)):
            T.check_calls(bad, where)


# --- the real chat template ---------------------------------------------------------------------


def prompt(template: str, turns: list[Turn], tools: list[dict] | None = None) -> str:
    return prompt_text(template, turns, think=False, bos="<bos>", marker="<__media__>", tools=tools)


def test_the_template_declares_tools_and_answers_each_call_by_its_id(gemma4_template: str) -> None:
    offered, _ = T.prepare([WEATHER, SEARCH], "auto")
    turns = [
        Turn("system", "Be brief."),
        Turn("user", "Weather in Paris, and cafés?"),
        Turn(
            "assistant",
            "",
            tool_calls=[call("c_a", "get_weather", {"city": "Paris"}), call("c_b", "web.search", {"query": "cafés"})],
        ),
        Turn("tool", "3 cafés", tool_call_id="c_b"),  # results in the other order: matched by id
        Turn("tool", '{"temp": 21}', tool_call_id="c_a"),
        Turn("assistant", "21 °C, 3 cafés."),
        Turn("user", "Thanks!"),
    ]
    text = prompt(gemma4_template, turns, offered)
    system = text[: text.index("<turn|>")]
    assert system.startswith("<bos><|turn>system\nBe brief.<|tool>declaration:get_weather{")
    # keys bare and sorted, strings in <|"|>, types upper-cased
    assert (
        '<|tool>declaration:get_weather{description:<|"|>Current weather<|"|>,parameters:{properties:{'
        'city:{description:<|"|>City name<|"|>,type:<|"|>STRING<|"|>},'
        'unit:{enum:[<|"|>celsius<|"|>,<|"|>fahrenheit<|"|>],type:<|"|>STRING<|"|>}},'
        'required:[<|"|>city<|"|>],type:<|"|>OBJECT<|"|>}}<tool|>'
    ) in system
    assert '<|tool>declaration:web.search{description:<|"|>Search the web<|"|>,parameters:{' in system
    model_turn = text[text.index("<|turn>model\n") :]
    assert model_turn.startswith(
        "<|turn>model\n"
        '<|tool_call>call:get_weather{city:<|"|>Paris<|"|>}<tool_call|>'
        '<|tool_call>call:web.search{query:<|"|>cafés<|"|>}<tool_call|>'
        '<|tool_response>response:web.search{value:<|"|>3 cafés<|"|>}<tool_response|>'
        '<|tool_response>response:get_weather{value:<|"|>{"temp": 21}<|"|>}<tool_response|>'
        "21 °C, 3 cafés.<turn|>\n"
    )
    assert text.endswith("<|turn>user\nThanks!<turn|>\n<|turn>model\n<|channel>thought\n<channel|>")


def test_a_call_the_template_writes_parses_back_to_the_same_call(gemma4_template: str) -> None:
    args = {
        "city": 'Pa"ris \\ C:\\x\n2nd line',
        "days": 3,
        "ratio": -0.25,
        "big": 1e22,
        "detail": True,
        "none": None,
        "tags": ["a", "", "日本"],
        "where": {"lat": 48.85, "lon": 2.35, "Name": {"deep": [[], {}]}},
    }
    calls = [call("c1", "get_weather", args), call("c2", "web.search", {"query": "x"}), call("c3", "noargs", {})]
    turns = [Turn("user", "q"), Turn("assistant", "", tool_calls=calls)]
    text = render(gemma4_template, to_template_messages(turns), add_generation_prompt=False)
    start, end = text.index("<|tool_call>"), text.rindex("<tool_call|>") + len("<tool_call|>")
    assert text[end:] == "<|tool_response>"  # a call with no response yet: the model waits
    content, parsed = T.parse(text[start:end])
    assert content == ""
    assert [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in parsed] == [
        ("get_weather", args),
        ("web.search", {"query": "x"}),
        ("noargs", {}),
    ]


def test_results_without_ids_pair_with_calls_by_name_then_in_order(gemma4_template: str) -> None:
    calls = [
        {"function": {"name": "get_weather", "arguments": {"city": "Oslo"}}},  # Ollama: no ids, objects
        {"function": {"name": "web.search", "arguments": {"query": "x"}}},
    ]
    turns = [Turn("user", "q"), Turn("assistant", "", tool_calls=calls), Turn("tool", "found", name="web.search")]
    turns.append(Turn("tool", "cold"))
    text = prompt(gemma4_template, turns)
    assert '<|tool_call>call:get_weather{city:<|"|>Oslo<|"|>}<tool_call|>' in text
    assert (
        '<|tool_response>response:web.search{value:<|"|>found<|"|>}<tool_response|>'
        '<|tool_response>response:get_weather{value:<|"|>cold<|"|>}<tool_response|>'
    ) in text


def test_junk_calls_from_a_client_do_not_break_the_template(gemma4_template: str) -> None:
    junk = [{"function": {"name": None, "arguments": 5}}, "x", {"id": 3, "function": {"name": "f", "arguments": "a:1"}}]
    text = prompt(gemma4_template, [Turn("user", "q"), Turn("assistant", "", tool_calls=junk), Turn("tool", "r")])
    assert "<|tool_call>call:{}<tool_call|><|tool_call>call:{}<tool_call|><|tool_call>call:f{a:1}<tool_call|>" in text
    assert '<|tool_response>response:{value:<|"|>r<|"|>}<tool_response|>' in text


def test_thinking_is_resent_with_tool_calls_only(gemma4_template: str) -> None:
    turns = [
        Turn("user", "q"),
        Turn("assistant", "", thought="I should look it up.", tool_calls=[call("c1", "web.search", {"query": "q"})]),
        Turn("tool", "r", tool_call_id="c1"),
        Turn("assistant", "done", thought="a private thought"),
    ]
    text = prompt(gemma4_template, turns)
    assert "<|turn>model\n<|channel>thought\nI should look it up.\n<channel|><|tool_call>call:web.search" in text
    assert "private" not in text


def test_without_tools_the_prompt_is_as_before(gemma4_template: str) -> None:
    turns = [Turn("user", "hi")]
    plain = render(gemma4_template, to_template_messages(turns))
    assert prompt(gemma4_template, turns) == plain == prompt(gemma4_template, turns, [])
    assert plain == "<bos><|turn>user\nhi<turn|>\n<|turn>model\n<|channel>thought\n<channel|>"
    assert to_template_messages([Turn("assistant", "x")]) == [{"role": "assistant", "content": "x"}]


# --- grammars in llama.cpp, on a tiny model -----------------------------------------------------


@pytest.fixture(scope="module")
def tool_model(
    tiny: Callable[..., Any], gemma4_template: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Any]:
    """A tiny text-only 31B-family model carrying the real Gemma 4 chat template."""
    from g4cli.chat.runtime.model import Model
    from quantize.converter import convert

    ckpt = tmp_path_factory.mktemp("ckpt-tools")
    shutil.copytree(tiny("31b", vision=False, audio=False), ckpt, dirs_exist_ok=True)
    (ckpt / "chat_template.jinja").write_text(gemma4_template, encoding="utf-8")
    out = tmp_path_factory.mktemp("gguf-tools") / "tools-Q8_0.gguf"
    convert(ckpt, out, quant="Q8_0", mmproj_type=None)
    with Model(out, n_ctx=2048, n_threads=1) as model:
        assert model.template == gemma4_template
        yield model


class Grammar:
    """llama.cpp's grammar sampler over the whole vocabulary, one token at a time."""

    def __init__(self, model: Any, gbnf: str) -> None:
        self.model = model
        self.smpl = llama_cpp.llama_sampler_init_grammar(model.vocab, gbnf.encode(), b"root")
        assert self.smpl, "llama.cpp refused the grammar"

    def allowed(self) -> set[int]:
        n = self.model.n_vocab
        data = (llama_cpp.llama_token_data * n)()
        for i in range(n):
            data[i].id, data[i].logit, data[i].p = i, 0.0, 0.0
        arr = llama_cpp.llama_token_data_array(data, n, -1, False)
        llama_cpp.llama_sampler_apply(self.smpl, ctypes.byref(arr))
        return {data[i].id for i in range(n) if not math.isinf(data[i].logit)}

    def walk(self, tokens: list[int]) -> int | None:
        """Accept ``tokens`` in turn; the index of the first one the grammar refuses, else None."""
        for i, tok in enumerate(tokens):
            if tok not in self.allowed():
                return i
            llama_cpp.llama_sampler_accept(self.smpl, tok)
        return None

    def only_the_end(self) -> bool:
        return all(self.model.is_eog(t) for t in self.allowed())

    def close(self) -> None:
        llama_cpp.llama_sampler_free(self.smpl)


def test_llama_cpp_grammars_match_special_tokens_by_text_or_by_token(tool_model: Any) -> None:
    m = tool_model
    (call_tok,) = m.tokenize("<|tool_call>")
    (lt,) = m.tokenize("<", special=False)
    for gbnf, expected in (
        ('root ::= "<|tool_call>"', {call_tok, lt}),  # a quoted literal: the token (its text) or a spelling
        ("root ::= <|tool_call>", {call_tok}),  # token syntax: that one token
        (f"root ::= <[{call_tok}]>", {call_tok}),  # the same by id
    ):
        g = Grammar(m, gbnf)
        allowed = g.allowed()
        g.close()
        assert expected <= allowed and (lt in allowed) == (lt in expected), gbnf
        if lt not in expected:
            assert allowed == {call_tok}


GRAMMAR_TOOLS = [
    WEATHER,
    SEARCH,
    {
        "type": "function",
        "function": {
            "name": "plan",
            "parameters": {
                "type": "object",
                "properties": {
                    "steps": {
                        "type": "array",
                        "items": {"type": "string", "maxLength": 4},
                        "minItems": 1,
                        "maxItems": 2,
                    },
                    "n": {"type": "integer", "minimum": 0},
                    "x": {"type": "number"},
                    "ok": {"type": "boolean"},
                    "maybe": {"type": ["string", "null"]},
                    "pick": {"anyOf": [{"const": 1}, {"type": "object", "properties": {"y": {"type": "integer"}}}]},
                },
                "required": ["steps"],
            },
        },
    },
    {"type": "function", "function": {"name": "noargs"}},
]
ACCEPTED = [
    ({}, gemma_call("get_weather", f'{{city:{Q}Pa"ris <x <|a <c <|c {Q}}}')),
    ({}, gemma_call("get_weather", f"{{city:{Q}{Q},unit:{Q}fahrenheit{Q}}}")),
    ({}, gemma_call("web.search", f"{{query:{Q}<tool_call|> and <|tool_call> inside{Q}}}")),
    ({}, gemma_call("plan", f"{{steps:[{Q}ab<d{Q},{Q}{Q}]}}")),
    ({}, gemma_call("plan", f"{{maybe:null,n:0,ok:false,pick:{{y:-3}},steps:[{Q}a{Q}],x:-1.5e-3}}")),
    ({}, gemma_call("plan", f"{{pick:1,steps:[{Q}a{Q}]}}")),
    ({}, gemma_call("noargs", "{}")),
    ({"parallel": True}, gemma_call("noargs", "{}") + gemma_call("web.search", f"{{query:{Q}q{Q}}}")),
    ({"only": "web.search"}, gemma_call("web.search", f"{{query:{Q}q{Q}}}")),
    ({"think": True}, '<|channel>thought\nlet me <chan <|"|> think<channel|>' + gemma_call("noargs", "{}")),
    ({"think": True}, gemma_call("noargs", "{}")),
    ({"schema": False}, gemma_call("noargs", f"{{any:[1,{{deep:{{x:{Q}y{Q}}}}}],e:{{}},n:null,b:true,f:2.5E+10}}")),
]


@pytest.mark.parametrize("options, text", ACCEPTED)
def test_the_forced_grammar_takes_these_calls_then_only_the_end(tool_model: Any, options: dict, text: str) -> None:
    kwargs = {"parallel": False, **options}
    g = Grammar(tool_model, tool_grammar.call_grammar(GRAMMAR_TOOLS, **kwargs))
    try:
        assert g.walk(tool_model.tokenize(text)) is None
        if kwargs["parallel"]:  # another call may follow, or the end
            assert {t for t in g.allowed() if not tool_model.is_eog(t)} == set(tool_model.tokenize("<|tool_call>"))
        else:
            assert g.only_the_end()
    finally:
        g.close()
    start = text.find("<|tool_call>")
    content, calls = T.parse(text[start:], T.names(GRAMMAR_TOOLS))  # what it takes, the parser reads
    assert content == "" and calls


REFUSED = [  # (options, parts: text or (text, special), the text the refused token must cover: its last one)
    ({}, [gemma_call("rm", "{}")], "rm"),  # not declared
    ({}, [gemma_call("get_weather", f"{{unit:{Q}celsius{Q}}}")], "unit"),  # the required city is missing
    ({}, [gemma_call("get_weather", f"{{city:{Q}x{Q},unit:{Q}kelvin{Q}}}")], "kelvin"),  # not in the enum
    ({}, [gemma_call("get_weather", f"{{city:{Q}x{Q},wind:1}}")], "wind"),  # not a property
    ({}, [gemma_call("plan", "{steps:[]}")], "]"),  # minItems 1
    ({}, [gemma_call("plan", f"{{steps:[{Q}abcde{Q}]}}")], "e"),  # maxLength 4
    ({}, [gemma_call("plan", f"{{n:-1,steps:[{Q}a{Q}]}}")], "-"),  # minimum 0
    ({}, [gemma_call("noargs", "{a:1}")], "a:1"),
    ({}, ["Sure. ", gemma_call("noargs", "{}")], "S"),  # nothing before the call
    ({}, [gemma_call("noargs", "{}") * 2], "<|tool_call>"),  # one call unless parallel
    ({"only": "web.search"}, [gemma_call("get_weather", f"{{city:{Q}x{Q}}}")], "get_weather"),
    ({}, ["<|channel>thought\nx<channel|>", gemma_call("noargs", "{}")], "<|channel>"),  # thinking is off
    ({}, [("<|tool_call", False)], "<"),  # the marker spelled out
    # a spelled-out closing quote can neither end a string nor stand in it
    ({}, [f"<|tool_call>call:web.search{{query:{Q}a", ('<|"|', False), (">", False)], ">"),
    ({}, [f"<|tool_call>call:web.search{{query:{Q}a<|channel>"], "<|channel>"),  # would open thinking
]


@pytest.mark.parametrize("options, parts, where", REFUSED)
def test_the_forced_grammar_refuses(tool_model: Any, options: dict, parts: list, where: str) -> None:
    m = tool_model
    tokens: list[int] = []
    for part in parts:
        text, special = part if isinstance(part, tuple) else (part, True)
        tokens += m.tokenize(text, special=special)
    g = Grammar(m, tool_grammar.call_grammar(GRAMMAR_TOOLS, **{"parallel": False, **options}))
    try:
        at = g.walk(tokens)
    finally:
        g.close()
    pieces = [m.piece(t, special=True) for t in tokens]
    full = "".join(pieces)
    assert at is not None, full
    start, pos = len("".join(pieces[:at])), full.rindex(where)
    assert start <= pos < start + len(pieces[at]), f"refused {pieces[at]!r} at {start}, expected at {pos}"


GEN_TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather in a city",
            "parameters": {
                "type": "object",
                "properties": {
                    "city": {"type": "string", "maxLength": 8},
                    "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                    "days": {"type": "integer", "minimum": 0},
                    "detail": {"type": "boolean"},
                    "at": {
                        "type": "object",
                        "properties": {
                            "lat": {"type": "integer"},
                            "tags": {"type": "array", "items": {"type": "boolean"}, "maxItems": 2},
                        },
                        "required": ["lat"],
                    },
                },
                "required": ["city", "unit"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "web.search",
            "parameters": {
                "type": "object",
                "properties": {
                    "query": {"type": "string", "maxLength": 6},
                    "top": {"anyOf": [{"type": "integer"}, {"type": "null"}]},
                },
                "required": ["query"],
            },
        },
    },
]


def conforms(value: object, schema: dict[str, Any]) -> bool:
    """The JSON-schema keywords GEN_TOOLS uses."""
    if "enum" in schema:
        return value in schema["enum"]
    if "anyOf" in schema:
        return any(conforms(value, s) for s in schema["anyOf"])
    kind = schema["type"]
    if kind == "object":
        props = schema.get("properties", {})
        return (
            isinstance(value, dict)
            and set(schema.get("required", [])) <= set(value) <= set(props)
            and all(conforms(v, props[k]) for k, v in value.items())
        )
    if kind == "array":
        return (
            isinstance(value, list)
            and len(value) <= schema.get("maxItems", math.inf)
            and all(conforms(v, schema["items"]) for v in value)
        )
    if kind == "string":  # at most maxLength pieces: characters, "<" + character counting as one
        return isinstance(value, str) and len(value) - value.count("<") <= schema.get("maxLength", math.inf)
    if kind == "integer":
        return isinstance(value, int) and not isinstance(value, bool) and value >= schema.get("minimum", -math.inf)
    return {"boolean": isinstance(value, bool), "null": value is None}[kind]


def generate(model: Any, prompt: str, gbnf: str, seed: int, max_tokens: int = 400) -> tuple[str, bool]:
    """g4's decoder under ``gbnf`` at temperature 1 with no truncation (the model's raw
    distribution); (the answer text, whether it ended by itself)."""
    from g4cli.chat.runtime.generate import Decoder

    model.reset()
    model.eval_prompt(prompt, [])
    seq = model.sequences[0]
    sampling = Sampling(temperature=1.0, top_k=0, top_p=1.0, seed=seed, max_tokens=max_tokens, grammar=gbnf)
    decoder = Decoder(model, seq, sampling, Stats(), time.perf_counter())
    text = []
    try:
        while True:
            events, tok = decoder.step()
            for event in events:
                assert event.kind == "text", "thinking opened inside a forced call"
                text.append(event.text)
            if tok is None:
                return "".join(text), decoder.finish == "stop"
            model.decode(seq, [tok], logits_last=True)
    finally:
        decoder.close()


@pytest.mark.slow
@pytest.mark.parametrize(
    "choice, parallel",
    [("required", True), ({"type": "function", "function": {"name": "web.search"}}, False)],
    ids=["required", "named"],
)
def test_a_tiny_model_forced_to_call_always_makes_valid_calls(tool_model: Any, choice: object, parallel: bool) -> None:
    offered, gbnf = T.prepare(GEN_TOOLS, choice, parallel=parallel)
    assert gbnf is not None
    text = tool_model.render([Turn("user", "What is the weather in Paris?")], False, tools=offered)
    assert "<|tool>declaration:get_weather{" in text and text.endswith("<|turn>model\n<|channel>thought\n<channel|>")
    schemas = {t["function"]["name"]: t["function"]["parameters"] for t in GEN_TOOLS}
    for seed in range(5):
        answer, ended = generate(tool_model, text, gbnf, seed)
        assert ended, f"seed {seed}: no end in sight: {answer[:200]!r}"
        content, calls = T.parse(answer, T.names(offered))
        assert content == "" and calls, f"seed {seed}: {answer!r}"
        if not parallel:
            assert len(calls) == 1
        for c in calls:
            name = c["function"]["name"]
            assert name in (schemas if choice == "required" else ["web.search"])
            args = json.loads(c["function"]["arguments"])
            assert conforms(args, schemas[name]), f"seed {seed}: {name} {args}"
