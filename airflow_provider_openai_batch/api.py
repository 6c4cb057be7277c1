"""The one definition of the OpenAI Batch and Files API that every transport shares.

This module knows URLs, request validation, response parsing and error mapping, and performs no I/O (the
retry policy is in :mod:`~airflow_provider_openai_batch.retries`, connection parsing in
:mod:`~airflow_provider_openai_batch.connection`). The sync hook sends these :class:`ApiCall` objects with
``requests``; the trigger's async client sends the same objects with aiohttp. Neither re-implements anything
here.
"""

from __future__ import annotations

import email.utils
import json
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar
from urllib.parse import quote, urlsplit

import pydantic

from airflow_provider_openai_batch.backends import OPENAI, RULES, BackendRules
from airflow_provider_openai_batch.exceptions import (
    APIError,
    AuthenticationError,
    ConflictError,
    InvalidRequestError,
    NotFoundError,
    QuotaExceededError,
    RateLimitError,
    ServerError,
)
from airflow_provider_openai_batch.models import (
    ApiModel,
    Batch,
    BatchPage,
    FileDeleted,
    FileObject,
    FilePage,
    HttpInfo,
)

T = TypeVar("T", bound=ApiModel)

#: Endpoints an OpenAI batch may target (the input file's ``url`` must equal the batch's endpoint).
ENDPOINTS: tuple[str, ...] = RULES[OPENAI].endpoints or ()
COMPLETION_WINDOWS: tuple[str, ...] = ("24h",)
METADATA_MAX_PAIRS = 16
METADATA_MAX_KEY = 64
METADATA_MAX_VALUE = 512
LIST_LIMIT_RANGE = (1, 100)
OUTPUT_EXPIRES_RANGE = (3600, 2_592_000)
#: Metadata key under which an idempotency key is stored on the batch, so a retry can find it again.
IDEMPOTENCY_METADATA_KEY = "airflow_idempotency_key"
#: Response headers carrying the request id to quote to support, in order of preference: Azure documents
#: ``apim-request-id`` (its API gateway's id) on every answer; OpenAI sends ``x-request-id``.
REQUEST_ID_HEADERS: tuple[str, ...] = ("apim-request-id", "x-request-id")
#: Error codes that mean "the account is out of quota" rather than "slow down", on OpenAI and on Azure.
QUOTA_CODES = frozenset({"insufficient_quota", "quota_exceeded", "quotaexceeded", "insufficientquota"})


# ---------------------------------------------------------------------------------------------- validation


def validate_id(value: Any, field_name: str) -> str:
    """Check an object id and return it percent-encoded, safe to put in a URL path.

    :raises ValueError: naming ``field_name`` when the id is empty, not a string, or could change the path.
    """
    if not isinstance(value, str) or not value:
        example = "file-abc123" if "file" in field_name else "batch_abc123"
        raise ValueError(f"{field_name} must be a non-empty string such as {example!r}, got {value!r}")
    # An id is one segment of the request path: nothing that would make it another path is an id.
    if value in (".", "..") or any(mark in value for mark in "/?#") or any(ch.isspace() for ch in value):
        raise ValueError(
            f"{field_name} {value!r} is not a valid id: ids may not contain '/', '?', '#' or whitespace, nor be "
            "'.' or '..' (an id is one segment of the request path)"
        )
    if not value.isprintable():
        raise ValueError(f"{field_name} {value!r} contains control characters; pass the id as the API returned it")
    return quote(value, safe="")


def validate_endpoint(endpoint: Any, rules: BackendRules | None = None) -> str:
    """The endpoint in the back end's shape (see :meth:`BackendRules.endpoint`); OpenAI's rules by default."""
    if rules is not None:
        return rules.endpoint(endpoint)
    if endpoint not in ENDPOINTS:
        raise ValueError(f"endpoint must be one of {', '.join(ENDPOINTS)}; got {endpoint!r}")
    return str(endpoint)


def validate_completion_window(window: Any, rules: BackendRules | None = None) -> str:
    if rules is not None:
        return rules.completion_window(window)
    if window not in COMPLETION_WINDOWS:
        raise ValueError(f"completion_window must be '24h' (the only window the Batch API offers); got {window!r}")
    return str(window)


def validate_metadata(metadata: Any, *, reserved_keys: tuple[str, ...] = ()) -> dict[str, str]:
    """Check metadata against the API's limits (16 pairs, keys <= 64 chars, values <= 512 chars, all strings).

    :param reserved_keys: keys this provider sets itself (e.g. the idempotency key): each takes one of the 16
        pairs, and a user's own pair under that name is refused rather than silently overwritten.
    """
    if metadata is None:
        return {}
    if not isinstance(metadata, Mapping):
        raise ValueError(f"metadata must be a dict of strings to strings; got {type(metadata).__name__}")
    limit = METADATA_MAX_PAIRS - len(reserved_keys)
    if len(metadata) > limit:
        extra = f" ({', '.join(reserved_keys)} is set by the provider)" if reserved_keys else ""
        raise ValueError(f"metadata has {len(metadata)} pairs; at most {limit} are allowed{extra}: remove some keys")
    for key, value in metadata.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise ValueError(
                f"metadata[{key!r}] must map a string to a string; got {type(value).__name__}: "
                "convert keys and values with str() first"
            )
        if not key or len(key) > METADATA_MAX_KEY:
            raise ValueError(f"metadata key {key[:70]!r} must be 1..{METADATA_MAX_KEY} characters long")
        if len(value) > METADATA_MAX_VALUE:
            raise ValueError(
                f"metadata[{key!r}] is {len(value)} characters; values may have at most {METADATA_MAX_VALUE}"
            )
        if key in reserved_keys:
            raise ValueError(
                f"metadata key {key!r} is reserved: the provider stores its idempotency key there so a retry finds "
                "its batch again; rename your key"
            )
    return dict(metadata)


def validate_limit(limit: Any) -> int:
    low, high = LIST_LIMIT_RANGE
    if isinstance(limit, bool) or not isinstance(limit, int) or not low <= limit <= high:
        raise ValueError(f"limit must be an integer from {low} to {high}; got {limit!r}")
    return limit


def validate_expires_after(value: Any, name: str = "output_expires_after") -> dict[str, Any] | None:
    """Accept ``None``, a number of seconds, or ``{"anchor": "created_at", "seconds": N}`` (1 hour to 30 days).

    :param name: The parameter the value came from, for the message (``output_expires_after`` of a batch,
        ``expires_after`` of an upload, ``input_expires_after`` of the create operator).
    """
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        value = {"anchor": "created_at", "seconds": value}
    if not isinstance(value, Mapping):
        raise ValueError(
            f"{name} must be seconds (int) or {{'anchor': 'created_at', 'seconds': N}}; got {type(value).__name__}"
        )
    anchor = value.get("anchor", "created_at")
    if anchor != "created_at":
        raise ValueError(f"{name}.anchor must be 'created_at'; got {anchor!r}")
    seconds = value.get("seconds")
    low, high = OUTPUT_EXPIRES_RANGE
    if isinstance(seconds, bool) or not isinstance(seconds, int) or not low <= seconds <= high:
        raise ValueError(f"{name}.seconds must be an integer from {low} (1 hour) to {high} (30 days); got {seconds!r}")
    return {"anchor": "created_at", "seconds": seconds}


def validate_purpose(purpose: Any) -> str:
    if not isinstance(purpose, str) or not purpose:
        raise ValueError(f"purpose must be a non-empty string such as 'batch'; got {purpose!r}")
    return purpose


#: The name a batch input file must have: the API refuses any other with ``Invalid file format for Batch API``.
BATCH_FILE_SUFFIX = ".jsonl"


def validate_upload_name(filename: str, purpose: str) -> str:
    """The name an upload is recorded under; for ``purpose="batch"`` it must end in ``.jsonl``."""
    if purpose == "batch" and not filename.endswith(BATCH_FILE_SUFFIX):
        raise ValueError(
            f"filename {filename!r} must end in {BATCH_FILE_SUFFIX!r} for purpose 'batch' (the API refuses any other "
            "batch input file name): rename it, or leave filename unset and the provider names it"
        )
    return filename


# ------------------------------------------------------------------------------------------------- calls


@dataclass(frozen=True)
class ApiCall(Generic[T]):
    """One API request, described without any transport.

    :param method: HTTP method.
    :param path: Path relative to the base URL, ids already validated and percent-encoded.
    :param model: The model the JSON answer parses into (``None`` for raw content such as a file download).
    :param params: Query parameters.
    :param json: JSON body.
    :param idempotent: Whether repeating the request is harmless. A non-idempotent call (create) is retried
        only when the failure proves the server did not act on it (a 429, a refused connection).
    :param form: Multipart form fields (an upload), sent beside the file the transport streams.
    :param retry_conflict: Whether a 409 is a passing conflict worth retrying (the default, as the official
        SDK does) or a final verdict on the object's state (cancelling a batch that already ended).
    """

    method: str
    path: str
    model: type[T] | None
    params: dict[str, Any] | None = None
    json: dict[str, Any] | None = None
    idempotent: bool = True
    retry_conflict: bool = True
    form: dict[str, str] | None = None

    def url(self, base_url: str) -> str:
        return base_url.rstrip("/") + self.path

    def query(self, api_version: str | None = None) -> dict[str, Any] | None:
        """The query parameters to send: the call's own, plus Azure's ``api-version`` on the classic paths."""
        if api_version is None:
            return self.params
        return {**(self.params or {}), "api-version": api_version}

    def parse(self, status_code: int, headers: Mapping[str, str], body: bytes) -> T:
        """Turn a response into the call's model, or raise the mapped :class:`APIError`."""
        http = http_info(status_code, headers)
        if status_code >= 300:  # redirects are never followed (see redirect_error)
            raise error_from_response(status_code, headers, body, f"{self.method} {self.path}")
        if self.model is None:
            raise TypeError(f"{self.method} {self.path} has no JSON model; read its content as a stream")
        try:
            payload = json.loads(body)
        except ValueError:
            raise APIError(
                f"Expected JSON from {self.method} {self.path} but got: {_summarize_body(body, headers)}",
                status_code=status_code,
                request_id=http.request_id,
            ) from None
        try:
            model = self.model.model_validate(payload)
        except pydantic.ValidationError as err:  # liberal models, so only a body of the wrong shape gets here
            first = err.errors()[0]  # pydantic raises only with at least one error
            where = ".".join(map(str, first["loc"])) or "the top level"
            raise APIError(
                f"Expected a {self.model.__name__} from {self.method} {self.path} but got JSON that does not fit "
                f"it: {first['msg']} at {where}",
                status_code=status_code,
                request_id=http.request_id,
            ) from None
        model.with_http(http)
        return model


def create_batch(
    input_file_id: str,
    endpoint: str,
    completion_window: str = "24h",
    metadata: Mapping[str, str] | None = None,
    output_expires_after: int | Mapping[str, Any] | None = None,
    idempotency_key: str | None = None,
    rules: BackendRules | None = None,
) -> ApiCall[Batch]:
    """``POST /batches``. With ``idempotency_key`` the key is stored in the batch metadata.

    :param rules: The back end's rules: the endpoint is sent in its shape (``/chat/completions`` on Azure)
        and checked against its endpoints and completion windows (default: OpenAI's).
    """
    validate_id(input_file_id, "input_file_id")
    body: dict[str, Any] = {
        "input_file_id": input_file_id,
        "endpoint": validate_endpoint(endpoint, rules),
        "completion_window": validate_completion_window(completion_window, rules),
    }
    meta = validate_metadata(metadata, reserved_keys=(IDEMPOTENCY_METADATA_KEY,) if idempotency_key else ())
    if idempotency_key is not None:
        if not isinstance(idempotency_key, str) or not 0 < len(idempotency_key) <= METADATA_MAX_VALUE:
            raise ValueError(
                f"idempotency_key must be a string of 1..{METADATA_MAX_VALUE} characters; got {idempotency_key!r}"
            )
        meta[IDEMPOTENCY_METADATA_KEY] = idempotency_key
    if meta:
        body["metadata"] = meta
    expires = validate_expires_after(output_expires_after)
    if expires is not None:
        body["output_expires_after"] = expires
    return ApiCall("POST", "/batches", Batch, json=body, idempotent=False)


def retrieve_batch(batch_id: str) -> ApiCall[Batch]:
    """``GET /batches/{batch_id}``."""
    return ApiCall("GET", f"/batches/{validate_id(batch_id, 'batch_id')}", Batch)


def list_batches(after: str | None = None, limit: int = 20) -> ApiCall[BatchPage]:
    """``GET /batches``: one page, newest first."""
    params: dict[str, Any] = {"limit": validate_limit(limit)}
    if after is not None:
        validate_id(after, "after")
        params["after"] = after
    return ApiCall("GET", "/batches", BatchPage, params=params)


def cancel_batch(batch_id: str) -> ApiCall[Batch]:
    """``POST /batches/{batch_id}/cancel``. Repeating it is harmless, so it is retried like a GET; its 409
    (the batch already ended) is final."""
    return ApiCall("POST", f"/batches/{validate_id(batch_id, 'batch_id')}/cancel", Batch, retry_conflict=False)


def upload_file(
    purpose: str = "batch", expires_after: int | Mapping[str, Any] | None = None, *, name: str = "expires_after"
) -> ApiCall[FileObject]:
    """``POST /files`` (multipart): ``form`` holds the fields; the transport attaches the file itself.

    Retried like an idempotent call: the worst case of a repeat is a duplicate file, never a billed batch.

    :param expires_after: Seconds (3600..2592000) after which the API deletes the file by itself.
    :param name: The caller's name for ``expires_after``, for the message.
    """
    form = {"purpose": validate_purpose(purpose)}
    expires = validate_expires_after(expires_after, name)
    if expires is not None:
        form["expires_after[anchor]"] = expires["anchor"]
        form["expires_after[seconds]"] = str(expires["seconds"])
    return ApiCall("POST", "/files", FileObject, form=form)


def retrieve_file(file_id: str) -> ApiCall[FileObject]:
    """``GET /files/{file_id}``."""
    return ApiCall("GET", f"/files/{validate_id(file_id, 'file_id')}", FileObject)


def list_files(purpose: str | None = None, after: str | None = None, limit: int = 100) -> ApiCall[FilePage]:
    """``GET /files``."""
    params: dict[str, Any] = {"limit": limit}
    if purpose is not None:
        params["purpose"] = validate_purpose(purpose)
    if after is not None:
        validate_id(after, "after")
        params["after"] = after
    return ApiCall("GET", "/files", FilePage, params=params)


def delete_file(file_id: str) -> ApiCall[FileDeleted]:
    """``DELETE /files/{file_id}``."""
    return ApiCall("DELETE", f"/files/{validate_id(file_id, 'file_id')}", FileDeleted)


def file_content(file_id: str) -> ApiCall[Any]:
    """``GET /files/{file_id}/content``: raw bytes, read as a stream by the transport."""
    return ApiCall("GET", f"/files/{validate_id(file_id, 'file_id')}/content", None)


# -------------------------------------------------------------------------------------------- responses


def http_info(status_code: int, headers: Mapping[str, str]) -> HttpInfo:
    plain = {str(k): str(v) for k, v in headers.items()}
    lowered = {k.lower(): v for k, v in plain.items()}
    request_id = next((lowered[name] for name in REQUEST_ID_HEADERS if lowered.get(name)), None)
    return HttpInfo(status_code=status_code, headers=plain, request_id=request_id)


_TAG = re.compile(r"<[^>]+>")


def _summarize_body(body: bytes, headers: Mapping[str, str]) -> str:
    content_type = next((v for k, v in headers.items() if k.lower() == "content-type"), "unknown type")
    text = _TAG.sub(" ", body[:2000].decode("utf-8", "replace"))
    text = " ".join(text.split())[:200]
    return f"a non-JSON body ({content_type}): {text!r}" if text else f"an empty body ({content_type})"


def _error_class(status_code: int, code: str | None = None) -> type[APIError]:
    if code is not None and code.lower() in QUOTA_CODES:
        return QuotaExceededError
    if status_code in (401, 403):
        return AuthenticationError
    if status_code == 404:
        return NotFoundError
    if status_code == 409:
        return ConflictError
    if status_code in (400, 422):
        return InvalidRequestError
    if status_code == 429:
        return RateLimitError
    if status_code >= 500:
        return ServerError
    return APIError


def error_from_response(
    status_code: int, headers: Mapping[str, str], body: bytes, where: str | None = None
) -> APIError:
    """Map an HTTP error answer to the exception hierarchy, whatever its body looks like.

    :param where: The call, e.g. ``GET /batches/batch_1``, named in messages built from a body that is not the
        API's error shape (a proxy's page, a server that does not serve the Batch API at this base URL).
    """
    info = http_info(status_code, headers)
    if 300 <= status_code < 400:
        return redirect_error(status_code, info, where)
    retry_after = parse_retry_after(info.headers)
    payload: Any = None
    try:
        payload = json.loads(body) if body else None
    except ValueError:
        payload = None
    error = payload.get("error") if isinstance(payload, dict) else None
    if error is None and isinstance(payload, dict) and "statusCode" in payload and "message" in payload:
        # Azure's API gateway answers some refusals (an expired Entra ID token, a wrong key on some paths) in its
        # own shape, {"statusCode": 401, "message": "..."}: read it as the API's error with no code.
        error = {"message": payload.get("message"), "code": payload.get("code")}
    if isinstance(error, dict):
        message = str(error.get("message") or f"HTTP {status_code} with no error message")
        cls = _error_class(status_code, _opt_str(error.get("code")))
        return cls(
            message,
            status_code=status_code,
            type=_opt_str(error.get("type")),
            code=_opt_str(error.get("code")),
            param=_opt_str(error.get("param")),
            request_id=info.request_id,
            retry_after=retry_after,
            body=payload,
        )
    cls = _error_class(status_code)
    message = f"The server answered with {_summarize_body(body, info.headers)}"
    if status_code == 404:  # not the API's "no such batch": the base URL points at something else
        message = (
            f"{where or 'The request'} is not served at this base URL ({message[0].lower()}{message[1:]}): check "
            "the connection's Base URL; it should end in /v1, e.g. https://api.openai.com/v1"
        )
    return cls(
        message,
        status_code=status_code,
        request_id=info.request_id,
        retry_after=retry_after,
        body=payload,
    )


_HOST_NAME = re.compile(r"[A-Za-z0-9.-]{1,253}")


def redirect_error(status_code: int, info: HttpInfo, where: str | None = None) -> APIError:
    """The error for a 3xx answer. The Batch and Files APIs never redirect, so both transports refuse to follow
    one: ``requests`` and aiohttp drop only ``Authorization`` on a redirect to another host, and would send
    Azure's ``api-key`` (or any other credential header) to wherever the ``Location`` points.

    The message names the ``Location``'s host when it is a plain host name, never its path or query (a
    storage URL's query can carry a signature); the body is not kept, as it often repeats the URL.
    """
    location = next((v for k, v in info.headers.items() if k.lower() == "location"), "")
    try:
        host = urlsplit(location.strip()).hostname or ""
    except ValueError:
        host = ""
    target = f" on host {host}" if _HOST_NAME.fullmatch(host) else ""
    return APIError(
        f"{where or 'The request'}: the API answered with a redirect to another URL{target}, which is not "
        "followed (it would carry the credentials there); set the connection's host to the final URL",
        status_code=status_code,
        request_id=info.request_id,
    )


def _opt_str(value: Any) -> str | None:
    return None if value is None else str(value)


def parse_retry_after(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """Seconds to wait from ``retry-after-ms``, or ``Retry-After`` as seconds or an HTTP date."""
    lowered = {k.lower(): v for k, v in headers.items()}
    if "retry-after-ms" in lowered:
        try:
            return max(0.0, float(lowered["retry-after-ms"]) / 1000)
        except ValueError:
            pass
    value = lowered.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))
