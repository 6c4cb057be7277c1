"""One engine for one batch and many: the rules a job of one shard and a job of three both follow, against the
emulator. Deferred jobs run as Airflow runs them: the trigger revived from its JSON, a new operator object for
every resume, the record in the task state store."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import pytest
from airflow.sdk.exceptions import AirflowFailException, TaskDeferred

from airflow_provider_openai_batch.hooks.batch import OpenAIBatchHook
from airflow_provider_openai_batch.jobs.store import STATE_KEY
from airflow_provider_openai_batch.operators.batch import CreateBatchOperator
from airflow_provider_openai_batch.operators.results import BatchResultsOperator
from airflow_provider_openai_batch.triggers.batch import BatchTrigger
from tests.helpers import FakeStateStore, ctx, make_batch, run

SIZES = pytest.mark.parametrize("shards", [1, 3])
PER_SHARD = 4


def requests(shards: int, per_shard: int = PER_SHARD, failing: Callable[[int], bool] = lambda i: False) -> list[dict]:
    """``shards * per_shard`` chat requests ``p0``...; those ``failing(i)`` picks have a temperature the API
    refuses for good (a 400 answer: a repeat cannot cure it)."""
    return [
        {
            "custom_id": f"p{i}",
            "body": {
                "model": "gpt-4o-mini",
                "messages": [{"role": "user", "content": f"q{i}"}],
                **({"temperature": 3} if failing(i % per_shard) else {}),
            },
        }
        for i in range(shards * per_shard)
    ]


def operator(shards: int, per_shard: int = PER_SHARD, **kwargs: Any) -> CreateBatchOperator:
    kwargs.setdefault("requests", requests(shards, per_shard))
    kwargs.setdefault("wait_for_completion", True)
    kwargs.setdefault("poll_interval", 0.05)
    kwargs.setdefault("max_requests_per_batch", per_shard)
    return CreateBatchOperator(task_id="create", **kwargs)


def drive(make: Callable[[], CreateBatchOperator], context: dict, between: Callable[[int], None] | None = None) -> Any:
    """Run a deferrable create to its end; ``between(n)`` runs after the n-th deferral, before its trigger."""
    try:
        return make().execute(context)
    except TaskDeferred as deferred:
        waiting = deferred
    for wake in range(30):
        if between is not None:
            between(wake)
        payload = run(BatchTrigger(**json.loads(json.dumps(waiting.trigger.serialize()[1]))))
        try:
            return make().execute_complete(context, json.loads(json.dumps(payload)))
        except TaskDeferred as deferred:
            waiting = deferred
    raise AssertionError("the job never ended")


def statuses(ids: list[str]) -> list[str]:
    with OpenAIBatchHook() as hook:
        return [hook.retrieve_batch(b).status for b in ids]


# ---------------------------------------------------------------------------------- the verdict, the deadline


@SIZES
def test_permanent_failures_of_an_earlier_round_count_in_the_verdict(openai_batch_connection, shards):
    """8 of each 10 requests fail for good in round 1 and the other 2 expire; round 2 completes those 2. The
    last round alone looks perfect, but 80% of the job failed: over max_failed_fraction=0.1."""
    emulator = openai_batch_connection
    emulator.configure(expire_after_fraction=0.8)  # round 1 runs the first 8 of each batch, then expires
    context = ctx(state=FakeStateStore())

    def make() -> CreateBatchOperator:
        failing = requests(shards, 10, failing=lambda i: i < 8)
        return operator(shards, 10, requests=failing, resubmit_unfinished=1, max_failed_fraction=0.1, deferrable=True)

    with pytest.raises(AirflowFailException, match=rf"80\.0% of the job's {10 * shards} requests failed"):
        drive(make, context, between=lambda n: emulator.configure(expire_after_fraction=None))
    assert emulator.stats()["batches_created"] == 2 * shards and emulator.stats()["requests_completed"] == 2 * shards


@SIZES
def test_a_request_that_failed_in_its_last_round_is_judged_with_the_whole_job(openai_batch_connection, shards):
    """19 of each 20 requests succeed in round 1 and the 20th expires; round 2 holds only it, and it fails for
    good. 1 of 20 failed: within max_failed_fraction=0.5, though the last round alone failed wholly."""
    emulator = openai_batch_connection
    emulator.configure(expire_after_fraction=0.95)
    context = ctx(state=FakeStateStore())

    def make() -> CreateBatchOperator:
        last_fails = requests(shards, 20, failing=lambda i: i == 19)
        return operator(
            shards, 20, requests=last_fails, resubmit_unfinished=1, max_failed_fraction=0.5, deferrable=True
        )

    ids = drive(make, context, between=lambda n: emulator.configure(expire_after_fraction=None))
    summary = context["ti"].xcom["job"]
    assert summary["failed"] == shards and summary["completed"] == 19 * shards and summary["requests"] == 20 * shards
    assert len(ids if shards > 1 else [ids]) == shards and emulator.stats()["batches_created"] == 2 * shards


@SIZES
def test_the_deadline_counts_from_the_jobs_first_start_through_every_round(openai_batch_connection, shards):
    emulator = openai_batch_connection
    emulator.configure(phase_seconds=30)
    store = FakeStateStore()
    context = ctx(state=store)
    with pytest.raises(TaskDeferred) as deferred:
        operator(shards, resubmit_unfinished=2, timeout=3600, deferrable=True).execute(context)
    for batch_id in deferred.value.trigger.batch_ids:
        emulator.force_status(batch_id, "expired")  # part-way: a round would follow
    payload = run(BatchTrigger(**json.loads(json.dumps(deferred.value.trigger.serialize()[1]))))
    store.values[STATE_KEY]["started_at"] -= 7200  # the job started two hours ago: past its deadline
    with pytest.raises(AirflowFailException, match=r"deadline \(timeout=3600s from the job's start\) passed"):
        operator(shards, resubmit_unfinished=2, timeout=3600, deferrable=True).execute_complete(context, payload)
    assert emulator.stats()["batches_created"] == shards  # no round was created past the deadline


def test_a_retry_without_its_record_keeps_the_deadline_and_creates_no_shard_past_it(openai_batch_connection):
    """The store cannot be read on the retry: the job's start is its first batch's creation, not the retry's."""
    emulator = openai_batch_connection
    emulator.configure(phase_seconds=30)
    with pytest.raises(TaskDeferred):
        operator(3, max_active_batches=1, timeout=1, deferrable=True).execute(ctx(try_number=1))
    time.sleep(1.5)  # the deadline passes (the batch's creation time is in whole seconds, so at most 1 s earlier)
    with pytest.raises(AirflowFailException, match="still running at its deadline"):
        operator(3, max_active_batches=1, timeout=1, deferrable=True).execute(ctx(try_number=2))
    assert emulator.stats()["batches_created"] == 1


# ---------------------------------------------------------------------------------------- money: cancels, settings


@SIZES
def test_a_batch_cancelled_by_a_person_is_never_resubmitted(openai_batch_connection, shards):
    emulator = openai_batch_connection
    emulator.configure(phase_seconds=30)
    context = ctx(state=FakeStateStore())

    def make() -> CreateBatchOperator:
        return operator(shards, resubmit_unfinished=2, deferrable=True)

    def a_person_cancels(wake: int) -> None:
        if wake == 0:
            with OpenAIBatchHook() as hook:
                hook.cancel_batch(context["ti"].xcom["batch_ids"][-1])  # the batches page, a CancelBatchOperator
            emulator.configure(phase_seconds=0.2)

    with pytest.raises(AirflowFailException, match=rf"shard {shards} of {shards}: batch \S+ ended cancelled"):
        drive(make, context, between=a_person_cancels)
    assert emulator.stats()["batches_created"] == shards


@SIZES
def test_changing_split_settings_re_attaches_and_a_real_change_refuses_to_bill_again(openai_batch_connection, shards):
    emulator = openai_batch_connection
    store = FakeStateStore()
    first = operator(shards, deferrable=False).execute(ctx(state=store, try_number=1))
    # Cleared with other tuning: the shards are byte for byte the same, so it is the same job.
    # (One shard of 4 is the same shard under a larger max_requests_per_batch too.)
    tuning: dict[str, Any] = {"max_enqueued_tokens": 10**6, "max_active_batches": 1}
    if shards == 1:
        tuning["max_requests_per_batch"] = 50_000
    assert operator(shards, deferrable=False, **tuning).execute(ctx(state=store, try_number=2)) == first
    assert emulator.stats()["batches_created"] == shards
    # Cut differently: new batches would bill every request again.
    with pytest.raises(AirflowFailException, match=r"max_requests_per_batch=4 then, 3 now.*would bill every request"):
        operator(shards, deferrable=False, max_requests_per_batch=3).execute(ctx(state=store, try_number=3))
    if shards > 1:  # and without the record, the batches' own counts show it
        with pytest.raises(AirflowFailException, match=r"holds 4 requests, but shard 1 of this input now holds 3"):
            operator(shards, deferrable=False, max_requests_per_batch=3).execute(ctx(try_number=4))
    assert emulator.stats()["batches_created"] == shards


@SIZES
def test_a_token_limit_refusal_is_requeued_for_one_batch_as_for_many(openai_batch_connection, shards):
    """Never billed: the shard goes back to the queue with back-off instead of failing the task."""
    emulator = openai_batch_connection
    # The emulator's estimate of 4 of these requests is about 17 tokens: one shard fits, not two; for a lone
    # shard, another batch already holds part of the limit.
    emulator.configure(enqueued_token_limit=20, phase_seconds=1.0)
    others = [make_batch(emulator)] if shards == 1 else []
    context = ctx(state=FakeStateStore())
    operator(shards, deferrable=False).execute(context)
    summary = context["ti"].xcom["job"]
    assert summary["statuses"] == {"completed": shards} and summary["token_limit_requeues"] >= 1
    assert emulator.stats()["requests_completed"] == PER_SHARD * shards + 3 * len(others)  # nothing billed twice


# ------------------------------------------------------------------------------------------- resubmit rounds


@SIZES
@pytest.mark.parametrize("deferrable", [False, True])
def test_every_shard_resubmits_its_unfinished_requests_and_the_export_is_the_whole_job(
    openai_batch_connection, tmp_path, shards, deferrable
):
    """Every request fails transiently on its first attempt: each shard's round 2 sends it again, each is billed
    once, and the export of the task's return value has every request in input order, succeeded."""
    emulator = openai_batch_connection
    emulator.configure(transient_failure_attempts=1)
    context = ctx(state=FakeStateStore())
    made = drive(lambda: operator(shards, resubmit_unfinished=1, deferrable=deferrable), context)
    assert emulator.stats()["requests_completed"] == PER_SHARD * shards
    assert emulator.stats()["batches_created"] == 2 * shards == len(context["ti"].xcom["batch_ids"])
    out = tmp_path / "answers.jsonl"
    manifest = BatchResultsOperator(task_id="export", batch_id=made, destination=str(out)).execute(ctx())
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["index"], r["custom_id"], r["status"]) for r in rows] == [
        (i, f"p{i}", "succeeded") for i in range(PER_SHARD * shards)
    ]
    assert manifest["rows"] == PER_SHARD * shards and len(manifest["batch_ids"]) == 2 * shards
    # One file per shard: each holds its shard's requests as they finally ended, numbered over the whole job.
    manifest = BatchResultsOperator(
        task_id="export", batch_id=made, destination=str(out), one_file_per_batch=True
    ).execute(ctx())
    assert [f["rows"] for f in manifest["files"]] == [PER_SHARD] * shards
    for number in range(1, shards + 1):
        rows = [json.loads(line) for line in (tmp_path / f"answers-{number:05d}.jsonl").read_text().splitlines()]
        first = (number - 1) * PER_SHARD
        assert [(r["index"], r["status"]) for r in rows] == [(i, "succeeded") for i in range(first, first + PER_SHARD)]


@SIZES
def test_resubmit_with_an_input_expiry_shorter_than_a_round_needs_is_refused_before_any_upload(
    openai_batch_connection, shards
):
    with pytest.raises(ValueError, match=r"input_expires_after=3600s .* resubmit_unfinished=1 .* at least 90000s"):
        operator(shards, resubmit_unfinished=1, input_expires_after=3600).execute(ctx())
    stats = openai_batch_connection.stats()
    assert stats["files_created"] == 0 and stats["batches_created"] == 0
    assert operator(shards, resubmit_unfinished=1, input_expires_after=90000, deferrable=False).execute(ctx())
