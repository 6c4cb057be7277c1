"""The vendored OpenAPI documents, read into plain JSON schemas with every ``$ref`` resolved within the doc.

``openai-batch-files.v1.json`` and ``batch-jsonl-lines.json`` are copies of the official spec (MIT, see
``LICENSE`` and ``README.md`` beside them); the emulator reads them here and nowhere else.
"""

from __future__ import annotations

import copy
import json
from functools import cache
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent
API: dict[str, Any] = json.loads((HERE / "openai-batch-files.v1.json").read_text(encoding="utf-8"))
LINES: dict[str, Any] = json.loads((HERE / "batch-jsonl-lines.json").read_text(encoding="utf-8"))

# Documentation-only keywords; dropping them keeps error paths and copies small.
_ANNOTATIONS = {"description", "example", "examples", "title", "deprecated"}
# Keywords whose keys are names (of properties), never keywords: a property may be called "description".
_NAMED = {"properties", "patternProperties", "$defs", "definitions", "dependentSchemas"}


def resolve(node: Any) -> Any:
    """A deep copy of ``node`` with local ``$ref``s inlined, annotations and ``x-*`` keys dropped, and
    OpenAPI 3.0's ``nullable: true`` turned into JSON Schema's ``anyOf [..., null]``."""
    if isinstance(node, list):
        return [resolve(item) for item in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        return resolve(_target(node["$ref"]))
    out = {
        k: ({name: resolve(s) for name, s in v.items()} if k in _NAMED else resolve(v))
        for k, v in node.items()
        if k not in _ANNOTATIONS and not k.startswith("x-")
    }
    if out.pop("nullable", False):
        out = {"anyOf": [out, {"type": "null"}]}
    return out


def _target(ref: str) -> Any:
    if not ref.startswith("#/"):
        raise ValueError(f"only references within the document are supported, got {ref!r}")
    node: Any = API
    for part in ref[2:].split("/"):
        node = node[part]
    return node


@cache
def _component(name: str) -> dict[str, Any]:
    schema: dict[str, Any] = resolve(API["components"]["schemas"][name])
    return schema


def component(name: str) -> dict[str, Any]:
    """``#/components/schemas/<name>``, resolved (a fresh copy the caller may change)."""
    return copy.deepcopy(_component(name))


def request_body(path: str, method: str, media_type: str) -> dict[str, Any]:
    """The resolved schema of an operation's request body."""
    schema: dict[str, Any] = resolve(API["paths"][path][method]["requestBody"]["content"][media_type]["schema"])
    return schema


def query_parameters(path: str, method: str) -> dict[str, Any]:
    """An operation's query parameters as one object schema (query strings are judged like a JSON body)."""
    params = [p for p in API["paths"][path][method].get("parameters", []) if p.get("in") == "query"]
    properties = {p["name"]: resolve(p.get("schema", {})) for p in params}
    required = [p["name"] for p in params if p.get("required")]
    return {"type": "object", "properties": properties, **({"required": required} if required else {})}


def line_schema(name: str) -> dict[str, Any]:
    """A JSONL line schema (``BatchRequestInput``, ``BatchRequestOutput``), resolved."""
    schema: dict[str, Any] = resolve(LINES[name])
    return schema
