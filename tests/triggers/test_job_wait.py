"""One wait for several batches (a job's shards, or a sensor given a list): the trigger polls each unfinished
batch through its one retrieval method and ends when any, or all, ended; a job may ask to be woken."""

from __future__ import annotations

import json
import time

import pytest
from airflow.sdk.exceptions import AirflowFailException, TaskDeferred

from airflow_provider_openai_batch.sensors.batch import BatchSensor
from airflow_provider_openai_batch.triggers.batch import BatchTrigger
from tests.helpers import ctx, make_batch, run


def test_a_job_trigger_serializes_with_its_batches_and_revives(openai_batch_connection):
    trigger = BatchTrigger(batch_ids=["b1", "b2"], wake_on="all", wake_at=123.0, progress={"batches_total": 5})
    path, kwargs = trigger.serialize()
    revived = BatchTrigger(**json.loads(json.dumps(kwargs)))
    assert revived.serialize() == (path, kwargs)
    assert revived.batch_ids == ["b1", "b2"] and revived.wake_at == 123.0 and revived.wake_on == "all"


@pytest.mark.parametrize(
    ("earlier", "wake_on"),
    [
        ({"batch_id": "b1", "conn_id": "c", "poll_interval": 5.0, "end_time": None}, "all"),
        ({"batch_id": "b1", "batch_ids": ["b1", "b2"], "wake_on_any": True, "job": {"batches_total": 3}}, "any"),
        ({"batch_id": "b1", "batch_ids": ["b1"], "wake_on_any": False, "wake_when_admitted": True}, "admitted"),
        ({"batch_id": "b1", "batch_ids": ["b1"], "wake_on_any": False, "resume": {"job": {}}}, "all"),
    ],
)
def test_a_trigger_serialized_by_the_previous_release_revives_in_the_one_shape(earlier, wake_on):
    """A task deferred before an upgrade: the triggerer rebuilds its trigger from the kwargs stored then."""
    revived = BatchTrigger(**earlier)
    assert revived.wake_on == wake_on and revived.batch_ids == earlier.get("batch_ids", ["b1"])
    assert set(revived.serialize()[1]) == set(BatchTrigger("x").serialize()[1])


def test_any_end_wakes_the_job_with_every_batch_as_last_seen(openai_batch_connection):
    openai_batch_connection.configure(phase_seconds=30)
    fast, slow = make_batch(openai_batch_connection), make_batch(openai_batch_connection)
    openai_batch_connection.force_status(fast, "completed")
    payload = run(BatchTrigger(poll_interval=0.05, batch_ids=[slow, fast], wake_on="any"))
    assert payload["status"] == "terminal" and payload["batch_id"] == fast
    assert {b["id"]: b["status"] for b in payload["batches"]}[slow] in ("validating", "in_progress")


def test_wait_for_all_ends_when_the_last_one_ends(openai_batch_connection):
    ids = [make_batch(openai_batch_connection) for _ in range(3)]
    payload = run(BatchTrigger(poll_interval=0.05, batch_ids=ids, wake_on="all"))
    assert payload["status"] == "terminal"
    assert sorted(b["id"] for b in payload["batches"]) == sorted(ids)
    assert {b["status"] for b in payload["batches"]} == {"completed"}


def test_a_failed_batch_ends_a_wait_for_all_at_once(openai_batch_connection):
    openai_batch_connection.configure(phase_seconds=30)
    running = make_batch(openai_batch_connection)
    failing = make_batch(openai_batch_connection)
    openai_batch_connection.force_status(failing, "failed")
    payload = run(BatchTrigger(poll_interval=0.05, batch_ids=[running, failing], wake_on="all"))
    assert payload["status"] == "terminal" and payload["batch"]["status"] == "failed"


def test_a_job_is_woken_when_a_back_off_is_over_with_nothing_running(openai_batch_connection):
    start = time.time()
    payload = run(BatchTrigger(poll_interval=0.05, batch_ids=[], wake_at=start + 0.3))
    assert payload["status"] == "wake", payload
    assert payload["batches"] == [] and time.time() >= start + 0.3


def test_a_job_wait_with_no_batch_and_no_wake_time_ends_at_once(openai_batch_connection):
    # Nothing to watch and no back-off to wait out: without this the wait could never end (no deadline either).
    trigger = BatchTrigger(poll_interval=0.05, batch_ids=[], wake_on="any", wake_at=None, progress={})
    payload = run(BatchTrigger(**json.loads(json.dumps(trigger.serialize()[1]))))
    assert payload["status"] == "wake" and payload["batches"] == []


def test_every_unfinished_batch_is_read_through_the_one_retrieval_method(openai_batch_connection):
    ids = [make_batch(openai_batch_connection) for _ in range(2)]
    read: list[str] = []
    trigger = BatchTrigger(poll_interval=0.05, batch_ids=ids, wake_on="all")
    original = trigger._retrieve

    async def counting(client, batch_id):
        read.append(batch_id)
        return await original(client, batch_id)

    trigger._retrieve = counting  # type: ignore[method-assign]
    run(trigger)
    assert set(read) == set(ids)


def test_the_sensor_waits_for_a_list_of_batches_and_returns_them_all(openai_batch_connection):
    ids = [make_batch(openai_batch_connection) for _ in range(2)]
    sensor = BatchSensor(task_id="wait", batch_id=json.dumps(ids), poll_interval=0.05, deferrable=False)
    result = sensor.execute(ctx())
    assert [b["id"] for b in result] == ids and {b["status"] for b in result} == {"completed"}


def test_the_sensor_defers_once_for_a_list_and_judges_each(openai_batch_connection):
    openai_batch_connection.configure(phase_seconds=0.3)
    ids = [make_batch(openai_batch_connection) for _ in range(2)]
    sensor = BatchSensor(task_id="wait", batch_id=ids, poll_interval=0.05)
    with pytest.raises(TaskDeferred) as deferred:
        sensor.execute(ctx())
    trigger = deferred.value.trigger
    assert trigger.batch_ids == ids and trigger.wake_on == "all"
    batches = sensor.execute_complete(ctx(), run(trigger))
    assert [b["id"] for b in batches] == ids and {b["status"] for b in batches} == {"completed"}


def test_the_sensor_fails_for_a_failed_batch_among_several(openai_batch_connection):
    openai_batch_connection.configure(phase_seconds=30)
    ids = [make_batch(openai_batch_connection) for _ in range(2)]
    openai_batch_connection.force_status(ids[1], "failed")
    with pytest.raises(AirflowFailException, match="failed"):
        BatchSensor(task_id="wait", batch_id=ids, deferrable=False, poll_interval=0.05).execute(ctx())


def test_a_poking_sensor_writes_a_progress_line(openai_batch_connection, capsys):
    import re

    openai_batch_connection.configure(phase_seconds=1.0)  # 2 s with a known total: many pokes see it
    batch_id = make_batch(openai_batch_connection)
    BatchSensor(task_id="wait", batch_id=batch_id, deferrable=False, poll_interval=0.05).execute(ctx())
    # The first look that knows the total writes a line at once; then one per 30 polls while nothing changes
    # for 5 minutes: about 40 polls here, so 1 to 3 lines, never one per poll.
    found = re.findall(r"Progress: requests \d/3 \(\d+\.\d%\), 0 failed", capsys.readouterr().out)
    assert 1 <= len(found) <= 3, found
