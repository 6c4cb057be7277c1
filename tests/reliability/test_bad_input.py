"""Every bad input gets a clear error naming the field or line, and leaves nothing half-done behind.

One table: each row is a bad input to the hook, an operator, the sensor or the JSONL pre-flight, the exact
error class it gets and a pattern its message must match. Rows run against the emulator, which then must
hold no file and no batch: nothing was uploaded, nothing billed. Answers no emulator gives (an HTML page, a
non-JSON success, a truncated download, an unparseable result file) are served by requests-mock below.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from airflow_provider_openai_batch import api
from airflow_provider_openai_batch.exceptions import (
    APIConnectionError,
    APIError,
    BatchValidationError,
    InvalidRequestError,
    NotFoundError,
    ResultsParseError,
    ServerError,
)
from airflow_provider_openai_batch.hooks.batch import OpenAIBatchHook
from airflow_provider_openai_batch.models import Batch
from airflow_provider_openai_batch.operators.batch import CancelBatchOperator, CreateBatchOperator
from airflow_provider_openai_batch.sensors.batch import BatchSensor
from tests.conftest import BASE
from tests.helpers import ENDPOINT, ctx, prompts


@dataclass
class Env:
    hook: OpenAIBatchHook
    tmp: Path

    def jsonl(self, lines: list[Any], name: str = "input.jsonl") -> Path:
        """A JSONL file of ``lines``: dicts are dumped, strings and bytes written as they are."""
        path = self.tmp / name
        as_bytes = [
            line if isinstance(line, bytes) else (line if isinstance(line, str) else json.dumps(line)).encode()
            for line in lines
        ]
        path.write_bytes(b"".join(line + b"\n" for line in as_bytes))
        return path


def line(i: int, **changes: Any) -> dict:
    item = {"custom_id": f"r{i}", "method": "POST", "url": ENDPOINT, "body": {"model": "m", "messages": []}}
    item.update(changes)
    return {k: v for k, v in item.items() if v is not ...}


def good_lines(n: int = 10) -> list[Any]:
    return [line(i) for i in range(1, n + 1)]


def with_line(n: int, replacement: Any, total: int = 10) -> list[Any]:
    lines = good_lines(total)
    lines[n - 1] = replacement
    return lines


def create(env: Env, **kwargs: Any) -> Any:
    return CreateBatchOperator(task_id="create", **kwargs).execute(ctx())


def closed_handle(env: Env) -> Any:
    path = env.jsonl(good_lines(1))
    with open(path, "rb") as handle:
        return handle


def create_from_file(lines: list[Any]) -> Callable[[Env], Any]:
    return lambda env: create(env, input_file=env.jsonl(lines))


H = OpenAIBatchHook
CASES: list[tuple[str, Callable[[Env], Any], type[Exception], str]] = [
    # ---- ids, in every call that takes one
    ("batch id with /", lambda e: e.hook.retrieve_batch("batch_1/cancel"), ValueError, r"batch_id .*'/'"),
    ("batch id ..", lambda e: e.hook.retrieve_batch(".."), ValueError, r"batch_id '\.\.' is not a valid id"),
    ("batch id with space", lambda e: e.hook.cancel_batch("batch 1"), ValueError, r"batch_id .*whitespace"),
    ("batch id with newline", lambda e: e.hook.retrieve_batch("batch_1\n"), ValueError, r"batch_id .*whitespace"),
    ("empty batch id", lambda e: e.hook.retrieve_batch(""), ValueError, r"batch_id must be a non-empty string"),
    ("batch id None", lambda e: e.hook.cancel_batch(None), ValueError, r"batch_id must be a non-empty string"),
    ("unicode batch id", lambda e: e.hook.retrieve_batch("bätch_ü"), NotFoundError, r"bätch_ü"),
    ("file id with /", lambda e: e.hook.retrieve_file("file-1/content"), ValueError, r"file_id .*'/'"),
    ("empty file id", lambda e: e.hook.delete_file(""), ValueError, r"file_id must be a non-empty string"),
    ("download id ..", lambda e: e.hook.download_file("../x", e.tmp / "o"), ValueError, r"file_id '\.\./x'"),
    ("list after with /", lambda e: e.hook.list_batches(after="a/b"), ValueError, r"after .*'/'"),
    ("batch id .", lambda e: e.hook.retrieve_batch("."), ValueError, r"batch_id '\.' is not a valid id"),
    ("batch id with ?", lambda e: e.hook.cancel_batch("batch_1?x=1"), ValueError, r"batch_id 'batch_1\?x=1' is not"),
    ("file id with #", lambda e: e.hook.retrieve_file("file-1#x"), ValueError, r"file_id 'file-1#x' is not a valid id"),
    # ---- create_batch arguments
    ("empty input file id", lambda e: e.hook.create_batch("", ENDPOINT), ValueError, r"input_file_id must be"),
    ("unknown endpoint", lambda e: e.hook.create_batch("file-1", "/v1/chat"), ValueError, r"endpoint must be one"),
    ("window 48h", lambda e: e.hook.create_batch("file-1", ENDPOINT, "48h"), ValueError, r"completion_window must"),
    (
        "17 metadata pairs",
        lambda e: e.hook.create_batch("file-1", ENDPOINT, metadata={f"k{i}": "v" for i in range(17)}),
        ValueError,
        r"metadata has 17 pairs; at most 16",
    ),
    (
        "metadata key of 65",
        lambda e: e.hook.create_batch("file-1", ENDPOINT, metadata={"k" * 65: "v"}),
        ValueError,
        r"metadata key 'k+' must be 1\.\.64 characters",
    ),
    (
        "metadata value of 513",
        lambda e: e.hook.create_batch("file-1", ENDPOINT, metadata={"k": "v" * 513}),
        ValueError,
        r"metadata\['k'\] is 513 characters; values may have at most 512",
    ),
    (
        "metadata int value",
        lambda e: e.hook.create_batch("file-1", ENDPOINT, metadata={"k": 1}),
        ValueError,
        r"metadata\['k'\] must map a string to a string; got int",
    ),
    (
        "metadata a list",
        lambda e: e.hook.create_batch("file-1", ENDPOINT, metadata=[("k", "v")]),
        ValueError,
        r"metadata must be a dict of strings to strings; got list",
    ),
    (
        "output expiry 60 s",
        lambda e: e.hook.create_batch("file-1", ENDPOINT, output_expires_after=60),
        ValueError,
        r"output_expires_after\.seconds must be an integer from 3600",
    ),
    (
        "output expiry 31 days",
        lambda e: e.hook.create_batch("file-1", ENDPOINT, output_expires_after={"seconds": 2678400}),
        ValueError,
        r"output_expires_after\.seconds .* to 2592000 \(30 days\); got 2678400",
    ),
    (
        "input file that does not exist",
        lambda e: e.hook.create_batch("file-nope", ENDPOINT),
        APIError,
        r"file-nope",
    ),
    ("limit 0", lambda e: e.hook.list_batches(limit=0), ValueError, r"limit must be an integer from 1 to 100; got 0"),
    ("limit 101", lambda e: e.hook.list_batches(limit=101), ValueError, r"limit must be .* to 100; got 101"),
    ("limit '20'", lambda e: e.hook.list_batches(limit="20"), ValueError, r"limit must be an integer .*got '20'"),
    # ---- uploads
    ("upload a missing path", lambda e: e.hook.upload_file(e.tmp / "nope.jsonl"), ValueError, r"nope\.jsonl.*existing"),
    ("upload an int", lambda e: e.hook.upload_file(42), ValueError, r"source must be a path, .*got int"),
    ("upload empty purpose", lambda e: e.hook.upload_file(b"{}", purpose=""), ValueError, r"purpose must be"),
    (
        "a batch input file named other than *.jsonl (the API refuses it)",
        lambda e: e.hook.upload_file(b"{}", filename="prompts.txt"),
        ValueError,
        r"filename 'prompts\.txt' must end in '\.jsonl' for purpose 'batch'.*leave filename unset",
    ),
    # ---- CreateBatchOperator
    ("no input", lambda e: CreateBatchOperator(task_id="c"), ValueError, r"c: give exactly one of .*got none"),
    (
        "two inputs",
        lambda e: CreateBatchOperator(task_id="c", requests=prompts(), input_file_id="file-1"),
        ValueError,
        r"give exactly one of .*\['requests', 'input_file_id'\]",
    ),
    (
        "operator unknown endpoint",
        lambda e: create(e, requests=prompts(), endpoint="/v1/completion"),
        ValueError,
        r"endpoint must be one of",
    ),
    (
        "12 metadata pairs (five are reserved: the idempotency key and the creating task instance)",
        lambda e: create(e, requests=prompts(), metadata={f"k{i}": "v" for i in range(12)}),
        ValueError,
        r"metadata has 12 pairs; at most 11 are allowed \(the provider sets airflow_idempotency_key, airflow_dag_id, "
        r"airflow_task_id, airflow_run_id and airflow_map_index\)",
    ),
    (
        "the user's own airflow_dag_id (would hide which task created the batch)",
        lambda e: create(e, requests=prompts(), metadata={"airflow_dag_id": "mine"}),
        ValueError,
        r"metadata key 'airflow_dag_id' is reserved: the provider records the creating DAG.*rename your key",
    ),
    (
        "the user's own airflow_idempotency_key (would be silently overwritten)",
        lambda e: create(e, requests=prompts(), metadata={"airflow_idempotency_key": "mine"}),
        ValueError,
        r"metadata key 'airflow_idempotency_key' is reserved.*rename your key",
    ),
    ("requests a string", lambda e: create(e, requests="prompts"), ValueError, r"requests must be a non-empty list"),
    ("requests empty", lambda e: create(e, requests=[]), ValueError, r"requests must be a non-empty list"),
    (
        "a request not a dict",
        lambda e: create(e, requests=[prompts(1)[0], "hello"]),
        ValueError,
        r"requests\[1\] must be a dict, got str",
    ),
    (
        "duplicate custom_id in requests",
        lambda e: create(e, requests=prompts(2) + prompts(1)),
        BatchValidationError,
        r"\(requests; line N is requests\[N-1\]\)[\s\S]*line 3: custom_id 'p0' is also used on line 1",
    ),
    (
        "request with GET",
        lambda e: create(e, requests=[{"custom_id": "a", "method": "GET", "body": {}}]),
        BatchValidationError,
        r"line 1: method must be 'POST', got 'GET'",
    ),
    (
        "request body a string",
        lambda e: create(e, requests=[{"custom_id": "a", "body": "hi"}]),
        BatchValidationError,
        r"line 1: body must be a JSON object",
    ),
    (
        "input_file missing",
        lambda e: create(e, input_file=str(e.tmp / "missing.jsonl")),
        ValueError,
        r"input_file '.*missing\.jsonl' does not exist",
    ),
    # ---- the JSONL pre-flight, through CreateBatchOperator(input_file=...)
    (
        "bad JSON on line 7",
        create_from_file(with_line(7, '{"custom_id": "r7", ')),
        BatchValidationError,
        r"\(input_file\) has 1 problem[\s\S]*line 7: not valid JSON",
    ),
    (
        "duplicate custom_ids",
        create_from_file([*good_lines(3), line(9, custom_id="r2")]),
        BatchValidationError,
        r"line 4: custom_id 'r2' is also used on line 2",
    ),
    (
        "missing custom_id",
        create_from_file(with_line(5, line(5, custom_id=...))),
        BatchValidationError,
        r"line 5: custom_id must be a non-empty string",
    ),
    (
        "custom_id a number",
        create_from_file(with_line(2, line(2, custom_id=2))),
        BatchValidationError,
        r"line 2: custom_id must be a non-empty string",
    ),
    (
        "mismatched url",
        create_from_file(with_line(3, line(3, url="/v1/embeddings"))),
        BatchValidationError,
        r"line 3: url '/v1/embeddings' does not match the batch endpoint '/v1/chat/completions'",
    ),
    (
        "line is a list",
        create_from_file(with_line(6, "[1, 2]")),
        BatchValidationError,
        r"line 6: each line must be a JSON object",
    ),
    (
        # 50,001 lines make a job of two batches; a bad line in the second shard still stops everything
        # before a batch is created, leaves no file behind, and is named by its line in the input.
        "50,001 lines, the last one bad",
        create_from_file([*good_lines(50_000), line(50_001, method="PUT")]),
        BatchValidationError,
        r"input_file line 50001: method must be 'POST'",
    ),
    ("empty file", create_from_file([]), BatchValidationError, r"the file contains no requests"),
    (
        "two models in one file (OpenAI takes one model per batch file)",
        create_from_file(with_line(3, line(3, body={"model": "other", "messages": []}))),
        BatchValidationError,
        r"line 3: model 'other' differs from 'm' on line 1: on openai a batch file may use one model only; split "
        r"the file by model",
    ),
    (
        "50,001 embedding inputs",
        lambda e: create(
            e,
            endpoint="/v1/embeddings",
            # Two requests of 25,000 and 25,001 inputs now split into two batches; one request of
            # 50,001 inputs cannot be split.
            requests=[{"model": "m", "input": ["text"] * 50_001}],
        ),
        BatchValidationError,
        r"50001 embedding inputs in all; at most 50000 are allowed per batch: split it",
    ),
    (
        "over 200 MB",
        lambda e: create(e, input_file=sparse_file(e.tmp / "huge.jsonl", 200 * 1024 * 1024 + 1)),
        BatchValidationError,
        # A file over 200 MB is now split; one line over 200 MB cannot be, and is read in pieces.
        r"input_file line 1: the line is 209715201 bytes; a batch input file holds at most 209715200 bytes "
        r"\(200 MB\), so no split can make it fit",
    ),
    (
        "many bad lines are all named",
        create_from_file([line(i, method="PUT") for i in range(1, 31)]),
        BatchValidationError,
        r"has 30 problem\(s\)[\s\S]*line 20: method[\s\S]*and 10 more",
    ),
    # ---- CancelBatchOperator and BatchSensor
    (
        "cancel id with /",
        lambda e: CancelBatchOperator(task_id="x", batch_id="a/b").execute(ctx()),
        ValueError,
        r"batch_id 'a/b' is not a valid id",
    ),
    (
        "sensor empty id",
        lambda e: BatchSensor(task_id="s", batch_id="").execute(ctx()),
        ValueError,
        r"batch_id must be a non-empty string",
    ),
    (
        "sensor unknown batch",
        lambda e: BatchSensor(task_id="s", batch_id="batch_unknown").execute(ctx()),
        NotFoundError,
        r"batch_unknown",
    ),
    (
        "sensor fraction 1.5",
        lambda e: BatchSensor(task_id="s", batch_id="b", max_failed_fraction=1.5),
        ValueError,
        r"s: max_failed_fraction must be a number from 0\.0 .* to 1\.0 .*; got 1\.5",
    ),
    (
        "operator fraction -0.5",
        lambda e: CreateBatchOperator(task_id="c", requests=prompts(), max_failed_fraction=-0.5),
        ValueError,
        r"c: max_failed_fraction must be a number from 0\.0 .*; got -0\.5",
    ),
    (
        "requests with a lone surrogate (cannot be UTF-8)",
        lambda e: create(e, requests=[{"custom_id": "a", "body": {"messages": [{"content": "bad \udc80"}]}}]),
        ValueError,
        r"requests\[0\] contains text that is not valid Unicode .*lone surrogate.*fix that string",
    ),
    (
        "an input file that is not UTF-8",
        lambda e: create_from_file(with_line(2, b'{"custom_id": "caf\xe9", "method": "POST"}'))(e),
        BatchValidationError,
        r"line 2: not valid UTF-8 \(byte 0xe9 at column \d+\); save the file as UTF-8",
    ),
    (
        "requests that JSON cannot carry (an object)",
        lambda e: create(e, requests=[{"custom_id": "a", "body": {"when": object()}}]),
        ValueError,
        r"requests\[0\] cannot be written as JSON .*pass plain dicts",
    ),
    (
        "requests with NaN (not JSON; the API refuses it)",
        lambda e: create(e, requests=[{"custom_id": "a", "body": {"temperature": float("nan")}}]),
        ValueError,
        r"requests\[0\] contains NaN or Infinity, which JSON cannot carry",
    ),
    (
        "an input file with NaN",
        create_from_file(
            with_line(4, '{"custom_id": "r4", "method": "POST", "url": "/v1/chat/completions", "body": {"n": NaN}}')
        ),
        BatchValidationError,
        r"line 4: not valid JSON \(NaN is not a JSON value; write null or a number\)",
    ),
    (
        "operator input_file_id not a string",
        lambda e: create(e, input_file_id=5),
        ValueError,
        r"input_file_id must be a non-empty string such as 'file-abc123', got 5",
    ),
    (
        "operator input_file of the wrong type",
        lambda e: create(e, input_file=5),
        ValueError,
        r"input_file must be a local path, a file:// URI, an object storage URI .*or an ObjectStoragePath of a JSONL "
        r"file; got int",
    ),
    (
        "operator poll_interval 0 (would hammer the API)",
        lambda e: CreateBatchOperator(task_id="c", requests=prompts(), poll_interval=0),
        ValueError,
        r"c: poll_interval must be a positive number of seconds; got 0",
    ),
    (
        "sensor poll_interval negative",
        lambda e: BatchSensor(task_id="s", batch_id="b", poll_interval=-5),
        ValueError,
        r"s: poll_interval must be a positive number of seconds; got -5",
    ),
    (
        "cancel operator batch_id None",
        lambda e: CancelBatchOperator(task_id="c", batch_id=None).execute(ctx()),
        ValueError,
        r"batch_id must be a non-empty string such as 'batch_abc123', got None",
    ),
    (
        # A list of batch ids is now accepted (the shards of a job); an empty one is not.
        "sensor batch_id an empty list",
        lambda e: BatchSensor(task_id="s", batch_id=[]).execute(ctx()),
        ValueError,
        r"batch_id must be a batch id such as 'batch_abc123', a non-empty list of them",
    ),
    (
        "upload from a text-mode handle",
        lambda e: e.hook.upload_file(io.StringIO("{}")),
        ValueError,
        r"source is a text file object: open it in binary mode \('rb'\), or pass a path",
    ),
    (
        "upload from a closed handle",
        lambda e: e.hook.upload_file(closed_handle(e)),
        ValueError,
        r"source is a closed file object: pass it while it is open, or pass a path",
    ),
    (
        "download into a text-mode handle",
        lambda e: e.hook.download_file("file-x", io.StringIO()),
        ValueError,
        r"destination is a text file object: open it in binary mode \('wb'\), or pass a path",
    ),
]


def sparse_file(path: Path, size: int) -> Path:
    with open(path, "wb") as out:
        out.truncate(size)  # no disk blocks: the size check must refuse it without reading it
    return path


@pytest.mark.parametrize(("name", "call", "error", "pattern"), CASES, ids=[case[0] for case in CASES])
def test_bad_input_is_refused_clearly_and_leaves_nothing_behind(
    openai_batch_connection, tmp_path, name, call, error, pattern
):
    env = Env(OpenAIBatchHook(), tmp_path)
    with pytest.raises(error, match=pattern):
        call(env)
    stats = openai_batch_connection.stats()
    assert stats["batches_created"] == 0 and stats["files"] == 0, stats  # nothing uploaded, nothing billed


def test_a_batch_the_api_refuses_takes_its_uploaded_file_with_it(openai_batch_connection, monkeypatch):
    # The pre-flight passes and the API still refuses the create (a 400 for a window the client let
    # through here): the file uploaded for it is deleted rather than left behind.
    def refused_create(self: OpenAIBatchHook, input_file_id: str, *args: Any, **kwargs: Any) -> Any:
        body = {"input_file_id": input_file_id, "endpoint": ENDPOINT, "completion_window": "48h"}
        return self._request(api.ApiCall("POST", "/batches", Batch, json=body, idempotent=False))

    monkeypatch.setattr(OpenAIBatchHook, "create_batch", refused_create)
    with pytest.raises(InvalidRequestError, match="completion_window"):
        create(Env(OpenAIBatchHook(), Path()), requests=prompts())
    stats = openai_batch_connection.stats()
    assert stats["files_created"] == 1 and stats["files"] == 0 and stats["batches_created"] == 0


# ---- answers no well-behaved server gives, served by requests-mock

ANSWERS: list[tuple[str, dict, Callable[[OpenAIBatchHook, Path], Any], type[Exception], str]] = [
    (
        "proxy HTML page",
        {
            "status_code": 502,
            "text": "<html><body><h1>502 Bad Gateway</h1></body></html>",
            "headers": {"Content-Type": "text/html"},
        },
        lambda h, t: h.retrieve_batch("batch_1"),
        ServerError,
        r"The server answered with a non-JSON body \(text/html\): '502 Bad Gateway' \(HTTP 502\)",
    ),
    (
        "non-JSON success",
        {"status_code": 200, "text": "OK", "headers": {"Content-Type": "text/plain"}},
        lambda h, t: h.retrieve_batch("batch_1"),
        APIError,
        r"Expected JSON from GET /batches/batch_1 but got: a non-JSON body \(text/plain\): 'OK'",
    ),
    (
        "JSON that is not a batch",
        {"status_code": 200, "json": ["not", "a", "batch"]},
        lambda h, t: h.retrieve_batch("batch_1"),
        APIError,
        r"Expected a Batch from GET /batches/batch_1 but got JSON that does not fit it: .*valid dictionary",
    ),
    (
        "truncated download",
        {"status_code": 200, "content": b'{"custom_id": "a"}\n', "headers": {"Content-Length": "500"}},
        lambda h, t: h.download_file("file-o", t / "out.jsonl"),
        APIConnectionError,
        r"download of file file-o was truncated: 19 of 500 bytes",
    ),
    (
        "unparseable output line",
        {"status_code": 200, "text": '{"custom_id": "a"}\n{"custom_id": \n'},
        lambda h, t: list(h.iter_file_records("file-o")),
        ResultsParseError,
        r"file file-o line 2 is not a batch result record",
    ),
]


@pytest.mark.parametrize(("name", "answer", "call", "error", "pattern"), ANSWERS, ids=[a[0] for a in ANSWERS])
def test_bad_answers_get_clear_errors(conn_env, requests_mock, tmp_path, name, answer, call, error, pattern):
    conn_env(extra={"max_retries": 0})
    requests_mock.get(f"{BASE}/batches/batch_1", **answer)
    requests_mock.get(f"{BASE}/files/file-o/content", **answer)
    with pytest.raises(error, match=pattern):
        call(OpenAIBatchHook(), tmp_path)
    assert list(tmp_path.iterdir()) == []  # a failed download leaves no partial file


def test_the_table_has_at_least_forty_rows():
    assert len(CASES) + len(ANSWERS) + 1 >= 40


def test_requests_library_is_not_leaking_into_errors():
    # The errors above are ours: callers catch OpenAIBatchError subclasses, never requests' exceptions.
    assert not issubclass(APIConnectionError, requests.RequestException)
