"""JSON output as a grammar: a JSON Schema (or "any JSON object") -> GBNF for llama.cpp's sampler.

``json_grammar(None)`` is any JSON object (``--format json``, OpenAI's ``json_object``);
``json_grammar(schema)`` is llama-cpp-python's port of llama.cpp's SchemaConverter
(``llama_cpp.llama_grammar``) on a checked, normalized copy of the schema, with what its 0.3.36
gets wrong fixed:

- its string rule (``char ::= [^"\\\\] | ...``) admits raw control characters, which JSON forbids
  in strings: 16-32% of the sampled answers of a tiny random model were invalid JSON (none with
  ours, tests/test_grammar.py). Ours excludes them, as llama.cpp's ``grammars/json.gbnf`` and
  C++ converter do. (What llama.cpp's matcher itself lets through, control tokens and invalid
  UTF-8, is kept out by ``sampler.GrammarGuard``.)
- literals (``const``, ``enum``, property names) were written without escaping backslashes:
  ``"const": "a\\\\b"`` came out as the JSON ``"a\\b"`` (a backspace), ``"\\n"`` as a raw newline.
- a ``$ref`` reused whatever rule had the name of the reference's last segment (a property named
  like the definition, or ``#/$defs/a/properties/x`` next to ``#/$defs/x``): the wrong schema.

Whatever the converter would ignore is refused: ``not``, ``minimum``, ``uniqueItems``,
``pattern``, an unknown ``format``, ``properties`` next to ``anyOf``... raise a ``UsageError``
that names the keyword and its JSON path (the server answers 400), never a silently
unconstrained answer. Only local references (``#/...``) resolve: nothing is ever fetched. The
schema arrives over HTTP, so its size, depth and repetition counts are bounded.

An answer that ends with finish reason "length" (``max_tokens``) or "context" stopped inside the
grammar: it is cut JSON, not a document. Callers must report it as incomplete (as OpenAI does),
not parse it; a ``maxLength`` on strings keeps answers short.
"""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import unquote

from llama_cpp.llama_grammar import INVALID_RULE_CHARS_RE, PRIMITIVE_RULES, BuiltinRule, SchemaConverter

from g4cli.errors import UsageError

MAX_SCHEMA_CHARS = 100_000  # the schema as JSON text
MAX_DEPTH = 32  # nested subschemas (through $ref too)
MAX_NODES = 2_000  # subschemas in all
MAX_PROPERTIES = 200  # per object (the converter recurses once per optional property)
MAX_REPEAT = 1_000  # lengths and item counts: llama.cpp's parser refuses ~2000 nested groups
MAX_GRAMMAR_CHARS = 1_000_000

# JSON forbids raw U+0000..U+001F in strings; llama.cpp's json.gbnf keeps DEL out as well.
CHAR = BuiltinRule(r'[^"\\\x7F\x00-\x1F] | "\\" (["\\/bfnrt] | "u" [0-9a-fA-F]{4})', [])
TYPES = ("object", "array", "string", "number", "integer", "boolean", "null")
ANY = ("object", "array", "string", "number", "boolean", "null")  # the schema {} (integers are numbers)
FORMATS = ("date", "time", "date-time", "uuid", "uuid1", "uuid2", "uuid3", "uuid4", "uuid5")  # the converter's
ANNOTATIONS = {"title", "description", "default", "examples", "$comment", "deprecated", "readOnly", "writeOnly"}
ANNOTATIONS |= {"$schema", "$defs", "definitions"}  # definitions are read through $ref only
HANDLED = {"$ref", "anyOf", "allOf", "type", "const", "enum", "properties", "required", "additionalProperties"}
HANDLED |= {"items", "prefixItems", "minItems", "maxItems", "format", "minLength", "maxLength"}
# keywords the converter drops or gets wrong, with a hint where there is one
UNSUPPORTED = dict.fromkeys(
    "not if then else patternProperties propertyNames dependentSchemas dependentRequired dependencies "
    "unevaluatedProperties unevaluatedItems minProperties maxProperties contains minContains maxContains "
    "uniqueItems additionalItems multipleOf minimum maximum exclusiveMinimum exclusiveMaximum pattern "
    "contentEncoding contentMediaType contentSchema $anchor $dynamicRef $dynamicAnchor $recursiveRef "
    "$recursiveAnchor $vocabulary".split(),
    " (the grammar cannot enforce it)",
)
UNSUPPORTED |= {
    "oneOf": " (exactly one of cannot be enforced; anyOf can)",
    "$id": " below the root (it changes what $ref means)",
}
_LITERAL_ESCAPES = {"\\": "\\\\", '"': '\\"', "\r": "\\r", "\n": "\\n"}


def json_grammar(schema: dict | None) -> str:
    """GBNF (root rule ``root``) for any JSON object (``None``) or for the JSON values ``schema``
    allows; ``UsageError`` for a schema the grammar cannot honour."""
    if schema is None:
        return _Converter({}).convert({"type": "object"})
    if not isinstance(schema, dict):
        raise UsageError("JSON schema: must be a JSON object")
    try:
        size = len(json.dumps(schema, allow_nan=False))
    except (TypeError, ValueError) as err:
        raise UsageError(f"JSON schema: not plain JSON ({err})") from None
    if size > MAX_SCHEMA_CHARS:
        raise UsageError(f"JSON schema: too large ({size} characters, at most {MAX_SCHEMA_CHARS})")
    checker = _Checker(schema)
    grammar = _Converter(checker.refs).convert(checker.normalize(schema, "$", 0))
    if len(grammar) > MAX_GRAMMAR_CHARS:
        raise UsageError(f"JSON schema: its grammar is too large ({len(grammar)} characters)")
    return grammar


def _refuse(keyword: str, path: str, why: str = "") -> UsageError:
    return UsageError(f"JSON schema: {keyword!r} at {path} is not supported{why}")


def _key(path: str, key: str) -> str:
    return f"{path}.{key}" if re.fullmatch(r"[A-Za-z_$][\w$-]*", key) else f"{path}[{json.dumps(key)}]"


def _is(value: Any, t: str) -> bool:
    """Is ``value`` of JSON Schema type ``t``?"""
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    return {
        "object": isinstance(value, dict),
        "array": isinstance(value, list),
        "string": isinstance(value, str),
        "number": number,
        "integer": number and float(value).is_integer(),
        "boolean": isinstance(value, bool),
        "null": value is None,
    }[t]


class _Checker:
    """Walks a schema from its root, refusing what the converter would not honour, and returns
    a normalized copy: annotations dropped, single-schema ``allOf`` unwrapped, ``{}`` spelled out
    as a list of types. ``refs`` maps each local ``$ref`` to its normalized target."""

    def __init__(self, root: dict) -> None:
        self.root = root
        self.refs: dict[str, dict] = {}
        self.nodes = 0

    def normalize(self, s: Any, path: str, depth: int) -> dict:
        if not isinstance(s, dict):
            raise UsageError(f"JSON schema: {path} must be a schema object (true/false schemas are not supported)")
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise UsageError(f"JSON schema: more than {MAX_NODES} subschemas")
        if depth > MAX_DEPTH:
            raise UsageError(f"JSON schema: nested deeper than {MAX_DEPTH} levels at {path}")
        s = {k: v for k, v in s.items() if k not in ANNOTATIONS and not k.startswith("x-")}
        if path == "$":
            s.pop("$id", None)
        if s.get("uniqueItems") is False:
            del s["uniqueItems"]
        if "allOf" in s:  # pydantic wraps a described $ref in a one-schema allOf
            parts = s.pop("allOf")
            if not isinstance(parts, list) or len(parts) != 1:
                raise _refuse("allOf", path, " (only an allOf of a single schema is)")
            if s:
                raise _refuse(next(iter(s)), path, " next to 'allOf'")
            return self.normalize(parts[0], f"{path}.allOf[0]", depth + 1)
        for kw in s:
            if kw in UNSUPPORTED:
                raise _refuse(kw, path, UNSUPPORTED[kw])
            if kw not in HANDLED:
                raise UsageError(f"JSON schema: unknown keyword {kw!r} at {path}")
        if not s:
            return {"type": list(ANY)}
        t = s.get("type")
        self._check_type(t, path)
        where, allowed, out = self._branch(s, t, path, depth)
        for kw in s:
            if kw not in allowed:
                raise _refuse(kw, path, f" {where}")
        return out

    def _branch(self, s: dict, t: Any, path: str, depth: int) -> tuple[str, set[str], dict]:
        """Which rule the converter's ``visit`` builds for ``s`` (the same order of tests): where
        that is, the keywords it reads, and the normalized schema."""
        if "$ref" in s:
            self._resolve(s["$ref"], path, depth)
            return "next to '$ref'", {"$ref"}, {"$ref": s["$ref"]}
        if "anyOf" in s:
            alts = s["anyOf"]
            if not isinstance(alts, list) or not alts:
                raise UsageError(f"JSON schema: 'anyOf' at {path} must be a non-empty list")
            out = [self.normalize(a, f"{path}.anyOf[{i}]", depth + 1) for i, a in enumerate(alts)]
            return "next to 'anyOf'", {"anyOf"}, {"anyOf": out}
        if isinstance(t, list):
            return "with a list of types", {"type"}, {"type": t}
        if "const" in s:
            self._check_values([s["const"]], t, "const", path)
            return "next to 'const'", {"const", "type"}, {"const": s["const"]}
        if "enum" in s:
            if not isinstance(s["enum"], list) or not s["enum"]:
                raise UsageError(f"JSON schema: 'enum' at {path} must be a non-empty list")
            self._check_values(s["enum"], t, "enum", path)
            return "next to 'enum'", {"enum", "type"}, {"enum": s["enum"]}
        if t in (None, "object") and ("properties" in s or "additionalProperties" in s):
            return (
                "in an object schema",
                {"type", "properties", "required", "additionalProperties"},
                self._object(s, path, depth),
            )
        if t in (None, "array") and ("prefixItems" in s or isinstance(s.get("items"), list)):
            key = "prefixItems" if "prefixItems" in s else "items"
            if key == "prefixItems" and s.get("items", False) is not False:
                raise _refuse("items", path, " next to 'prefixItems' (only items: false is)")
            items = s[key]
            out = [self.normalize(x, f"{path}.{key}[{i}]", depth + 1) for i, x in enumerate(items)]
            return f"next to a list of {key!r}", {"type", "prefixItems", "items"}, {"prefixItems": out}
        if t == "array" or (t is None and "items" in s):
            self._counts(s, "minItems", "maxItems", path)
            items = self.normalize(s.get("items", {}), f"{path}.items", depth + 1)
            out = {"type": "array", "items": items, **{k: s[k] for k in ("minItems", "maxItems") if k in s}}
            return "in an array schema", {"type", "items", "minItems", "maxItems"}, out
        if "format" in s and t in (None, "string"):
            if s["format"] not in FORMATS:
                raise _refuse("format", path, f" as {s['format']!r} (only date, time, date-time and uuid are)")
            return "next to 'format'", {"type", "format"}, {"type": "string", "format": s["format"]}
        if t == "string":
            self._counts(s, "minLength", "maxLength", path)
            return "for strings", {"type", "minLength", "maxLength"}, dict(s)
        if t is None:
            return "without a 'type'", set(), {}
        if t == "object":
            return "without 'properties'", {"type"}, {"type": t}
        return f"for type {t!r}", {"type"}, {"type": t}

    def _object(self, s: dict, path: str, depth: int) -> dict:
        props, required, extra = s.get("properties", {}), s.get("required", []), s.get("additionalProperties")
        if not isinstance(props, dict) or len(props) > MAX_PROPERTIES:
            raise UsageError(f"JSON schema: 'properties' at {path} must be an object of at most {MAX_PROPERTIES}")
        if not isinstance(required, list) or not all(isinstance(r, str) for r in required):
            raise UsageError(f"JSON schema: 'required' at {path} must be a list of property names")
        for name in required:
            if name not in props:  # the converter would drop it: the answer would lack it
                raise UsageError(f"JSON schema: required property {name!r} at {path} is not in 'properties'")
        out: dict[str, Any] = {
            "type": "object",
            "properties": {k: self.normalize(v, _key(f"{path}.properties", k), depth + 1) for k, v in props.items()},
            "required": sorted(set(required)),
        }
        if props and extra not in (None, False):  # a free key could repeat a declared one
            raise _refuse("additionalProperties", path, " next to 'properties' (only false is)")
        if isinstance(extra, dict):
            out["additionalProperties"] = self.normalize(extra, f"{path}.additionalProperties", depth + 1)
        elif extra is True:
            return {"type": "object"}
        elif extra is not False and extra is not None:
            raise UsageError(f"JSON schema: 'additionalProperties' at {path} must be a schema or a boolean")
        else:
            out["additionalProperties"] = False
        return out

    def _resolve(self, ref: Any, path: str, depth: int) -> None:
        """Check and normalize the target of a local ``$ref`` (once: recursive schemas are fine)."""
        if isinstance(ref, str) and ref in self.refs:
            return
        if not isinstance(ref, str) or not (ref == "#" or ref.startswith("#/")):
            raise UsageError(
                f"JSON schema: '$ref' {ref!r} at {path} is not supported"
                " (only local references such as #/$defs/NAME are; g4 never fetches a schema)"
            )
        target: Any = self.root
        where = "$"
        for seg in ref[2:].split("/") if ref != "#" else []:
            key = unquote(seg).replace("~1", "/").replace("~0", "~")  # JSON Pointer in a URI fragment
            if isinstance(target, dict) and key in target:
                target, where = target[key], _key(where, key)
            elif isinstance(target, list) and key.isdigit() and int(key) < len(target):
                target, where = target[int(key)], f"{where}[{key}]"
            else:
                raise UsageError(f"JSON schema: '$ref' {ref!r} at {path} does not resolve")
        self.refs[ref] = {}  # while its target is walked: a reference back to it is already known
        self.refs[ref] = self.normalize(target, where, depth + 1)

    @staticmethod
    def _check_type(t: Any, path: str) -> None:
        names = t if isinstance(t, list) else [t] if t is not None else []
        if isinstance(t, list) and (not t or len(set(map(str, t))) != len(t)):
            raise UsageError(f"JSON schema: 'type' at {path} must be a non-empty list of distinct types")
        for name in names:
            if name not in TYPES:
                raise UsageError(f"JSON schema: 'type' at {path}: unknown type {name!r} (one of {', '.join(TYPES)})")

    @staticmethod
    def _check_values(values: list, t: Any, keyword: str, path: str) -> None:
        types = t if isinstance(t, list) else [t] if t is not None else None
        for v in values:
            if types is not None and not any(_is(v, x) for x in types):
                raise UsageError(f"JSON schema: {keyword!r} at {path}: {json.dumps(v)} is not of type {t}")

    @staticmethod
    def _counts(s: dict, lo: str, hi: str, path: str) -> None:
        for kw in (lo, hi):
            v = s.get(kw, 0)
            if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= MAX_REPEAT:
                raise UsageError(f"JSON schema: {kw!r} at {path} must be an integer in 0..{MAX_REPEAT}")
        if hi in s and s.get(lo, 0) > s[hi]:
            raise UsageError(f"JSON schema: {lo!r} at {path} is larger than {hi!r}")


class _Converter(SchemaConverter):
    """llama-cpp-python's SchemaConverter with the string rule, literals and $ref names fixed."""

    def __init__(self, refs: dict[str, dict]) -> None:
        super().__init__(prop_order={}, allow_fetch=False, dotall=False, raw_pattern=False)
        self._refs = refs
        self._ref_rules: dict[str, str] = {}

    def convert(self, schema: dict) -> str:
        try:
            self.visit(schema, "")
        except (AssertionError, KeyError, TypeError, ValueError, RecursionError) as err:  # not expected after _Checker
            raise UsageError(f"JSON schema: cannot be turned into a grammar ({err})") from None
        return self.format_grammar()

    def _add_primitive(self, name: str, rule: BuiltinRule) -> str:
        return super()._add_primitive(name, CHAR if rule is PRIMITIVE_RULES["char"] else rule)

    def _format_literal(self, literal: str) -> str:
        """A GBNF literal matching ``literal`` exactly (it is JSON text: backslashes included)."""
        return '"' + re.sub(r'[\\"\r\n]', lambda m: _LITERAL_ESCAPES[m.group(0)], literal) + '"'

    def _resolve_ref(self, ref: str) -> str:
        """One rule per reference, under a name nothing else can take."""
        name = self._ref_rules.get(ref)
        if name is None:
            base = "ref-" + (INVALID_RULE_CHARS_RE.sub("-", ref.rsplit("/", 1)[-1].lstrip("#")) or "root")
            name, i = base, 0
            while name in self._rules:
                name, i = f"{base}{i}", i + 1
            self._rules[name] = ""  # reserved while the target is visited (it may refer back to it)
            self._ref_rules[ref] = name
            self._rules[name] = self.visit(self._refs[ref], name)
        return name
