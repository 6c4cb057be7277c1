"""What a retried, cleared or killed CreateBatchOperator does with money: re-attach, never re-bill silently,
keep its deadline, and fail for good on final verdicts. Against the emulator, with a fake task state store."""

from __future__ import annotations

import gc
import os
import tempfile
import time
import warnings

import pytest
from airflow.sdk.exceptions import AirflowFailException, TaskDeferred

from airflow_provider_openai_batch.exceptions import BatchTimeoutError
from airflow_provider_openai_batch.hooks.batch import OpenAIBatchHook
from airflow_provider_openai_batch.jobs.keys import attempt_key, job_key
from airflow_provider_openai_batch.jobs.store import STATE_KEY
from airflow_provider_openai_batch.operators.batch import CreateBatchOperator, check_input_file, write_requests_jsonl
from airflow_provider_openai_batch.sensors.batch import BatchSensor
from tests.helpers import ENDPOINT, FakeStateStore, created, ctx, prompts


def create(**kwargs) -> CreateBatchOperator:
    return CreateBatchOperator(task_id="create", requests=prompts(), **kwargs)


def list_calls(emulator) -> int:
    return emulator.stats()["requests"].get("GET /v1/batches", 0)


def recorded(store: FakeStateStore) -> list[dict]:
    """The attempts of the lone shard in the job record."""
    return store.values[STATE_KEY]["shards"][0]["attempts"]


def test_with_a_state_store_a_retry_reattaches_with_one_get_and_no_list_scan(openai_batch_connection):
    store = FakeStateStore()
    first = create().execute(ctx(state=store, try_number=1))
    assert [a["batch_id"] for a in recorded(store)] == [first]
    gets = openai_batch_connection.stats()["requests"]["GET /v1/batches/{id}"]
    second = create().execute(ctx(state=store, try_number=2))
    stats = openai_batch_connection.stats()
    assert second == first and stats["batches_created"] == 1
    assert list_calls(openai_batch_connection) == 0 and stats["requests"]["GET /v1/batches/{id}"] == gets + 1


def test_a_worker_killed_between_post_and_record_is_found_by_one_bounded_list_pass(openai_batch_connection):
    class DiesAfterThePost(FakeStateStore):
        def set(self, key, value, **kw):
            attempts = value["shards"][0]["attempts"]
            if not any(a["batch_id"] for a in attempts):  # "creating since T" lands; the kill comes before the id
                super().set(key, value, **kw)

    store = DiesAfterThePost()
    first = create().execute(ctx(state=store, try_number=1))
    assert recorded(store)[0]["batch_id"] is None and recorded(store)[0]["creating_since"]
    second = create().execute(ctx(state=store, try_number=2))
    assert second == first and openai_batch_connection.stats()["batches_created"] == 1
    assert list_calls(openai_batch_connection) == 1  # batches created since the first try's create: one page


def test_with_a_state_store_a_first_run_never_scans(openai_batch_connection):
    create().execute(ctx(state=FakeStateStore(), try_number=1))
    assert list_calls(openai_batch_connection) == 0 and openai_batch_connection.stats()["batches_created"] == 1


def test_a_store_emptied_since_the_create_still_finds_the_batch_by_its_key(openai_batch_connection):
    """[state_store] clear_on_success, or retention, can empty the store: a cleared task must not bill again."""
    first = create().execute(ctx(state=FakeStateStore(), try_number=1))
    openai_batch_connection.force_status(first, "completed")
    again = create().execute(ctx(state=FakeStateStore(), try_number=2))  # the same task, its store emptied
    assert again == first and openai_batch_connection.stats()["batches_created"] == 1


def test_late_twins_found_by_a_retry_are_settled_to_one_live_batch(openai_batch_connection):
    """Creates that all timed out and were carried out late leave several batches with one key: the retry
    keeps the oldest live one and cancels the others."""
    openai_batch_connection.configure(phase_seconds=30)
    context = ctx(state=FakeStateStore(), try_number=2)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "in.jsonl")
        write_requests_jsonl(prompts(), ENDPOINT, path)
        key = attempt_key(job_key(context["ti"], check_input_file(path, ENDPOINT)), 0, 1)
        with OpenAIBatchHook() as hook:
            file_id = hook.upload_file(path).id
            made = [hook.create_batch(file_id, ENDPOINT, idempotency_key=key).id for _ in range(3)]
    assert created(create(), context) == [made[0]]
    with OpenAIBatchHook() as hook:
        statuses = {b: hook.retrieve_batch(b).status for b in made}
    assert statuses[made[0]] == "validating" and {statuses[made[1]], statuses[made[2]]} == {"cancelling"}
    assert openai_batch_connection.stats()["batches_created"] == 3


def test_a_retry_waits_for_a_batch_being_cancelled_before_deciding(openai_batch_connection):
    """cancel_on_kill, then a clear: the counts of a cancelling batch still move, so the retry waits for
    cancelled and decides on the final counts: some done, so it refuses to bill them twice; none done, so a
    new batch (which one depends on how far the batch got, and both are right)."""
    emulator = openai_batch_connection
    emulator.configure(phase_seconds=0.5)
    store = FakeStateStore()
    first = CreateBatchOperator(task_id="create", requests=prompts(10)).execute(ctx(state=store, try_number=1))
    with OpenAIBatchHook() as hook:
        deadline = time.monotonic() + 60
        while hook.retrieve_batch(first).status == "validating":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        hook.cancel_batch(first)
    try:
        again = CreateBatchOperator(task_id="create", requests=prompts(10), poll_interval=0.1).execute(
            ctx(state=store, try_number=2)
        )
    except AirflowFailException as err:
        assert "ended cancelled with" in str(err) and "billed" in str(err)
        assert emulator.stats()["batches_created"] == 1
    else:
        assert again != first and emulator.stats()["batches_created"] == 2
    with OpenAIBatchHook() as hook:
        assert hook.retrieve_batch(first).status == "cancelled"  # decided only once it had ended


def test_a_failing_state_store_falls_back_to_the_metadata_search(openai_batch_connection):
    first = create().execute(ctx(state=FakeStateStore(fail=True), try_number=1))
    second = create().execute(ctx(state=FakeStateStore(fail=True), try_number=2))
    assert second == first and openai_batch_connection.stats()["batches_created"] == 1


def test_a_cleared_task_reattaches_by_default_and_makes_a_new_batch_with_reattach_never(openai_batch_connection):
    store = FakeStateStore()
    first = create().execute(ctx(state=store, try_number=1))
    openai_batch_connection.force_status(first, "completed")
    assert create().execute(ctx(state=store, try_number=2)) == first  # auto: those results are paid for
    fresh = create(reattach="never").execute(ctx(state=store, try_number=2))
    assert fresh != first
    # "never" means every try: a retry of that try makes yet another batch.
    assert create(reattach="never").execute(ctx(state=store, try_number=3)) not in (first, fresh)
    assert openai_batch_connection.stats()["batches_created"] == 3
    with pytest.raises(ValueError, match="reattach must be 'auto' or 'never'"):
        create(reattach="sometimes")


@pytest.mark.parametrize("status", ["expired", "cancelled"])
def test_a_retry_after_a_partly_billed_batch_fails_instead_of_billing_twice(openai_batch_connection, status):
    openai_batch_connection.configure(phase_seconds=30)
    store = FakeStateStore()
    (first,) = created(create(), ctx(state=store, try_number=1))
    ended = openai_batch_connection.force_status(first, status)  # while no try watched it
    done = ended["request_counts"]["completed"]
    assert done > 0
    with pytest.raises(AirflowFailException, match=rf"ended {status} with {done} of 3 requests completed and billed"):
        create().execute(ctx(state=store, try_number=2))
    assert openai_batch_connection.stats()["batches_created"] == 1
    # The explicit choice re-submits everything, and says what it costs.
    ids = created(create(rebill_completed_requests=True), ctx(state=store, try_number=3))
    assert ids[0] == first and ids[-1] != first and openai_batch_connection.stats()["batches_created"] == 2


def test_the_deferred_deadline_counts_from_the_jobs_first_start_across_tries(openai_batch_connection):
    openai_batch_connection.configure(phase_seconds=30)
    store = FakeStateStore()
    op = create(wait_for_completion=True, deferrable=True, timeout=1000)
    with pytest.raises(TaskDeferred) as first:
        op.execute(ctx(state=store, try_number=1))
    started_at = first.value.trigger.serialize()[1]["end_time"] - 1000
    assert started_at == store.values[STATE_KEY]["started_at"]
    time.sleep(1.1)  # a later try; only its own clock moved
    with pytest.raises(TaskDeferred) as second:
        create(wait_for_completion=True, deferrable=True, timeout=1000).execute(ctx(state=store, try_number=2))
    assert second.value.trigger.serialize()[1]["end_time"] == first.value.trigger.serialize()[1]["end_time"]
    assert abs(started_at - time.time()) < 600


def test_a_passed_deadline_fails_for_good_in_both_waits(openai_batch_connection):
    openai_batch_connection.configure(phase_seconds=30)
    op = create(wait_for_completion=True, deferrable=False, timeout=0.2, poll_interval=0.05)
    with pytest.raises(AirflowFailException, match="not retried: the deadline") as err:
        op.execute(ctx())
    assert isinstance(err.value.__cause__, BatchTimeoutError)
    # Deferred: the trigger's timeout wakes the task, which finds the job past its deadline (its start moved
    # back, as a slow resume would find it) and fails for good without creating anything.
    store = FakeStateStore()
    deferred = create(wait_for_completion=True, deferrable=True, timeout=100)
    with pytest.raises(TaskDeferred):
        deferred.execute(ctx(state=store))
    store.values[STATE_KEY]["started_at"] -= 200
    timed_out = {"status": "timeout", "batch_id": "b", "batch": None, "message": "late", "batches": []}
    with pytest.raises(AirflowFailException, match=r"still running at its deadline.*not retried: the deadline"):
        create(wait_for_completion=True, deferrable=True, timeout=100).execute_complete(ctx(state=store), timed_out)
    assert openai_batch_connection.stats()["batches_created"] == 2


def test_an_outage_event_stays_retryable(openai_batch_connection):
    from airflow_provider_openai_batch.exceptions import OpenAIBatchError

    error = {"status": "error", "batch_id": "b", "batch": None, "message": "checking batch b failed: 503"}
    with pytest.raises(OpenAIBatchError, match="503"):
        create().execute_complete(ctx(), error)


@pytest.mark.parametrize("fraction", [-0.1, 1.5, "0.5", True])
def test_max_failed_fraction_is_range_checked_at_parse_time(fraction):
    with pytest.raises(ValueError, match=r"max_failed_fraction must be a number from 0\.0"):
        create(max_failed_fraction=fraction)


def test_operators_and_sensor_close_their_sessions(openai_batch_connection, monkeypatch):
    """One hook per task, closed at the end: no session (nor socket) is left for the garbage collector."""
    opened: list[OpenAIBatchHook] = []
    closed: list[OpenAIBatchHook] = []
    real_init, real_close = OpenAIBatchHook.__init__, OpenAIBatchHook.close

    def init(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        opened.append(self)

    def close(self):
        closed.append(self)
        real_close(self)

    monkeypatch.setattr(OpenAIBatchHook, "__init__", init)
    monkeypatch.setattr(OpenAIBatchHook, "close", close)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        batch_id = create(wait_for_completion=True, deferrable=False, poll_interval=0.05).execute(ctx())
        sensor = BatchSensor(task_id="wait", batch_id=batch_id, deferrable=False, poke_interval=0.01, timeout=30)
        sensor.execute(ctx())
        gc.collect()
    # One hook for the create task and one for the sensor, and one per thread that uploaded a shard while the
    # input was being cut (jobs/uploads.py): every one of them closed.
    uploaders = [hook for hook in opened[1:] if hook is not opened[-1]]
    assert len(opened) == 2 + len(uploaders) and len(uploaders) <= 1  # one shard: one upload thread
    assert set(map(id, closed)) == set(map(id, opened))
    # (The in-process emulator's own warnings, about its upload buffers, are not ours to judge here.)
    leaked = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning) and "socket" in str(w.message)]
    assert leaked == []


def test_a_poking_sensor_reads_its_connection_once(openai_batch_connection, monkeypatch):
    openai_batch_connection.configure(phase_seconds=0.3)
    batch_id = create().execute(ctx())
    looked_up: list[str] = []
    real = OpenAIBatchHook.get_connection

    def get_connection(conn_id):
        looked_up.append(conn_id)
        return real(conn_id)

    monkeypatch.setattr(OpenAIBatchHook, "get_connection", staticmethod(get_connection))
    sensor = BatchSensor(task_id="wait", batch_id=batch_id, deferrable=False, poke_interval=0.05, timeout=60)
    sensor.execute(ctx())
    pokes = openai_batch_connection.stats()["requests"]["GET /v1/batches/{id}"]
    assert pokes > 2 and looked_up == ["openai_default"]


@pytest.mark.parametrize(("state", "cancelled"), [("success", False), ("failed", True), (None, True)])
def test_a_worker_kill_keeps_the_batch_only_when_the_task_was_marked_success(
    openai_batch_connection, monkeypatch, state, cancelled
):
    """The same rule as the trigger's (kill_policy.py): marked success keeps the batch, anything else cancels."""
    from airflow_provider_openai_batch import kill_policy

    openai_batch_connection.configure(phase_seconds=30)
    asked: list[object] = []

    def read(ti):
        asked.append(ti)
        if state is None:
            raise RuntimeError("no API server")  # unknown: cancel as asked
        return state

    monkeypatch.setattr(kill_policy, "read_task_state", read)
    op = create(cancel_on_kill=True)
    context = ctx()
    (batch_id,) = created(op, context)
    op.on_kill()
    with OpenAIBatchHook() as hook:
        status = hook.retrieve_batch(batch_id).status
    assert asked == [context["ti"]]
    assert (status == "cancelling") is cancelled
