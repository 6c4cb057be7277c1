"""Partial results, as a large job meets them on the real API, over HTTP: a batch that expires part-way
(``expire_after_fraction``), requests that fail transiently and succeed when re-sent (``transient_failure_rate``,
``transient_failure_attempts``), and ``requests_completed`` in the stats, to prove nothing is billed twice."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from emulator_support import ENDED, Http, request_line
from openai_batch_emulator.__main__ import parse_args
from openai_batch_emulator.pytest_plugin import DEFAULTS
from openai_batch_emulator.testing import EmulatorHandle, run_emulator_process

SERVER_ERROR_BODY = {
    "error": {
        "message": "The server had an error while processing your request. Sorry about that!",
        "type": "server_error",
        "param": None,
        "code": None,
    }
}
RATE_LIMIT_BODY = {
    "error": {
        "message": "Rate limit reached for requests. Please try again later.",
        "type": "requests",
        "param": None,
        "code": "rate_limit_exceeded",
    }
}


@pytest.fixture
def http(openai_batch_emulator: EmulatorHandle) -> Http:
    return Http(openai_batch_emulator.base_url)


def ids(count: int, prefix: str = "r") -> list[str]:
    return [f"{prefix}{i}" for i in range(count)]


def run_batch(http: Http, custom_ids: list[str], model: str = "gpt-4o-mini") -> dict[str, Any]:
    """Upload one request per custom id (in this order), create a batch and wait for its end."""
    items = [request_line(c, body={"model": model, "messages": [{"role": "user", "content": c}]}) for c in custom_ids]
    created = http.create_for(http.upload_id(items))
    assert created.status_code == 200, created.text
    return http.wait(created.json()["id"])


def lines(http: Http, file_id: str | None) -> list[dict[str, Any]]:
    if file_id is None:
        return []
    response = http.get(f"/files/{file_id}/content")
    assert response.status_code == 200, response.text
    return [json.loads(text) for text in response.text.splitlines()]


def results(http: Http, batch: dict[str, Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    return lines(http, batch["output_file_id"]), lines(http, batch["error_file_id"])


def check_transient(line: dict[str, Any]) -> int:
    """Check a transient failure line's exact shape; return its status."""
    assert set(line) == {"id", "custom_id", "response", "error"} and line["error"] is None, line
    response = line["response"]
    assert set(response) == {"status_code", "request_id", "body"}, response
    assert line["id"].startswith("batch_req_") and response["request_id"].startswith("req_")
    status: int = response["status_code"]
    assert response["body"] == {500: SERVER_ERROR_BODY, 429: RATE_LIMIT_BODY}[status], response
    return status


def usage_of(lines_ok: list[dict[str, Any]]) -> tuple[int, int]:
    body_usage = [line["response"]["body"]["usage"] for line in lines_ok]
    return sum(u["prompt_tokens"] for u in body_usage), sum(u["completion_tokens"] for u in body_usage)


# ------------------------------------------------------------------------------------ expire_after_fraction


def test_a_batch_expires_after_the_configured_fraction(http, openai_batch_emulator):
    openai_batch_emulator.configure(expire_after_fraction=0.6)
    created = http.create_for(http.upload_id([request_line(c) for c in ids(10)])).json()
    seen_counts = []
    deadline = time.monotonic() + 30  # a generous bound; the batch takes about 0.2 s
    while (batch := http.get(f"/batches/{created['id']}").json())["status"] not in ENDED:
        seen_counts.append(batch["request_counts"]["completed"])
        assert time.monotonic() < deadline, batch
        time.sleep(0.01)
    assert all(count <= 6 for count in seen_counts), seen_counts  # never more done than the fraction
    assert batch["status"] == "expired" and batch["expired_at"] is not None and batch["completed_at"] is None
    done, unfinished = results(http, batch)
    # The first 60% in input order ran; the rest is in the error file as batch_expired.
    assert sorted(line["custom_id"] for line in done) == ids(6)
    assert all(line["response"]["status_code"] == 200 and line["error"] is None for line in done)
    assert sorted(line["custom_id"] for line in unfinished) == ids(10)[6:]
    assert all(line["response"] is None and line["error"]["code"] == "batch_expired" for line in unfinished), unfinished
    assert batch["request_counts"] == {"total": 10, "completed": 6, "failed": 4}
    prompt, completion = usage_of(done)
    assert batch["usage"]["input_tokens"] == prompt > 0 and batch["usage"]["output_tokens"] == completion > 0
    assert batch["usage"]["total_tokens"] == prompt + completion
    assert openai_batch_emulator.stats()["requests_completed"] == 6


@pytest.mark.parametrize(("fraction", "completed"), [(0.0, 0), (0.29, 2), (0.5, 5), (1.0, 10)])
def test_the_fraction_rounds_down_and_spans_zero_to_all(http, openai_batch_emulator, fraction, completed):
    openai_batch_emulator.configure(expire_after_fraction=fraction)
    batch = run_batch(http, ids(10))
    done, unfinished = results(http, batch)
    assert batch["status"] == "expired"
    assert batch["request_counts"] == {"total": 10, "completed": completed, "failed": 10 - completed}
    assert sorted(line["custom_id"] for line in done) == sorted(ids(completed))
    assert (batch["output_file_id"] is None) == (completed == 0) and (batch["error_file_id"] is None) == (
        completed == 10
    )
    assert len(unfinished) == 10 - completed
    if completed == 0:
        assert batch["usage"]["total_tokens"] == 0


def test_the_fraction_is_fixed_when_a_batch_is_created(http, openai_batch_emulator):
    openai_batch_emulator.configure(expire_after_fraction=0.5, phase_seconds=0.2)
    planned = http.create_for(http.upload_id([request_line(c) for c in ids(4)])).json()["id"]
    openai_batch_emulator.configure(expire_after_fraction=None)
    normal = http.create_for(http.upload_id([request_line(c) for c in ids(4, "n")])).json()["id"]
    expired, completed = http.wait(planned), http.wait(normal)
    assert expired["status"] == "expired" and expired["request_counts"]["completed"] == 2
    assert completed["status"] == "completed" and completed["request_counts"]["completed"] == 4


def test_the_completion_window_still_expires_batches(http, openai_batch_emulator):
    openai_batch_emulator.configure(phase_seconds=0.2, completion_window_seconds=0.25, expire_after_fraction=0.9)
    batch = run_batch(http, ids(8))
    done, unfinished = results(http, batch)
    # The window ends early in in_progress: less than the 90% the fraction would allow.
    assert batch["status"] == "expired" and len(done) < 7 and len(done) + len(unfinished) == 8
    assert {line["error"]["code"] for line in unfinished} == {"batch_expired"}


def test_a_forced_expiry_keeps_the_planned_fraction(http, openai_batch_emulator):
    openai_batch_emulator.configure(expire_after_fraction=0.25, phase_seconds=60)
    batch_id = http.create_for(http.upload_id([request_line(c) for c in ids(8)])).json()["id"]
    forced = openai_batch_emulator.force_status(batch_id, "expired")
    assert forced["status"] == "expired" and forced["request_counts"] == {"total": 8, "completed": 2, "failed": 6}


# ------------------------------------------------------------------------------------- transient failures


def test_every_request_fails_on_its_first_attempt_and_succeeds_when_resent(http, openai_batch_emulator):
    openai_batch_emulator.configure(transient_failure_attempts=1)
    first = run_batch(http, ids(20))
    done, failed = results(http, first)
    assert first["status"] == "completed" and done == [] and first["output_file_id"] is None
    assert first["request_counts"] == {"total": 20, "completed": 0, "failed": 20}
    assert first["usage"]["total_tokens"] == 0  # a transient failure is not billed
    statuses = [check_transient(line) for line in failed]
    assert set(statuses) == {500, 429}  # a mix, the same on every run (seed 0)
    assert openai_batch_emulator.stats()["requests_completed"] == 0

    # Only the failed requests, re-sent in a new batch, all succeed.
    second = run_batch(http, sorted(line["custom_id"] for line in failed))
    done, failed_again = results(http, second)
    assert failed_again == [] and sorted(line["custom_id"] for line in done) == sorted(ids(20))
    assert second["request_counts"] == {"total": 20, "completed": 20, "failed": 0}
    assert openai_batch_emulator.stats()["requests_completed"] == 20


def test_attempts_are_counted_per_custom_id_across_batches(http, openai_batch_emulator):
    openai_batch_emulator.configure(transient_failure_attempts=2)
    first_ids = {line["id"] for line in results(http, run_batch(http, ["a", "b"]))[1]}
    second = run_batch(http, ["a", "b", "c"])  # a and b on their 2nd attempt, c on its 1st
    assert second["request_counts"] == {"total": 3, "completed": 0, "failed": 3}
    second_lines = results(http, second)[1]
    assert not first_ids & {line["id"] for line in second_lines}  # each attempt's line has its own ids
    third = run_batch(http, ["a", "b", "c"])  # a and b succeed on their 3rd; c fails its 2nd
    done, failed = results(http, third)
    assert sorted(line["custom_id"] for line in done) == ["a", "b"] and [line["custom_id"] for line in failed] == ["c"]
    assert openai_batch_emulator.stats()["requests_completed"] == 2
    openai_batch_emulator.reset()  # forgets the attempts
    assert results(http, run_batch(http, ["a"]))[0] == []


def test_requests_that_never_ran_are_not_attempts(http, openai_batch_emulator):
    openai_batch_emulator.configure(transient_failure_attempts=1, expire_after_fraction=0.5)
    first = run_batch(http, ids(6))
    _, failed = results(http, first)
    assert first["status"] == "expired" and first["request_counts"] == {"total": 6, "completed": 0, "failed": 6}
    by_id = {line["custom_id"]: line for line in failed}
    assert all(check_transient(by_id[c]) in (500, 429) for c in ids(3))
    assert all(by_id[c]["error"]["code"] == "batch_expired" for c in ids(6)[3:])
    openai_batch_emulator.configure(expire_after_fraction=None)
    done, failed = results(http, run_batch(http, ids(6)))
    # r0-r2 ran once already and now succeed; r3-r5 run for the first time and fail.
    assert sorted(line["custom_id"] for line in done) == ids(3)
    assert sorted(line["custom_id"] for line in failed) == ids(6)[3:]
    assert all(check_transient(line) for line in failed)


def failed_ids(http: Http, custom_ids: list[str]) -> list[str]:
    batch = run_batch(http, custom_ids)
    done, failed = results(http, batch)
    assert batch["request_counts"] == {"total": len(custom_ids), "completed": len(done), "failed": len(failed)}
    assert all(check_transient(line) for line in failed)
    return sorted(line["custom_id"] for line in failed)


def test_the_transient_rate_is_deterministic_per_seed_and_redrawn_per_attempt(http, openai_batch_emulator):
    openai_batch_emulator.configure(transient_failure_rate=0.5, seed=11)
    first = failed_ids(http, ids(60))
    assert 10 < len(first) < 50  # about half, and the same on every run
    again = failed_ids(http, first)  # only the failed ones, re-sent: a new, independent draw
    assert 0 < len(again) < len(first)
    openai_batch_emulator.reset()
    assert failed_ids(http, ids(60)) == first  # the same seed and attempts: the same failures
    openai_batch_emulator.reset()
    openai_batch_emulator.configure(seed=12)
    assert failed_ids(http, ids(60)) != first


def test_a_rate_of_one_fails_everything_and_zero_nothing(http, openai_batch_emulator):
    openai_batch_emulator.configure(transient_failure_rate=1.0)
    assert failed_ids(http, ids(5)) == ids(5)
    openai_batch_emulator.configure(transient_failure_rate=0.0)
    assert failed_ids(http, ids(5)) == []


def test_permanent_failures_stay_a_400(http, openai_batch_emulator):
    batch = run_batch(http, ["bad"], model="fail-model")
    _, failed = results(http, batch)
    assert [line["response"]["status_code"] for line in failed] == [400]
    assert failed[0]["response"]["body"]["error"]["code"] == "model_not_found"
    assert openai_batch_emulator.stats()["requests_completed"] == 0


# -------------------------------------------------------------------------------------- requests_completed


def test_requests_completed_counts_2xx_lines_over_all_batches(http, openai_batch_emulator):
    assert openai_batch_emulator.stats()["requests_completed"] == 0
    run_batch(http, ids(3))
    run_batch(http, ["bad"], model="fail-model")
    run_batch(http, ids(2, "s"))
    stats = openai_batch_emulator.stats()
    assert stats["requests_completed"] == 5 and stats["batches_created"] == 3 and "requests" in stats
    openai_batch_emulator.reset()
    assert openai_batch_emulator.stats()["requests_completed"] == 0


# ---------------------------------------------------------------------------------- settings: PATCH, CLI, plugin


@pytest.mark.parametrize(
    "settings",
    [
        {"expire_after_fraction": 1.5},
        {"expire_after_fraction": -0.1},
        {"expire_after_fraction": "0.5"},
        {"expire_after_fraction": True},
        {"transient_failure_rate": 1.01},
        {"transient_failure_rate": None},
        {"transient_failure_attempts": 1.5},
        {"transient_failure_attempts": -1},
        {"transient_failure_attempts": True},
        {"transient_failure_attempts": 2, "transient_failure_rate": 3},
    ],
)
def test_bad_partial_result_settings_are_refused(http, settings):
    response = http.session.patch(f"{http.root}/_emulator/config", json=settings)
    assert response.status_code == 400, response.text
    assert any(name in response.json()["error"]["message"] for name in settings), response.text
    config = http.session.get(f"{http.root}/_emulator/config").json()
    assert config["expire_after_fraction"] is None and config["transient_failure_rate"] == 0.0
    assert config["transient_failure_attempts"] == 0


def test_good_settings_are_taken_and_shown(openai_batch_emulator):
    config = openai_batch_emulator.configure(
        expire_after_fraction=1, transient_failure_rate=0.25, transient_failure_attempts=3
    )
    assert config["expire_after_fraction"] == 1.0 and config["transient_failure_rate"] == 0.25
    assert config["transient_failure_attempts"] == 3
    assert openai_batch_emulator.configure(expire_after_fraction=None)["expire_after_fraction"] is None


def test_the_plugin_turns_partial_results_off_for_every_test(http):
    assert DEFAULTS["expire_after_fraction"] is None and DEFAULTS["transient_failure_rate"] == 0.0
    assert DEFAULTS["transient_failure_attempts"] == 0
    config = http.session.get(f"{http.root}/_emulator/config").json()
    assert {
        k: config[k] for k in ("expire_after_fraction", "transient_failure_rate", "transient_failure_attempts")
    } == {
        "expire_after_fraction": None,
        "transient_failure_rate": 0.0,
        "transient_failure_attempts": 0,
    }


def test_cli_flags():
    args = parse_args(
        ["--expire-after-fraction", "0.6", "--transient-failure-rate", "0.2", "--transient-failure-attempts", "2"]
    )
    assert (args.expire_after_fraction, args.transient_failure_rate, args.transient_failure_attempts) == (0.6, 0.2, 2)
    defaults = parse_args([])
    assert (defaults.expire_after_fraction, defaults.transient_failure_rate, defaults.transient_failure_attempts) == (
        None,
        0.0,
        0,
    )
    for bad in (
        ["--expire-after-fraction", "2"],
        ["--transient-failure-rate", "-1"],
        ["--transient-failure-attempts", "-1"],
    ):
        with pytest.raises(SystemExit):
            parse_args(bad)


def test_data_dir_keeps_attempts_and_requests_completed_across_restarts(tmp_path):
    with run_emulator_process(data_dir=tmp_path, phase_seconds=0.1, seed=0, transient_failure_attempts=1) as emulator:
        http = Http(emulator.base_url)
        assert failed_ids(http, ["a", "b"]) == ["a", "b"]  # 1st attempts
        emulator.restart()
        assert failed_ids(http, ["a", "b"]) == []  # 2nd attempts: the count survived the restart
        assert emulator.stats()["requests_completed"] == 2
        emulator.restart()
        assert emulator.stats()["requests_completed"] == 2
        # A batch created before a restart keeps its planned expiry too.
        emulator.configure(expire_after_fraction=0.5, phase_seconds=0.5, transient_failure_attempts=0)
        created = http.create_for(http.upload_id([request_line(c) for c in ids(4)])).json()["id"]
        emulator.restart()
        emulator.configure(transient_failure_attempts=0)  # a restart starts from the command line's settings
        batch = http.wait(created)
        assert batch["status"] == "expired" and batch["request_counts"] == {"total": 4, "completed": 2, "failed": 2}
        assert emulator.stats()["requests_completed"] == 4
