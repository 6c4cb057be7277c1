"""OpenAIBatchHook over requests-mock: every call, header, retry path, pagination and file stream."""

from __future__ import annotations

import io
import json
import logging
import re

import pytest
import requests

from airflow_provider_openai_batch.exceptions import (
    APIConnectionError,
    AuthenticationError,
    ConflictError,
    NotFoundError,
    ResultsParseError,
    ServerError,
)
from airflow_provider_openai_batch.hooks.batch import OpenAIBatchHook
from tests.conftest import BASE, KEY


def batch_json(batch_id: str = "batch_1", status: str = "in_progress", **extra) -> dict:
    return {
        "id": batch_id,
        "object": "batch",
        "endpoint": "/v1/chat/completions",
        "status": status,
        "input_file_id": "file-in",
        "completion_window": "24h",
        "created_at": 1_700_000_000,
        "output_file_id": None,
        "error_file_id": None,
        "request_counts": {"total": 2, "completed": 1, "failed": 0},
        **extra,
    }


@pytest.fixture
def hook(conn_env) -> OpenAIBatchHook:
    return OpenAIBatchHook()


def test_batch_calls_send_the_right_requests_and_parse_models(hook, requests_mock):
    requests_mock.post(f"{BASE}/batches", json=batch_json(status="validating"), headers={"x-request-id": "req_c"})
    requests_mock.get(f"{BASE}/batches/batch_1", json=batch_json())
    requests_mock.post(f"{BASE}/batches/batch_1/cancel", json=batch_json(status="cancelling"))
    requests_mock.get(
        f"{BASE}/batches",
        json={"object": "list", "data": [batch_json()], "first_id": "batch_1", "last_id": "batch_1", "has_more": False},
    )

    created = hook.create_batch("file-in", "/v1/chat/completions", metadata={"team": "x"})
    assert created.status == "validating"
    assert (created.http.status_code, created.http.request_id) == (200, "req_c")  # type: ignore[union-attr]
    sent = requests_mock.request_history[0]
    assert sent.json() == {
        "input_file_id": "file-in",
        "endpoint": "/v1/chat/completions",
        "completion_window": "24h",
        "metadata": {"team": "x"},
    }
    assert hook.retrieve_batch("batch_1").request_counts.completed == 1
    assert hook.cancel_batch("batch_1").status == "cancelling"
    page = hook.list_batches(after="batch_0", limit=5)
    assert requests_mock.last_request.qs == {"after": ["batch_0"], "limit": ["5"]}
    assert (page.first_id, page.last_id, page.has_more, page.data[0].id) == ("batch_1", "batch_1", False, "batch_1")


def test_headers_and_one_reused_session(conn_env, requests_mock):
    conn_env(extra={"organization": "org-1", "project": "proj-1"})
    hook = OpenAIBatchHook()
    requests_mock.get(f"{BASE}/batches/batch_1", json=batch_json())
    hook.retrieve_batch("batch_1")
    session = hook.session
    hook.retrieve_batch("batch_1")
    assert hook.session is session
    headers = requests_mock.last_request.headers
    assert headers["Authorization"] == f"Bearer {KEY}"
    assert headers["OpenAI-Organization"] == "org-1" and headers["OpenAI-Project"] == "proj-1"

    conn_env()
    requests_mock.get(f"{BASE}/batches/batch_2", json=batch_json("batch_2"))
    OpenAIBatchHook().retrieve_batch("batch_2")
    assert "OpenAI-Organization" not in requests_mock.last_request.headers
    assert "OpenAI-Project" not in requests_mock.last_request.headers


def test_missing_key_names_the_connection(conn_env):
    conn_env(password=None)
    with pytest.raises(ValueError, match="Connection 'openai_default' has no API key"):
        OpenAIBatchHook().retrieve_batch("batch_1")


def test_timeout_and_retries_from_connection_and_overrides(conn_env, requests_mock, sleeps):
    conn_env(extra={"timeout": 7, "max_retries": 2})
    requests_mock.get(f"{BASE}/batches/b", status_code=503, json={"error": {"message": "down"}})
    with pytest.raises(ServerError):
        OpenAIBatchHook().retrieve_batch("b")
    assert requests_mock.call_count == 3 and len(sleeps) == 2
    assert requests_mock.last_request.timeout == 7.0
    requests_mock.reset_mock()
    with pytest.raises(ServerError):
        OpenAIBatchHook(max_retries=0, timeout=3).retrieve_batch("b")
    assert requests_mock.call_count == 1 and requests_mock.last_request.timeout == 3.0


@pytest.mark.parametrize("status", [408, 409, 429, 500, 502, 503, 504])
def test_transient_statuses_are_retried(hook, requests_mock, sleeps, status):
    requests_mock.get(
        f"{BASE}/batches/b", [{"status_code": status, "json": {"error": {"message": "x"}}}, {"json": batch_json("b")}]
    )
    assert hook.retrieve_batch("b").id == "b"
    assert requests_mock.call_count == 2


@pytest.mark.parametrize("status", [400, 401, 403, 404, 422])
def test_other_4xx_are_never_retried(hook, requests_mock, sleeps, status):
    requests_mock.get(f"{BASE}/batches/b", status_code=status, json={"error": {"message": "no"}})
    with pytest.raises(Exception) as err:
        hook.retrieve_batch("b")
    assert getattr(err.value, "status_code", None) == status
    assert requests_mock.call_count == 1 and sleeps == []


def test_a_cancel_of_a_finished_batch_is_not_retried(hook, requests_mock, sleeps):
    requests_mock.post(f"{BASE}/batches/b/cancel", status_code=409, json={"error": {"message": "already ended"}})
    with pytest.raises(ConflictError):
        hook.cancel_batch("b")
    assert requests_mock.call_count == 1 and sleeps == []


def test_connection_errors_and_read_timeouts_are_retried(hook, requests_mock, sleeps):
    requests_mock.get(
        f"{BASE}/batches/b",
        [
            {"exc": requests.exceptions.ReadTimeout},
            {"exc": requests.exceptions.ConnectionError},
            {"json": batch_json("b")},
        ],
    )
    assert hook.retrieve_batch("b").id == "b"
    assert requests_mock.call_count == 3


def test_retry_after_is_honoured_and_capped(hook, requests_mock, sleeps):
    requests_mock.get(
        f"{BASE}/batches/b",
        [
            {"status_code": 429, "headers": {"Retry-After": "3"}, "json": {"error": {"message": "slow"}}},
            {"status_code": 503, "headers": {"Retry-After": "Wed, 21 Oct 2099 07:28:00 GMT"}, "json": {}},
            {"status_code": 500, "json": {}},
            {"json": batch_json("b")},
        ],
    )
    hook.retrieve_batch("b")
    assert sleeps[0] == 3.0
    assert sleeps[1] == 60.0  # an HTTP date decades away is capped
    assert 0 <= sleeps[2] <= 30  # no header: exponential backoff with jitter


def test_create_without_key_does_not_repeat_an_ambiguous_post(hook, requests_mock, sleeps):
    requests_mock.post(f"{BASE}/batches", [{"status_code": 500, "json": {}}, {"json": batch_json()}])
    with pytest.raises(ServerError):
        hook.create_batch("file-in", "/v1/chat/completions")
    assert requests_mock.call_count == 1
    requests_mock.post(f"{BASE}/batches", [{"exc": requests.exceptions.ReadTimeout}, {"json": batch_json()}])
    with pytest.raises(APIConnectionError):
        hook.create_batch("file-in", "/v1/chat/completions")
    # ...but a 429 proves nothing was created, so it is retried.
    requests_mock.post(f"{BASE}/batches", [{"status_code": 429, "json": {}}, {"json": batch_json()}])
    assert hook.create_batch("file-in", "/v1/chat/completions").id == "batch_1"


@pytest.mark.parametrize(
    "failure",
    [
        {"exc": requests.exceptions.ReadTimeout},
        {"status_code": 502, "text": "bad"},
        {"exc": requests.exceptions.ConnectionError},
    ],
)
def test_ambiguous_create_with_key_reattaches_instead_of_creating_twice(hook, requests_mock, sleeps, failure):
    existing = batch_json(
        "batch_made", status="validating", created_at=4_000_000_000, metadata={"airflow_idempotency_key": "key-1"}
    )
    requests_mock.post(f"{BASE}/batches", [failure, {"json": batch_json("batch_second")}])
    requests_mock.get(
        f"{BASE}/batches", json={"data": [batch_json("other", created_at=4_000_000_001), existing], "has_more": False}
    )
    batch = hook.create_batch("file-in", "/v1/chat/completions", idempotency_key="key-1")
    assert batch.id == "batch_made"
    posts = [r for r in requests_mock.request_history if r.method == "POST"]
    assert len(posts) == 1
    assert posts[0].json()["metadata"] == {"airflow_idempotency_key": "key-1"}


def test_ambiguous_create_with_key_retries_when_nothing_was_created(hook, requests_mock, sleeps):
    requests_mock.post(f"{BASE}/batches", [{"status_code": 500, "json": {}}, {"json": batch_json("batch_new")}])
    requests_mock.get(f"{BASE}/batches", json={"data": [], "has_more": False})
    assert hook.create_batch("file-in", "/v1/chat/completions", idempotency_key="k").id == "batch_new"
    methods = [r.method for r in requests_mock.request_history]
    # The POST, one look-up that finds nothing, the second POST; then, since the first POST was ambiguous,
    # a watch for a late twin: one list call per poll over reconcile_seconds (120 s at the 60 s timeout).
    assert methods[:3] == ["POST", "GET", "POST"] and set(methods[3:]) == {"GET"}
    assert len(methods[3:]) == 1 + int(hook.reconcile_seconds // 2.0) == 61
    assert sleeps[1:] == [2.0] * 60  # after the one back-off, the polls' pauses


def test_a_late_twin_of_an_ambiguous_create_is_cancelled(hook, requests_mock, sleeps, capfd):
    """A gateway forwards the create whose client timed out after the retry's look-up ran: two batches carry
    the key. The retry keeps its own and cancels the twin while it is still validating (so it costs nothing)."""
    ours = batch_json("batch_ours", created_at=4_000_000_001, metadata={"airflow_idempotency_key": "k"})
    twin = batch_json("batch_twin", created_at=4_000_000_002, metadata={"airflow_idempotency_key": "k"})
    requests_mock.post(f"{BASE}/batches", [{"exc": requests.exceptions.ReadTimeout}, {"json": ours}])
    requests_mock.get(
        f"{BASE}/batches",
        [
            {"json": {"data": [], "has_more": False}},  # the retry's look-up: the late create has not landed
            {"json": {"data": [ours], "has_more": False}},  # the first watch: only ours
            {"json": {"data": [twin, ours], "has_more": False}},  # the late create landed
        ],
    )
    cancel = requests_mock.post(f"{BASE}/batches/batch_twin/cancel", json={**twin, "status": "cancelling"})
    hook = OpenAIBatchHook(reconcile_seconds=4)
    assert hook.create_batch("file-in", "/v1/chat/completions", idempotency_key="k").id == "batch_ours"
    assert cancel.call_count == 1
    assert "batch_twin carries the same idempotency key as batch batch_ours" in "".join(capfd.readouterr())
    assert len([r for r in requests_mock.request_history if r.method == "GET"]) == 4  # look-up + 3 watches


def test_a_look_up_fails_the_attempt_instead_of_retrying_inside_it(hook, requests_mock, sleeps):
    """Look-ups run inside the create's retries without retries of their own: at most max_retries + 1 list
    calls for one create, not (max_retries + 1) squared."""
    requests_mock.post(f"{BASE}/batches", status_code=503, json={})
    lists = requests_mock.get(f"{BASE}/batches", status_code=503, json={})
    with pytest.raises(ServerError):
        OpenAIBatchHook(max_retries=3, reconcile_seconds=0).create_batch(
            "file-in", "/v1/chat/completions", idempotency_key="k"
        )
    # Three look-ups inside the attempts, one call each; then, since the attempts were ambiguous, one watch for
    # a create carried out late, whose single (retried) list call gives up at its failure: 3 + 4 at most.
    assert lists.call_count <= 3 + 4


def file_json(file_id: str, filename: str) -> dict:
    return {"id": file_id, "object": "file", "bytes": 3, "created_at": 1, "filename": filename, "purpose": "batch"}


def test_an_ambiguous_upload_finds_its_earlier_attempt_instead_of_uploading_twice(hook, requests_mock, sleeps):
    stored: list[dict] = []

    def store_then_reset(request, context):  # the server keeps the file, the answer is lost
        name = re.search(rb'filename="([^"]+)"', request.body.read()).group(1).decode()
        stored.append(file_json("file-landed", name))
        raise requests.exceptions.ConnectionError("connection reset by peer")

    requests_mock.post(f"{BASE}/files", json=store_then_reset)
    requests_mock.get(
        f"{BASE}/files", json=lambda request, context: {"data": [file_json("file-other", "x.jsonl"), *stored]}
    )
    uploaded = hook.upload_file(b"{}\n")
    assert uploaded.id == "file-landed"
    assert re.fullmatch(r"batch_input-[0-9a-f]{8}\.jsonl", uploaded.filename)
    assert [r.method for r in requests_mock.request_history] == ["POST", "GET"]
    assert requests_mock.request_history[1].qs == {"purpose": ["batch"], "limit": ["100"]}


def test_an_upload_that_did_not_land_is_sent_again_and_an_explicit_name_is_kept(hook, requests_mock, sleeps):
    requests_mock.post(
        f"{BASE}/files", [{"status_code": 503, "json": {}}, {"json": file_json("file-new", "mine.jsonl")}]
    )
    requests_mock.get(f"{BASE}/files", json={"data": []})
    assert hook.upload_file(b"{}\n").id == "file-new"
    assert [r.method for r in requests_mock.request_history] == ["POST", "GET", "POST"]
    sent: list[bytes] = []
    requests_mock.post(
        f"{BASE}/files",
        json=lambda request, context: sent.append(request.body.read()) or file_json("file-mine", "mine.jsonl"),
    )
    hook.upload_file(b"{}\n", filename="mine.jsonl")
    assert b'filename="mine.jsonl"' in sent[0]


def test_iter_batches_follows_the_cursor_lazily(hook, requests_mock):
    requests_mock.get(
        f"{BASE}/batches",
        [
            {"json": {"data": [batch_json("b3"), batch_json("b2")], "last_id": "b2", "has_more": True}},
            {"json": {"data": [batch_json("b1")], "last_id": "b1", "has_more": False}},
        ],
    )
    batches = hook.iter_batches(limit=2)
    assert next(batches).id == "b3" and next(batches).id == "b2"
    assert requests_mock.call_count == 1  # the second page is fetched only when needed
    assert [b.id for b in batches] == ["b1"]
    assert requests_mock.last_request.qs == {"after": ["b2"], "limit": ["2"]}


def test_upload_from_path_bytes_fileobj_and_objectstoragepath(hook, requests_mock, tmp_path):
    from airflow.sdk import ObjectStoragePath

    bodies: list[bytes] = []

    def answer(request, context):
        # The body is a stream read while sending; read it here, as the wire would.
        bodies.append(request.body if isinstance(request.body, bytes) else b"".join(request.body))
        return {"id": "file-1", "object": "file", "bytes": 12, "purpose": "batch"}

    requests_mock.post(f"{BASE}/files", json=answer)
    path = tmp_path / "in.jsonl"
    path.write_bytes(b'{"a": 1}\n' * 3)
    for source in (
        path,
        str(path),
        path.read_bytes(),
        io.BytesIO(path.read_bytes()),
        ObjectStoragePath(f"file://{path}"),
    ):
        uploaded = hook.upload_file(source)
        assert uploaded.id == "file-1"
        request = requests_mock.last_request
        body = bodies[-1]
        assert int(request.headers["Content-Length"]) == len(body)
        assert b'name="purpose"\r\n\r\nbatch\r\n' in body
        assert b'{"a": 1}\n{"a": 1}\n{"a": 1}\n' in body
        assert request.headers["Content-Type"].startswith("multipart/form-data; boundary=")
    with pytest.raises(ValueError, match=r"source '.*missing\.jsonl' does not exist or is not a file"):
        hook.upload_file(tmp_path / "missing.jsonl")
    with pytest.raises(ValueError, match="source must be a path"):
        hook.upload_file(123)


def test_file_calls(hook, requests_mock):
    requests_mock.get(f"{BASE}/files/file-1", json={"id": "file-1", "bytes": 5, "purpose": "batch", "new": 1})
    requests_mock.delete(f"{BASE}/files/file-1", json={"id": "file-1", "object": "file", "deleted": True})
    requests_mock.get(f"{BASE}/files", json={"data": [{"id": "file-1"}], "has_more": False})
    assert hook.retrieve_file("file-1").new == 1  # type: ignore[attr-defined]
    assert hook.delete_file("file-1").deleted is True
    assert hook.list_files(purpose="batch").data[0].id == "file-1"
    assert requests_mock.last_request.qs["purpose"] == ["batch"]


def test_download_streams_to_path_fileobj_and_objectstoragepath(hook, requests_mock, tmp_path):
    from airflow.sdk import ObjectStoragePath

    content = b"".join(f'{{"custom_id": "r{i}"}}\n'.encode() for i in range(100_000))
    requests_mock.get(f"{BASE}/files/file-o/content", content=content, headers={"x-request-id": "req_d"})
    result = hook.download_file("file-o", tmp_path / "sub" / "out.jsonl")
    assert (tmp_path / "sub" / "out.jsonl").read_bytes() == content
    assert (result.bytes, result.http.request_id) == (len(content), "req_d")  # type: ignore[union-attr]
    buffer = io.BytesIO()
    hook.download_file("file-o", buffer)
    assert buffer.getvalue() == content
    target = ObjectStoragePath(f"file://{tmp_path}/osp.jsonl")
    hook.download_file("file-o", target)
    assert (tmp_path / "osp.jsonl").read_bytes() == content
    assert not [p for p in tmp_path.rglob("*.part")]


def test_truncated_download_leaves_no_partial_file(hook, requests_mock, tmp_path, sleeps):
    requests_mock.get(
        f"{BASE}/files/file-o/content", content=b'{"custom_id": "a"}\n', headers={"Content-Length": "1000"}
    )
    with pytest.raises(APIConnectionError, match="truncated"):
        hook.download_file("file-o", tmp_path / "out.jsonl")
    assert list(tmp_path.iterdir()) == []


def test_iter_results_matches_by_custom_id(hook, requests_mock):
    ok = {
        "id": "r1",
        "custom_id": "a",
        "response": {"status_code": 200, "request_id": "q", "body": {"x": 1}},
        "error": None,
    }
    bad = {
        "id": "r2",
        "custom_id": "b",
        "response": {"status_code": 400, "body": {"error": {"message": "no"}}},
        "error": None,
    }
    requests_mock.get(
        f"{BASE}/batches/batch_1", json=batch_json(status="completed", output_file_id="file-o", error_file_id="file-e")
    )
    requests_mock.get(f"{BASE}/files/file-o/content", text=json.dumps(ok) + "\n\n")
    requests_mock.get(f"{BASE}/files/file-e/content", text=json.dumps(bad) + "\n")
    results = hook.get_results("batch_1")
    assert results["a"].ok and results["a"].body == {"x": 1} and results["a"].source == "output"
    assert not results["b"].ok and results["b"].error_message == "HTTP 400: no" and results["b"].source == "error"


def test_unparseable_result_line_names_file_and_line(hook, requests_mock):
    requests_mock.get(f"{BASE}/files/file-o/content", text='{"custom_id": "a"}\nnot json\n')
    records = hook.iter_file_records("file-o")
    assert next(records).custom_id == "a"
    with pytest.raises(ResultsParseError, match="file file-o line 2"):
        next(records)


def test_test_connection(hook, requests_mock, conn_env, sleeps):
    requests_mock.get(f"{BASE}/batches", json={"data": [], "has_more": False}, headers={"x-request-id": "req_t"})
    ok, message = hook.test_connection()
    assert ok and "req_t" in message
    requests_mock.get(f"{BASE}/batches", status_code=401, json={"error": {"message": "Incorrect API key"}})
    ok, message = OpenAIBatchHook().test_connection()
    assert not ok and "Incorrect API key" in message


def test_test_connection_refused_over_a_real_socket(conn_env):
    conn_env(host="http://127.0.0.1:1/v1", extra={"max_retries": 0})
    ok, message = OpenAIBatchHook().test_connection()
    assert not ok and "could not connect to http://127.0.0.1:1/v1" in message


def test_the_key_never_appears_in_errors_or_logs(hook, requests_mock, caplog, sleeps):
    caplog.set_level(logging.DEBUG)
    requests_mock.get(
        f"{BASE}/batches/b",
        [{"status_code": 503, "json": {}}, {"status_code": 401, "json": {"error": {"message": "bad key"}}}],
    )
    with pytest.raises(AuthenticationError) as err:
        hook.retrieve_batch("b")
    requests_mock.get(f"{BASE}/batches/c", exc=requests.exceptions.ConnectionError("reset"))
    with pytest.raises(APIConnectionError) as conn_err:
        OpenAIBatchHook(max_retries=1).retrieve_batch("c")
    requests_mock.get(f"{BASE}/batches/d", status_code=404, json={"error": {"message": "gone"}})
    with pytest.raises(NotFoundError) as nf:
        hook.retrieve_batch("d")
    texts = [
        str(err.value),
        repr(err.value),
        str(conn_err.value),
        str(nf.value),
        repr(hook),
        caplog.text,
        repr(hook.settings),
    ]
    assert not [t for t in texts if KEY in t]


def test_download_into_a_file_object_keeps_what_it_already_holds(hook, requests_mock, sleeps):
    """Bytes the caller wrote before (a header, an earlier download) stay; a retry rewinds only to there."""
    requests_mock.get(
        f"{BASE}/files/file-o/content",
        [
            {"content": b"partial", "headers": {"Content-Length": "100"}},  # cut short: retried
            {"content": b"second\n"},
        ],
    )
    requests_mock.get(f"{BASE}/files/file-p/content", content=b"first\n")
    buffer = io.BytesIO()
    buffer.write(b"# header\n")
    hook.download_file("file-p", buffer)
    hook.download_file("file-o", buffer)
    assert buffer.getvalue() == b"# header\nfirst\nsecond\n"


def test_a_header_the_http_stack_refuses_is_wrapped_without_quoting_it(hook, requests_mock, sleeps):
    """requests' InvalidHeader quotes the header value, i.e. the key: only our own message may escape."""
    from dataclasses import replace

    secret = "sk-test-never-shown-77"
    hook.settings = replace(hook.settings, api_key=secret + "\nX-Evil: 1")
    with pytest.raises(APIConnectionError, match="could not be sent") as err:
        hook.retrieve_batch("batch_1")
    assert secret not in str(err.value) and err.value.__cause__ is None and err.value.maybe_processed is False
    assert sleeps == []  # repeating cannot make the header sendable: no retries


def test_a_key_with_a_trailing_newline_is_sent_clean_and_masked_as_sent(conn_env, requests_mock):
    """Airflow masks the password as stored, newline included; the key that travels is the stripped one, so
    that one must be masked too (and never appear in any message)."""
    from airflow.sdk.log import redact

    clean = "sk-test-newline-canary-42"
    conn_env(password=clean + "\n")
    requests_mock.get(f"{BASE}/batches", json={"data": [], "has_more": False})
    hook = OpenAIBatchHook()
    hook.list_batches()
    assert requests_mock.last_request.headers["Authorization"] == f"Bearer {clean}"
    assert clean not in str(redact(f"the key is {clean}"))
    ok, message = hook.test_connection()
    assert ok and clean not in message
