"""The emulator is faithful to the contract: official schemas, the official SDK, lifecycle, faults, restarts."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import jsonschema
import openai_batch_emulator
import pytest
import requests
from openai_batch_emulator.testing import run_emulator_process

SPEC_DIR = Path(openai_batch_emulator.__file__).parent / "contract"
SPEC = json.loads((SPEC_DIR / "openai-batch-files.v1.json").read_text())
LINES = json.loads((SPEC_DIR / "batch-jsonl-lines.json").read_text())


def _nullable_optionals(schema: Any) -> Any:
    """Resolve $refs and let non-required properties be null.

    The live API sends ``null`` for unset optional fields although the spec does not mark them nullable
    (see the spec README); required fields and every type stay as the spec says.
    """
    if isinstance(schema, list):
        return [_nullable_optionals(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    if "$ref" in schema:
        return _nullable_optionals(SPEC["components"]["schemas"][schema["$ref"].split("/")[-1]])
    out = {k: _nullable_optionals(v) for k, v in schema.items() if k not in ("x-oaiMeta", "example")}
    if "properties" in out:
        required = set(out.get("required", []))
        out["properties"] = {
            name: prop if name in required else {"anyOf": [prop, {"type": "null"}]}
            for name, prop in out["properties"].items()
        }
    if schema.get("nullable"):
        out = {"anyOf": [out, {"type": "null"}]}
    return out


def schema(name: str) -> dict:
    return _nullable_optionals({"$ref": f"#/components/schemas/{name}"})


def check(instance: Any, name: str) -> None:
    jsonschema.Draft202012Validator(schema(name)).validate(instance)


def check_error(response: requests.Response, status: int) -> dict:
    assert response.status_code == status
    assert response.headers["x-request-id"].startswith("req_")
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and isinstance(error["message"], str)
    return error


def line(custom_id: str, url: str = "/v1/chat/completions", model: str = "gpt-4o-mini", **extra: Any) -> dict:
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": url,
        "body": {"model": model, "messages": [{"role": "user", "content": f"hi {custom_id}"}]},
        **extra,
    }


class Client:
    def __init__(self, handle: Any) -> None:
        self.base = handle.base_url
        self.http = requests.Session()
        self.http.headers["Authorization"] = "Bearer test-key"

    def upload(self, lines: list[Any] | bytes, purpose: str = "batch") -> dict:
        data = (
            lines
            if isinstance(lines, bytes)
            else "".join((json.dumps(item) if not isinstance(item, str) else item) + "\n" for item in lines).encode()
        )
        response = self.http.post(f"{self.base}/files", files={"file": ("in.jsonl", data)}, data={"purpose": purpose})
        assert response.status_code == 200, response.text
        check(response.json(), "OpenAIFile")
        return response.json()

    def create(self, file_id: str, endpoint: str = "/v1/chat/completions", **extra: Any) -> requests.Response:
        return self.http.post(
            f"{self.base}/batches",
            json={"input_file_id": file_id, "endpoint": endpoint, "completion_window": "24h", **extra},
        )

    def get(self, path: str) -> requests.Response:
        return self.http.get(f"{self.base}{path}")

    def wait(self, batch_id: str, statuses: tuple[str, ...] = ("completed", "failed", "expired", "cancelled")) -> dict:
        for _ in range(200):
            batch = self.get(f"/batches/{batch_id}").json()
            check(batch, "Batch")
            if batch["status"] in statuses:
                return batch
            time.sleep(0.02)
        raise AssertionError(f"batch stayed {batch['status']}")

    def lines(self, file_id: str) -> list[dict]:
        response = self.get(f"/files/{file_id}/content")
        assert response.status_code == 200
        parsed = [json.loads(x) for x in response.text.splitlines()]
        for item in parsed:
            jsonschema.validate(item, _nullable_optionals(LINES["BatchRequestOutput"]))
        return parsed


@pytest.fixture
def client(openai_batch_emulator) -> Client:
    return Client(openai_batch_emulator)


def test_lifecycle_results_and_schemas(client, openai_batch_emulator):
    bad = line("bad")
    bad["body"]["temperature"] = 3  # refused by the API on its own: that request alone fails
    uploaded = client.upload([line(f"r{i}") for i in range(20)] + [bad])
    created = client.create(uploaded["id"], metadata={"team": "data"})
    assert created.status_code == 200 and created.headers["x-request-id"].startswith("req_")
    check(created.json(), "Batch")
    assert created.json()["status"] == "validating" and created.json()["metadata"] == {"team": "data"}
    assert created.json()["completed_at"] is None  # unset fields are present as null, like the live API
    seen = set()
    for _ in range(200):
        batch = client.get(f"/batches/{created.json()['id']}").json()
        seen.add(batch["status"])
        if batch["status"] == "completed":
            break
        time.sleep(0.01)
    assert {"validating", "in_progress", "finalizing", "completed"} <= seen
    check(batch, "Batch")
    assert batch["request_counts"] == {"total": 21, "completed": 20, "failed": 1}
    assert batch["usage"]["total_tokens"] == batch["usage"]["input_tokens"] + batch["usage"]["output_tokens"] > 0
    for stamp in ("in_progress_at", "finalizing_at", "completed_at"):
        assert batch[stamp] >= batch["created_at"]
    outputs = client.lines(batch["output_file_id"])
    assert [o["custom_id"] for o in outputs] != [f"r{i}" for i in range(20)]  # not in input order
    assert sorted(o["custom_id"] for o in outputs) == sorted(f"r{i}" for i in range(20))
    assert outputs[0]["response"]["body"]["object"] == "chat.completion"
    errors = client.lines(batch["error_file_id"])
    assert errors[0]["custom_id"] == "bad" and errors[0]["response"]["status_code"] == 400
    assert errors[0]["response"]["body"]["error"]["code"] == "decimal_above_max_value"
    check(client.get(f"/files/{batch['output_file_id']}").json(), "OpenAIFile")
    listing = client.get("/files").json()
    check(listing, "ListFilesResponse")
    deleted = client.http.delete(f"{client.base}/files/{uploaded['id']}")
    check(deleted.json(), "DeleteFileResponse")
    check_error(client.get(f"/files/{uploaded['id']}"), 404)


@pytest.mark.parametrize(("endpoint", "obj"), [("/v1/embeddings", "list"), ("/v1/responses", "response")])
def test_fake_bodies_per_endpoint(client, endpoint, obj):
    body = {"model": "m", "input": "text"}
    file_id = client.upload([{"custom_id": "a", "method": "POST", "url": endpoint, "body": body}])["id"]
    batch = client.wait(client.create(file_id, endpoint).json()["id"])
    result = client.lines(batch["output_file_id"])[0]["response"]["body"]
    assert result["object"] == obj
    if endpoint == "/v1/embeddings":
        assert all(isinstance(x, float) for x in result["data"][0]["embedding"])


def test_validation_failure_names_lines(client):
    lines: list[Any] = [
        line("a"),
        "not json",
        line("a"),
        {**line("c"), "method": "GET"},
        line("d", url="/v1/embeddings"),
        {"custom_id": "e", "method": "POST", "url": "/v1/chat/completions", "body": []},
        {"method": "POST", "url": "/v1/chat/completions", "body": {"model": "gpt-4o-mini"}},  # the file's model
    ]
    batch = client.wait(client.create(client.upload(lines)["id"]).json()["id"])
    assert batch["status"] == "failed" and batch["failed_at"] is not None
    problems = {(e["line"], e["code"]) for e in batch["errors"]["data"]}
    assert problems == {
        (2, "invalid_json_line"),
        (3, "duplicate_custom_id"),
        (4, "invalid_method"),
        (5, "mismatched_url"),
        (6, "invalid_body"),
        (7, "missing_required_parameter"),
    }


def test_wrong_purpose_and_bad_create_params(client):
    other = client.upload([line("a")], purpose="assistants")
    assert check_error(client.create(other["id"]), 400)["param"] == "input_file_id"
    good = client.upload([line("a")])["id"]
    assert check_error(client.create(good, "/v1/nope"), 400)["param"] == "endpoint"
    assert check_error(client.create("file-missing"), 400)["param"] == "input_file_id"
    assert check_error(client.create(good, metadata={f"k{i}": "v" for i in range(17)}), 400)["param"] == "metadata"
    response = client.http.post(
        f"{client.base}/batches",
        json={"input_file_id": good, "endpoint": "/v1/chat/completions", "completion_window": "48h"},
    )
    assert check_error(response, 400)["param"] == "completion_window"
    assert check_error(client.get("/batches?limit=0"), 400)["param"] == "limit"
    assert check_error(client.get("/batches?limit=101"), 400)["param"] == "limit"
    check_error(client.get("/batches/batch_unknown"), 404)


def test_auth_is_required(openai_batch_emulator):
    response = requests.get(f"{openai_batch_emulator.base_url}/batches")
    assert check_error(response, 401)["code"] == "invalid_api_key"


def test_list_pagination_newest_first(client):
    file_id = client.upload([line("a")])["id"]
    ids = [client.create(file_id).json()["id"] for _ in range(5)]
    first = client.get("/batches?limit=2").json()
    check(first, "ListBatchesResponse")
    assert [b["id"] for b in first["data"]] == ids[::-1][:2] and first["has_more"]
    rest = client.get(f"/batches?limit=10&after={first['last_id']}").json()
    assert [b["id"] for b in rest["data"]] == ids[::-1][2:] and not rest["has_more"]


def test_cancel_gives_partial_results_and_finished_batches_conflict(client, openai_batch_emulator):
    # A long phase, and the cancel sent once some requests are done: a busy machine only makes it later, and
    # it still comes long before the rest are done. Then a short phase, so the cancel takes effect quickly.
    openai_batch_emulator.configure(phase_seconds=6)
    file_id = client.upload([line(f"r{i}") for i in range(10)])["id"]
    batch_id = client.create(file_id).json()["id"]
    deadline = time.monotonic() + 60
    while client.get(f"/batches/{batch_id}").json()["request_counts"]["completed"] == 0:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    cancelling = client.http.post(f"{client.base}/batches/{batch_id}/cancel").json()
    check(cancelling, "Batch")
    assert cancelling["status"] == "cancelling" and cancelling["cancelling_at"] is not None
    openai_batch_emulator.configure(phase_seconds=0.2)
    batch = client.wait(batch_id)
    assert batch["status"] == "cancelled" and batch["cancelled_at"] is not None
    assert 0 < batch["request_counts"]["completed"] < 10
    assert len(client.lines(batch["output_file_id"])) == batch["request_counts"]["completed"]
    check_error(client.http.post(f"{client.base}/batches/{batch_id}/cancel"), 409)


def test_expiry_when_the_window_passes(client, openai_batch_emulator):
    openai_batch_emulator.configure(phase_seconds=0.2, completion_window_seconds=0.3)
    batch = client.wait(client.create(client.upload([line(c) for c in "abcd"])["id"]).json()["id"])
    assert batch["status"] == "expired" and batch["expired_at"] is not None
    # What finished is in the output file; every unfinished request is in the error file as batch_expired.
    finished = [json.loads(x) for x in client.get(f"/files/{batch['output_file_id']}/content").text.splitlines()]
    unfinished = [json.loads(x) for x in client.get(f"/files/{batch['error_file_id']}/content").text.splitlines()]
    assert sorted(r["custom_id"] for r in finished + unfinished) == ["a", "b", "c", "d"] and finished
    assert {r["error"]["code"] for r in unfinished} == {"batch_expired"} and all(
        r["response"] is None for r in unfinished
    )
    assert batch["request_counts"] == {"total": 4, "completed": len(finished), "failed": len(unfinished)}


def test_admin_force_status_and_stats(client, openai_batch_emulator):
    openai_batch_emulator.configure(phase_seconds=60)
    batch_id = client.create(client.upload([line("a"), line("b")])["id"]).json()["id"]
    forced = openai_batch_emulator.force_status(batch_id, "completed")
    assert forced["status"] == "completed" and forced["output_file_id"]
    assert openai_batch_emulator.force_status(batch_id, "failed")["status"] == "failed"
    stats = openai_batch_emulator.stats()
    assert stats["batches_created"] == 1 and stats["requests"]["POST /v1/batches"] == 1


@pytest.mark.parametrize("kind", ["429", "500", "502", "503"])
def test_status_faults_carry_request_ids(client, openai_batch_emulator, kind):
    openai_batch_emulator.configure(fault_rate=1.0, fault_kinds=[kind], retry_after=2)
    response = client.get("/batches")
    assert response.status_code == int(kind) and response.headers["x-request-id"].startswith("req_")
    if kind == "429":
        assert response.headers["retry-after"] == "2"
    if kind == "502":
        assert response.headers["content-type"].startswith("text/html")
    # A faulted create creates nothing.
    openai_batch_emulator.configure(fault_rate=0.0)
    file_id = client.upload([line("a")])["id"]
    openai_batch_emulator.configure(fault_rate=1.0)
    assert client.create(file_id).status_code == int(kind)
    assert openai_batch_emulator.stats()["batches_created"] == 0


def test_drop_closes_the_connection_and_can_follow_processing(client, openai_batch_emulator):
    file_id = client.upload([line("a")])["id"]
    openai_batch_emulator.configure(fault_rate=1.0, fault_kinds=["drop"])
    with pytest.raises(requests.ConnectionError):
        client.get("/batches")
    openai_batch_emulator.configure(fault_after_processing=True)
    with pytest.raises(requests.ConnectionError):
        client.create(file_id)
    assert openai_batch_emulator.stats()["batches_created"] == 1  # the ambiguous case: created, no answer


def test_latency_and_slow(client, openai_batch_emulator):
    openai_batch_emulator.configure(latency_ms=150)
    started = time.monotonic()
    client.get("/batches")
    assert time.monotonic() - started >= 0.15
    openai_batch_emulator.configure(latency_ms=0, fault_rate=1.0, fault_kinds=["slow"], slow_seconds=5)
    with pytest.raises(requests.ReadTimeout):
        client.http.get(f"{client.base}/batches", timeout=0.3)
    openai_batch_emulator.configure(slow_seconds=0.3)  # a patient client gets the real answer, late
    started = time.monotonic()
    answer = client.http.get(f"{client.base}/batches", timeout=5)
    assert answer.status_code == 200 and answer.json()["object"] == "list" and time.monotonic() - started >= 0.3


def test_openai_sdk_full_flow_with_strict_validation(openai_batch_emulator):
    import openai

    sdk = openai.OpenAI(
        base_url=openai_batch_emulator.base_url, api_key="test-key", _strict_response_validation=True, max_retries=0
    )
    data = "".join(json.dumps(line(f"r{i}")) + "\n" for i in range(3)).encode()
    uploaded = sdk.files.create(file=("in.jsonl", data), purpose="batch")
    batch = sdk.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h", metadata={"k": "v"}
    )
    for _ in range(200):
        batch = sdk.batches.retrieve(batch.id)
        if batch.status == "completed":
            break
        time.sleep(0.02)
    assert batch.status == "completed" and batch.request_counts and batch.request_counts.completed == 3
    content = sdk.files.content(batch.output_file_id).text  # type: ignore[arg-type]
    assert len(content.splitlines()) == 3
    others = [
        sdk.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h").id
        for _ in range(3)
    ]
    page = sdk.batches.list(limit=2)
    assert [b.id for b in page.data] == others[::-1][:2] and page.has_more
    assert len(list(sdk.batches.list(limit=2))) == 4  # the SDK follows the cursor
    cancelled = sdk.batches.cancel(others[0])
    assert cancelled.status == "cancelling"
    # The SDK refuses to start without a key, so send the request with its Authorization header blanked.
    keyless = openai.OpenAI(
        base_url=openai_batch_emulator.base_url, api_key="unused", max_retries=0, default_headers={"Authorization": ""}
    )
    with pytest.raises(openai.AuthenticationError):
        keyless.batches.list()


def test_pinned_key_and_data_dir_restart(tmp_path):
    with run_emulator_process(data_dir=tmp_path, api_key="pinned-key", phase_seconds=0.3) as emulator:
        http = requests.Session()
        assert http.get(f"{emulator.base_url}/batches", headers={"Authorization": "Bearer other"}).status_code == 401
        http.headers["Authorization"] = "Bearer pinned-key"
        upload = http.post(
            f"{emulator.base_url}/files",
            files={"file": ("a.jsonl", json.dumps(line("a")) + "\n")},
            data={"purpose": "batch"},
        ).json()
        batch = http.post(
            f"{emulator.base_url}/batches",
            json={"input_file_id": upload["id"], "endpoint": "/v1/chat/completions", "completion_window": "24h"},
        ).json()
        emulator.restart()
        assert http.get(f"{emulator.base_url}/files/{upload['id']}/content").text.startswith('{"custom_id"')
        for _ in range(100):
            state = http.get(f"{emulator.base_url}/batches/{batch['id']}").json()
            if state["status"] == "completed":
                break
            time.sleep(0.05)
        assert state["status"] == "completed" and state["request_counts"]["completed"] == 1


def test_cli_help_and_console_script():
    out = subprocess.run(
        [sys.executable, "-m", "openai_batch_emulator", "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for flag in ("--host", "--port", "--phase-seconds", "--fault-rate", "--latency-ms", "--data-dir", "--api-key"):
        assert flag in out
    script = Path(sys.executable).parent / "openai-batch-emulator"
    assert subprocess.run([str(script), "--help"], capture_output=True, check=True).returncode == 0
    bad = subprocess.run([str(script), "--fault-kinds", "418"], capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown kinds" in bad.stderr
