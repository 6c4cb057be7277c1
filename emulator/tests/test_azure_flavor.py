"""The emulator's Azure flavor, spoken to over plain HTTP: both path shapes, api-key or bearer auth,
api-version on the classic paths, Azure's error bodies and request id, and Azure's line rules. It is a judge
independent of the client, so these tests build their requests by hand."""

from __future__ import annotations

import json
import time

import pytest
import requests
from openai_batch_emulator.contract import judge_input_file

VERSION = "2024-10-21"


def line(i: int, model: str = "dep", url: str = "/chat/completions") -> dict:
    return {"custom_id": f"r{i}", "method": "POST", "url": url, "body": {"model": model, "messages": []}}


def jsonl(items: list[dict]) -> bytes:
    return "".join(json.dumps(item) + "\n" for item in items).encode()


class Azure:
    """Plain HTTP against the emulator's Azure paths, with an api-key."""

    def __init__(self, handle, classic: bool) -> None:
        self.root = handle.root
        self.classic = classic
        self.http = requests.Session()
        self.http.headers["api-key"] = "any-key"

    def url(self, path: str) -> str:
        return f"{self.root}/openai{path}" if self.classic else f"{self.root}/openai/v1{path}"

    def params(self, **extra) -> dict:
        return {**extra, "api-version": VERSION} if self.classic else extra

    def upload(self, data: bytes) -> str:
        answer = self.http.post(
            self.url("/files"), params=self.params(), files={"file": ("in.jsonl", data)}, data={"purpose": "batch"}
        )
        assert answer.status_code == 200, answer.text
        return answer.json()["id"]

    def create(self, file_id: str, endpoint: str = "/chat/completions") -> requests.Response:
        body = {"input_file_id": file_id, "endpoint": endpoint, "completion_window": "24h"}
        return self.http.post(self.url("/batches"), params=self.params(), json=body)

    def wait(self, batch_id: str) -> dict:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            batch = self.http.get(self.url(f"/batches/{batch_id}"), params=self.params()).json()
            if batch["status"] in ("completed", "failed", "expired", "cancelled"):
                return batch
            time.sleep(0.05)
        raise AssertionError(f"batch {batch_id} did not end")


@pytest.fixture(params=["v1", "classic"])
def azure(request, azure_emulator) -> Azure:
    return Azure(azure_emulator, classic=request.param == "classic")


def test_a_batch_runs_on_both_path_shapes(azure: Azure):
    created = azure.create(azure.upload(jsonl([line(1), line(2)])))
    assert created.status_code == 201 and created.json()["endpoint"] == "/chat/completions"
    assert created.headers["apim-request-id"] and created.headers["x-request-id"]
    batch = azure.wait(created.json()["id"])
    assert batch["status"] == "completed" and batch["request_counts"] == {"total": 2, "completed": 2, "failed": 0}
    output = azure.http.get(azure.url(f"/files/{batch['output_file_id']}/content"), params=azure.params())
    results = [json.loads(row) for row in output.text.splitlines()]
    assert sorted(r["custom_id"] for r in results) == ["r1", "r2"]
    assert all(r["response"]["body"]["object"] == "chat.completion" for r in results)
    listed = azure.http.get(azure.url("/batches"), params=azure.params(limit=1)).json()
    assert listed["object"] == "list" and listed["data"][0]["id"] == batch["id"]


def test_the_classic_paths_need_an_api_version(azure_emulator):
    answer = requests.get(f"{azure_emulator.root}/openai/batches", headers={"api-key": "k"})
    assert answer.status_code == 400
    assert answer.json() == {
        "error": {
            "code": "MissingApiVersionParameter",
            "message": "The api-version query parameter (?api-version=) is required for all requests.",
        }
    }
    odd = requests.get(
        f"{azure_emulator.root}/openai/batches", params={"api-version": "latest"}, headers={"api-key": "k"}
    )
    assert odd.status_code == 400 and odd.json()["error"]["code"] == "UnsupportedApiVersion"


def test_openais_own_paths_are_not_azures(azure_emulator):
    answer = requests.get(f"{azure_emulator.root}/v1/batches", headers={"api-key": "k"})
    assert answer.status_code == 404
    assert answer.json() == {"error": {"code": "404", "message": "Resource not found"}}
    assert answer.headers["apim-request-id"]


def test_api_key_auth_in_azures_shape(azure_emulator):
    url = f"{azure_emulator.root}/openai/v1/batches"
    missing = requests.get(url)
    assert missing.status_code == 401 and missing.json()["error"]["code"] == "401"
    assert "missing subscription key" in missing.json()["error"]["message"]
    azure_emulator.configure(api_key="right-key")
    wrong = requests.get(url, headers={"api-key": "wrong-key"})
    assert wrong.status_code == 401 and "invalid subscription key" in wrong.json()["error"]["message"]
    # OpenAI's header is not Azure's: a Bearer with the key is an Entra ID token, checked against the key too.
    assert requests.get(url, headers={"api-key": "right-key"}).status_code == 200
    assert requests.get(url, headers={"Authorization": "Bearer right-key"}).status_code == 200
    assert azure_emulator.stats()["auth"] == {"api-key": 2, "bearer": 1}


def test_a_429_fault_has_azures_body(azure_emulator):
    azure_emulator.configure(fault_script=["429"])
    answer = requests.get(f"{azure_emulator.root}/openai/v1/batches", headers={"api-key": "k"})
    assert answer.status_code == 429 and answer.headers["retry-after"]
    assert answer.json()["error"]["code"] == "429" and "call rate limit" in answer.json()["error"]["message"]


def test_a_create_with_openais_endpoint_shape_is_refused(azure: Azure):
    refused = azure.create(azure.upload(jsonl([line(1)])), "/v1/chat/completions")
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "endpoint"


def test_two_deployments_in_one_file_fail_validation(azure: Azure):
    batch = azure.wait(azure.create(azure.upload(jsonl([line(1), line(2, model="other")]))).json()["id"])
    assert batch["status"] == "failed"
    assert [(e["code"], e["line"]) for e in batch["errors"]["data"]] == [("model_mismatch", 2)]


def test_a_line_with_v1_in_its_url_fails_validation(azure: Azure):
    batch = azure.wait(azure.create(azure.upload(jsonl([line(1, url="/v1/chat/completions")]))).json()["id"])
    assert batch["status"] == "failed" and batch["errors"]["data"][0]["code"] == "mismatched_url"


def test_azure_judges_up_to_100000_requests_a_file():
    data = jsonl([line(i) for i in range(100_000)])
    assert judge_input_file(data, "/chat/completions", "azure").problems == []
    assert judge_input_file(data, "/chat/completions", "openai").problems[0].code == "too_many_requests"
    more = data + jsonl([line(100_000)])
    assert judge_input_file(more, "/chat/completions", "azure").problems[0].code == "too_many_requests"


def test_the_flavor_is_a_setting_with_a_clear_refusal(openai_batch_emulator):
    with pytest.raises(requests.HTTPError):
        openai_batch_emulator.configure(flavor="bedrock")
    assert openai_batch_emulator.configure(flavor="azure")["flavor"] == "azure"
    assert openai_batch_emulator.base_url.endswith("/openai/v1")
