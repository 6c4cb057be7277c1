"""The emulator's Azure answers and the hook's Azure requests, checked against what Microsoft publishes in
azure-rest-api-specs (vendored under emulator/contract/azure, see its README): the batch operation examples
and the error schema, as the OpenAI side is checked against OpenAI's spec."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import openai_batch_emulator.contract as contract_package
import pytest
import requests

from airflow_provider_openai_batch.hooks.batch import OpenAIBatchHook
from airflow_provider_openai_batch.models import Batch, BatchPage, FileObject

AZURE_DIR = Path(contract_package.__file__).parent / "azure"
RESOURCE = "https://aoairesource.openai.azure.com"


def example(name: str) -> dict[str, Any]:
    return json.loads((AZURE_DIR / f"{name}.json").read_text())


def answer(name: str) -> tuple[int, dict[str, Any]]:
    ((status, response),) = example(name)["responses"].items()
    return int(status), response["body"]


def kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__.replace("int", "number").replace("float", "number")


def assert_fits(documented: dict[str, Any], given: dict[str, Any], where: str) -> None:
    """Every documented field is in the answer, with the documented JSON type wherever both are set."""
    for key, value in documented.items():
        assert key in given, f"{where}: {key} missing"
        if value is not None and given[key] is not None:
            assert kind(given[key]) == kind(value), f"{where}.{key}: {given[key]!r} vs documented {value!r}"
            if isinstance(value, dict) and key != "metadata":
                assert_fits(value, given[key], f"{where}.{key}")


# ---------------------------------------------------------------------------- the emulator's answers


@pytest.fixture
def classic(azure_emulator):
    """Plain HTTP to the emulator's classic paths, as the examples are written."""
    version = example("post_batch")["parameters"]["api-version"]
    http = requests.Session()
    http.headers["api-key"] = "any"
    http.params = {"api-version": version}  # type: ignore[assignment]
    return azure_emulator.root + "/openai", http


def test_the_emulators_batch_answers_fit_microsofts_examples(classic, azure_emulator):
    azure_emulator.configure(phase_seconds=60)  # still running when cancelled, however slow the machine
    base, http = classic
    data = b'{"custom_id": "a", "method": "POST", "url": "/chat/completions", "body": {"model": "d"}}\n'
    uploaded = http.post(f"{base}/files", files={"file": ("in.jsonl", data)}, data={"purpose": "batch"})
    upload_status, upload_body = answer("upload_file")
    assert uploaded.status_code == upload_status
    assert_fits(upload_body, uploaded.json(), "file")

    request = dict(example("post_batch")["parameters"]["batchCreateRequest"], input_file_id=uploaded.json()["id"])
    created = http.post(f"{base}/batches", json=request)
    status, documented = answer("post_batch")
    assert created.status_code == status == 201
    assert_fits(documented, created.json(), "create")
    assert created.json()["endpoint"] == documented["endpoint"] == "/chat/completions"
    assert created.headers["apim-request-id"]  # the spec's documented request id header

    batch_id = created.json()["id"]
    got = http.get(f"{base}/batches/{batch_id}")
    assert got.status_code == answer("get_batch")[0]
    assert_fits(answer("get_batch")[1], got.json(), "get")

    listed = http.get(f"{base}/batches")
    status, page = answer("get_batches")
    assert listed.status_code == status
    assert {k for k in page if k != "data"} <= set(listed.json())
    documented_item = {k: v for k, v in page["data"][0].items() if k not in ("first_id", "last_id")}
    assert_fits(documented_item, listed.json()["data"][0], "list.data[0]")

    cancelled = http.post(f"{base}/batches/{batch_id}/cancel")
    assert cancelled.status_code == answer("cancel_batch")[0]
    assert_fits(answer("cancel_batch")[1], cancelled.json(), "cancel")
    assert cancelled.json()["status"] == "cancelling"


def error_validator() -> jsonschema.Draft202012Validator:
    doc = json.loads((AZURE_DIR / "errors.json").read_text())
    schema = {"$ref": "#/components/schemas/errorResponse", "components": doc["components"]}
    return jsonschema.Draft202012Validator(schema)


@pytest.mark.parametrize(
    ("path", "headers", "status"),
    [
        ("/openai/batches", {"api-key": "k"}, 400),  # no api-version
        ("/openai/v1/batches", {}, 401),  # no key
        ("/v1/batches", {"api-key": "k"}, 404),  # OpenAI's path
    ],
)
def test_the_emulators_azure_errors_fit_the_error_schema(azure_emulator, path, headers, status):
    got = requests.get(azure_emulator.root + path, headers=headers)
    assert got.status_code == status and got.headers["apim-request-id"]
    body = got.json()
    error_validator().validate(body)
    assert set(body["error"]) == {"code", "message"}


# ----------------------------------------------------------------------------- the hook's requests


@pytest.fixture
def documented_connection(monkeypatch: pytest.MonkeyPatch):
    params = example("post_batch")["parameters"]
    conn = {
        "conn_type": "openai_batch",
        "host": params["endpoint"],
        "password": "documented-key",
        "extra": {"api_type": "azure", "api_version": params["api-version"], "max_retries": 0},
    }
    monkeypatch.setenv("AIRFLOW_CONN_OPENAI_DEFAULT", json.dumps(conn))
    return params


def test_the_hooks_requests_are_the_documented_ones(documented_connection, requests_mock):
    version = documented_connection["api-version"]
    create = documented_connection["batchCreateRequest"]
    batch = answer("post_batch")[1]
    base = f"{RESOURCE}/openai/batches"
    requests_mock.post(base, status_code=201, json=batch, headers={"apim-request-id": "apim-1"})
    requests_mock.get(f"{base}/{batch['id']}", json=answer("get_batch")[1])
    requests_mock.get(base, json=answer("get_batches")[1])
    requests_mock.post(f"{base}/{batch['id']}/cancel", json=answer("cancel_batch")[1])
    requests_mock.post(f"{RESOURCE}/openai/files", json=answer("upload_file")[1])
    with OpenAIBatchHook() as hook:
        created = hook.create_batch(create["input_file_id"], "/v1/chat/completions", metadata=create["metadata"])
        got = hook.retrieve_batch(batch["id"])
        page = hook.list_batches(limit=20)
        cancelled = hook.cancel_batch(batch["id"])
        uploaded = hook.upload_file(b"{}\n", purpose="assistants")
    sent = requests_mock.request_history
    assert [(r.method, r.path) for r in sent] == [
        ("POST", "/openai/batches"),
        ("GET", f"/openai/batches/{batch['id']}"),
        ("GET", "/openai/batches"),
        ("POST", f"/openai/batches/{batch['id']}/cancel"),
        ("POST", "/openai/files"),
    ]
    assert all(r.qs["api-version"] == [version.lower()] for r in sent)  # requests_mock lower-cases query values
    assert all(r.headers["api-key"] == "documented-key" and "Authorization" not in r.headers for r in sent)
    assert sent[0].json() == create  # exactly the documented body: the endpoint without /v1
    assert isinstance(created, Batch) and created.http.request_id == "apim-1" and created.status == "validating"
    assert got.status == "completed" and got.request_counts.total == 500
    assert isinstance(page, BatchPage) and page.data[0].id == batch["id"] and not page.has_more
    assert cancelled.status == "cancelling"
    assert isinstance(uploaded, FileObject) and uploaded.id == answer("upload_file")[1]["id"]
