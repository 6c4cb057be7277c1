"""BatchTrigger over real sockets against the emulator: every ending, faults, restarts and on_kill."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
import requests

from airflow_provider_openai_batch.testing import connection_json
from airflow_provider_openai_batch.triggers.batch import BatchTrigger
from tests.helpers import events, make_batch, run


def test_serialization_round_trip_is_json_primitives():
    trigger = BatchTrigger("batch_1", "c", 5, end_time=123.5, cancel_on_timeout=True, cancel_on_kill=True)
    path, kwargs = trigger.serialize()
    assert path == "airflow_provider_openai_batch.triggers.batch.BatchTrigger"

    def primitive(value: object) -> bool:
        if isinstance(value, list):
            return all(map(primitive, value))
        if isinstance(value, dict):
            return all(isinstance(k, str) and primitive(v) for k, v in value.items())
        return value is None or type(value) in (str, int, float, bool)

    assert all(primitive(value) for value in kwargs.values())
    assert json.loads(json.dumps(kwargs)) == kwargs
    revived = BatchTrigger(**json.loads(json.dumps(kwargs)))  # as the metadata DB hands them back
    assert revived.serialize() == (path, kwargs)
    assert BatchTrigger(**BatchTrigger("batch_1").serialize()[1]).serialize() == BatchTrigger("batch_1").serialize()


def test_completed(openai_batch_connection):
    payload = run(BatchTrigger(make_batch(openai_batch_connection), poll_interval=0.05))
    assert payload["status"] == "terminal"
    assert payload["batch"]["status"] == "completed" and payload["batch"]["request_counts"]["completed"] == 3


def test_partial_failure_reports_counts(openai_batch_connection):
    payload = run(BatchTrigger(make_batch(openai_batch_connection, fail_first=True), poll_interval=0.05))
    assert payload["batch"]["request_counts"] == {"total": 3, "completed": 2, "failed": 1}
    assert payload["batch"]["error_file_id"]


@pytest.mark.parametrize("status", ["failed", "expired", "cancelled"])
def test_unsuccessful_endings(openai_batch_connection, status):
    openai_batch_connection.configure(phase_seconds=30)
    batch_id = make_batch(openai_batch_connection)
    openai_batch_connection.force_status(batch_id, status)
    payload = run(BatchTrigger(batch_id, poll_interval=0.05))
    assert (payload["status"], payload["batch"]["status"]) == ("terminal", status)


def test_transient_faults_are_survived(openai_batch_connection, monkeypatch):
    # One retry inside a poll (max_retries=1), so two faults in a row fail a poll and the trigger's own
    # back-off takes over: both layers are exercised, each at most once in a row, so the random back-off
    # stays under a second per fault and a slow machine only makes the run slower, never different.
    monkeypatch.setenv("AIRFLOW_CONN_OPENAI_DEFAULT", connection_json(openai_batch_connection, {"max_retries": 1}))
    openai_batch_connection.configure(phase_seconds=30, retry_after=0.05)  # ends when the test says so
    batch_id = make_batch(openai_batch_connection)
    script = ["500", "", "503", "drop", "", "429", "", "502", "502", ""]
    openai_batch_connection.configure(fault_script=script)

    async def scenario() -> list:
        waiting = asyncio.ensure_future(events(BatchTrigger(batch_id, poll_interval=0.05), timeout=120))
        while (await asyncio.to_thread(openai_batch_connection.configure))["fault_script"]:
            await asyncio.sleep(0.05)  # every scripted fault has been met
        await asyncio.to_thread(openai_batch_connection.force_status, batch_id, "completed")
        return await waiting

    (event,) = asyncio.run(scenario())
    assert event.payload["status"] == "terminal" and event.payload["batch"]["status"] == "completed"
    assert openai_batch_connection.stats()["faults"] == {"500": 1, "503": 1, "drop": 1, "429": 1, "502": 2}


def test_persistent_failure_ends_with_an_error_event(openai_batch_connection, monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_OPENAI_DEFAULT", connection_json(openai_batch_connection, {"max_retries": 0}))
    batch_id = make_batch(openai_batch_connection)
    openai_batch_connection.configure(fault_rate=1.0, fault_kinds=["503"])
    payload = run(BatchTrigger(batch_id, poll_interval=0.01, max_consecutive_errors=3))
    assert payload["status"] == "error" and "503" in payload["message"]
    assert openai_batch_connection.stats()["requests"]["GET /v1/batches/{id}"] == 3
    # A permanent error (404) ends the wait at once.
    openai_batch_connection.configure(fault_rate=0.0)
    payload = run(BatchTrigger("batch_missing", poll_interval=0.01))
    assert payload["status"] == "error" and "404" in payload["message"]


def test_deadline_survives_a_triggerer_restart(openai_batch_connection):
    openai_batch_connection.configure(phase_seconds=30)
    batch_id = make_batch(openai_batch_connection)
    end_time = time.time() + 2
    first = BatchTrigger(batch_id, poll_interval=0.1, end_time=end_time, cancel_on_timeout=True)

    async def interrupted() -> None:
        task = asyncio.ensure_future(events(first))
        await asyncio.sleep(0.3)
        task.cancel()  # the triggerer dies mid-wait

    asyncio.run(interrupted())
    _, kwargs = first.serialize()
    revived = BatchTrigger(**kwargs)  # a new triggerer rebuilds it from the serialized kwargs
    assert revived.end_time == end_time  # the original deadline, not a new one
    payload = run(revived)
    assert payload["status"] == "timeout" and time.time() >= end_time
    assert payload["batch"]["status"] == "cancelling"  # cancel_on_timeout


def test_on_kill_cancels_only_when_asked(openai_batch_connection):
    openai_batch_connection.configure(phase_seconds=30)
    keep, stop = make_batch(openai_batch_connection), make_batch(openai_batch_connection)
    asyncio.run(BatchTrigger(keep).on_kill())
    asyncio.run(BatchTrigger(stop, cancel_on_kill=True).on_kill())
    statuses = {
        b["id"]: b["status"]
        for b in requests.get(
            f"{openai_batch_connection.base_url}/batches", headers={"Authorization": "Bearer k"}
        ).json()["data"]
    }
    assert statuses == {keep: "validating", stop: "cancelling"}


def test_one_http_session_per_event_loop(openai_batch_connection):
    from airflow_provider_openai_batch.hooks.async_client import close_shared_session, shared_session

    async def sessions() -> tuple:
        both = shared_session(), shared_session()
        await close_shared_session()
        return both

    first, second = asyncio.run(sessions())
    assert first is second and first.closed
    assert asyncio.run(sessions())[0] is not first


def test_on_kill_without_a_usable_connection_does_not_raise(monkeypatch):
    monkeypatch.delenv("AIRFLOW_CONN_NOWHERE", raising=False)
    asyncio.run(BatchTrigger("batch_1", conn_id="nowhere", cancel_on_kill=True).on_kill())  # logged, not raised


def test_the_async_client_uses_the_proxy_requests_would(monkeypatch):
    from airflow_provider_openai_batch.hooks.async_client import env_proxy

    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.internal:3128")
    monkeypatch.setenv("HTTP_PROXY", "http://proxy.internal:3128")
    monkeypatch.setenv("NO_PROXY", "localhost,127.0.0.1")
    env_proxy.cache_clear()
    try:
        assert env_proxy("https://api.openai.com/v1") == "http://proxy.internal:3128"
        assert env_proxy("http://127.0.0.1:8089/v1") is None  # NO_PROXY
    finally:
        env_proxy.cache_clear()
