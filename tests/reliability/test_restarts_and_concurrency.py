"""Kills, restarts and concurrency over real sockets: nothing billed twice, nothing lost, one event per wait."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import textwrap
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from openai_batch_emulator.testing import run_emulator_process

from airflow_provider_openai_batch import api
from airflow_provider_openai_batch.hooks.batch import OpenAIBatchHook
from airflow_provider_openai_batch.jobs.keys import attempt_key, job_key
from airflow_provider_openai_batch.operators.batch import (
    CreateBatchOperator,
    check_input_file,
    write_requests_jsonl,
)
from airflow_provider_openai_batch.testing import connection_json
from airflow_provider_openai_batch.triggers.batch import BatchTrigger
from tests.helpers import BOTH_FLAVORS, ENDPOINT, FakeTI, ctx, events, make_batch, prompts

ROOT = Path(__file__).parents[2]


@BOTH_FLAVORS
def test_a_worker_killed_right_after_the_create_post_bills_one_batch(openai_batch_connection):
    # Try 1 runs in its own process, which is SIGKILLed the moment create_batch returns: the POST has
    # landed but nothing after it (XCom, logs, the task's state) has happened.
    try_one = textwrap.dedent(
        """
        import os, signal
        from airflow_provider_openai_batch.hooks.batch import OpenAIBatchHook
        from airflow_provider_openai_batch.operators.batch import CreateBatchOperator
        from tests.helpers import ctx, prompts

        real_create = OpenAIBatchHook.create_batch

        def create_then_die(self, *args, **kwargs):
            batch = real_create(self, *args, **kwargs)
            print(batch.id, flush=True)
            os.kill(os.getpid(), signal.SIGKILL)

        OpenAIBatchHook.create_batch = create_then_die
        CreateBatchOperator(task_id="create", requests=prompts()).execute(ctx(try_number=1))
        """
    )
    killed = subprocess.run([sys.executable, "-c", try_one], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert killed.returncode == -9, killed.stderr[-2000:]
    created = killed.stdout.strip().splitlines()[-1]  # logs go to stdout too
    assert created.startswith("batch_")

    retried = ctx(try_number=2)  # Airflow retries the task on another worker
    assert CreateBatchOperator(task_id="create", requests=prompts()).execute(retried) == created
    assert retried["ti"].xcom["batch"]["id"] == created
    assert openai_batch_connection.stats()["batches_created"] == 1


@BOTH_FLAVORS
def test_a_restarted_triggerer_resumes_and_emits_exactly_one_event(openai_batch_connection):
    openai_batch_connection.configure(phase_seconds=0.4)
    batch_id = make_batch(openai_batch_connection)
    end_time = time.time() + 60
    first = BatchTrigger(batch_id, poll_interval=0.1, end_time=end_time)
    emitted: list = []

    async def killed_mid_wait() -> None:
        async def collect() -> None:
            async for event in first.run():
                emitted.append(event)

        task = asyncio.ensure_future(collect())
        await asyncio.sleep(0.3)  # still validating
        task.cancel()  # the triggerer process dies

    asyncio.run(killed_mid_wait())
    assert emitted == []
    classpath, kwargs = first.serialize()
    revived = BatchTrigger(**json.loads(json.dumps(kwargs)))  # rebuilt from what the metadata DB stored
    assert classpath.endswith("triggers.batch.BatchTrigger") and revived.end_time == end_time
    found = asyncio.run(events(revived))
    assert len(found) == 1
    payload = found[0].payload
    assert payload["status"] == "terminal" and payload["batch"]["status"] == "completed"
    # The deadline itself surviving the restart: tests/triggers/test_trigger.py::test_deadline_survives_...


@BOTH_FLAVORS
def test_an_emulator_restart_with_data_dir_mid_wait_loses_nothing(tmp_path, monkeypatch, flavor):
    with run_emulator_process(data_dir=tmp_path / "state", phase_seconds=1.0, flavor=flavor) as emulator:
        monkeypatch.setenv("AIRFLOW_CONN_OPENAI_DEFAULT", connection_json(emulator))
        hook = OpenAIBatchHook()
        # The emulator fails a request by its model, and an Azure file may name one deployment only: there
        # every request succeeds.
        failing = 2 if flavor == "openai" else None
        batch_id = CreateBatchOperator(task_id="create", requests=prompts(4, fail=failing)).execute(ctx())
        trigger = BatchTrigger(batch_id, poll_interval=0.2, end_time=time.time() + 60)

        async def wait_through_a_restart() -> list:
            waiting = asyncio.ensure_future(events(trigger, timeout=60))
            await asyncio.sleep(0.5)
            await asyncio.to_thread(emulator.restart)  # down, then up again on the same port
            return await waiting

        found = asyncio.run(wait_through_a_restart())
        assert len(found) == 1
        batch = found[0].payload["batch"]
        failed = 1 if failing is not None else 0
        assert batch["status"] == "completed"
        assert batch["request_counts"] == {"total": 4, "completed": 4 - failed, "failed": failed}
        results = hook.get_results(batch_id)
        assert sorted(results) == ["p0", "p1", "p2", "p3"] and results["p2"].ok is (failing is None)
        assert hook.retrieve_file(batch["input_file_id"]).purpose == "batch"  # the input survived too


def test_fifty_mapped_tasks_at_once_make_fifty_batches_and_keep_every_xcom(
    openai_batch_connection, tmp_path, monkeypatch
):
    # Ambiguous faults too: some POSTs are processed, then their answer fails, and the hook must find the
    # batch by its key among the 49 others created at the same moment. A 5 s request timeout keeps the watch
    # for late twins after each ambiguous create at its 10 s minimum (at the default 60 s it is 120 s).
    monkeypatch.setenv("AIRFLOW_CONN_OPENAI_DEFAULT", connection_json(openai_batch_connection, {"timeout": 5}))
    openai_batch_connection.configure(
        fault_rate=0.2, fault_kinds=["429", "500", "503", "drop"], fault_after_processing=True
    )

    def mapped_try(map_index: int, try_number: int) -> tuple[str, FakeTI]:
        context = ctx(map_index=map_index, try_number=try_number)
        batch_id = CreateBatchOperator(task_id="create", requests=prompts(2)).execute(context)
        return batch_id, context["ti"]

    with ThreadPoolExecutor(max_workers=50) as pool:
        first = list(pool.map(mapped_try, range(50), [1] * 50))
        retried = list(pool.map(mapped_try, range(50), [2] * 50))  # every task retried: still 50 batches

    ids = [batch_id for batch_id, _ in first]
    assert len(set(ids)) == 50
    assert [batch_id for batch_id, _ in retried] == ids
    write_requests_jsonl(prompts(2), ENDPOINT, str(tmp_path / "input.jsonl"))
    digest = check_input_file(tmp_path / "input.jsonl", ENDPOINT)
    for map_index, (batch_id, ti) in enumerate(first):
        assert ti.xcom["batch"]["id"] == batch_id
        key = ti.xcom["batch"]["metadata"][api.IDEMPOTENCY_METADATA_KEY]
        assert key == attempt_key(job_key(FakeTI(map_index=map_index), digest), 0, 1)
    stats = openai_batch_connection.stats()
    assert stats["batches_created"] == 50 and stats["files_uploaded"] == 50, stats  # no second batch, no orphan
    assert sum(stats["faults"].values()) > 0  # the faults really happened


@BOTH_FLAVORS
@pytest.mark.parametrize(
    ("failure", "expected"),
    [
        ("unauthorized", "AuthenticationError"),
        ("unknown_batch", "NotFoundError"),
        ("endless_503", "ServerError"),
    ],
)
def test_persistent_failures_fail_the_task_promptly(openai_batch_connection, monkeypatch, failure, expected):
    """Each ends in a clear error; the worst-case times are in docs/reliability.md."""
    from airflow_provider_openai_batch.sensors.batch import BatchSensor

    batch_id = make_batch(openai_batch_connection)
    slept: list[float] = []
    monkeypatch.setattr(time, "sleep", slept.append)  # tenacity's back-off, recorded rather than waited
    if failure == "unauthorized":
        openai_batch_connection.configure(api_key="another-key")
    elif failure == "unknown_batch":
        batch_id = "batch_does_not_exist"
    else:
        openai_batch_connection.configure(fault_rate=1.0, fault_kinds=["503"])
    before = sum(openai_batch_connection.stats()["requests"].values())
    sensor = BatchSensor(task_id="wait", batch_id=batch_id, poll_interval=60)
    with pytest.raises(Exception) as err:
        sensor.execute(ctx())  # the check before deferring meets the failure
    requests_made = sum(openai_batch_connection.stats()["requests"].values()) - before
    assert type(err.value).__name__ == expected
    assert batch_id in str(err.value) or err.value.status_code in (401, 503)  # type: ignore[attr-defined]
    if failure == "endless_503":
        # default max_retries=5: 6 attempts, back-off capped by 0.5 * 2**n with full jitter
        assert requests_made == 6 and len(slept) == 5 and sum(slept) <= 0.5 + 1 + 2 + 4 + 8
    else:
        assert requests_made == 1 and slept == []  # never retried


@BOTH_FLAVORS
def test_an_endless_503_ends_the_deferred_wait_with_an_error_event(openai_batch_connection, monkeypatch):
    batch_id = make_batch(openai_batch_connection)
    openai_batch_connection.configure(fault_rate=1.0, fault_kinds=["503"])
    slept: list[float] = []
    real_sleep = asyncio.sleep

    here = threading.get_ident()

    async def record(delay: float, *args: object) -> None:
        if threading.get_ident() != here:  # the emulator's own event loop, in its thread, sleeps for real
            return await real_sleep(delay, *args)
        slept.append(delay)
        await real_sleep(0)

    monkeypatch.setattr(asyncio, "sleep", record)
    before = sum(openai_batch_connection.stats()["requests"].values())
    found = asyncio.run(events(BatchTrigger(batch_id, poll_interval=60, max_consecutive_errors=5)))
    assert len(found) == 1 and found[0].payload["status"] == "error"
    assert "503" in found[0].payload["message"]
    assert sum(openai_batch_connection.stats()["requests"].values()) - before == 5 * 6  # 5 polls of 6 attempts
    # Worst case, in simulated seconds: the first poll's random delay (at most 2 s), 5 polls x 15.5 s of retry
    # back-off, and 2 + 4 + 8 + 16 s between polls.
    assert sum(slept) <= 2 + 5 * 15.5 + 30
