"""How a wait ends besides the batch ending: at its deadline (during an outage too) and on a user's kill."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace
from typing import Any

import pytest
import requests

from airflow_provider_openai_batch.testing import connection_json
from airflow_provider_openai_batch.triggers import batch as trigger_module
from airflow_provider_openai_batch.triggers.batch import BatchTrigger
from tests.helpers import make_batch, run


def outage(handle: Any, monkeypatch: pytest.MonkeyPatch) -> str:
    """A batch, then an API that answers every request with a 503, without retries inside a poll."""
    batch_id = make_batch(handle)
    monkeypatch.setenv("AIRFLOW_CONN_OPENAI_DEFAULT", connection_json(handle, {"max_retries": 0}))
    handle.configure(fault_rate=1.0, fault_kinds=["503"])
    return batch_id


def test_an_outage_at_the_deadline_ends_in_a_timeout_with_the_cancel_tried(openai_batch_connection, monkeypatch):
    batch_id = outage(openai_batch_connection, monkeypatch)
    # Errors alone would end the wait after 60 failed polls, 3 s of pauses at least: the deadline comes first.
    trigger = BatchTrigger(
        batch_id, poll_interval=0.05, end_time=time.time() + 1, cancel_on_timeout=True, max_consecutive_errors=60
    )
    payload = run(trigger)
    assert payload["status"] == "timeout", payload
    assert "deadline" in payload["message"] and "503" in payload["message"]
    assert payload["batch"] is None  # never seen: every check failed
    requests_made = openai_batch_connection.stats()["requests"]
    assert requests_made["POST /v1/batches/{id}/cancel"] == 1  # tried, failed quietly in the outage


def test_a_long_back_off_does_not_sleep_past_the_deadline(openai_batch_connection, monkeypatch):
    batch_id = outage(openai_batch_connection, monkeypatch)
    monkeypatch.setattr(trigger_module, "LAST_LOOK_SECONDS", 0.5)
    # Back-off between failed polls: 2, 4, 8, 16 s, so errors alone would end the wait after 30 s.
    started = time.monotonic()
    payload = run(BatchTrigger(batch_id, poll_interval=60, end_time=time.time() + 1, max_consecutive_errors=5))
    assert payload["status"] == "timeout", payload
    assert time.monotonic() - started < 20  # generous: the back-off alone would take 30 s


def test_retries_inside_a_poll_stop_at_the_deadline(openai_batch_connection, monkeypatch):
    batch_id = make_batch(openai_batch_connection)
    monkeypatch.setenv("AIRFLOW_CONN_OPENAI_DEFAULT", connection_json(openai_batch_connection, {"max_retries": 20}))
    openai_batch_connection.configure(fault_rate=1.0, fault_kinds=["429"], retry_after=30)  # 20 x 30 s of retries
    monkeypatch.setattr(trigger_module, "LAST_LOOK_SECONDS", 0.5)
    started = time.monotonic()
    payload = run(BatchTrigger(batch_id, poll_interval=0.05, end_time=time.time() + 1))
    assert payload["status"] == "timeout", payload
    assert time.monotonic() - started < 20  # one retry alone would wait 30 s


def test_a_batch_seen_before_the_outage_is_reported_at_the_deadline(openai_batch_connection, monkeypatch):
    openai_batch_connection.configure(phase_seconds=30)
    batch_id = make_batch(openai_batch_connection)
    monkeypatch.setenv("AIRFLOW_CONN_OPENAI_DEFAULT", connection_json(openai_batch_connection, {"max_retries": 0}))
    monkeypatch.setattr(trigger_module, "LAST_LOOK_SECONDS", 0.5)

    async def scenario() -> dict:
        trigger = BatchTrigger(batch_id, poll_interval=0.05, end_time=time.time() + 1.5, max_consecutive_errors=100)
        waiting = asyncio.ensure_future(trigger.run().__anext__())
        await asyncio.sleep(0.5)  # seen as validating by now
        await asyncio.to_thread(openai_batch_connection.configure, fault_rate=1.0, fault_kinds=["503"])
        event = await asyncio.wait_for(waiting, 60)
        await trigger.cleanup()
        return event.payload

    payload = asyncio.run(scenario())
    assert payload["status"] == "timeout" and payload["batch"]["status"] == "validating"
    assert "was still validating at the deadline" in payload["message"]


def test_a_trigger_started_after_its_deadline_still_looks_once(openai_batch_connection):
    """A triggerer restarted after the deadline: a batch that ended meanwhile is reported as ended."""
    batch_id = make_batch(openai_batch_connection)
    openai_batch_connection.force_status(batch_id, "completed")
    payload = run(BatchTrigger(batch_id, poll_interval=0.05, end_time=time.time() - 60))
    assert payload["status"] == "terminal" and payload["batch"]["status"] == "completed"


# ------------------------------------------------------------------------------------------------ on_kill


class FakeComms:
    """The triggerer's channel to its supervisor, answering GetTaskStates as the API server would."""

    def __init__(self, states: dict[str, Any] | Exception) -> None:
        self.states = states
        self.sent: list[Any] = []

    def send(self, msg: Any) -> Any:
        from airflow.sdk.execution_time.comms import TaskStatesResult

        self.sent.append(msg)
        if isinstance(self.states, Exception):
            raise self.states
        return TaskStatesResult(task_states=self.states)


def batch_status(handle: Any, batch_id: str) -> str:
    answer = requests.get(f"{handle.base_url}/batches/{batch_id}", headers={"Authorization": "Bearer k"}, timeout=10)
    return answer.json()["status"]


def kill(handle: Any, monkeypatch: pytest.MonkeyPatch, comms: Any, map_index: int = -1, **kwargs: Any) -> str:
    """Kill a deferred task's trigger as the triggerer does; return the batch's status afterwards."""
    from airflow.sdk.execution_time import task_runner

    handle.configure(phase_seconds=30)
    batch_id = make_batch(handle)
    monkeypatch.setattr(task_runner, "SUPERVISOR_COMMS", comms, raising=False)
    trigger = BatchTrigger(batch_id, **{"cancel_on_kill": True, **kwargs})
    trigger.task_instance = SimpleNamespace(dag_id="dag", task_id="wait", run_id="manual__1", map_index=map_index)
    asyncio.run(trigger.on_kill())
    return batch_status(handle, batch_id)


@pytest.mark.parametrize(
    ("state", "expected"),
    [
        ("success", "validating"),  # marked success: the results are still wanted
        ("deferred", "validating"),  # moved to another triggerer, or already waiting again
        ("failed", "cancelling"),  # marked failed
        (None, "cancelling"),  # cleared
        ("scheduled", "cancelling"),  # cleared, and the new try is on its way
    ],
)
def test_on_kill_cancels_unless_the_task_was_marked_success(openai_batch_connection, monkeypatch, state, expected):
    comms = FakeComms({"manual__1": {"wait": state, "other": "failed"}})
    assert kill(openai_batch_connection, monkeypatch, comms) == expected
    (asked,) = comms.sent
    assert (asked.dag_id, asked.task_ids, asked.run_ids, asked.map_index) == ("dag", ["wait"], ["manual__1"], None)


def test_on_kill_reads_the_state_of_its_own_mapped_task_instance(openai_batch_connection, monkeypatch):
    comms = FakeComms({"manual__1": {"wait_2": "failed", "wait_3": "success"}})
    assert kill(openai_batch_connection, monkeypatch, comms, map_index=3) == "validating"
    assert comms.sent[0].map_index == 3


def test_on_kill_cancels_as_asked_when_the_state_cannot_be_read(openai_batch_connection, monkeypatch):
    assert kill(openai_batch_connection, monkeypatch, FakeComms(RuntimeError("supervisor gone"))) == "cancelling"


def test_on_kill_without_cancel_on_kill_asks_nothing(openai_batch_connection, monkeypatch):
    comms = FakeComms({"manual__1": {"wait": "failed"}})
    assert kill(openai_batch_connection, monkeypatch, comms, cancel_on_kill=False) == "validating"
    assert comms.sent == []
