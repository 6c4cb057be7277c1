"""The transport-free API definition: validation, error mapping, Retry-After, retry decisions."""

from __future__ import annotations

import email.utils
import json

import pytest
from airflow.sdk import Connection

from airflow_provider_openai_batch import api
from airflow_provider_openai_batch.exceptions import (
    APIConnectionError,
    AuthenticationError,
    ConflictError,
    InvalidRequestError,
    NotFoundError,
    RateLimitError,
    ServerError,
)

GOOD = {"input_file_id": "file-1", "endpoint": "/v1/chat/completions"}


@pytest.mark.parametrize(
    ("kwargs", "field", "rule"),
    [
        ({"input_file_id": ""}, "input_file_id", "non-empty"),
        ({"input_file_id": "a/b"}, "input_file_id", "may not contain '/'"),
        ({"input_file_id": "a b"}, "input_file_id", "whitespace"),
        ({"input_file_id": ".."}, "input_file_id", "'..'"),
        ({"input_file_id": 42}, "input_file_id", "non-empty string"),
        ({"endpoint": "/v1/chat"}, "endpoint", "must be one of"),
        ({"completion_window": "48h"}, "completion_window", "'24h'"),
        ({"metadata": {f"k{i}": "v" for i in range(17)}}, "metadata", "at most 16"),
        ({"metadata": {"k" * 65: "v"}}, "metadata key", "1..64"),
        ({"metadata": {"k": "v" * 513}}, "metadata['k']", "at most 512"),
        ({"metadata": {"k": 1}}, "metadata['k']", "string to a string"),
        ({"metadata": ["k"]}, "metadata", "dict"),
        ({"output_expires_after": 3599}, "output_expires_after.seconds", "3600"),
        ({"output_expires_after": 2_592_001}, "output_expires_after.seconds", "2592000"),
        ({"output_expires_after": {"anchor": "now", "seconds": 4000}}, "output_expires_after.anchor", "created_at"),
        ({"idempotency_key": "", "metadata": None}, "idempotency_key", "1..512"),
    ],
)
def test_create_batch_validation_names_field_and_rule(kwargs, field, rule):
    with pytest.raises(ValueError) as err:
        api.create_batch(**{**GOOD, **kwargs})
    assert field in str(err.value)
    assert rule in str(err.value)


def test_idempotency_key_takes_one_of_the_sixteen_metadata_pairs():
    fifteen = {f"k{i}": "v" for i in range(15)}
    call = api.create_batch(**GOOD, metadata=fifteen, idempotency_key="key")
    assert call.json is not None
    assert call.json["metadata"][api.IDEMPOTENCY_METADATA_KEY] == "key"
    with pytest.raises(ValueError, match="at most 15 are allowed"):
        api.create_batch(**GOOD, metadata={**fifteen, "k15": "v"}, idempotency_key="key")
    assert api.create_batch(**GOOD, metadata={**fifteen, "k15": "v"}).json["metadata"]["k15"] == "v"  # type: ignore[index]


def test_create_body_is_exactly_what_the_api_expects():
    call = api.create_batch(**GOOD, metadata={"a": "b"}, output_expires_after=3600)
    assert (call.method, call.path, call.idempotent) == ("POST", "/batches", False)
    assert call.json == {
        "input_file_id": "file-1",
        "endpoint": "/v1/chat/completions",
        "completion_window": "24h",
        "metadata": {"a": "b"},
        "output_expires_after": {"anchor": "created_at", "seconds": 3600},
    }


@pytest.mark.parametrize("limit", [0, 101, "20", True, 1.5])
def test_list_limit_range(limit):
    with pytest.raises(ValueError, match="limit must be an integer from 1 to 100"):
        api.list_batches(limit=limit)


def test_ids_are_percent_encoded_in_paths():
    assert api.retrieve_batch("batch_a:b%c").path == "/batches/batch_a%3Ab%25c"
    assert api.file_content("file-x").path == "/files/file-x/content"
    with pytest.raises(ValueError, match="batch_id"):
        api.cancel_batch("x\ty")
    with pytest.raises(ValueError, match="after"):
        api.list_batches(after="../etc")


@pytest.mark.parametrize(
    ("status", "cls"),
    [
        (400, InvalidRequestError),
        (422, InvalidRequestError),
        (401, AuthenticationError),
        (403, AuthenticationError),
        (404, NotFoundError),
        (409, ConflictError),
        (429, RateLimitError),
        (500, ServerError),
        (503, ServerError),
    ],
)
def test_error_mapping_carries_every_field(status, cls):
    body = b'{"error": {"message": "boom", "type": "t", "code": "c", "param": "p"}}'
    err = api.error_from_response(status, {"x-request-id": "req_1", "content-type": "application/json"}, body)
    assert type(err) is cls
    assert (err.status_code, err.message, err.type, err.code, err.param, err.request_id) == (
        status,
        "boom",
        "t",
        "c",
        "p",
        "req_1",
    )
    assert "boom" in str(err) and "req_1" in str(err) and f"HTTP {status}" in str(err)


def test_html_error_body_still_gives_a_clear_error():
    html = b"<html><head><title>502</title></head><body><h1>Bad Gateway</h1><p>nginx</p></body></html>"
    err = api.error_from_response(502, {"Content-Type": "text/html"}, html)
    assert isinstance(err, ServerError)
    assert "non-JSON body (text/html)" in str(err) and "Bad Gateway" in str(err) and "<h1>" not in str(err)
    empty = api.error_from_response(500, {}, b"")
    assert "empty body" in str(empty)


def test_retry_after_seconds_http_date_and_ms():
    assert api.parse_retry_after({"Retry-After": "7"}) == 7.0
    assert api.parse_retry_after({"retry-after-ms": "250"}) == 0.25
    when = email.utils.formatdate(1_000_030, usegmt=True)
    assert api.parse_retry_after({"Retry-After": when}, now=1_000_000) == pytest.approx(30.0)
    assert api.parse_retry_after({"Retry-After": "soon"}) is None
    assert api.parse_retry_after({}) is None


def test_retry_decisions():
    def server(status: int) -> Exception:
        return api.error_from_response(status, {}, b"{}")

    for status in (429, 500, 502, 503, 504):
        assert api.is_retryable(server(status))
    for status in (400, 401, 403, 404, 409, 422, 501):
        assert not api.is_retryable(server(status))
    assert api.is_retryable(APIConnectionError("reset"))
    assert not api.is_retryable(ValueError("x"))
    # A create the server may have acted on is not repeated blindly; a 429 or a refused connection is.
    assert not api.is_retryable(server(500), idempotent=False)
    assert not api.is_retryable(APIConnectionError("reset", maybe_processed=True), idempotent=False)
    assert api.is_retryable(server(429), idempotent=False)
    assert api.is_retryable(APIConnectionError("refused", maybe_processed=False), idempotent=False)


def conn(host: str | None = None, password: str | None = "k", extra: dict | None = None, **more) -> Connection:
    return Connection(
        conn_id=more.pop("conn_id", "c"),
        conn_type="openai_batch",
        host=host,
        password=password,
        extra=json.dumps(extra or {}),
        **more,
    )


def test_settings_from_connection():
    s = api.settings_from_connection(
        conn(
            "http://127.0.0.1:1/v1/",
            "secret-zz9",
            {"organization": "org", "project": "prj", "timeout": "5", "max_retries": 0},
        )
    )
    assert (s.base_url, s.timeout, s.max_retries) == ("http://127.0.0.1:1/v1", 5.0, 0)
    assert s.headers()["OpenAI-Organization"] == "org" and s.headers()["OpenAI-Project"] == "prj"
    assert "secret-zz9" not in repr(s)
    default = api.settings_from_connection(conn())
    assert default.base_url == api.DEFAULT_BASE_URL and "OpenAI-Organization" not in default.headers()
    with pytest.raises(ValueError, match="Connection 'my_conn' has no API key"):
        api.settings_from_connection(conn(password=None, conn_id="my_conn"))
    with pytest.raises(ValueError, match="'timeout' must be a positive number"):
        api.settings_from_connection(conn(extra={"timeout": "-1"}))


@pytest.mark.parametrize(
    ("uri", "base_url"),
    [
        ("openai-batch://:k@", api.DEFAULT_BASE_URL),
        ("openai-batch://:k@api.openai.com/v1", "https://api.openai.com/v1"),
        ("openai-batch://:k@127.0.0.1:8089/v1", "http://127.0.0.1:8089/v1"),
        ("openai-batch://:k@localhost:8089", "http://localhost:8089/v1"),
        ("openai-batch://:k@llm.example.com:8443/openai/v1", "https://llm.example.com:8443/openai/v1"),
        ("openai-batch://:k@http%3A%2F%2F127.0.0.1%3A9%2Fv1", "http://127.0.0.1:9/v1"),
    ],
)
def test_a_connection_uri_gives_the_whole_base_url(uri, base_url):
    assert api.settings_from_connection(Connection.from_uri(uri, conn_id="c")).base_url == base_url
