"""The rules the spec states only in prose (its descriptions and the Batch guide, listed in README.md here),
written as additions to the spec's own schemas so one JSON Schema validator judges both.

Read the limits as ``guide.NAME`` at call time (not ``from guide import NAME``): tests lower them to check a
rule without sending hundreds of megabytes.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from openai_batch_emulator.contract import spec

METADATA_MAX_PAIRS = 16
METADATA_MAX_KEY = 64
METADATA_MAX_VALUE = 512
BATCH_LIST_LIMIT = (1, 100)
FILE_LIST_LIMIT = (1, 10_000)
#: Any upload.
MAX_UPLOAD_BYTES = 512 * 1024 * 1024
#: A batch input file: requests and bytes.
MAX_INPUT_REQUESTS = 50_000
MAX_INPUT_BYTES = 200 * 1024 * 1024
#: ``/v1/embeddings`` batches: inputs over all requests (a request's ``input`` may hold many).
MAX_EMBEDDING_INPUTS = 50_000
EMBEDDINGS = "/v1/embeddings"
#: Azure OpenAI global batch (its documentation; its published OpenAPI documents do not describe batches):
#: the endpoints, written without /v1, and up to 100,000 requests per file, all naming one deployment.
AZURE_ENDPOINTS = ("/chat/completions", "/embeddings", "/responses")
AZURE_MAX_INPUT_REQUESTS = 100_000
#: "By default, files with purpose=batch expire after 30 days" (FileExpirationAfter).
BATCH_FILE_TTL_SECONDS = 30 * 86_400


@cache
def create_batch() -> dict[str, Any]:
    """``CreateBatchRequest`` plus the metadata limits its ``Metadata`` schema only describes."""
    schema = spec.request_body("/v1/batches", "post", "application/json")
    branches = schema["properties"]["metadata"].get("anyOf", [schema["properties"]["metadata"]])
    mapping = next(b for b in branches if b.get("type") == "object")  # StopIteration: the spec changed shape
    mapping["maxProperties"] = METADATA_MAX_PAIRS
    mapping["propertyNames"] = {"maxLength": METADATA_MAX_KEY}
    mapping["additionalProperties"] = {**mapping.get("additionalProperties", {}), "maxLength": METADATA_MAX_VALUE}
    return schema


@cache
def create_batch_azure() -> dict[str, Any]:
    """:func:`create_batch` with Azure's endpoints (no ``/v1``) in place of OpenAI's."""
    schema = create_batch()
    schema = {**schema, "properties": {**schema["properties"]}}
    schema["properties"]["endpoint"] = {"type": "string", "enum": list(AZURE_ENDPOINTS)}
    return schema


@cache
def list_batches() -> dict[str, Any]:
    """``GET /v1/batches`` query, with the ``limit`` range its description gives."""
    return _with_range(spec.query_parameters("/v1/batches", "get"), "limit", BATCH_LIST_LIMIT)


@cache
def list_files() -> dict[str, Any]:
    """``GET /v1/files`` query, with the ``limit`` range its description gives."""
    return _with_range(spec.query_parameters("/v1/files", "get"), "limit", FILE_LIST_LIMIT)


@cache
def upload() -> dict[str, Any]:
    """``CreateFileRequest`` as it stands (its purposes, its ``expires_after``, no other fields)."""
    return spec.request_body("/v1/files", "post", "multipart/form-data")


@cache
def input_line(endpoint: str) -> dict[str, Any]:
    """``BatchRequestInput`` plus the guide: every field present, ``url`` equal to the batch's endpoint and
    ``body`` an object (what the body holds is judged per request, as the endpoint would)."""
    schema = spec.line_schema("BatchRequestInput")
    schema["required"] = ["custom_id", "method", "url", "body"]
    schema["properties"]["url"] = {**schema["properties"]["url"], "const": endpoint}
    schema["properties"]["body"] = {"type": "object"}
    return schema


def embedding_inputs(body: dict[str, Any]) -> int:
    """How many inputs an embeddings request holds: a string is one, a list of strings one per string, a
    list of integers ONE (a token array), a list of token arrays one per inner list."""
    value = body.get("input")
    if value is None:
        return 0
    if not isinstance(value, list):
        return 1
    if value and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        return 1
    return len(value)


def _with_range(schema: dict[str, Any], name: str, bounds: tuple[int, int]) -> dict[str, Any]:
    schema["properties"][name] = {**schema["properties"][name], "minimum": bounds[0], "maximum": bounds[1]}
    return schema
