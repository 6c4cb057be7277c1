"""The emulator's front door: unknown routes and bad bodies answered like the real API, undecodable input files,
the ``slow`` fault that still processes, and faults a test can reproduce exactly (``seed``, ``fault_script``)."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
import requests
from emulator_support import ENDPOINT, Http, jsonl, openai_error, request_line
from openai_batch_emulator.pytest_plugin import DEFAULTS
from openai_batch_emulator.testing import run_emulator_process


@pytest.fixture
def http(openai_batch_emulator: Any) -> Http:
    return Http(openai_batch_emulator.base_url)


def admin_config(http: Http) -> dict[str, Any]:
    response = requests.get(f"{http.root}/_emulator/config", timeout=10)
    response.raise_for_status()
    result: dict[str, Any] = response.json()
    return result


# ------------------------------------------------------------------------------------ unknown routes


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/whatever"),
        ("GET", "/v1"),
        ("GET", "/v1/batches/batch_1/results"),
        ("POST", "/v1/batches/batch_1/cancel/now"),
        ("GET", "/v1/batches/"),
        ("DELETE", "/v1/batches"),  # a known path with a method it does not have
        ("PUT", "/v1/files/file-1"),
        ("GET", "/v1/batches/batch_1/cancel"),
        ("POST", "/v1/files/file-1/content"),
    ],
)
def test_unknown_routes_and_methods_get_the_real_apis_404(http, method, path):
    response = http.session.request(method, f"{http.root}{path}?limit=1")
    error = openai_error(response, 404)
    assert error == {
        "message": f"Invalid URL ({method} {path})",
        "type": "invalid_request_error",
        "param": None,
        "code": None,
    }


def test_paths_outside_v1_keep_their_own_answers(http):
    assert requests.get(f"{http.root}/_emulator/health", timeout=10).json() == {"ok": True}
    page = requests.get(f"{http.root}/batches/<b>", timeout=10)
    assert page.status_code == 404 and "text/html" in page.headers["content-type"] and "<b>" not in page.text


# --------------------------------------------------------------------------------------- bad bodies


@pytest.mark.parametrize(
    ("data", "content_type"),
    [
        (b'{"input_file_id": ', "application/json"),
        (b"", "application/json"),
        (b"\xff\xfe{}", "application/json"),
        (b'{"input_file_id": "file-1"}', "text/plain"),
        (b"input_file_id=file-1&endpoint=/v1/chat/completions", "application/x-www-form-urlencoded"),
        (b'[{"input_file_id": "file-1"}]', "application/json"),
        (b'"a string"', "application/json"),
        (b"null", "application/json"),
    ],
    ids=["cut short", "empty", "not utf-8", "text/plain", "form", "array", "string", "null"],
)
def test_create_with_a_body_that_is_not_a_json_object_gets_a_400(http, openai_batch_emulator, data, content_type):
    response = http.session.post(f"{http.base}/batches", data=data, headers={"Content-Type": content_type})
    error = openai_error(response, 400)
    assert error["code"] in (None, "invalid_type") and error["message"]
    assert openai_batch_emulator.stats()["batches_created"] == 0


@pytest.mark.parametrize(
    ("data", "content_type"),
    [
        (b'{"purpose": "batch"}', "application/json"),
        (b"--nope\r\nbroken", "multipart/form-data; boundary=other"),
        (b"purpose=batch", "application/x-www-form-urlencoded"),
    ],
    ids=["json", "broken multipart", "form"],
)
def test_upload_with_a_body_that_is_not_multipart_gets_a_400(http, openai_batch_emulator, data, content_type):
    response = http.session.post(f"{http.base}/files", data=data, headers={"Content-Type": content_type})
    assert openai_error(response, 400)["message"]
    assert openai_batch_emulator.stats()["files"] == 0


# ---------------------------------------------------------------------------------- invalid UTF-8


def test_an_input_file_with_invalid_utf8_fails_the_batch_and_nothing_else(http):
    good = http.create_for(http.upload_id([request_line("a")])).json()["id"]
    data = (
        jsonl([request_line("a")])
        + b'{"custom_id": "b\xff\xfe", "method": "POST", "url": "/v1/chat/completions", "body": {}}\n'
    )
    bad = http.create_for(http.upload_id(data)).json()["id"]
    batch = http.wait(bad)
    assert batch["status"] == "failed" and batch["failed_at"] is not None
    assert [(e["line"], e["code"]) for e in batch["errors"]["data"]] == [(2, "invalid_json_line")]
    assert "UTF-8" in batch["errors"]["data"][0]["message"]
    for _ in range(3):  # every later read keeps answering: retrieve, list, and the batch that was fine
        assert http.get(f"/batches/{bad}").status_code == 200
        listing = http.get("/batches?limit=100")
        assert listing.status_code == 200 and {b["id"] for b in listing.json()["data"]} == {good, bad}
    assert http.wait(good)["status"] == "completed"


def test_forcing_a_batch_with_undecodable_input_to_an_end_still_answers(http, openai_batch_emulator):
    openai_batch_emulator.configure(phase_seconds=60)
    data = b'{"custom_id": "\xff", "method": "POST", "url": "/v1/chat/completions", "body": {}}\n'
    batch_id = http.create_for(http.upload_id(data)).json()["id"]
    assert openai_batch_emulator.force_status(batch_id, "completed")["status"] == "completed"
    assert http.get("/batches").status_code == 200


# ------------------------------------------------------------------------------------------- slow


def test_a_slow_create_is_carried_out_after_its_client_gave_up(http, openai_batch_emulator):
    file_id = http.upload_id([request_line("a")])
    openai_batch_emulator.configure(fault_rate=1.0, fault_kinds=["slow"], slow_seconds=1.0)
    body = {"input_file_id": file_id, "endpoint": ENDPOINT, "completion_window": "24h"}
    started = time.monotonic()
    with pytest.raises(requests.exceptions.Timeout):
        http.session.post(f"{http.base}/batches", json=body, timeout=0.3)
    openai_batch_emulator.configure(fault_rate=0.0)
    assert openai_batch_emulator.stats()["faults"] == {"slow": 1}
    deadline = time.monotonic() + 30  # generous: the gateway holds it ~1 s, then processes it
    while openai_batch_emulator.stats()["batches_created"] == 0:
        assert time.monotonic() < deadline, "the slow-faulted create was never carried out"
        time.sleep(0.05)
    assert time.monotonic() - started >= 0.9
    assert [b["input_file_id"] for b in http.get("/batches").json()["data"]] == [file_id]


def test_a_patient_client_gets_the_slow_answer(http, openai_batch_emulator):
    file_id = http.upload_id([request_line("a")])
    openai_batch_emulator.configure(fault_script=["slow"], slow_seconds=0.3)
    started = time.monotonic()
    response = http.create_for(file_id)
    assert response.status_code == 200 and response.json()["object"] == "batch"
    assert time.monotonic() - started >= 0.3 and response.headers["x-request-id"].startswith("req_")


def test_a_slow_upload_keeps_its_whole_body(http, openai_batch_emulator):
    openai_batch_emulator.configure(fault_script=["slow"], slow_seconds=0.2)
    data = jsonl([request_line(f"r{i}") for i in range(2000)])
    uploaded = http.upload(data)
    assert uploaded.status_code == 200 and uploaded.json()["bytes"] == len(data)
    assert http.get(f"/files/{uploaded.json()['id']}/content").content == data


# ------------------------------------------------------------------------------------ determinism


def test_the_fault_script_decides_request_by_request(http, openai_batch_emulator):
    openai_batch_emulator.configure(fault_script=["500", "", "drop", "429", "slow"], slow_seconds=0.01)
    requests.get(f"{http.base}/batches", timeout=10)  # refused before the script: no key
    assert http.get("/batches").status_code == 500
    assert http.get("/batches").status_code == 200
    with pytest.raises(requests.ConnectionError):
        http.get("/batches")
    assert http.get("/batches").status_code == 429
    assert http.get("/batches").status_code == 200  # slow, then the real answer
    assert http.get("/batches").status_code == 200  # the script is used up; fault_rate is 0
    assert admin_config(http)["fault_script"] == []
    assert openai_batch_emulator.stats()["faults"] == {"500": 1, "drop": 1, "429": 1, "slow": 1}


def test_the_fault_script_comes_before_the_random_draw(http, openai_batch_emulator):
    openai_batch_emulator.configure(fault_rate=1.0, fault_kinds=["503"], fault_script=["", "500"])
    assert [http.get("/batches").status_code for _ in range(3)] == [200, 500, 503]


@pytest.mark.parametrize(("kind", "created"), [("500", 1), ("502", 1), ("503", 1), ("drop", 1), ("429", 0)])
def test_fault_after_processing_never_processes_a_429(http, openai_batch_emulator, kind, created):
    file_id = http.upload_id([request_line("a")])
    openai_batch_emulator.configure(fault_after_processing=True, fault_script=[kind])
    try:
        assert http.create_for(file_id).status_code == int(kind)
    except requests.ConnectionError:
        assert kind == "drop"
    assert openai_batch_emulator.stats()["batches_created"] == created  # a rate limiter never lets one through


def test_the_same_seed_gives_the_same_faults(http, openai_batch_emulator):
    def run() -> list[int]:
        openai_batch_emulator.configure(seed=1234, fault_rate=0.5, fault_kinds=["500", "503", "429"])
        return [http.get("/batches").status_code for _ in range(40)]

    first = run()
    assert set(first) == {200, 500, 503, 429}
    assert run() == first  # setting the seed re-seeds, so the sequence starts over
    openai_batch_emulator.configure(seed=99)
    assert [http.get("/batches").status_code for _ in range(40)] != first


@pytest.mark.parametrize(
    "settings",
    [{"fault_script": ["418"]}, {"fault_script": "500"}, {"fault_kinds": ["nope"]}, {"seed": "x"}, {"nope": 1}],
)
def test_bad_settings_are_refused(http, settings):
    response = requests.patch(f"{http.root}/_emulator/config", json=settings, timeout=10)
    assert response.status_code == 400 and "error" in response.json()
    assert admin_config(http)["fault_script"] == []


def test_the_plugin_resets_seed_and_script_for_every_test(http):
    assert DEFAULTS["seed"] == 0 and DEFAULTS["fault_script"] == []
    config = admin_config(http)
    assert config["seed"] == 0 and config["fault_script"] == []


def test_cli_seed_and_fault_script():
    from openai_batch_emulator.__main__ import parse_args

    args = parse_args(["--fault-script", "500,,drop,slow", "--seed", "3"])
    assert args.fault_script == ["500", "", "drop", "slow"] and args.seed == 3
    assert parse_args([]).fault_script == [] and parse_args(["--fault-script", ""]).fault_script == []
    with pytest.raises(SystemExit):
        parse_args(["--fault-script", "500,418"])
    with run_emulator_process(fault_script=["503", "", "429"], seed=5) as emulator:
        http = Http(emulator.base_url)
        assert [http.get("/batches").status_code for _ in range(4)] == [503, 200, 429, 200]
        config = requests.get(f"{http.root}/_emulator/config", timeout=10).json()
        assert config["seed"] == 5


def test_handle_configure_takes_seed_and_script(openai_batch_emulator):
    config = openai_batch_emulator.configure(seed=8, fault_script=["429"])
    assert config["seed"] == 8 and config["fault_script"] == ["429"]


# ----------------------------------------------------------------------------------- admin routes

ADMIN_KEY = "admin-canary-key-31c8"  # made up; never repeated in an answer
#: Every admin route but health, with a body it accepts.
GUARDED = [
    ("GET", "/_emulator/config", None),
    ("PATCH", "/_emulator/config", {"api_key": None}),  # switching the key off: the attack itself
    ("GET", "/_emulator/stats", None),
    ("POST", "/_emulator/reset", None),
    ("POST", "/_emulator/batches/batch_x/status", {"status": "completed"}),
]


@pytest.mark.parametrize("flavor", ["openai", "azure"])
@pytest.mark.parametrize(("method", "path", "body"), GUARDED)
def test_with_a_key_set_every_admin_route_needs_it(openai_batch_emulator, flavor, method, path, body):
    openai_batch_emulator.configure(flavor=flavor, api_key=ADMIN_KEY)
    root = openai_batch_emulator.root
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"api-key": "wrong"}, {"Authorization": ADMIN_KEY}):
        answer = requests.request(method, root + path, json=body, headers=headers, timeout=10)
        assert answer.status_code == 401, (headers, answer.text)
        assert "admin routes need its key" in answer.json()["error"]["message"] and ADMIN_KEY not in answer.text
    # The key is still on: the API refuses another one, and the settings are as they were.
    wrong = requests.get(openai_batch_emulator.base_url + "/batches", headers={"api-key": "x", "Authorization": "x"})
    assert wrong.status_code == 401
    assert openai_batch_emulator.configure()["api_key"] == "set"
    for headers in ({"Authorization": f"Bearer {ADMIN_KEY}"}, {"api-key": ADMIN_KEY}):
        answer = requests.request(method, root + path, json=body, headers=headers, timeout=10)
        assert answer.status_code != 401, answer.text
        openai_batch_emulator.configure(api_key=ADMIN_KEY)  # the PATCH above may have switched it off


def test_health_stays_open_and_without_a_key_every_admin_route_is_open(openai_batch_emulator):
    root = openai_batch_emulator.root
    assert [requests.request(m, root + p, json=b, timeout=10).status_code for m, p, b in GUARDED[:4]] == [200] * 4
    openai_batch_emulator.configure(api_key=ADMIN_KEY)
    assert requests.get(f"{root}/_emulator/health", timeout=10).json() == {"ok": True}


def test_the_handle_sends_the_key_it_set_and_a_process_its_pinned_key(openai_batch_emulator):
    openai_batch_emulator.configure(api_key=ADMIN_KEY)
    assert openai_batch_emulator.stats()["batches"] == 0  # admin calls carry the key now
    openai_batch_emulator.reset()
    assert openai_batch_emulator.configure(api_key=None)["api_key"] is None
    with run_emulator_process(api_key=ADMIN_KEY) as emulator:
        assert requests.get(f"{emulator.root}/_emulator/stats", timeout=10).status_code == 401
        assert emulator.configure(fault_rate=0.0)["api_key"] == "set" and emulator.stats()["batches"] == 0
        assert emulator.api_key == ADMIN_KEY  # and the connections it builds send it to the API


@pytest.mark.parametrize(
    ("host", "warned"),
    [
        ("127.0.0.1", False),
        ("127.0.0.2", False),
        ("localhost", False),
        ("::1", False),
        ("[::1]", False),
        ("0.0.0.0", True),
        ("::", True),
        ("192.168.1.20", True),
        ("emulator.internal", True),
    ],
)
def test_listening_beyond_loopback_without_a_key_is_warned_about(host, warned):
    from openai_batch_emulator.__main__ import exposure_warning

    assert (exposure_warning(host, None) is not None) is warned
    assert exposure_warning(host, "a-key") is None


def test_the_cli_prints_the_warning(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]):
    import uvicorn
    from openai_batch_emulator.__main__ import main

    monkeypatch.setattr(uvicorn.Server, "run", lambda self: None)  # parse, build and warn; never bind
    assert main(["--host", "0.0.0.0", "--port", "8089"]) == 0
    assert "Warning: listening on 0.0.0.0 without --api-key" in capsys.readouterr().err
    assert main(["--host", "0.0.0.0", "--port", "8089", "--api-key", ADMIN_KEY]) == 0
    assert main(["--port", "8089"]) == 0
    assert "Warning" not in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ layout


def test_each_concern_has_its_own_module():
    import inspect

    from openai_batch_emulator import app, contract, faults, gateway, results
    from openai_batch_emulator.routes import admin, batches, files, page

    assert callable(gateway.Gateway) and callable(faults.FaultInjector) and callable(contract.judge_input_file)
    assert all(hasattr(module, "router") for module in (admin, batches, files, page)) and results
    assert len(inspect.getsource(app.create_app).splitlines()) <= 40  # wiring only


def test_public_surface_stays(tmp_path):
    from openai_batch_emulator.app import create_app
    from openai_batch_emulator.store import EmulatorConfig

    app = create_app(EmulatorConfig(), data_dir=str(tmp_path), seed=3)
    assert app.state.store.config.seed == 3 and (tmp_path / "contents").is_dir()


def test_stats_keys(openai_batch_emulator):
    assert set(openai_batch_emulator.stats()) == {
        "requests",
        "faults",
        "batches_created",
        "files_created",
        "files_uploaded",
        "requests_completed",
        "auth",
        "bearer_digests",
        "batches",
        "files",
    }


def test_error_list_shape_on_a_failed_validation(http):
    batch = http.wait(http.create_for(http.upload_id(b"not json\n")).json()["id"])
    assert batch["errors"]["object"] == "list"
    assert set(batch["errors"]["data"][0]) == {"code", "message", "param", "line"}
    assert json.dumps(batch)  # plain JSON all the way
