"""The row schema of an export and how each input request is classified.

One row per input request, in input order. A request with a result line is classified by that line; one
without (the API writes no line for a request it never ran) by how its batch ended.
"""

from __future__ import annotations

import base64
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from airflow_provider_openai_batch.statuses import BatchStatus

if TYPE_CHECKING:
    from airflow_provider_openai_batch.structured import OutputSchema

# A row's status: what happened to one request (a batch's own statuses are in statuses.py).
SUCCEEDED = "succeeded"
FAILED = "failed"
EXPIRED = "expired"
CANCELLED = "cancelled"
MISSING = "missing"
#: Answered (2xx), but the answer does not parse or validate against the export's ``output_type``.
INVALID_OUTPUT = "invalid_output"
#: Every status a row can have, in the order the manifest lists their counts.
STATUSES = (SUCCEEDED, INVALID_OUTPUT, FAILED, EXPIRED, CANCELLED, MISSING)

#: The columns of a row, in order, with their type (the Parquet schema follows it; ``response`` is a JSON
#: object in JSONL and its JSON text in Parquet, whose columns need one type).
COLUMNS: tuple[tuple[str, str], ...] = (
    ("custom_id", "string"),
    ("index", "int64"),
    ("status", "string"),
    ("status_code", "int64"),
    ("response", "json"),
    ("output_text", "string"),
    ("error_code", "string"),
    ("error_message", "string"),
    ("input_tokens", "int64"),
    ("output_tokens", "int64"),
    ("total_tokens", "int64"),
    ("batch_id", "string"),
)
#: With an ``output_type``: the answer parsed and validated (JSON in JSONL, its JSON text in Parquet).
OUTPUT_COLUMNS: tuple[tuple[str, str], ...] = (("output", "json"),)
#: For ``/v1/embeddings``: the vector of a request with one input, or one vector per input (float lists).
EMBEDDING_COLUMNS: tuple[tuple[str, str], ...] = (("embedding", "vector"), ("embeddings", "vectors"))


@dataclass(frozen=True)
class RowShape:
    """Which optional columns an export's rows have, after :data:`COLUMNS`.

    :param output: The ``output_type``'s schema: rows get ``output``, and an answer that does not parse or
        validate makes its row ``invalid_output``.
    :param embeddings: The batches are embeddings: rows get ``embedding`` and ``embeddings``.
    """

    output: OutputSchema | None = None
    embeddings: bool = False

    @property
    def columns(self) -> tuple[tuple[str, str], ...]:
        return (
            COLUMNS
            + (OUTPUT_COLUMNS if self.output is not None else ())
            + (EMBEDDING_COLUMNS if self.embeddings else ())
        )


#: The rows of an export without ``output_type`` of any endpoint but embeddings.
PLAIN = RowShape()

EXPIRED_CODE = "batch_expired"
#: Not documented for the Batch API today; if it ever reports a cancelled request this way, it is one.
CANCELLED_CODE = "batch_cancelled"


def classify_line(status_code: int | None, error_code: str | None, has_error: bool) -> str:
    """Status of a request that has a result line: a 2xx response succeeded; ``batch_expired`` expired;
    anything else (a non-2xx response, any other error) failed."""
    if has_error:
        if error_code == EXPIRED_CODE:
            return EXPIRED
        return CANCELLED if error_code == CANCELLED_CODE else FAILED
    if status_code is not None and 200 <= status_code < 300:
        return SUCCEEDED
    return FAILED


def classify_missing(batch_status: str | None) -> str:
    """Status of a request with no result line, from how the last batch it was sent in ended."""
    if batch_status == BatchStatus.EXPIRED:
        return EXPIRED
    if batch_status in (BatchStatus.CANCELLED, BatchStatus.CANCELLING):
        return CANCELLED
    if batch_status == BatchStatus.FAILED:  # refused at validation: no request ran
        return FAILED
    return MISSING


def output_text(endpoint: str | None, body: Any) -> str | None:
    """The answer's text: ``choices[0].message.content`` for chat completions, the concatenated
    ``output_text`` parts for responses; ``None`` for other endpoints or bodies without one."""
    if not isinstance(body, Mapping):
        return None
    if endpoint and not endpoint.startswith("/v1/"):  # Azure names the same endpoints without /v1
        endpoint = "/v1" + endpoint
    if endpoint == "/v1/chat/completions":
        choices = body.get("choices")
        if isinstance(choices, list) and choices and isinstance(choices[0], Mapping):
            message = choices[0].get("message")
            content = message.get("content") if isinstance(message, Mapping) else None
            return content if isinstance(content, str) else None
        return None
    if endpoint == "/v1/responses":
        parts = [
            part["text"]
            for item in body.get("output") or []
            if isinstance(item, Mapping)
            for part in item.get("content") or []
            if isinstance(part, Mapping) and part.get("type") == "output_text" and isinstance(part.get("text"), str)
        ]
        return "".join(parts) if parts else None
    return None


def usage_tokens(body: Any) -> tuple[int | None, int | None, int | None]:
    """(input, output, total) tokens from a body's ``usage``: ``prompt``/``completion`` (chat, completions,
    embeddings) or ``input``/``output`` (responses); ``None`` where the body does not say."""
    usage = body.get("usage") if isinstance(body, Mapping) else None
    if not isinstance(usage, Mapping):
        return None, None, None
    tokens_in = _int(usage.get("prompt_tokens", usage.get("input_tokens")))
    tokens_out = _int(usage.get("completion_tokens", usage.get("output_tokens")))
    total = _int(usage.get("total_tokens"))
    if total is None and (tokens_in is not None or tokens_out is not None):
        total = (tokens_in or 0) + (tokens_out or 0)
    return tokens_in, tokens_out, total


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def row_from_line(
    custom_id: str,
    index: int,
    line: Mapping[str, Any],
    batch_id: str,
    endpoint: str | None,
    shape: RowShape = PLAIN,
) -> dict:
    """The row of a request whose result line is ``line`` (an output or error file record), with the
    optional columns of ``shape``."""
    response = line.get("response") if isinstance(line.get("response"), Mapping) else None
    error = line.get("error") if isinstance(line.get("error"), Mapping) else None
    status_code = _int(response.get("status_code")) if response else None
    body = response.get("body") if response else None
    error_code = error_message = None
    if error is not None:
        error_code, error_message = _str(error.get("code")), _str(error.get("message"))
    elif isinstance(body, Mapping) and isinstance(body.get("error"), Mapping):
        error_code, error_message = _str(body["error"].get("code")), _str(body["error"].get("message"))
    status = classify_line(status_code, error_code, error is not None)
    if status != SUCCEEDED and error_message is None and error is None:
        error_message = f"HTTP {status_code}" if status_code is not None else "no response and no error"
    tokens_in, tokens_out, total = usage_tokens(body)
    row = {
        "custom_id": custom_id,
        "index": index,
        "status": status,
        "status_code": status_code,
        "response": body,
        "output_text": output_text(endpoint, body),
        "error_code": error_code if status != SUCCEEDED else None,
        "error_message": error_message if status != SUCCEEDED else None,
        "input_tokens": tokens_in,
        "output_tokens": tokens_out,
        "total_tokens": total,
        "batch_id": batch_id,
    }
    if shape.output is not None:
        row["output"] = None
        if status == SUCCEEDED:
            _parse_output(row, shape.output, body)
    if shape.embeddings:
        one, several = embedding_vectors(body) if status == SUCCEEDED else (None, None)
        row["embedding"], row["embeddings"] = one, several
    return row


def _parse_output(row: dict[str, Any], schema: OutputSchema, body: Any) -> None:
    """Fill ``output`` with the answer parsed and validated; else make the row ``invalid_output``, its text
    kept in ``output_text`` and what is wrong in ``error_message``."""
    from airflow_provider_openai_batch.structured import InvalidOutput

    try:
        refusal = _refusal(body)
        if refusal is not None and row["output_text"] is None:
            raise InvalidOutput(f"the model refused: {refusal}")
        row["output"] = schema.parse(row["output_text"])
    except InvalidOutput as err:
        row["status"], row["error_message"] = INVALID_OUTPUT, str(err)


def _refusal(body: Any) -> str | None:
    """A chat answer's ``refusal`` text (strict structured outputs may refuse instead of answering)."""
    choices = body.get("choices") if isinstance(body, Mapping) else None
    message = (
        choices[0].get("message") if isinstance(choices, list) and choices and isinstance(choices[0], Mapping) else None
    )
    refusal = message.get("refusal") if isinstance(message, Mapping) else None
    return refusal if isinstance(refusal, str) and refusal else None


def embedding_vectors(body: Any) -> tuple[list[float] | None, list[list[float]] | None]:
    """An embeddings answer's vectors, in input order: ``(vector, None)`` for a request with one input,
    ``(None, vectors)`` for several; ``(None, None)`` without any. A vector sent as base64
    (``encoding_format="base64"``: little-endian float32) is decoded."""
    data = body.get("data") if isinstance(body, Mapping) else None
    if not isinstance(data, list):
        return None, None
    items = sorted((d for d in data if isinstance(d, Mapping)), key=lambda d: _int(d.get("index")) or 0)
    vectors = [_vector(item.get("embedding")) for item in items]
    if not vectors:
        return None, None
    return (vectors[0], None) if len(vectors) == 1 else (None, vectors)


def _vector(value: Any) -> list[float]:
    if isinstance(value, str):
        raw = base64.b64decode(value)
        return list(struct.unpack(f"<{len(raw) // 4}f", raw[: len(raw) // 4 * 4]))
    # A float decoded by results/codec.py keeps what tells the writer to spell it as json does: keep it as it is.
    return [x if isinstance(x, float) else float(x) for x in value] if isinstance(value, list) else []


def row_without_line(
    custom_id: str,
    index: int,
    batch_id: str,
    batch_status: str | None,
    batch_error: tuple[str | None, str] | None,
    shape: RowShape = PLAIN,
) -> dict:
    """The row of a request no result file mentions: its status comes from how its batch ended (its optional
    columns of ``shape`` are empty)."""
    status = classify_missing(batch_status)
    if status == FAILED and batch_error is not None:
        error_code, error_message = batch_error
    else:
        error_code, error_message = None, f"no result line for this request; batch {batch_id} is {batch_status}"
    row = {
        "custom_id": custom_id,
        "index": index,
        "status": status,
        "status_code": None,
        "response": None,
        "output_text": None,
        "error_code": error_code,
        "error_message": error_message,
        "input_tokens": None,
        "output_tokens": None,
        "total_tokens": None,
        "batch_id": batch_id,
    }
    row.update((name, None) for name, _ in shape.columns[len(COLUMNS) :])
    return row


def _str(value: Any) -> str | None:
    return None if value is None else str(value)
