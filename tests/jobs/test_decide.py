"""The decision table of a job, row by row, without HTTP: the same rows for a job of one shard and of three."""

from __future__ import annotations

import pytest

from airflow_provider_openai_batch.jobs.decide import (
    CLAIM,
    CREATE,
    MAX_TOKEN_REFUSALS,
    REPEAT,
    REQUEUE,
    RESUBMIT,
    WAKE_ADMITTED,
    WAKE_ALL,
    WAKE_ANY,
    Done,
    Policy,
    Stop,
    Wait,
    admission_interval,
    decide,
)
from airflow_provider_openai_batch.jobs.record import FULL, UNFINISHED, Attempt, JobRecord, Shard

NOW = 1_000_000.0
TRY = 2
SIZES = pytest.mark.parametrize("shards", [1, 3])


def record(shards: int, requests: int = 10, tokens: int = 100) -> JobRecord:
    """A job whose shards each have a queued first attempt (uploaded, not created)."""
    return JobRecord(
        job_key="job",
        started_at=NOW - 100,
        endpoint="/v1/chat/completions",
        shards=[
            Shard(i, f"d{i}", requests, 1000, tokens, [Attempt(1, FULL, f"k{i}", requests, file_id=f"file-{i}")])
            for i in range(shards)
        ],
    )


def run(attempt: Attempt, status: str, completed: int = 0, failed: int = 0, watched: int | None = TRY, **extra) -> None:
    """Give ``attempt`` a batch in ``status`` with these counts, last seen running by try ``watched``."""
    attempt.batch_id = attempt.batch_id or f"batch-{attempt.key}-{attempt.n}"
    attempt.status, attempt.completed, attempt.failed = status, completed, failed
    attempt.created_at = NOW - 60
    attempt.watched_in_try = watched
    for name, value in extra.items():
        setattr(attempt, name, value)


def done_all(job: JobRecord, but: int | None = None) -> None:
    """Every shard completed without failures, except shard ``but``."""
    for shard in job.shards:
        if shard.index != but:
            run(shard.last, "completed", completed=shard.requests)


def policy(**kwargs) -> Policy:
    kwargs.setdefault("try_number", TRY)
    return Policy(**kwargs)


def the_shard(job: JobRecord) -> int:
    """The shard a row is about: the last one, so the others are done (or running) before it."""
    return len(job.shards) - 1


# --------------------------------------------------------------------------------------------- the queue


@SIZES
def test_a_new_job_creates_every_shard_the_queue_admits(shards):
    plan = decide(record(shards), policy(), NOW)
    assert [(a.kind, a.shard) for a in plan.actions] == [(CREATE, i) for i in range(shards)]


def test_max_active_batches_and_max_enqueued_tokens_hold_the_queue_in_shard_order():
    job = record(3, tokens=100)
    assert [a.shard for a in decide(job, policy(max_active_batches=2), NOW).actions] == [0, 1]
    assert [a.shard for a in decide(job, policy(max_enqueued_tokens=250), NOW).actions] == [0, 1]
    run(job.shards[0].last, "in_progress")
    assert [a.shard for a in decide(job, policy(max_active_batches=2), NOW).actions] == [1]
    # A shard larger than the bound still runs alone: the split cut it to fit, this is only the estimate.
    assert [a.shard for a in decide(job, policy(max_enqueued_tokens=150), NOW).actions] == []


@SIZES
def test_a_create_cut_off_by_a_kill_is_claimed_before_anything_else(shards):
    job = record(shards)
    job.shards[the_shard(job)].last.creating_since = NOW - 5
    plan = decide(job, policy(), NOW)
    assert [(a.kind, a.shard) for a in plan.actions] == [(CLAIM, the_shard(job))] and plan.outcome is None


@SIZES
def test_running_batches_are_waited_for_until_the_stale_bound_or_the_deadline(shards):
    job = record(shards)
    for shard in job.shards:
        run(shard.last, "in_progress")
    wait = decide(job, policy(), NOW).outcome
    assert isinstance(wait, Wait) and wait.wake == WAKE_ALL and wait.wake_at is None
    assert len(wait.batch_ids) == shards and wait.end_time == NOW - 60 + 24 * 3600 + 3600
    assert decide(job, policy(deadline=NOW + 10), NOW).outcome.end_time == NOW + 10


@SIZES
def test_the_wait_wakes_on_any_end_when_an_end_may_call_for_a_step(shards):
    job = record(shards)
    for shard in job.shards:
        run(shard.last, "validating")
    assert decide(job, policy(resubmit_unfinished=1), NOW).outcome.wake == WAKE_ANY
    assert decide(job, policy(wait_for_completion=False), NOW).outcome.wake == WAKE_ADMITTED


def test_queued_shards_make_the_wait_wake_on_any_end():
    job = record(3)
    run(job.shards[0].last, "in_progress")
    assert decide(job, policy(max_active_batches=1), NOW).outcome.wake == WAKE_ANY


def test_admission_checks_start_fast_and_slow_down_to_the_poll_interval():
    assert [admission_interval(60, n) for n in range(1, 9)] == [0.5, 1, 2, 4, 8, 16, 32, 60]
    assert admission_interval(0.05, 1) == 0.05


# ---------------------------------------------------------------------------------------- after an end


@SIZES
def test_a_completed_job_is_done_and_judged_over_every_request(shards):
    job = record(shards)
    done_all(job)
    assert decide(job, policy(max_failed_fraction=0.0), NOW).outcome == Done()
    run(job.shards[the_shard(job)].last, "completed", completed=9, failed=1)
    total = 10 * shards
    failure = decide(job, policy(max_failed_fraction=0.0), NOW).outcome.failure
    assert f"of the job's {total} requests failed (1," in failure
    assert decide(job, policy(max_failed_fraction=1 / total), NOW).outcome == Done()


@SIZES
def test_completed_with_failures_is_resubmitted_while_rounds_are_left(shards):
    job = record(shards)
    done_all(job, but=the_shard(job))
    run(job.shards[the_shard(job)].last, "completed", completed=7, failed=3)
    plan = decide(job, policy(resubmit_unfinished=1), NOW)
    assert [(a.kind, a.shard) for a in plan.actions] == [(RESUBMIT, the_shard(job))]
    assert isinstance(decide(job, policy(resubmit_unfinished=0), NOW).outcome, Done)


@SIZES
def test_a_round_that_left_nothing_unfinished_ends_the_shard(shards):
    job = record(shards)
    done_all(job, but=the_shard(job))
    run(job.shards[the_shard(job)].last, "completed", completed=7, failed=3, carried=0)  # all 3 failed for good
    outcome = decide(job, policy(resubmit_unfinished=1, max_failed_fraction=1.0), NOW).outcome
    assert outcome == Done()


@SIZES
def test_token_limit_refusals_are_requeued_with_a_doubling_back_off_then_stand(shards):
    job = record(shards)
    done_all(job, but=the_shard(job))
    shard = job.shards[the_shard(job)]
    run(shard.last, "failed", error_codes=["token_limit_exceeded"])
    (action,) = decide(job, policy(backoff_base=60), NOW).actions
    assert (action.kind, action.shard, action.not_before) == (REQUEUE, shard.index, NOW + 60)
    shard.attempts = [Attempt(n, FULL, f"k{n}", 10) for n in range(1, MAX_TOKEN_REFUSALS + 1)]
    for attempt in shard.attempts:
        run(attempt, "failed", error_codes=["token_limit_exceeded"])
    stop = decide(job, policy(), NOW).outcome
    assert isinstance(stop, Stop) and f"after {MAX_TOKEN_REFUSALS} refusals" in stop.message


@SIZES
def test_a_requeued_shard_waits_out_its_back_off_and_holds_the_shards_behind_it(shards):
    job = record(shards)
    job.shards[0].last.not_before = NOW + 30
    plan = decide(job, policy(), NOW)
    assert plan.actions == [] and plan.outcome.wake_at == NOW + 30 and plan.outcome.batch_ids == []
    assert [a.shard for a in decide(job, policy(), NOW + 30).actions] == list(range(shards))


@SIZES
def test_an_expired_batch_is_resubmitted_while_rounds_are_left(shards):
    job = record(shards)
    done_all(job, but=the_shard(job))
    run(job.shards[the_shard(job)].last, "expired", completed=4)
    assert [a.kind for a in decide(job, policy(resubmit_unfinished=2), NOW).actions] == [RESUBMIT]
    stop = decide(job, policy(resubmit_unfinished=0), NOW).outcome
    assert isinstance(stop, Stop) and stop.reason == "ended" and f"shard {shards} of {shards}" in stop.message


@SIZES
@pytest.mark.parametrize("status", ["cancelled", "failed", "expired"])
def test_an_end_under_this_trys_watch_stops_the_job_and_a_cancel_is_never_undone(shards, status):
    job = record(shards)
    done_all(job, but=the_shard(job))
    run(job.shards[the_shard(job)].last, status, completed=4)
    outcome = decide(job, policy(resubmit_unfinished=0 if status == "expired" else 3), NOW).outcome
    assert isinstance(outcome, Stop) and outcome.reason == "ended" and f"ended {status}" in outcome.message


@SIZES
@pytest.mark.parametrize("status", ["cancelled", "failed", "expired"])
def test_an_end_between_tries_that_billed_nothing_is_repeated(shards, status):
    job = record(shards)
    done_all(job, but=the_shard(job))
    run(job.shards[the_shard(job)].last, status, completed=0, watched=TRY - 1)
    assert [(a.kind, a.rebill) for a in decide(job, policy(), NOW).actions] == [(REPEAT, False)]


@SIZES
@pytest.mark.parametrize("status", ["cancelled", "expired"])
def test_an_end_between_tries_that_billed_requests_is_refused_unless_rebilling_is_asked_for(shards, status):
    job = record(shards)
    done_all(job, but=the_shard(job))
    run(job.shards[the_shard(job)].last, status, completed=4, watched=None)
    stop = decide(job, policy(), NOW).outcome
    assert isinstance(stop, Stop) and stop.reason == "refused" and "with 4 of 10 requests completed" in stop.message
    assert [(a.kind, a.rebill) for a in decide(job, policy(rebill_completed_requests=True), NOW).actions] == [
        (REPEAT, True)
    ]


def test_a_cancelled_batch_is_never_resubmitted_even_between_tries():
    job = record(1)
    run(job.shards[0].last, "cancelled", completed=4, watched=None)
    assert isinstance(decide(job, policy(resubmit_unfinished=3), NOW).outcome, Stop)


# --------------------------------------------------------------------------------- deadline, no-wait, ends


@SIZES
def test_past_the_deadline_nothing_is_created_and_the_job_stops(shards):
    job = record(shards)
    stop = decide(job, policy(deadline=NOW - 1), NOW).outcome
    assert isinstance(stop, Stop) and stop.reason == "deadline"
    done_all(job)
    assert decide(job, policy(deadline=NOW - 1), NOW).outcome == Done()  # finished work is not failed late


@SIZES
def test_a_batch_running_past_its_window_plus_an_hour_stops_the_job(shards):
    job = record(shards)
    for shard in job.shards:
        run(shard.last, "in_progress")
    job.shards[0].last.created_at = NOW - 25 * 3600 - 1
    assert decide(job, policy(), NOW).outcome.reason == "stale"


@SIZES
def test_without_wait_the_job_is_done_once_every_batch_passed_validation(shards):
    job = record(shards)
    for shard in job.shards:
        run(shard.last, "validating")
    assert isinstance(decide(job, policy(wait_for_completion=False), NOW).outcome, Wait)
    for shard in job.shards:
        run(shard.last, "in_progress")
    job.shards[0].last.status = "cancelling"  # heading for an end without its results: not done yet
    assert isinstance(decide(job, policy(wait_for_completion=False), NOW).outcome, Wait)
    job.shards[0].last.status = "in_progress"
    assert decide(job, policy(wait_for_completion=False), NOW).outcome == Done()


def test_one_stop_wins_over_steps_of_other_shards():
    job = record(3)
    run(job.shards[0].last, "failed", error_codes=["token_limit_exceeded"])
    run(job.shards[1].last, "cancelled", completed=2)
    run(job.shards[2].last, "completed", completed=8, failed=2)
    plan = decide(job, policy(resubmit_unfinished=1), NOW)
    assert plan.actions == [] and isinstance(plan.outcome, Stop) and plan.outcome.shard == 1


# ------------------------------------------------------------------------------- the verdict over rounds


def test_a_request_counts_as_failed_only_if_its_last_attempt_failed():
    """10 requests: round 1 fails all of them, 8 for good and 2 transiently; round 2 completes those 2. The
    verdict is over the job (8 of 10 failed), not over the last round (0 of 2)."""
    job = record(1)
    shard = job.shards[0]
    run(shard.last, "completed", completed=0, failed=10, carried=2)  # 8 failed for good, 2 carried on
    shard.attempts.append(Attempt(2, UNFINISHED, "k2", 2, file_id="file-r2", resubmit_of=shard.last.batch_id))
    run(shard.last, "completed", completed=2)
    assert shard.failed == 8 and shard.succeeded == 2
    assert (
        "80.0% of the job's 10 requests failed (8," in decide(job, policy(max_failed_fraction=0.1), NOW).outcome.failure
    )
    # One of 20 failed for good in the end: within 0.5, whatever the last round alone looked like.
    job = record(1, requests=20)
    shard = job.shards[0]
    run(shard.last, "completed", completed=10, failed=10, carried=10)
    shard.attempts.append(Attempt(2, UNFINISHED, "k2", 10, file_id="f", resubmit_of=shard.last.batch_id))
    run(shard.last, "completed", completed=9, failed=1)
    assert (
        shard.failed == 1 and decide(job, policy(max_failed_fraction=0.5, resubmit_unfinished=1), NOW).outcome == Done()
    )


def test_a_repeat_replaces_the_attempt_it_repeats_in_the_verdict():
    job = record(1)
    shard = job.shards[0]
    run(shard.last, "cancelled", completed=4, watched=None)
    shard.attempts.append(Attempt(2, FULL, "k2", 10, file_id="file-0"))  # rebill_completed_requests
    run(shard.last, "completed", completed=10)
    assert [a.n for a in shard.chain()] == [2] and shard.succeeded == 10 and shard.failed == 0


def test_a_round_refused_for_tokens_and_repeated_is_still_one_round():
    job = record(1)
    shard = job.shards[0]
    run(shard.last, "expired", completed=6, carried=4)
    shard.attempts.append(Attempt(2, UNFINISHED, "k2", 4, file_id="f", resubmit_of=shard.last.batch_id))
    run(shard.last, "failed", error_codes=["token_limit_exceeded"])
    shard.attempts.append(Attempt(3, UNFINISHED, "k3", 4, file_id="f", resubmit_of=shard.attempts[0].batch_id))
    run(shard.last, "expired", completed=2)
    assert shard.rounds == 1 and [a.n for a in shard.chain()] == [1, 3]
    assert [a.kind for a in decide(job, policy(resubmit_unfinished=2), NOW).actions] == [RESUBMIT]
    assert isinstance(decide(job, policy(resubmit_unfinished=1), NOW).outcome, Stop)
