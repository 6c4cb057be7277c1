"""The emulator judges requests by its own reading of the contract, neither looser nor stricter than the spec.

Every case goes over HTTP with plain ``requests``: no client code is involved, so a bug shared by a client and
the emulator cannot hide here. Values come from the official spec vendored in the package
(``openai_batch_emulator/contract``) and the Batch guide's rules listed in its README.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import openai_batch_emulator
import pytest
from emulator_support import ENDPOINT, Http, jsonl, openai_error, raw_path, request_line

EMULATOR = Path(openai_batch_emulator.__file__).parent
SPEC_DIR = EMULATOR / "contract"
SPEC = json.loads((SPEC_DIR / "openai-batch-files.v1.json").read_text())
ENDPOINTS: list[str] = SPEC["components"]["schemas"]["CreateBatchRequest"]["properties"]["endpoint"]["enum"]
PURPOSES: list[str] = SPEC["components"]["schemas"]["CreateFileRequest"]["properties"]["purpose"]["enum"]


@pytest.fixture
def http(openai_batch_emulator: Any) -> Http:
    return Http(openai_batch_emulator.base_url)


@pytest.fixture
def file_id(http: Http) -> str:
    return http.upload_id([request_line("a")])


# ------------------------------------------------------------------------------------------- independence

ALLOWED_TOP_LEVEL = {"fastapi", "starlette", "uvicorn", "pydantic", "jsonschema", "requests", "pytest"}


def test_the_emulator_imports_nothing_of_a_client_or_of_airflow():
    """Only its own modules, the stdlib and its web/validation libraries: never a client's rules."""
    offenders = []
    for path in EMULATOR.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                top = name.split(".")[0]
                own = name == "openai_batch_emulator" or name.startswith("openai_batch_emulator.")
                if not (own or top in sys.stdlib_module_names or top in ALLOWED_TOP_LEVEL):
                    offenders.append(f"{path.relative_to(EMULATOR)}:{node.lineno}: {name}")
    assert offenders == []


def test_the_emulator_works_with_the_provider_and_airflow_unimportable():
    """Upload, create and a failed validation with the provider's modules and Airflow's blocked: no lazy import
    either."""
    script = textwrap.dedent(
        """
        import importlib.abc, sys

        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("airflow", "airflow_provider_openai_batch"):
                    raise ImportError("blocked: " + name)
                return None

        sys.meta_path.insert(0, Block())
        import time
        from starlette.testclient import TestClient
        from openai_batch_emulator.app import create_app
        from openai_batch_emulator.config import EmulatorConfig

        client = TestClient(create_app(EmulatorConfig(phase_seconds=0.05)))
        client.headers["Authorization"] = "Bearer k"
        data = b'{"custom_id": "a", "method": "GET", "url": "/v1/chat/completions", "body": {}}\\n'
        upload = client.post("/v1/files", files={"file": ("a.jsonl", data)}, data={"purpose": "batch"})
        assert upload.status_code == 200, upload.text
        body = {"input_file_id": upload.json()["id"], "endpoint": "/v1/chat/completions", "completion_window": "24h"}
        batch = client.post("/v1/batches", json=body).json()
        for _ in range(400):
            batch = client.get("/v1/batches/" + batch["id"]).json()
            if batch["status"] != "validating":
                break
            time.sleep(0.01)
        assert batch["status"] == "failed", batch
        assert batch["errors"]["data"][0]["code"] == "invalid_method", batch
        print("ok")
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-3000:]


# ---------------------------------------------------------------------------------------------- create

REFUSED_CREATES: list[tuple[str, dict[str, Any], str, str]] = [
    ("no input_file_id", {"input_file_id": None}, "input_file_id", "missing_required_parameter"),
    ("no endpoint", {"endpoint": None}, "endpoint", "missing_required_parameter"),
    ("no window", {"completion_window": None}, "completion_window", "missing_required_parameter"),
    ("file id not a string", {"input_file_id": 7}, "input_file_id", "invalid_type"),
    ("endpoint outside the enum", {"endpoint": "/v1/nope"}, "endpoint", "invalid_value"),
    ("endpoint without /v1", {"endpoint": "/chat/completions"}, "endpoint", "invalid_value"),
    ("window 48h", {"completion_window": "48h"}, "completion_window", "invalid_value"),
    ("window 1h", {"completion_window": "1h"}, "completion_window", "invalid_value"),
    ("17 metadata pairs", {"metadata": {f"k{i}": "v" for i in range(17)}}, "metadata", "object_above_max_properties"),
    ("65-char metadata key", {"metadata": {"k" * 65: "v"}}, "metadata", "string_above_max_length"),
    ("513-char metadata value", {"metadata": {"k": "v" * 513}}, "metadata.k", "string_above_max_length"),
    ("int metadata value", {"metadata": {"k": 1}}, "metadata.k", "invalid_type"),
    ("null metadata value", {"metadata": {"k": None}}, "metadata.k", "invalid_type"),
    ("metadata a string", {"metadata": "team=data"}, "metadata", "invalid_type"),
    ("metadata a list", {"metadata": [["k", "v"]]}, "metadata", "invalid_type"),
    (
        "expiry below an hour",
        {"output_expires_after": {"anchor": "created_at", "seconds": 3599}},
        "output_expires_after.seconds",
        "integer_below_min_value",
    ),
    (
        "expiry above 30 days",
        {"output_expires_after": {"anchor": "created_at", "seconds": 2_592_001}},
        "output_expires_after.seconds",
        "integer_above_max_value",
    ),
    (
        "expiry seconds as text",
        {"output_expires_after": {"anchor": "created_at", "seconds": "3600"}},
        "output_expires_after.seconds",
        "invalid_type",
    ),
    (
        "expiry anchor other than created_at",
        {"output_expires_after": {"anchor": "completed_at", "seconds": 3600}},
        "output_expires_after.anchor",
        "invalid_value",
    ),
    (
        "expiry without seconds",
        {"output_expires_after": {"anchor": "created_at"}},
        "output_expires_after.seconds",
        "missing_required_parameter",
    ),
    (
        "expiry without anchor",
        {"output_expires_after": {"seconds": 3600}},
        "output_expires_after.anchor",
        "missing_required_parameter",
    ),
    ("expiry as bare seconds", {"output_expires_after": 3600}, "output_expires_after", "invalid_type"),
    ("expiry null", {"output_expires_after": None}, "output_expires_after", "invalid_type"),
]


@pytest.mark.parametrize(
    ("change", "param", "code"), [case[1:] for case in REFUSED_CREATES], ids=[case[0] for case in REFUSED_CREATES]
)
def test_create_refuses_what_the_contract_refuses(http, file_id, openai_batch_emulator, change, param, code):
    body = {"input_file_id": file_id, "endpoint": ENDPOINT, "completion_window": "24h", **change}
    body = {
        k: v for k, v in body.items() if v is not None or k not in ("input_file_id", "endpoint", "completion_window")
    }
    error = openai_error(http.create(body), 400)
    assert (error["param"], error["code"]) == (param, code), error
    assert param.split(".")[0] in error["message"]
    assert openai_batch_emulator.stats()["batches_created"] == 0


ACCEPTED_CREATES: list[tuple[str, dict[str, Any]]] = [
    *[(f"endpoint {e}", {"endpoint": e}) for e in ENDPOINTS],
    ("16 pairs at the length limits", {"metadata": {f"{i:02d}".ljust(64, "k"): "v" * 512 for i in range(16)}}),
    ("empty metadata", {"metadata": {}}),
    ("null metadata", {"metadata": None}),
    ("expiry of an hour", {"output_expires_after": {"anchor": "created_at", "seconds": 3600}}),
    ("expiry of 30 days", {"output_expires_after": {"anchor": "created_at", "seconds": 2_592_000}}),
    ("a field the spec does not list", {"some_future_field": True}),
]


@pytest.mark.parametrize("change", [case[1] for case in ACCEPTED_CREATES], ids=[case[0] for case in ACCEPTED_CREATES])
def test_create_accepts_what_the_contract_accepts(http, file_id, change):
    body = {"input_file_id": file_id, "endpoint": ENDPOINT, "completion_window": "24h", **change}
    response = http.create(body)
    assert response.status_code == 200, response.text
    assert response.json()["endpoint"] == body["endpoint"] and response.json()["status"] == "validating"


def test_output_expires_after_sets_the_result_files_expiry(http, file_id):
    batch_id = http.create_for(file_id, output_expires_after={"anchor": "created_at", "seconds": 7200}).json()["id"]
    batch = http.wait(batch_id)
    assert batch["status"] == "completed"
    output = http.get(f"/files/{batch['output_file_id']}").json()
    assert output["expires_at"] == output["created_at"] + 7200


# ------------------------------------------------------------------------------------------------ lists


@pytest.mark.parametrize("limit", ["0", "101", "-1", "abc", "1.5", ""])
def test_list_batches_refuses_a_limit_outside_1_to_100(http, limit):
    assert openai_error(http.get(f"/batches?limit={limit}"), 400)["param"] == "limit"


@pytest.mark.parametrize("limit", ["1", "100"])
def test_list_batches_accepts_limits_1_and_100(http, file_id, limit):
    http.create_for(file_id)
    assert http.get(f"/batches?limit={limit}").json()["object"] == "list"


@pytest.mark.parametrize(("query", "param"), [("limit=0", "limit"), ("limit=10001", "limit"), ("order=up", "order")])
def test_list_files_refuses_bad_parameters(http, query, param):
    assert openai_error(http.get(f"/files?{query}"), 400)["param"] == param


def test_list_files_accepts_its_full_range(http, file_id):
    for query in ("limit=1", "limit=10000", "order=asc", "order=desc", "purpose=batch"):
        response = http.get(f"/files?{query}")
        assert response.status_code == 200 and response.json()["data"][0]["id"] == file_id, query


# ----------------------------------------------------------------------------------------------- upload


@pytest.mark.parametrize("purpose", PURPOSES)
def test_upload_accepts_every_purpose_of_the_spec(http, purpose):
    response = http.upload(b"{}\n", purpose=purpose)
    assert response.status_code == 200 and response.json()["purpose"] == purpose


REFUSED_UPLOADS: list[tuple[str, dict[str, str], str, str]] = [
    ("purpose batch_output", {"purpose": "batch_output"}, "purpose", "invalid_value"),
    ("purpose unknown", {"purpose": "training"}, "purpose", "invalid_value"),
    (
        "expiry below an hour",
        {"expires_after[anchor]": "created_at", "expires_after[seconds]": "3599"},
        "expires_after.seconds",
        "integer_below_min_value",
    ),
    (
        "expiry above 30 days",
        {"expires_after[anchor]": "created_at", "expires_after[seconds]": "2592001"},
        "expires_after.seconds",
        "integer_above_max_value",
    ),
    (
        "expiry not a number",
        {"expires_after[anchor]": "created_at", "expires_after[seconds]": "soon"},
        "expires_after.seconds",
        "invalid_type",
    ),
    (
        "expiry other anchor",
        {"expires_after[anchor]": "last_used", "expires_after[seconds]": "3600"},
        "expires_after.anchor",
        "invalid_value",
    ),
    (
        "expiry without seconds",
        {"expires_after[anchor]": "created_at"},
        "expires_after.seconds",
        "missing_required_parameter",
    ),
    ("a field the spec forbids", {"purpose_hint": "x"}, "purpose_hint", "unknown_parameter"),
]


@pytest.mark.parametrize(
    ("fields", "param", "code"), [case[1:] for case in REFUSED_UPLOADS], ids=[case[0] for case in REFUSED_UPLOADS]
)
def test_upload_refuses_what_the_contract_refuses(http, openai_batch_emulator, fields, param, code):
    purpose = fields.pop("purpose", "batch")
    error = openai_error(http.upload(b"{}\n", purpose=purpose, **fields), 400)
    assert (error["param"], error["code"]) == (param, code), error
    assert openai_batch_emulator.stats()["files"] == 0


def test_a_batch_input_file_must_be_named_jsonl(http, openai_batch_emulator):
    for name in ("in.txt", "in.json", "in.jsonl.gz", "injsonl"):
        answer = http.session.post(f"{http.base}/files", files={"file": (name, b"{}\n")}, data={"purpose": "batch"})
        error = openai_error(answer, 400)
        assert error == {
            "message": "Invalid file format for Batch API. Must be .jsonl",
            "type": "invalid_request_error",
            "param": None,
            "code": None,
        }, name
    assert openai_batch_emulator.stats()["files"] == 0
    other = http.session.post(f"{http.base}/files", files={"file": ("notes.txt", b"x")}, data={"purpose": "user_data"})
    assert other.status_code == 200 and other.json()["filename"] == "notes.txt"  # the rule is batch input's only
    assert http.upload(b"{}\n").json()["filename"] == "in.jsonl"


def test_upload_needs_a_file_part_and_a_purpose(http):
    session, base = http.session, http.base
    error = openai_error(session.post(f"{base}/files", files={"purpose": (None, "batch")}), 400)  # multipart
    assert (error["param"], error["code"]) == ("file", "missing_required_parameter")
    error = openai_error(session.post(f"{base}/files", files={"file": ("a.jsonl", b"{}\n")}), 400)
    assert (error["param"], error["code"]) == ("purpose", "missing_required_parameter")
    as_text = session.post(f"{base}/files", files={"file": (None, "not a file part"), "purpose": (None, "batch")})
    assert openai_error(as_text, 400)["param"] == "file"


def test_upload_expiry_sets_expires_at_and_batch_files_default_to_30_days(http):
    mine = http.upload(
        b"{}\n", purpose="user_data", **{"expires_after[anchor]": "created_at", "expires_after[seconds]": "3600"}
    )
    assert mine.status_code == 200 and mine.json()["expires_at"] == mine.json()["created_at"] + 3600
    batch_file = http.upload(b"{}\n").json()
    assert batch_file["expires_at"] == batch_file["created_at"] + 30 * 86_400  # the spec's default for batch files
    kept = http.upload(b"{}\n", purpose="user_data").json()
    assert kept["expires_at"] is None


def test_the_official_sdk_sends_an_upload_expiry_the_emulator_understands(openai_batch_emulator):
    import openai

    sdk = openai.OpenAI(base_url=openai_batch_emulator.base_url, api_key="test-key", max_retries=0)
    uploaded = sdk.files.create(
        file=("in.jsonl", b"{}\n"), purpose="batch", expires_after={"anchor": "created_at", "seconds": 86_400}
    )
    assert uploaded.expires_at == uploaded.created_at + 86_400
    with pytest.raises(openai.BadRequestError, match="expires_after"):
        sdk.files.create(
            file=("in.jsonl", b"{}\n"), purpose="batch", expires_after={"anchor": "created_at", "seconds": 60}
        )


def test_upload_cap_is_512_mb(http, monkeypatch):
    from openai_batch_emulator.contract import guide

    assert guide.MAX_UPLOAD_BYTES == 512 * 1024 * 1024
    monkeypatch.setattr(guide, "MAX_UPLOAD_BYTES", 10)  # the same check, without sending 512 MB
    error = openai_error(http.upload(b"x" * 11), 400)
    assert (error["param"], error["code"]) == ("file", "file_too_large")
    assert http.upload(b"x" * 10).status_code == 200


# ------------------------------------------------------------------------------------------- input file


def failed_with(http: Http, data: bytes, endpoint: str = ENDPOINT) -> set[tuple[int | None, str]]:
    batch = http.wait(
        http.create_for(http.upload_id(data), endpoint).json()["id"],
        ("failed", "in_progress", "finalizing", "completed"),
    )
    if batch["status"] != "failed":
        return set()
    return {(e["line"], e["code"]) for e in batch["errors"]["data"]}


def test_input_lines_are_judged_by_the_line_schema_and_the_guide(http):
    lines: list[Any] = [
        request_line("a", body={}),  # no model, like every body here: one model per file holds
        "",  # blank lines are skipped but still counted in line numbers
        {"custom_id": 5, "method": "POST", "url": ENDPOINT, "body": {}},
        {"custom_id": "m", "url": ENDPOINT, "body": {}},
        {"custom_id": "u", "method": "POST", "body": {}},
        {"custom_id": "b", "method": "POST", "url": ENDPOINT},
        {"custom_id": "p", "method": "post", "url": ENDPOINT, "body": {}},
        ["not", "an", "object"],
        {"custom_id": "s", "method": "POST", "url": ENDPOINT, "body": "text"},
        # Python's json writes and reads NaN; JSON has no such value, and a strict parser refuses it.
        '{"custom_id": "n", "method": "POST", "url": "' + ENDPOINT + '", "body": {"temperature": NaN}}',
    ]
    assert failed_with(http, jsonl(lines)) == {
        (10, "invalid_json_line"),
        (3, "invalid_type"),
        (4, "missing_required_parameter"),
        (5, "missing_required_parameter"),
        (6, "missing_required_parameter"),
        (7, "invalid_method"),
        (8, "invalid_request"),
        (9, "invalid_body"),
    }


def test_input_lines_the_contract_allows_pass(http):
    lines: list[Any] = [
        # The body's content is the endpoint's business, judged per request later; its model is the file's.
        request_line("a", body={"model": "gpt-4o-mini"}),
        request_line("b", note="extra fields are not forbidden"),
        json.dumps(request_line("c")) + "\r",  # CRLF line ends
        "   ",
    ]
    assert failed_with(http, jsonl(lines)) == set()


def test_a_file_names_one_model(http):
    lines = [request_line("a"), request_line("b"), request_line("c", body={"model": "gpt-4o", "messages": []})]
    assert failed_with(http, jsonl(lines)) == {(3, "model_mismatch")}
    batch = http.wait(http.create_for(http.upload_id(jsonl(lines))).json()["id"])
    assert "'gpt-4o' differs from 'gpt-4o-mini' on line 1" in batch["errors"]["data"][0]["message"]
    assert batch["errors"]["data"][0]["param"] == "body.model"
    assert failed_with(http, jsonl(lines[:2])) == set()


def test_empty_file_fails(http):
    assert failed_with(http, b"\n \n") == {(None, "empty_file")}


def test_more_than_50000_requests_fail_and_50000_pass(http):
    line = json.dumps(request_line("x", body={})).encode()
    many = b"".join(line.replace(b'"x"', f'"{i}"'.encode()) + b"\n" for i in range(50_001))
    assert failed_with(http, many) == {(None, "too_many_requests")}
    assert failed_with(http, many[: many.rindex(b'{"custom_id"')]) == set()


def embedding(custom_id: str, value: Any) -> dict[str, Any]:
    return request_line(custom_id, url="/v1/embeddings", body={"model": "text-embedding-3-small", "input": value})


@pytest.mark.parametrize(
    ("inputs", "too_many"),
    [
        ([["s"] * 50_000], False),  # a list of strings: one input per string
        ([["s"] * 50_001], True),
        ([["s"] * 25_000, ["s"] * 25_001], True),  # counted across lines
        ([list(range(50_001))], False),  # a list of ints is ONE token-array input
        ([[[1]] * 50_001], True),  # a list of token arrays: one input per inner list
        ([[[1, 2, 3]] * 50_000, "one more"], True),
        ([[[1, 2, 3]] * 49_999, "one more"], False),
    ],
    ids=[
        "50000 strings",
        "50001 strings",
        "50001 over lines",
        "one token array",
        "50001 arrays",
        "50001 mixed",
        "50000 mixed",
    ],
)
def test_embedding_batches_count_inputs_as_the_api_does(http, inputs, too_many):
    data = jsonl([embedding(f"e{i}", value) for i, value in enumerate(inputs)])
    expected = {(None, "too_many_embedding_inputs")} if too_many else set()
    assert failed_with(http, data, "/v1/embeddings") == expected


def test_input_file_rules_in_bytes(monkeypatch):
    """The 200 MB rule, by the same function with a small limit (a 200 MB upload would only cost time)."""
    from openai_batch_emulator.contract import guide, judge_input_file

    assert guide.MAX_INPUT_BYTES == 200 * 1024 * 1024
    data = jsonl([request_line("a"), request_line("b")])
    monkeypatch.setattr(guide, "MAX_INPUT_BYTES", len(data) - 1)
    assert [(p.line, p.code) for p in judge_input_file(data, ENDPOINT).problems] == [(None, "file_too_large")]
    monkeypatch.setattr(guide, "MAX_INPUT_BYTES", len(data))
    report = judge_input_file(data, ENDPOINT)
    assert report.problems == [] and report.requests == 2


# ----------------------------------------------------------------------------------------------------- ids

# An id is one segment of the request path: nothing that would change the path is an id. Each is sent
# percent-encoded, exactly as written (as a client that does not check ids would send it).
NOT_IDS: list[tuple[str, str]] = [
    (".", "%2E"),
    ("..", "%2E%2E"),
    ("a/b", "a%2Fb"),
    ("a?b", "a%3Fb"),
    ("a#b", "a%23b"),
    ("a b", "a%20b"),
    ("tab", "a%09b"),
    ("newline", "batch_1%0A"),
]
ID_PATHS = [
    ("GET", "/batches/{}", "batch_id"),
    ("POST", "/batches/{}/cancel", "batch_id"),
    ("GET", "/files/{}", "file_id"),
    ("GET", "/files/{}/content", "file_id"),
    ("DELETE", "/files/{}", "file_id"),
]


@pytest.mark.parametrize("path", ID_PATHS, ids=[f"{m} {p}" for m, p, _ in ID_PATHS])
@pytest.mark.parametrize("sent", [case[1] for case in NOT_IDS], ids=[case[0] for case in NOT_IDS])
def test_a_path_segment_that_is_no_id_is_refused(http, path, sent):
    method, template, param = path
    error = openai_error(raw_path(http, method, template.format(sent)), 400)
    assert (error["param"], error["code"]) == (param, "invalid_value"), error
    assert "is not an ID" in error["message"]


@pytest.mark.parametrize("sent", ["batch_abc123", "batch_a.b", "batch_a..b", "b%C3%A4tch", "file-%25"])
def test_ids_that_change_no_path_are_looked_up(http, sent):
    error = openai_error(raw_path(http, "GET", f"/batches/{sent}"), 404)  # not refused: just unknown
    assert error["param"] == "batch_id"
    assert openai_error(raw_path(http, "GET", "/batches/a/b/c"), 404)["message"].startswith("Invalid URL")


@pytest.mark.parametrize("value", [case[0] if case[0] not in ("tab", "newline") else "a\tb" for case in NOT_IDS])
def test_ids_in_bodies_and_queries_are_judged_the_same(http, openai_batch_emulator, value):
    error = openai_error(http.create({"input_file_id": value, "endpoint": ENDPOINT, "completion_window": "24h"}), 400)
    assert (error["param"], error["code"]) == ("input_file_id", "invalid_value"), error
    for listing in ("/batches", "/files"):
        error = openai_error(http.get(listing, params={"after": value}), 400)
        assert (error["param"], error["code"]) == ("after", "invalid_value"), error
    assert openai_batch_emulator.stats()["batches_created"] == 0
