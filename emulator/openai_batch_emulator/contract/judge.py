"""Judging a request against a schema, and saying what is wrong the way the real API does: the first
problem only, as ``400 invalid_request_error`` with the parameter's dotted path and a machine-readable code."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from functools import cache
from typing import Any

import jsonschema
from jsonschema.exceptions import ValidationError

from openai_batch_emulator.contract import guide
from openai_batch_emulator.errors import ApiFailure

_INTEGER = re.compile(r"[+-]?\d+")


@cache
def validator(build: Callable[[], dict[str, Any]]) -> jsonschema.Draft202012Validator:
    """One compiled validator per schema builder of :mod:`guide` (the spec is OpenAPI 3.1: JSON Schema 2020-12)."""
    return jsonschema.Draft202012Validator(build())


@cache
def line_validator(endpoint: str) -> jsonschema.Draft202012Validator:
    """The validator of one input line of a batch whose endpoint is ``endpoint``."""
    return jsonschema.Draft202012Validator(guide.input_line(endpoint))


def create_batch_body(body: Any, flavor: str = "openai") -> dict[str, Any]:
    """``POST /v1/batches``: the decoded JSON body, refused unless ``CreateBatchRequest`` and the guide allow it
    (for ``flavor`` ``azure``, with Azure's endpoints)."""
    if not isinstance(body, dict):
        raise ApiFailure(
            400,
            f"Invalid type for the request body: expected an object, but got {_kind(body)} instead.",
            code="invalid_type",
        )
    refuse_first(validator(guide.create_batch_azure if flavor == "azure" else guide.create_batch).iter_errors(body))
    return body


def list_batches_query(query: Mapping[str, str]) -> dict[str, Any]:
    """``GET /v1/batches``: the query, with integers read as integers, defaults filled in."""
    return _after_is_an_id(_query(query, guide.list_batches))


def list_files_query(query: Mapping[str, str]) -> dict[str, Any]:
    """``GET /v1/files``: the query, with integers read as integers, defaults filled in."""
    return _after_is_an_id(_query(query, guide.list_files))


def upload_form(fields: dict[str, Any]) -> dict[str, Any]:
    """``POST /v1/files``: the form's text fields (bracketed names such as ``expires_after[seconds]`` nested,
    integers read as integers) plus ``file`` when a file part was sent, refused unless ``CreateFileRequest``
    allows them."""
    form = coerce(_nest(fields), guide.upload())
    refuse_first(validator(guide.upload).iter_errors(form))
    return form


def upload_name(purpose: str, filename: str | None) -> None:
    """``POST /v1/files``: a file uploaded for ``batch`` must be named ``*.jsonl``; the API refuses any other
    name with 400 and no ``param`` or ``code``."""
    if purpose == "batch" and not (filename or "").endswith(".jsonl"):
        raise ApiFailure(400, "Invalid file format for Batch API. Must be .jsonl")


def object_id(value: str, name: str) -> str:
    """An id (``batch_...``, ``file-...``) as a request names it: one segment of the path, so never ``.`` or
    ``..`` and nothing with ``/``, ``?``, ``#`` or whitespace, which would change the path it is sent in."""
    if value in (".", "..") or any(mark in value for mark in "/?#") or any(ch.isspace() for ch in value):
        raise ApiFailure(
            400,
            f"Invalid '{name}': {value!r} is not an ID. An ID is one segment of the request path: it cannot be "
            "'.' or '..' or contain '/', '?', '#' or whitespace.",
            param=name,
            code="invalid_value",
        )
    return value


def refuse_first(errors: Iterable[ValidationError]) -> None:
    """Raise the first error as the API's 400 (the real API names one problem per answer)."""
    for error in errors:
        raise _failure(_narrow(error))


def coerce(value: Any, schema: dict[str, Any]) -> Any:
    """Text from a query string or form, read as the schema's type where it plainly is one (``"20"`` -> 20
    for an integer); anything else is left for the validator to refuse."""
    if isinstance(value, dict):
        properties = schema.get("properties", {})
        return {k: coerce(v, properties.get(k, {})) for k, v in value.items()}
    if isinstance(value, str) and schema.get("type") == "integer" and _INTEGER.fullmatch(value):
        return int(value)
    return value


def _query(query: Mapping[str, str], build: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    schema = build()
    params = coerce(dict(query), schema)
    refuse_first(validator(build).iter_errors(params))
    defaults = {k: s["default"] for k, s in schema["properties"].items() if "default" in s}
    return {**defaults, **params}


def _after_is_an_id(query: dict[str, Any]) -> dict[str, Any]:
    if query.get("after") is not None:
        object_id(str(query["after"]), "after")
    return query


def _nest(fields: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in fields.items():
        match = re.fullmatch(r"(\w+)\[(\w+)\]", name)
        if match:
            inner = out.setdefault(match[1], {})
            if isinstance(inner, dict):
                inner[match[2]] = value
        else:
            out[name] = value
    return out


def _narrow(error: ValidationError) -> ValidationError:
    """For ``anyOf`` (e.g. metadata: an object or null): the error of the branch whose type the value has."""
    if error.validator != "anyOf" or not error.context:
        return error
    kind = _json_type(error.instance)
    for sub in error.context:
        branch = error.validator_value[sub.schema_path[0]]
        if branch.get("type") == kind or (kind == "integer" and branch.get("type") == "number"):
            return _narrow(sub)
    return error


def _failure(error: ValidationError) -> ApiFailure:
    param = ".".join(str(part) for part in error.absolute_path) or None
    name = param or "the request body"
    value = error.instance
    kind = error.validator
    if kind == "required":
        missing = next(k for k in error.validator_value if k not in value)
        full = f"{param}.{missing}" if param else missing
        return ApiFailure(400, f"Missing required parameter: '{full}'.", param=full, code="missing_required_parameter")
    if kind == "additionalProperties" and error.validator_value is False:
        allowed = set(error.schema.get("properties", {}))
        extra = sorted(k for k in value if k not in allowed)
        full = f"{param}.{extra[0]}" if param else extra[0]
        return ApiFailure(400, f"Unrecognized request argument supplied: {full}", param=full, code="unknown_parameter")
    if "propertyNames" in error.schema_path:
        return ApiFailure(
            400,
            f"Invalid '{name}': key {str(value)[:80]!r} is too long. Expected a key with maximum length "
            f"{error.validator_value}, but got a key with length {len(value)} instead.",
            param=param,
            code="string_above_max_length",
        )
    if kind in ("type", "anyOf"):
        expected = _expected(error)
        return ApiFailure(
            400,
            f"Invalid type for '{name}': expected {expected}, but got {_kind(value)} instead.",
            param=param,
            code="invalid_type",
        )
    if kind in ("enum", "const"):
        options = error.validator_value if kind == "enum" else [error.validator_value]
        return ApiFailure(
            400,
            f"Invalid value for '{name}': {_show(value)}. Supported values are: {', '.join(map(_show, options))}.",
            param=param,
            code="invalid_value",
        )
    if kind in ("minimum", "maximum"):
        below = kind == "minimum"
        return ApiFailure(
            400,
            f"Invalid '{name}': integer {'below minimum' if below else 'above maximum'} value. Expected a value "
            f"{'>=' if below else '<='} {error.validator_value}, but got {value} instead.",
            param=param,
            code="integer_below_min_value" if below else "integer_above_max_value",
        )
    if kind == "maxLength":
        return ApiFailure(
            400,
            f"Invalid '{name}': string too long. Expected a string with maximum length {error.validator_value}, "
            f"but got a string with length {len(value)} instead.",
            param=param,
            code="string_above_max_length",
        )
    if kind == "maxProperties":
        return ApiFailure(
            400,
            f"Invalid '{name}': too many properties. Expected an object with at most {error.validator_value} "
            f"properties, but got an object with {len(value)} properties instead.",
            param=param,
            code="object_above_max_properties",
        )
    return ApiFailure(400, f"Invalid '{name}': {error.message}", param=param, code="invalid_value")


_ARTICLES = {
    "object": "an object",
    "array": "an array",
    "string": "a string",
    "integer": "an integer",
    "number": "a number",
    "boolean": "a boolean",
    "null": "null",
}


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _kind(value: Any) -> str:
    return _ARTICLES[_json_type(value)]


def _expected(error: ValidationError) -> str:
    if error.validator == "type":
        types = error.validator_value if isinstance(error.validator_value, list) else [error.validator_value]
    else:  # anyOf: the types of its branches
        types = [str(branch.get("type", "a value")) for branch in error.validator_value]
    return " or ".join(_ARTICLES.get(str(t), str(t)) for t in types)


def _show(value: Any) -> str:
    return f"'{value}'" if isinstance(value, str) else repr(value)
