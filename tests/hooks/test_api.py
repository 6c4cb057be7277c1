"""The transport-free API definition: validation, error mapping, Retry-After."""

from __future__ import annotations

import email.utils
from urllib.parse import quote

import pytest

from airflow_provider_openai_batch import api
from airflow_provider_openai_batch.exceptions import (
    APIError,
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


@pytest.mark.parametrize("value", [".", "..", "a/b", "/", "a?b", "?", "a#b", "#", "a b", " ", "a\tb", "batch_1\n"])
def test_an_id_that_would_change_the_request_path_is_refused(value):
    with pytest.raises(ValueError, match="is not a valid id: ids may not contain '/', '\\?', '#' or whitespace"):
        api.retrieve_batch(value)


@pytest.mark.parametrize("value", ["batch_a.b", "batch_a..b", ".batch", "batch..", "a\\b", "bätch", "file-%2F"])
def test_an_id_that_changes_no_path_is_sent_percent_encoded(value):
    assert api.retrieve_batch(value).path == "/batches/" + quote(value, safe="")


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


@pytest.mark.parametrize(
    ("location", "shown"),
    [
        ("https://store.example.net/f/file-1?sig=canary-sig", " on host store.example.net"),
        ("/v1/files/file-1/content?sig=canary-sig", ""),  # no host to name
        ("https://a b.example/x?sig=canary-sig", ""),  # not a plain host name: not repeated
        ("http://[::1/x?sig=canary-sig", ""),  # unparseable
    ],
)
def test_a_redirect_is_an_error_naming_at_most_the_targets_host(location, shown):
    """The transports never follow a redirect (it would carry the credentials to the target); the error says
    what to fix and repeats neither the target's path nor its query, which can hold a signature."""
    err = api.error_from_response(302, {"Location": location, "x-request-id": "req_1"}, b"moved", "GET /x")
    assert type(err) is APIError and err.status_code == 302 and err.request_id == "req_1"
    assert str(err).startswith(f"GET /x: the API answered with a redirect to another URL{shown}, which is not followed")
    assert "set the connection's host to the final URL" in str(err)
    assert "canary-sig" not in repr(vars(err)) and "/x?" not in str(err) and err.body is None
    with pytest.raises(APIError, match="redirect to another URL"):
        api.retrieve_batch("batch_1").parse(307, {"Location": location}, b"")


def test_a_404_page_that_is_not_the_apis_names_the_base_url_as_the_fix():
    """A base URL missing /v1 (or pointing at a web site) answers 404 with a page or another JSON shape; the
    message must say which call was not served and what to fix, not only quote an HTML body."""
    page = b"<html><body><h1>404 Not Found</h1></body></html>"
    call = api.retrieve_batch("batch_1")
    for body, kind in ((page, "text/html"), (b'{"detail": "Not Found"}', "application/json")):
        with pytest.raises(NotFoundError) as err:
            call.parse(404, {"Content-Type": kind}, body)
        assert "GET /batches/batch_1 is not served at this base URL" in str(err.value)
        assert "check the connection's Base URL; it should end in /v1" in str(err.value)
    # The API's own 404 (an unknown batch) keeps the API's message.
    own = b'{"error": {"message": "No batch found with id batch_1.", "type": "invalid_request_error"}}'
    with pytest.raises(NotFoundError, match="No batch found") as err:
        call.parse(404, {}, own)
    assert "Base URL" not in str(err.value)


def test_retry_after_seconds_http_date_and_ms():
    assert api.parse_retry_after({"Retry-After": "7"}) == 7.0
    assert api.parse_retry_after({"retry-after-ms": "250"}) == 0.25
    when = email.utils.formatdate(1_000_030, usegmt=True)
    assert api.parse_retry_after({"Retry-After": when}, now=1_000_000) == pytest.approx(30.0)
    assert api.parse_retry_after({"Retry-After": "soon"}) is None
    assert api.parse_retry_after({}) is None
