"""Structured outputs: what an ``output_type`` asks of the model, and how each answer is checked against it.

``output_type`` is a Pydantic model, any JSON-compatible type Pydantic can describe (``list[str]``, a
``TypedDict``, a dataclass, ``Literal[...]``) or a JSON schema dict. :func:`output_schema` turns it into the
schema the API's strict mode accepts (every object closed with ``additionalProperties: false`` and every
property ``required``; a root that is not an object wrapped as ``{"value": ...}``, since the API wants an
object at the root) and :meth:`OutputSchema.parse` turns an answer's text back into the validated value, or
raises :class:`InvalidOutput` with a message fit for a row: a bad answer is data about one request, never an
error of the task.

Import-light at module level (pydantic and jsonschema are imported when a schema is built): the decorator
module imports it at DAG-parse time only lazily.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

#: The key a non-object answer is wrapped in (the API's strict mode needs an object at the root).
WRAPPED_KEY = "value"
#: A validation error is cut to this many characters: 100,000 bad answers must not bloat the export.
MAX_ERROR_CHARS = 2_000
#: The API's rule for a schema's ``name``.
_NAME_CHARS = re.compile(r"[^a-zA-Z0-9_-]")
#: Keywords strict mode does not accept and that no longer mean anything once every property is required.
_DROPPED = ("default",)


class InvalidOutput(ValueError):
    """An answer that does not parse as JSON or does not validate against the ``output_type``."""


@dataclass(frozen=True)
class OutputSchema:
    """An ``output_type`` as the API is asked for it and as each answer is checked.

    :param name: The schema's name (letters, digits, ``_`` and ``-``; at most 64).
    :param schema: The strict JSON schema sent with every request (an object at the root).
    :param wrapped: The type's own schema is not an object: answers are ``{"value": ...}`` and unwrapped.
    :param validate: The check of a parsed answer: returns its JSON-native value, raises ``ValueError``.
    """

    name: str
    schema: dict[str, Any]
    wrapped: bool
    validate: Callable[[Any], Any] = field(repr=False, compare=False)

    def request_fields(self, endpoint: str) -> dict[str, Any]:
        """The body fields asking ``endpoint`` for this schema: ``response_format`` for chat completions,
        ``text.format`` for responses.

        :raises ValueError: for an endpoint without structured outputs.
        """
        path = endpoint if endpoint.startswith("/v1/") else "/v1" + endpoint  # Azure writes no /v1
        if path == "/v1/chat/completions":
            spec = {"name": self.name, "schema": self.schema, "strict": True}
            return {"response_format": {"type": "json_schema", "json_schema": spec}}
        if path == "/v1/responses":
            return {
                "text": {"format": {"type": "json_schema", "name": self.name, "schema": self.schema, "strict": True}}
            }
        raise ValueError(
            f"output_type needs /v1/chat/completions or /v1/responses (structured outputs); {endpoint} has none"
        )

    def parse(self, text: str | None) -> Any:
        """The answer ``text`` parsed and validated: its JSON-native value.

        :raises InvalidOutput: naming what is wrong (no text, not JSON, or the validation errors).
        """
        if text is None:
            raise InvalidOutput("the answer has no text to parse (a refusal, or the token budget ran out first)")
        try:
            value = json.loads(text)
        except ValueError as err:
            raise InvalidOutput(f"the answer is not valid JSON ({err})") from None
        if self.wrapped:
            if not isinstance(value, dict) or set(value) != {WRAPPED_KEY}:
                raise InvalidOutput(f"the answer must be an object with the one key {WRAPPED_KEY!r}")
            value = value[WRAPPED_KEY]
        try:
            return self.validate(value)
        except ValueError as err:  # pydantic's ValidationError and jsonschema's own are ValueErrors here
            message = str(err)
            if len(message) > MAX_ERROR_CHARS:
                message = message[:MAX_ERROR_CHARS] + " ... (cut)"
            raise InvalidOutput(f"the answer does not match output_type: {message}") from None


def output_schema(output_type: Any) -> OutputSchema:
    """The :class:`OutputSchema` of ``output_type`` (see the module docstring).

    :raises ValueError: when ``output_type`` has no JSON schema, or one strict mode cannot express (a mapping
        with free-form keys such as ``dict[str, int]``), naming the fix.
    """
    if isinstance(output_type, Mapping):
        own = _checked_schema_dict(output_type)
        name = str(own.get("title") or "output")
        validate = _jsonschema_validator(own)
    else:
        own, validate = _pydantic_schema(output_type)
        name = str(getattr(output_type, "__name__", None) or own.get("title") or "output")
    own = _root_ref_inlined(own)
    wrapped = own.get("type") != "object"
    sent = _wrap(own) if wrapped else own
    return OutputSchema(_schema_name(name), strict_schema(sent), wrapped, validate)


def strict_schema(schema: Mapping[str, Any]) -> dict[str, Any]:
    """``schema`` as the API's strict mode accepts it: every object closed and every property required
    (an optional field stays nullable through its own ``anyOf`` with ``null``), ``default`` dropped, and a
    ``$ref`` that carries other keywords inlined (strict mode allows a ``$ref`` alone only).

    :raises ValueError: for an object whose keys are free-form (``additionalProperties`` a schema).
    """
    defs = {key: dict(value) for key, value in (schema.get("$defs") or {}).items()}
    out = _strict(schema, defs, "")
    if defs:
        out["$defs"] = {key: _strict(value, defs, f"$defs/{key}") for key, value in defs.items()}
    return out


def _strict(node: Any, defs: dict[str, Any], where: str) -> Any:
    if isinstance(node, list):
        return [_strict(item, defs, f"{where}/{n}") for n, item in enumerate(node)]
    if not isinstance(node, Mapping):
        return node
    node = dict(node)
    ref = node.get("$ref")
    if isinstance(ref, str) and len(node) > 1 and ref.startswith("#/$defs/") and ref[8:] in defs:
        node = {**defs[ref[8:]], **{k: v for k, v in node.items() if k != "$ref"}}
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROPPED or (key == "$defs" and where == ""):
            continue
        if key == "properties" and isinstance(value, Mapping):
            out[key] = {name: _strict(sub, defs, f"{where}/{name}") for name, sub in value.items()}
        elif key in ("items", "anyOf", "prefixItems", "not"):
            out[key] = _strict(value, defs, where + "/" + key)
        else:
            out[key] = value
    if out.get("type") == "object" or "properties" in out:
        extra = out.get("additionalProperties")
        if isinstance(extra, Mapping) and extra:
            raise ValueError(
                f"output_type has an object with free-form keys at {where or 'the root'} (a mapping such as "
                "dict[str, int]): strict structured outputs need every key named; use a model with named fields"
            )
        out["additionalProperties"] = False
        out["required"] = list(out.get("properties") or {})
        out.setdefault("properties", {})
    return out


def _root_ref_inlined(schema: dict[str, Any]) -> dict[str, Any]:
    """A root that only points at one of its ``$defs`` (Pydantic's shape for a recursive model) as that
    definition itself, so an object type is not wrapped needlessly."""
    ref, defs = schema.get("$ref"), schema.get("$defs") or {}
    if isinstance(ref, str) and ref.startswith("#/$defs/") and isinstance(defs.get(ref[8:]), Mapping):
        return {**defs[ref[8:]], **{k: v for k, v in schema.items() if k != "$ref"}}
    return schema


def _wrap(schema: dict[str, Any]) -> dict[str, Any]:
    inner = {key: value for key, value in schema.items() if key != "$defs"}
    wrapped: dict[str, Any] = {"type": "object", "properties": {WRAPPED_KEY: inner}, "required": [WRAPPED_KEY]}
    if "$defs" in schema:  # the references still read #/$defs/..., now from the new root
        wrapped["$defs"] = schema["$defs"]
    return wrapped


def _schema_name(name: str) -> str:
    return _NAME_CHARS.sub("_", name)[:64] or "output"


def _pydantic_schema(output_type: Any) -> tuple[dict[str, Any], Callable[[Any], Any]]:
    from pydantic import PydanticUserError, TypeAdapter, ValidationError

    try:
        adapter: Any = TypeAdapter(output_type)
        schema = adapter.json_schema()
    except (PydanticUserError, TypeError) as err:
        raise ValueError(
            f"output_type={output_type!r} has no JSON schema ({err}). Give a Pydantic model, a JSON-compatible "
            "type (list[str], a TypedDict from typing_extensions, a dataclass) or a JSON schema dict"
        ) from None
    except Exception as err:  # pydantic's schema generation raises its own kinds for unsupported types
        raise ValueError(f"output_type={output_type!r} cannot be described as a JSON schema: {err}") from None

    def validate(value: Any) -> Any:
        try:
            return adapter.dump_python(adapter.validate_python(value), mode="json")
        except ValidationError as err:  # one short line per error, without pydantic's links to its docs
            raise ValueError(_joined((e["loc"], e["msg"]) for e in err.errors())) from None

    return schema, validate


def _checked_schema_dict(schema: Mapping[str, Any]) -> dict[str, Any]:
    from jsonschema import Draft202012Validator, SchemaError

    try:
        Draft202012Validator.check_schema(schema)
        json.dumps(schema)
    except SchemaError as err:
        raise ValueError(f"output_type is not a valid JSON schema: {err.message}") from None
    except (TypeError, ValueError) as err:
        raise ValueError(f"output_type must be a JSON schema of plain dicts, lists and values: {err}") from None
    return dict(schema)


def _jsonschema_validator(schema: dict[str, Any]) -> Callable[[Any], Any]:
    from jsonschema import Draft202012Validator

    checker = Draft202012Validator(schema)

    def validate(value: Any) -> Any:
        errors = sorted(checker.iter_errors(value), key=lambda e: [str(part) for part in e.absolute_path])
        if errors:
            raise ValueError(_joined((e.absolute_path, e.message) for e in errors))
        return value

    return validate


def _joined(errors: Any, most: int = 10) -> str:
    """Validation errors as one line: ``where: what; ...`` (``where`` a path like ``items/0/name``)."""
    listed = [f"{'/'.join(map(str, where)) or '(root)'}: {what}" for where, what in errors]
    more = f"; ... and {len(listed) - most} more" if len(listed) > most else ""
    return "; ".join(listed[:most]) + more
