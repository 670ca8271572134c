"""The GBNF grammar that forces a Gemma 4 tool call (``tool_choice`` "required" or a named
function): ``<|tool_call>call:NAME{...}<tool_call|>``, arguments following each function's JSON
schema where it says something, any Gemma 4 value where it does not."""

from __future__ import annotations

import json
from typing import Any

from g4cli.errors import UsageError
from g4cli.serve.tools import CALL_CLOSE, CALL_OPEN, QUOTE, THOUGHT_CLOSE, THOUGHT_OPEN


def call_grammar(
    tools: list[dict[str, Any]],
    *,
    only: str | None = None,
    parallel: bool = True,
    think: bool = False,
    schema: bool = True,
) -> str:
    """GBNF: ``<|tool_call>call:NAME{...}<tool_call|>`` for one of ``tools`` (or ``only``), once,
    or one or more times when ``parallel``; a thinking block first when ``think``.

    The markers are written as tokens (``<|tool_call>``: llama.cpp's grammar syntax for the one
    token with that text), so the model must use the real tokens, not spell them out. With
    ``schema`` the arguments follow each function's JSON schema (properties in the order the
    template declares them, required ones present, no others; enum/const, anyOf/oneOf, string
    min/maxLength, array min/maxItems); whatever a schema does not say is any Gemma 4 value.
    """
    g = _Grammar()
    fns = [t["function"] for t in tools if only is None or t["function"]["name"] == only]
    if not fns:
        raise UsageError(f"tool_choice names {only!r}, which is not in tools")
    alts = []
    for fn in fns:
        args = g.schema(fn.get("parameters"), top=True) if schema else "dict"
        alts.append(g.add(f"{_lit(fn['name'])} {args}", "fn"))
    g.rules["call"] = f'{CALL_OPEN} "call:" ( {" | ".join(alts)} ) {CALL_CLOSE}'
    if think:
        g.excluding("thought-text", (THOUGHT_OPEN, THOUGHT_CLOSE))
        g.rules["thought"] = f"{THOUGHT_OPEN} thought-text {THOUGHT_CLOSE}"
    g.rules["root"] = ("thought? " if think else "") + ("call+" if parallel else "call")
    return g.text()


class _Grammar:
    """GBNF rules by name; the Gemma 4 value rules are always there."""

    def __init__(self) -> None:
        self.rules: dict[str, str] = {}
        self._by_body: dict[str, str] = {}
        # strings: up to the closing <|"|>; the thinking tokens would switch g4's decoder to the
        # thinking channel in the middle of the call, so they cannot appear in one either
        self.excluding("str", (QUOTE, THOUGHT_OPEN, THOUGHT_CLOSE))
        self.rules.update(
            {
                "value": 'string | dict | list | number | "true" | "false" | "null"',
                "dict": '"{" ( kv ( "," kv )* )? "}"',
                "kv": 'key ":" value',
                "key": r"[A-Za-z0-9_.\-]{1,64}",
                "list": '"[" ( value ( "," value )* )? "]"',
                "string": f"{QUOTE} str {QUOTE}",
                "integer": '"-"? uint',
                "uint": '"0" | [1-9] [0-9]{0,15}',
                "number": 'integer ( "." [0-9]{1,15} )? ( [eE] [\\-+]? [0-9]{1,2} )?',
            }
        )

    def add(self, body: str, stem: str = "s") -> str:
        if body not in self._by_body:
            name = f"{stem}-{len(self._by_body)}"
            self.rules[name] = body
            self._by_body[body] = name
        return self._by_body[body]

    def text(self) -> str:
        order = ["root"] + [n for n in self.rules if n != "root"]
        return "".join(f"{n} ::= {self.rules[n]}\n" for n in order)

    def excluding(self, name: str, markers: tuple[str, ...]) -> None:
        """``name``: any text that contains none of ``markers`` (each begins with "<", which
        occurs nowhere else in them), as a deterministic automaton: a rule per state (the part
        of a marker just seen), each alternative a character class, so the sampler follows one
        path (llama.cpp's ``gbnf_excluding_grammar`` is built the same way). ``name-unit`` is a
        piece of such text for counted repetition: a character, or "<" and one that starts no
        marker (so "<|" and "<c" cannot appear in a string with a maximum length)."""
        assert all(m[0] == "<" and "<" not in m[1:] for m in markers)
        prefixes = ["", *sorted({m[:k] for m in markers for k in range(1, len(m))})]
        state = {p: f"{name}-{i}" if p else name for i, p in enumerate(prefixes)}
        for p in prefixes:
            nexts = sorted({m[len(p)] for m in markers if m.startswith(p) and len(m) > len(p)})
            alts = [f"{_lit(c)} {state[p + c]}" for c in nexts if p + c not in markers]  # a marker: no way on
            if p:
                alts.append(f'"<" {state["<"]}')
            alts.append(f"{_not(*sorted({'<', *nexts}))} {name}")
            self.rules[state[p]] = "| " + " | ".join(alts)
        self.rules[f"{name}-unit"] = f'{_not("<")} | "<" {_not("<", *sorted({m[1] for m in markers}))}'

    def schema(self, schema: object, top: bool = False, depth: int = 0) -> str:
        """A rule expression for values of a JSON schema ("value" where it does not constrain)."""
        if top and schema is None:
            return '"{}"'  # OpenAI: no parameters -> an empty argument list
        if not isinstance(schema, dict) or depth > 24:
            return "value"
        if "const" in schema:
            return _gemma_literal(schema["const"])
        if isinstance(schema.get("enum"), list) and schema["enum"]:
            return self.add(" | ".join(_gemma_literal(v) for v in schema["enum"]))
        for key in ("anyOf", "oneOf"):
            if isinstance(schema.get(key), list) and schema[key]:
                return self.add(" | ".join(self.schema(s, depth=depth + 1) for s in schema[key]))
        types = schema.get("type", "object" if top or "properties" in schema else None)
        types = [types] if isinstance(types, str) else types
        if not isinstance(types, list) or not types:
            return "value"
        alts = [self._typed(str(t), schema, depth) for t in types]
        if schema.get("nullable") is True and "null" not in types:
            alts.append('"null"')
        return alts[0] if len(alts) == 1 else self.add(" | ".join(alts))

    def _typed(self, kind: str, schema: dict[str, Any], depth: int) -> str:
        if kind == "string":
            lo, hi = _int(schema.get("minLength"), 0), _int(schema.get("maxLength"), None)
            if lo == 0 and hi is None:
                return "string"
            return self.add(f"{QUOTE} str-unit{{{lo},{'' if hi is None else max(hi, lo)}}} {QUOTE}")  # ~characters
        if kind == "integer":
            return "uint" if _int(schema.get("minimum"), -1) >= 0 else "integer"
        if kind == "object":
            return self._object(schema, depth)
        if kind == "array":
            return self._array(schema, depth)
        if kind == "boolean":
            return self.add('"true" | "false"')
        return {"number": "number", "null": '"null"'}.get(kind, "value")

    def _object(self, schema: dict[str, Any], depth: int) -> str:
        props = schema.get("properties")
        if not isinstance(props, dict):
            return '"{}"' if schema.get("additionalProperties") is False else "dict"
        required = set(schema.get("required") or [])
        # the template declares properties sorted (jinja's dictsort: case-insensitive), so does this
        items = sorted(props.items(), key=lambda kv: kv[0].lower())
        after, first = "", ""  # after: the rest once a member is written; first: before any
        for key, sub in reversed(items):
            kv = self.add(f"{_lit(key + ':')} {self.schema(sub, depth=depth + 1)}", "kv")
            if key in required:
                after, first = self.add(f'"," {kv} {after}'.strip()), self.add(f"{kv} {after}".strip())
            else:
                new_after = self.add(f'( "," {kv} )? {after}'.strip())
                first = self.add(f"{kv} {after} | {first}".strip() if first else f"( {kv} {after} )?".strip())
                after = new_after
        return self.add(f'"{{" {first} "}}"' if first else '"{}"')

    def _array(self, schema: dict[str, Any], depth: int) -> str:
        item = self.schema(schema.get("items"), depth=depth + 1) if isinstance(schema.get("items"), dict) else "value"
        lo, hi = _int(schema.get("minItems"), 0), _int(schema.get("maxItems"), None)
        if hi == 0:
            return '"[]"'
        more = f'( "," {item} ){{{max(lo - 1, 0)},{"" if hi is None else max(hi, lo) - 1}}}'
        body = item if hi is not None and max(hi, lo) == 1 else f"{item} {more}"
        return self.add(f'"[" {body} "]"' if lo > 0 else f'"[" ( {body} )? "]"')


def _int(value: object, default: Any) -> Any:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else default


def _gemma_literal(value: object) -> str:
    """A JSON value as the exact Gemma 4 text (strings quoted with the token)."""
    if isinstance(value, str):
        return f"{QUOTE} {_lit(value)} {QUOTE}" if value else f"{QUOTE} {QUOTE}"
    if isinstance(value, bool):
        return '"true"' if value else '"false"'
    if value is None:
        return '"null"'
    if isinstance(value, (int, float)):
        return _lit(json.dumps(value))
    return "value"


def _lit(text: str) -> str:
    """A GBNF string literal."""
    return '"' + "".join(_esc(c, '\\"') for c in text) + '"'


def _not(*chars: str) -> str:
    """A GBNF class of every character but ``chars``."""
    return "[^" + "".join(_esc(c, '\\]-^["') for c in chars) + "]"


def _esc(c: str, special: str) -> str:
    return f"\\x{ord(c):02X}" if c in special or ord(c) < 0x20 else c
