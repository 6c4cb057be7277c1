"""Structured outputs as the emulator plays them: a request's JSON schema read from its body, refused as the
API refuses a schema strict mode cannot take, and answered with a document valid for it.

Chat completions ask with ``response_format: {"type": "json_schema", "json_schema": {"name", "schema",
"strict"}}``, responses with ``text: {"format": {"type": "json_schema", "name", "schema", "strict"}}``. The
answer is built from the schema alone (objects with every property, strings, numbers, integers, booleans,
arrays, enums, ``const``, ``anyOf``, nested objects, ``$defs``/``$ref``), seeded by the request's digest: the
same request gets the same document, and different requests different ones. A ``model`` starting with
``badjson`` gets an answer that is not valid: the document cut short as a model stopped by its token budget
would leave it, or, when the model's name also holds ``schema`` (``badjson-schema``), well-formed JSON that
breaks the schema (an object that lacks its properties and has one the schema closes out).

Written from the public contract only: nothing here imports the client's code.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

#: Where a nested schema stops growing (a recursive model, a tree): arrays are empty and a nullable value is
#: null past this depth.
MAX_DEPTH = 6


def requested(endpoint: str, body: Mapping[str, Any]) -> tuple[str, str, dict[str, Any], bool] | None:
    """The structured output a request body asks for: ``(param, name, schema, strict)``, ``param`` the body
    field that carries it (for an error's ``param``); ``None`` when it asks for plain text."""
    if not endpoint.startswith("/v1/"):
        endpoint = "/v1" + endpoint
    if endpoint == "/v1/chat/completions":
        fmt = body.get("response_format")
        spec = fmt.get("json_schema") if isinstance(fmt, Mapping) and fmt.get("type") == "json_schema" else None
        param = "response_format"
    elif endpoint == "/v1/responses":
        text = body.get("text")
        fmt = text.get("format") if isinstance(text, Mapping) else None
        spec = fmt if isinstance(fmt, Mapping) and fmt.get("type") == "json_schema" else None
        param = "text.format"
    else:
        return None
    if not isinstance(spec, Mapping):
        return None
    schema = spec.get("schema")
    return (
        param,
        str(spec.get("name") or ""),
        dict(schema) if isinstance(schema, Mapping) else {},
        bool(spec.get("strict")),
    )


def strict_problem(name: str, schema: Mapping[str, Any]) -> str | None:
    """Why strict mode refuses ``schema``, worded as the API words it; ``None`` when it takes it: the root is
    an object, and every object has ``additionalProperties: false`` and lists every property in ``required``."""
    if schema.get("type") != "object":
        return f"Invalid schema for response_format '{name}': schema must be a JSON Schema of 'type: \"object\"'."
    for context, node in _objects(schema, ()):
        where = f"In context={context!r}, "
        if node.get("additionalProperties") is not False:
            return (
                f"Invalid schema for response_format '{name}': {where}'additionalProperties' is required to be "
                "supplied and to be false."
            )
        properties = node.get("properties") or {}
        required = node.get("required") if isinstance(node.get("required"), list) else []
        missing = [key for key in properties if key not in required]
        if missing:
            return (
                f"Invalid schema for response_format '{name}': {where}'required' is required to be supplied and "
                f"to be an array including every key in properties. Missing '{missing[0]}'."
            )
    return None


def _objects(node: Any, context: tuple) -> Any:
    """Every object schema in ``node`` with where it is."""
    if isinstance(node, list):
        for item in node:
            yield from _objects(item, context)
        return
    if not isinstance(node, Mapping):
        return
    if node.get("type") == "object" or "properties" in node:
        yield context, node
    for key, value in (node.get("properties") or {}).items():
        yield from _objects(value, (*context, "properties", key))
    for key in ("items", "anyOf", "prefixItems"):
        if key in node:
            yield from _objects(node[key], (*context, key))
    for key, value in (node.get("$defs") or {}).items():
        yield from _objects(value, ("$defs", key))


def document(schema: Mapping[str, Any], seed: str) -> Any:
    """A value valid for ``schema``, the same for the same ``seed`` (a hex digest)."""
    return _Builder(schema, seed).value(schema, 0, "")


def answer_text(schema: Mapping[str, Any], seed: str, model: str) -> str:
    """The answer's text for a structured request: the document as JSON, or for a ``badjson`` model an
    invalid one (see the module docstring)."""
    text = json.dumps(document(schema, seed), separators=(",", ":"))
    if not model.startswith("badjson"):
        return text
    if "schema" in model:
        return json.dumps({"emulated_invalid_output": seed[:8]})
    return text[: max(1, len(text) // 2)]  # a proper prefix of a JSON document is never one


class _Builder:
    def __init__(self, root: Mapping[str, Any], seed: str) -> None:
        self.defs = root.get("$defs") or root.get("definitions") or {}
        self.seed = seed

    def pick(self, salt: str, modulo: int) -> int:
        """A number from the seed and where in the document it is used (0 <= n < modulo)."""
        return int(hashlib.sha256(f"{self.seed}/{salt}".encode()).hexdigest()[:8], 16) % max(1, modulo)

    def value(self, node: Any, depth: int, path: str) -> Any:
        if depth > 4 * MAX_DEPTH:  # a schema that requires itself without end has no finite document
            return None
        if not isinstance(node, Mapping) or not node:
            return f"emulated-{self.seed[:6]}"
        ref = node.get("$ref")
        if isinstance(ref, str):
            name = ref.rsplit("/", 1)[-1]
            return self.value(
                {**self.defs.get(name, {}), **{k: v for k, v in node.items() if k != "$ref"}}, depth, path
            )
        if "const" in node:
            return node["const"]
        if isinstance(node.get("enum"), list) and node["enum"]:
            return node["enum"][self.pick(path, len(node["enum"]))]
        branches = node.get("anyOf") or node.get("oneOf")
        if isinstance(branches, list) and branches:
            if depth >= MAX_DEPTH and any(isinstance(b, Mapping) and b.get("type") == "null" for b in branches):
                return None
            concrete = [b for b in branches if not (isinstance(b, Mapping) and b.get("type") == "null")] or branches
            return self.value(concrete[self.pick(path + "/anyOf", len(concrete))], depth, path)
        kind = node.get("type")
        if isinstance(kind, list):
            kinds = [k for k in kind if k != "null"] or ["null"]
            kind = kinds[0] if depth < MAX_DEPTH else ("null" if "null" in node["type"] else kinds[0])
        if kind == "object" or "properties" in node:
            properties = node.get("properties") or {}
            return {key: self.value(sub, depth + 1, f"{path}/{key}") for key, sub in properties.items()}
        if kind == "array":
            low = int(node.get("minItems") or 0)
            high = node.get("maxItems")
            count = 0 if depth >= MAX_DEPTH else max(low, 1 + self.pick(path + "/n", 3))
            if isinstance(high, int):
                count = min(count, high)
            return [self.value(node.get("items") or {}, depth + 1, f"{path}/{n}") for n in range(max(count, low))]
        if kind == "integer":
            return self.number(node, path, integer=True)
        if kind == "number":
            return self.number(node, path, integer=False)
        if kind == "boolean":
            return self.pick(path, 2) == 1
        if kind == "null":
            return None
        return self.string(node, path)

    def number(self, node: Mapping[str, Any], path: str, integer: bool) -> int | float:
        low = node.get("minimum", node.get("exclusiveMinimum"))
        high = node.get("maximum", node.get("exclusiveMaximum"))
        low = 0 if low is None else low
        high = low + 100 if high is None else high
        if integer:
            start = int(low) + (1 if "exclusiveMinimum" in node or int(low) < low else 0)
            stop = int(high) - (1 if "exclusiveMaximum" in node and int(high) == high else 0)
            return start + self.pick(path, max(1, stop - start + 1)) if stop >= start else start
        fraction = (1 + self.pick(path, 998)) / 1000  # strictly inside (low, high)
        return round(low + (high - low) * fraction, 6)

    def string(self, node: Mapping[str, Any], path: str) -> str:
        fmt = node.get("format")
        tag = f"{self.pick(path, 10**6):06d}"
        if fmt == "date-time":
            return f"2025-01-{1 + self.pick(path, 28):02d}T12:00:00Z"
        if fmt == "date":
            return f"2025-01-{1 + self.pick(path, 28):02d}"
        if fmt == "time":
            return "12:00:00Z"
        if fmt == "email":
            return f"user{tag}@example.com"
        if fmt in ("uri", "url"):
            return f"https://example.com/{tag}"
        if fmt == "uuid":
            return f"00000000-0000-4000-8000-{self.seed[:12]}"
        text = f"emulated {path.rsplit('/', 1)[-1] or 'text'} {tag}"
        low = int(node.get("minLength") or 0)
        high = node.get("maxLength")
        text = text.ljust(low, "x")
        return text[:high] if isinstance(high, int) else text
