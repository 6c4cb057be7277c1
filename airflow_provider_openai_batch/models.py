"""Typed models of the Batch and Files API objects.

The live API adds fields and statuses over time and sends ``null`` for unset optional fields, so every model
accepts unknown fields (kept, reachable as attributes and in :attr:`ApiModel.raw`), every optional field
accepts ``null``, and ``status`` is a plain string compared against
:class:`~airflow_provider_openai_batch.statuses.BatchStatus`. A batch without ``status`` is refused as
malformed: guessing one would wait out a deadline on a batch whose state nobody knows.

Every object a hook call returns also carries :attr:`ApiModel.http`: the HTTP status code, the response
headers and the ``x-request-id`` of the response it came from (the seed client's ``*_with_http_info``).
It is a private attribute, so it never ends up in ``model_dump()`` or XCom.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

from airflow_provider_openai_batch.statuses import BatchStatus as BatchStatus  # re-exported: users import it here
from airflow_provider_openai_batch.statuses import is_terminal


@dataclass(frozen=True)
class HttpInfo:
    """What the HTTP response said besides its body.

    :param status_code: The HTTP status code, e.g. 200.
    :param headers: The response headers (case-insensitive look-ups via :meth:`header`).
    :param request_id: The ``x-request-id`` header, to quote to OpenAI support.
    """

    status_code: int
    headers: Mapping[str, str] = field(default_factory=dict)
    request_id: str | None = None

    def header(self, name: str) -> str | None:
        """Return a response header by case-insensitive name."""
        lowered = name.lower()
        return next((v for k, v in self.headers.items() if k.lower() == lowered), None)


class ApiModel(BaseModel):
    """Base of all API models: unknown fields allowed, original JSON kept in :attr:`raw`."""

    model_config = ConfigDict(extra="allow", populate_by_name=True, protected_namespaces=())

    _raw: dict[str, Any] = PrivateAttr(default_factory=dict)
    _http: HttpInfo | None = PrivateAttr(default=None)

    @model_validator(mode="wrap")
    @classmethod
    def _keep_raw(cls, data: Any, handler: Any) -> Any:
        model = handler(data)
        if isinstance(data, dict):
            model._raw = data
        return model

    @property
    def raw(self) -> dict[str, Any]:
        """The JSON object exactly as the API sent it."""
        return self._raw

    @property
    def http(self) -> HttpInfo | None:
        """Status code, headers and request id of the response this object came from (``None`` if built locally)."""
        return self._http

    def with_http(self, http: HttpInfo | None) -> ApiModel:
        self._http = http
        return self


def _none_to_zero(value: Any) -> Any:
    return 0 if value is None else value


class RequestCounts(ApiModel):
    """How many requests of the batch are done. ``null`` counts read as 0."""

    total: int = 0
    completed: int = 0
    failed: int = 0

    _zero = field_validator("total", "completed", "failed", mode="before")(_none_to_zero)


class InputTokensDetails(ApiModel):
    cached_tokens: int | None = None


class OutputTokensDetails(ApiModel):
    reasoning_tokens: int | None = None


class Usage(ApiModel):
    """Token usage of a batch (filled only for batches created after 2025-09-07)."""

    input_tokens: int | None = None
    input_tokens_details: InputTokensDetails | None = None
    output_tokens: int | None = None
    output_tokens_details: OutputTokensDetails | None = None
    total_tokens: int | None = None


class BatchErrorItem(ApiModel):
    """One entry of ``batch.errors.data``: why validation of the input file failed (with a line number)."""

    code: str | None = None
    message: str | None = None
    param: str | None = None
    line: int | None = None

    def __str__(self) -> str:
        where = f"line {self.line}: " if self.line is not None else ""
        code = f"[{self.code}] " if self.code else ""
        return f"{where}{code}{self.message or 'no message'}"


class BatchErrors(ApiModel):
    object: str | None = "list"
    data: list[BatchErrorItem] = Field(default_factory=list)

    _empty = field_validator("data", mode="before")(lambda v: [] if v is None else v)


class Batch(ApiModel):
    """A batch, as returned by create, retrieve, list and cancel."""

    id: str
    object: str | None = "batch"
    endpoint: str | None = None
    model: str | None = None
    errors: BatchErrors | None = None
    input_file_id: str | None = None
    completion_window: str | None = None
    status: str  # required: an answer without it is malformed, not a batch still validating
    output_file_id: str | None = None
    error_file_id: str | None = None
    created_at: int | None = None
    in_progress_at: int | None = None
    expires_at: int | None = None
    finalizing_at: int | None = None
    completed_at: int | None = None
    failed_at: int | None = None
    expired_at: int | None = None
    cancelling_at: int | None = None
    cancelled_at: int | None = None
    request_counts: RequestCounts = Field(default_factory=RequestCounts)
    usage: Usage | None = None
    metadata: dict[str, str] | None = None

    @field_validator("request_counts", mode="before")
    @classmethod
    def _counts_default(cls, value: Any) -> Any:
        return {} if value is None else value

    @property
    def is_terminal(self) -> bool:
        """``True`` once the batch can no longer change (completed, failed, expired or cancelled)."""
        return is_terminal(self.status)

    @property
    def error_messages(self) -> list[str]:
        """The batch-level errors (e.g. input-file validation problems), one readable string each."""
        return [str(item) for item in (self.errors.data if self.errors else [])]

    @property
    def failed_fraction(self) -> float:
        """Failed requests over total requests (0.0 for an empty batch)."""
        counts = self.request_counts
        return counts.failed / counts.total if counts.total else 0.0


class BatchPage(ApiModel):
    """One page of ``GET /batches``; pass ``last_id`` as ``after`` for the next one while ``has_more``."""

    object: str | None = "list"
    data: list[Batch] = Field(default_factory=list)
    first_id: str | None = None
    last_id: str | None = None
    has_more: bool = False

    _empty = field_validator("data", mode="before")(lambda v: [] if v is None else v)
    _false = field_validator("has_more", mode="before")(lambda v: bool(v))


class FileObject(ApiModel):
    """An uploaded file (the batch input, or an output or error file the API produced)."""

    id: str
    object: str | None = "file"
    bytes: int | None = None
    created_at: int | None = None
    expires_at: int | None = None
    filename: str | None = None
    purpose: str | None = None
    status: str | None = None
    status_details: str | None = None


class FilePage(ApiModel):
    """One page of ``GET /files``."""

    object: str | None = "list"
    data: list[FileObject] = Field(default_factory=list)
    first_id: str | None = None
    last_id: str | None = None
    has_more: bool = False

    _empty = field_validator("data", mode="before")(lambda v: [] if v is None else v)
    _false = field_validator("has_more", mode="before")(lambda v: bool(v))


class FileDeleted(ApiModel):
    id: str
    object: str | None = "file"
    deleted: bool = False


class DownloadedFile(ApiModel):
    """What :meth:`OpenAIBatchHook.download_file` wrote: where, and how many bytes."""

    file_id: str
    destination: str
    bytes: int


class ResultResponse(ApiModel):
    status_code: int | None = None
    request_id: str | None = None
    body: dict[str, Any] | None = None


class ResultError(ApiModel):
    code: str | None = None
    message: str | None = None


class ResultRecord(ApiModel):
    """One line of a batch's output or error file, matched to its input by ``custom_id``.

    :param source: ``"output"`` or ``"error"``: which file the line came from (set by the reader).
    """

    id: str | None = None
    custom_id: str
    response: ResultResponse | None = None
    error: ResultError | None = None
    source: str | None = None

    @property
    def ok(self) -> bool:
        """``True`` when the request succeeded (a 2xx response and no error)."""
        status = self.response.status_code if self.response else None
        return self.error is None and status is not None and 200 <= status < 300

    @property
    def body(self) -> dict[str, Any] | None:
        """The response body (e.g. a ``chat.completion`` object), or ``None``."""
        return self.response.body if self.response else None

    @property
    def error_message(self) -> str | None:
        """Why this request failed, from ``error`` or from a non-2xx response body; ``None`` when it is ok."""
        if self.ok:
            return None
        if self.error is not None:
            return f"[{self.error.code}] {self.error.message}"
        body = self.body or {}
        err = body.get("error") if isinstance(body, dict) else None
        if isinstance(err, dict):
            return f"HTTP {self.response.status_code if self.response else '?'}: {err.get('message')}"
        return f"HTTP {self.response.status_code if self.response else '?'}"

    @classmethod
    def from_line(cls, line: bytes, file_id: str, number: int, source: str | None) -> ResultRecord:
        """One line of an output or error file (``source``: ``"output"`` or ``"error"``).

        :raises ResultsParseError: naming the file and line, with the start of the line.
        """
        from airflow_provider_openai_batch.exceptions import ResultsParseError

        try:
            record = cls.model_validate_json(line)
        except ValueError as err:
            preview = line[:80].decode("utf-8", "replace")
            first_error = str(err).splitlines()[0]
            raise ResultsParseError(
                f"file {file_id} line {number} is not a batch result record ({first_error}): {preview!r}"
            ) from None
        record.source = source
        return record
