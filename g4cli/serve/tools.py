"""Gemma 4 function calling for the server: OpenAI ``tools`` in, OpenAI ``tool_calls`` out.

The format is the one Gemma 4's chat template writes (llama.cpp's
``models/templates/google-gemma-4-31B-it.jinja``) and llama.cpp parses
(``common/parsers/gemma4.cpp``, ``common/chat-peg-parser.cpp``)::

    <|tool_call>call:get_weather{city:<|"|>Paris<|"|>,days:3}<tool_call|>

strings wrapped in the ``<|"|>`` token, bare keys, numbers/true/false/null verbatim, nested
dicts and lists; several calls may follow each other. Three pieces:

- ``prepare(tools, tool_choice)``: validates the request (a one-line ``UsageError``, HTTP 400)
  and says which tools the template declares and which grammar, if any, forces a call.
- ``tool_grammar.call_grammar(...)``: the GBNF that forces ``<|tool_call>call:NAME{...}<tool_call|>``.
- ``ToolCallParser``: the model's text as it streams -> content and OpenAI tool-call deltas.

Decisions:

- A call that does not parse (or names an undeclared function) is content: its raw text goes to
  the client as the model wrote it, as llama.cpp treats unparsable output. A call is therefore
  emitted once its ``<tool_call|>`` has arrived (header delta, then its arguments), so that a
  call never has to be taken back; text outside calls streams at once.
- ``tool_choice: "none"``: the tools are not declared (the template gets none, and no parser
  runs), so the model has nothing to call, no grammar costs anything per token, and
  ``response_format`` still combines with it. The price: the declarations live in the system
  turn, so switching between "none" and "auto" within one conversation re-evaluates the prompt.
"""

from __future__ import annotations

import json
import re
import secrets
import string
from collections.abc import Callable, Iterable
from typing import Any

from g4cli.errors import UsageError

CALL_OPEN, CALL_CLOSE, QUOTE = "<|tool_call>", "<tool_call|>", '<|"|>'  # Gemma 4 tokens (USER_DEFINED)
THOUGHT_OPEN, THOUGHT_CLOSE = "<|channel>", "<channel|>"
NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")  # written bare after "call:", read back up to "{"
_NAME_CHARS = frozenset(string.ascii_letters + string.digits + "_.-")
_BAD_KEY = re.compile(r"[:{}\[\],]")  # keys are written bare: these would end or split them
CHOICES = ("none", "auto", "required")


# --- validation -------------------------------------------------------------------------------


def prepare(
    tools: object, tool_choice: object, *, parallel: bool = True, think: bool = False
) -> tuple[list[dict[str, Any]] | None, str | None]:
    """OpenAI ``tools`` + ``tool_choice`` -> (the tools the template declares, a GBNF grammar
    that forces a call or None).

    "auto" (the default): declared, no grammar. "required" / a named function: declared, and
    the grammar forces one call (several if ``parallel``) of any / that function, with a
    thinking block first when ``think``. "none": nothing declared (see the module docstring).
    """
    offered = check_tools(tools)
    choice = check_tool_choice(tool_choice, offered)
    if choice == "none" or not offered:
        return None, None
    if choice == "auto":
        return offered, None
    only = None if choice == "required" else choice
    from g4cli.serve.tool_grammar import call_grammar

    return offered, call_grammar(offered, only=only, parallel=parallel, think=think)


def names(tools: list[dict[str, Any]] | None) -> list[str]:
    """The function names of validated tools (for ``ToolCallParser(names=...)``)."""
    return [t["function"]["name"] for t in tools or []]


def check_tools(tools: object) -> list[dict[str, Any]] | None:
    """Validated OpenAI tools (None for none); a ``UsageError`` names the first bad field."""
    if tools is None:
        return None
    if not isinstance(tools, list):
        raise UsageError('tools must be a list of {"type": "function", "function": {...}}')
    seen: set[str] = set()
    out = []
    for i, tool in enumerate(tools):
        where = f"tools[{i}]"
        if not isinstance(tool, dict) or tool.get("type") != "function":
            raise UsageError(f'{where}.type must be "function"')
        fn = tool.get("function")
        if not isinstance(fn, dict):
            raise UsageError(f"{where}.function must be an object with a name")
        name = fn.get("name")
        if not isinstance(name, str) or not NAME.fullmatch(name):
            raise UsageError(
                f"{where}.function.name {name!r} is not a valid function name (1-64 letters, digits, _ . -)"
            )
        if name in seen:
            raise UsageError(f"{where}.function.name {name!r} is declared twice")
        seen.add(name)
        if fn.get("description") is not None and not isinstance(fn["description"], str):
            raise UsageError(f"{where}.function.description must be a string")
        params = fn.get("parameters")
        if params is not None:
            if not isinstance(params, dict) or params.get("type", "object") != "object":
                raise UsageError(f'{where}.function.parameters must be a JSON schema of "type": "object"')
            _check_schema(params, f"{where}.function.parameters")
        out.append({"type": "function", "function": {k: v for k, v in fn.items() if v is not None}})
    return out or None


def _check_schema(schema: dict[str, Any], where: str) -> None:
    """The parts of a JSON schema the template reads: property maps, required lists, items."""
    props = schema.get("properties")
    if props is not None:
        if not isinstance(props, dict):
            raise UsageError(f"{where}.properties must be an object")
        for key, sub in props.items():
            if not key or key != key.strip() or _BAD_KEY.search(key) or QUOTE in key:
                raise UsageError(
                    f"{where}.properties: {key!r} cannot be a Gemma 4 key (no : {{ }} [ ] , or edge spaces)"
                )
            if not isinstance(sub, dict):
                raise UsageError(f"{where}.properties.{key} must be a JSON schema object")
            _check_schema(sub, f"{where}.properties.{key}")
    required = schema.get("required")
    if required is not None and (not isinstance(required, list) or not all(isinstance(r, str) for r in required)):
        raise UsageError(f"{where}.required must be a list of property names")
    items = schema.get("items")
    if isinstance(items, dict):
        _check_schema(items, f"{where}.items")
    if schema.get("enum") is not None and not isinstance(schema["enum"], list):
        raise UsageError(f"{where}.enum must be a list")


def check_tool_choice(choice: object, tools: list[dict[str, Any]] | None) -> str:
    """ "none" | "auto" | "required" | the name of the one function to call."""
    if choice is None:
        return "auto" if tools else "none"
    if isinstance(choice, str):
        if choice not in CHOICES:
            raise UsageError(f'tool_choice {choice!r} is not "none", "auto", "required" or a function')
        if choice == "required" and not tools:
            raise UsageError('tool_choice "required" needs tools')
        return choice
    fn = choice.get("function") if isinstance(choice, dict) and choice.get("type") == "function" else None
    name = fn.get("name") if isinstance(fn, dict) else None
    if not isinstance(name, str):
        raise UsageError(
            'tool_choice must be "none", "auto", "required" or {"type": "function", "function": {"name": ...}}'
        )
    if name not in names(tools):
        raise UsageError(f"tool_choice names {name!r}, which is not in tools")
    return name


def check_calls(calls: object, where: str) -> list[dict[str, Any]] | None:
    """An assistant message's ``tool_calls`` (OpenAI: arguments a JSON string; Ollama: an
    object) -> OpenAI form with arguments as a JSON object string; a ``UsageError`` otherwise."""
    if calls is None or calls == []:
        return None
    if not isinstance(calls, list):
        raise UsageError(f"{where} must be a list")
    out = []
    for i, c in enumerate(calls):
        fn = c.get("function") if isinstance(c, dict) else None
        name = fn.get("name") if isinstance(fn, dict) else None
        if not isinstance(name, str) or not NAME.fullmatch(name):
            raise UsageError(f"{where}[{i}].function.name must be a function name")
        args = fn.get("arguments")
        if isinstance(args, str):
            try:
                args = json.loads(args) if args.strip() else {}
            except json.JSONDecodeError:
                args = None
        if args is None and fn.get("arguments") is None:
            args = {}
        if not isinstance(args, dict):
            raise UsageError(f"{where}[{i}].function.arguments must be a JSON object")
        call = {"type": "function", "function": {"name": name, "arguments": json.dumps(args, ensure_ascii=False)}}
        if isinstance(c.get("id"), str):
            call = {"id": c["id"], **call}
        out.append(call)
    return out


# --- parsing the model's output ----------------------------------------------------------------


class Malformed(ValueError):
    """Text that is not a Gemma 4 value."""


_WS = re.compile(r"\s*")
_BARE_KEY = re.compile(r"[^:}]+")  # llama.cpp's gemma4-dict-key-name
# numbers as JSON writes them, true/false/null; None is how jinja2 writes a null the template
# formats (a call in the history), so it is read back as null.
_SCALAR = re.compile(r"(-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?|true|false|null|None)(?=[\s,}\]]|\Z)")


def gemma_to_json(text: str) -> str:
    """A Gemma 4 value (``{a:<|"|>x<|"|>,b:[1,true]}``) -> the same value as compact JSON text."""
    try:
        out, end = _value(text, 0)
    except RecursionError:
        raise Malformed("nested too deeply") from None
    if _WS.match(text, end).end() != len(text):  # type: ignore[union-attr]
        raise Malformed(f"unexpected text at {end}")
    return out


def _skip(s: str, i: int) -> int:
    return _WS.match(s, i).end()  # type: ignore[union-attr]


def _value(s: str, i: int) -> tuple[str, int]:
    i = _skip(s, i)
    if s.startswith(QUOTE, i):
        j = s.find(QUOTE, i + len(QUOTE))
        if j < 0:
            raise Malformed(f"unterminated string at {i}")
        return json.dumps(s[i + len(QUOTE) : j], ensure_ascii=False), j + len(QUOTE)
    if s.startswith("{", i):
        return _container(s, i, "{}", _member)
    if s.startswith("[", i):
        return _container(s, i, "[]", _value)
    m = _SCALAR.match(s, i)
    if not m:
        raise Malformed(f"no value at {i}")
    return ("null" if m[1] == "None" else m[1]), m.end()


def _member(s: str, i: int) -> tuple[str, int]:
    i = _skip(s, i)
    if s.startswith(QUOTE, i):  # a key written as a string, as the template writes declarations
        key, i = _value(s, i)
    else:
        m = _BARE_KEY.match(s, i)
        if not m or not m[0].strip() or QUOTE in m[0]:
            raise Malformed(f"no key at {i}")
        key, i = json.dumps(m[0].strip(), ensure_ascii=False), m.end()
    if not s.startswith(":", i):
        raise Malformed(f"no ':' at {i}")
    value, i = _value(s, i + 1)
    return f"{key}:{value}", i


def _container(s: str, i: int, ends: str, item: Callable[[str, int], tuple[str, int]]) -> tuple[str, int]:
    i = _skip(s, i + 1)
    if s.startswith(ends[1], i):
        return ends, i + 1
    parts = []
    while True:
        part, i = item(s, i)
        parts.append(part)
        i = _skip(s, i)
        if s.startswith(",", i):
            i += 1
        elif s.startswith(ends[1], i):
            return ends[0] + ",".join(parts) + ends[1], i + 1
        else:
            raise Malformed(f"no ',' or {ends[1]!r} at {i}")


def new_call_id() -> str:
    alphabet = string.ascii_letters + string.digits
    return "call_" + "".join(secrets.choice(alphabet) for _ in range(24))


class ToolCallParser:
    """The model's answer text, fed in pieces as it streams -> ``("content", text)`` and
    ``("tool_call", delta)`` items, a delta in OpenAI's streaming shape: first
    ``{"index", "id", "type": "function", "function": {"name", "arguments": ""}}``, then
    ``{"index", "function": {"arguments": <JSON text>}}``.

    Text outside calls is content, emitted at once except a tail that may be the start of
    ``<|tool_call>``. A call is emitted when its ``<tool_call|>`` arrives; one that does not
    parse, names a function not in ``names`` (when given) or never ends is content, raw. The
    result does not depend on how the text is split. ``calls`` holds the complete calls.
    """

    def __init__(self, names: Iterable[str] | None = None, new_id: Callable[[], str] = new_call_id) -> None:
        self.names = frozenset(names) if names is not None else None
        self.new_id = new_id
        self.calls: list[dict[str, Any]] = []
        self._buf = ""  # undecided text (in a call: what follows <|tool_call>)
        self._in_call = False
        self._body = 0  # in a call: where the arguments start (0: the header is not complete)
        self._pos = 0  # in a call: scanned up to here
        self._in_str = False

    def feed(self, text: str) -> list[tuple[str, Any]]:
        self._buf += text
        return self._run(final=False)

    def finish(self) -> list[tuple[str, Any]]:
        """The end of the answer: what is still held back (an unfinished call is content)."""
        out = self._run(final=True)
        _content(out, (CALL_OPEN if self._in_call else "") + self._buf)
        self._buf, self._in_call = "", False
        return out

    def _run(self, final: bool) -> list[tuple[str, Any]]:
        out: list[tuple[str, Any]] = []
        while True:
            if not self._in_call:
                b = self._buf
                k = b.find(CALL_OPEN)
                if k < 0:
                    keep = 0 if final else _partial_tail(b, CALL_OPEN)
                    _content(out, b[: len(b) - keep])
                    self._buf = b[len(b) - keep :]
                    return out
                _content(out, b[:k])
                self._buf = b[k + len(CALL_OPEN) :]
                self._in_call, self._body, self._pos, self._in_str = True, 0, 0, False
            elif not self._body:
                state, at = self._header()
                if state == "more":
                    return out
                if state == "bad":  # not a call: its text is content, the rest is read again
                    _content(out, CALL_OPEN + self._buf[:at])
                    self._buf, self._in_call = self._buf[at:], False
                else:
                    self._body = self._pos = at
            elif not self._scan_body(out):
                return out

    def _header(self) -> tuple[str, int]:
        """ "call:NAME{" so far: ("more", 0), ("bad", where it went wrong) or ("ok", after "{")."""
        b, head = self._buf, "call:"
        for i, c in enumerate(b[: len(head)]):
            if c != head[i]:
                return "bad", i
        if len(b) <= len(head):
            return "more", 0
        j = len(head)
        while j < len(b) and b[j] in _NAME_CHARS and j - len(head) < 64:
            j += 1
        if j == len(b):
            return "more", 0
        name = b[len(head) : j]
        if b[j] != "{" or not name or (self.names is not None and name not in self.names):
            return "bad", j
        return "ok", j + 1

    def _scan_body(self, out: list[tuple[str, Any]]) -> bool:
        """Look for the end of the call (outside strings); False when more text is needed."""
        b = self._buf
        while True:
            if self._in_str:
                q = b.find(QUOTE, self._pos)
                if q < 0:
                    self._pos = max(self._pos, len(b) - len(QUOTE) + 1)
                    return False
                self._pos, self._in_str = q + len(QUOTE), False
                continue
            hits = [(i, m) for m in (QUOTE, CALL_CLOSE, CALL_OPEN) if (i := b.find(m, self._pos)) >= 0]
            if not hits:
                self._pos = max(self._pos, len(b) - len(CALL_OPEN) + 1)
                return False
            i, marker = min(hits)
            if marker == QUOTE:
                self._pos, self._in_str = i + len(QUOTE), True
                continue
            self._in_call = False
            if marker == CALL_OPEN:  # another call began before this one ended: this was none
                _content(out, CALL_OPEN + b[:i])
                self._buf = b[i:]
                return True
            self._buf = b[i + len(CALL_CLOSE) :]
            try:
                args = gemma_to_json(b[self._body - 1 : i])
            except Malformed:
                _content(out, CALL_OPEN + b[:i] + CALL_CLOSE)
                return True
            name, index, cid = b[len("call:") : self._body - 1], len(self.calls), self.new_id()
            self.calls.append({"id": cid, "type": "function", "function": {"name": name, "arguments": args}})
            out.append(("tool_call", {"index": index, "id": cid, "type": "function",
                                      "function": {"name": name, "arguments": ""}}))  # fmt: skip
            out.append(("tool_call", {"index": index, "function": {"arguments": args}}))
            return True


def _content(out: list[tuple[str, Any]], text: str) -> None:
    if not text:
        return
    if out and out[-1][0] == "content":
        out[-1] = ("content", out[-1][1] + text)
    else:
        out.append(("content", text))


def _partial_tail(text: str, marker: str) -> int:
    """The length of the longest end of ``text`` that is a proper beginning of ``marker``."""
    for k in range(min(len(marker) - 1, len(text)), 0, -1):
        if marker.startswith(text[-k:]):
            return k
    return 0


def parse(text: str, names: Iterable[str] | None = None) -> tuple[str, list[dict[str, Any]]]:
    """A whole answer -> (its content, its OpenAI ``tool_calls``)."""
    p = ToolCallParser(names)
    items = p.feed(text) + p.finish()
    return "".join(v for k, v in items if k == "content"), p.calls
