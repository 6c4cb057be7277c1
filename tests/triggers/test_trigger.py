"""BatchTrigger over real sockets against the emulator: every ending, faults, restarts and on_kill."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
import requests

from airflow_provider_openai_batch.triggers.batch import BatchTrigger
from tests.helpers import events, make_batch, run


def test_serialization_round_trip_is_json_primitives():
    trigger = BatchTrigger("batch_1", "c", 5, end_time=123.5, cancel_on_timeout=True, cancel_on_kill=True)
    path, kwargs = trigger.serialize()
    assert path == "airflow_provider_openai_batch.triggers.batch.BatchTrigger"
    assert json.loads(json.dumps(kwargs)) == kwargs
    assert BatchTrigger(**kwargs).serialize() == (path, kwargs)


def test_completed(openai_batch_connection):
    payload = run(BatchTrigger(make_batch(openai_batch_connection), poll_interval=0.05))
    assert payload["status"] == "terminal"
    assert payload["batch"]["status"] == "completed" and payload["batch"]["request_counts"]["completed"] == 3


def test_partial_failure_reports_counts(openai_batch_connection):
    payload = run(BatchTrigger(make_batch(openai_batch_connection, model="fail-x"), poll_interval=0.05))
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
    monkeypatch.setenv("AIRFLOW_CONN_OPENAI_DEFAULT", openai_batch_connection.connection_json({"max_retries": 8}))
    batch_id = make_batch(openai_batch_connection)
    openai_batch_connection.configure(
        fault_rate=0.5, retry_after=0.05, fault_kinds=["429", "500", "502", "503", "drop"]
    )
    payload = run(BatchTrigger(batch_id, poll_interval=0.05))
    assert payload["batch"]["status"] == "completed"
    assert sum(openai_batch_connection.stats()["faults"].values()) > 0


def test_persistent_failure_ends_with_an_error_event(openai_batch_connection, monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_OPENAI_DEFAULT", openai_batch_connection.connection_json({"max_retries": 0}))
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
    end_time = time.time() + 0.6
    first = BatchTrigger(batch_id, poll_interval=0.1, end_time=end_time, cancel_on_timeout=True)

    async def interrupted() -> None:
        task = asyncio.ensure_future(events(first))
        await asyncio.sleep(0.3)
        task.cancel()  # the triggerer dies mid-wait

    asyncio.run(interrupted())
    _, kwargs = first.serialize()
    revived = BatchTrigger(**kwargs)  # a new triggerer rebuilds it from the serialized kwargs
    assert revived.end_time == end_time
    started = time.time()
    payload = run(revived)
    assert payload["status"] == "timeout" and time.time() - started < 0.6  # the original deadline, not a new one
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
    from airflow_provider_openai_batch.hooks.async_client import shared_session

    async def sessions() -> tuple:
        return shared_session(), shared_session()

    first, second = asyncio.run(sessions())
    assert first is second
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
