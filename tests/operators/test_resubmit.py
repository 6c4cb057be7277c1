"""CreateBatchOperator(resubmit_unfinished=N): only the requests that did not finish are sent again, each
round its own batch, and a request that succeeded is never billed twice."""

from __future__ import annotations

import io
import json

import pytest
from airflow.sdk.exceptions import AirflowFailException, TaskDeferred

from airflow_provider_openai_batch.hooks.batch import OpenAIBatchHook
from airflow_provider_openai_batch.jobs.unfinished import is_transient
from airflow_provider_openai_batch.models import ResultRecord
from airflow_provider_openai_batch.operators.batch import CreateBatchOperator
from tests.helpers import FakeStateStore, ctx, prompts


def create(requests=None, **kwargs) -> CreateBatchOperator:
    kwargs.setdefault("wait_for_completion", True)
    kwargs.setdefault("poll_interval", 0.05)
    return CreateBatchOperator(task_id="create", requests=requests or prompts(6), **kwargs)


def input_ids(batch_id: str) -> list[str]:
    with OpenAIBatchHook() as hook:
        batch = hook.retrieve_batch(batch_id)
        buffer = io.BytesIO()
        hook.download_file(str(batch.input_file_id), buffer)
    return [json.loads(line)["custom_id"] for line in buffer.getvalue().splitlines() if line.strip()]


def terminal_event(batch_id: str) -> dict:
    with OpenAIBatchHook() as hook:
        batch = hook.retrieve_batch(batch_id).model_dump(mode="json")
    return {"status": "terminal", "batch_id": batch_id, "batch": batch, "message": "done"}


def first_round_expired(emulator, resubmit_unfinished: int):
    """A deferrable create whose first batch the emulator then expires part-way (some done, the rest
    ``batch_expired``): the operator, its context and state store, the deferral, and the expired batch."""
    emulator.configure(phase_seconds=30)
    store = FakeStateStore()
    context = ctx(state=store, try_number=1)
    op = create(resubmit_unfinished=resubmit_unfinished, deferrable=True)
    with pytest.raises(TaskDeferred) as first:
        op.execute(context)
    expired = emulator.force_status(first.value.trigger.batch_id, "expired")
    return op, context, store, first.value, expired


@pytest.mark.parametrize(
    ("line", "transient"),
    [
        ({"custom_id": "a", "response": {"status_code": 200, "body": {}}}, False),
        ({"custom_id": "a", "response": {"status_code": 400, "body": {"error": {}}}}, False),
        ({"custom_id": "a", "response": {"status_code": 429, "body": {"error": {}}}}, True),
        ({"custom_id": "a", "response": {"status_code": 503, "body": {"error": {}}}}, True),
        ({"custom_id": "a", "response": None, "error": {"code": "batch_expired", "message": "late"}}, True),
        ({"custom_id": "a", "response": None, "error": {"code": "invalid_prompt", "message": "no"}}, False),
    ],
)
def test_only_what_a_repeat_may_cure_is_transient(line, transient):
    assert is_transient(ResultRecord.model_validate(line)) is transient


def test_an_expired_batch_is_followed_by_a_round_of_exactly_its_unfinished_requests(openai_batch_connection):
    emulator = openai_batch_connection
    op, context, _, first, expired = first_round_expired(emulator, 2)
    round_one = first.trigger.batch_id
    done = expired["request_counts"]["completed"]
    assert 0 < done < 6
    with pytest.raises(TaskDeferred) as second:
        op.execute_complete(context, terminal_event(round_one))
    round_two = second.value.trigger.batch_id
    assert round_two != round_one and context["ti"].xcom["batch_ids"] == [round_one, round_two]
    with OpenAIBatchHook() as hook:
        finished = {r.custom_id for r in hook.iter_results(round_one) if r.ok}
    assert len(finished) == done
    assert sorted(input_ids(round_two)) == sorted({f"p{i}" for i in range(6)} - finished)
    emulator.force_status(round_two, "completed")
    assert op.execute_complete(context, terminal_event(round_two)) == round_two
    assert context["ti"].xcom["batch_ids"] == [round_one, round_two]
    assert emulator.stats()["batches_created"] == 2


def test_rounds_stop_at_the_limit_and_the_last_round_is_judged(openai_batch_connection):
    emulator = openai_batch_connection
    op, context, _, first, _ = first_round_expired(emulator, 1)
    with pytest.raises(TaskDeferred) as second:
        op.execute_complete(context, terminal_event(first.trigger.batch_id))
    emulator.force_status(second.value.trigger.batch_id, "expired")
    with pytest.raises(AirflowFailException, match="expired"):  # no round left: the end is judged
        op.execute_complete(context, terminal_event(second.value.trigger.batch_id))
    assert emulator.stats()["batches_created"] == 2


def test_a_request_refused_for_good_is_not_sent_again(openai_batch_connection):
    """A 400-class answer (here: an unknown model) would be refused again: it is a result, not unfinished."""
    context = ctx()
    batch_id = create(requests=prompts(4, fail=1), resubmit_unfinished=3, deferrable=False).execute(context)
    assert context["ti"].xcom["batch_ids"] == [batch_id]
    assert openai_batch_connection.stats()["batches_created"] == 1


def test_a_retry_after_an_expired_round_reruns_only_the_unfinished_instead_of_failing(openai_batch_connection):
    emulator = openai_batch_connection
    emulator.configure(phase_seconds=30)
    store = FakeStateStore()
    first = CreateBatchOperator(task_id="create", requests=prompts(6)).execute(ctx(state=store, try_number=1))
    emulator.force_status(first, "expired")
    emulator.configure(phase_seconds=0.1)
    context = ctx(state=store, try_number=2)
    last = create(resubmit_unfinished=1, deferrable=False).execute(context)
    assert last != first and context["ti"].xcom["batch_ids"] == [first, last]
    with OpenAIBatchHook() as hook:
        finished = {r.custom_id for r in hook.iter_results(first) if r.ok}
    assert finished and not finished & set(input_ids(last))  # nothing that succeeded is sent again
    assert emulator.stats()["batches_created"] == 2


def test_resubmit_unfinished_is_checked_when_the_dag_is_parsed():
    with pytest.raises(ValueError, match="resubmit_unfinished must be a whole number"):
        create(resubmit_unfinished=-1)
    with pytest.raises(ValueError, match="resubmit_unfinished needs wait_for_completion=True"):
        create(resubmit_unfinished=1, wait_for_completion=False)


def test_transient_failures_are_rerun_until_they_succeed_and_nothing_is_billed_twice(openai_batch_connection):
    """Every request fails transiently (500 or 429) on its first attempt; round two sends all of them again
    and they succeed, except p3, refused for good (unknown model), which is not sent a third time although a
    round is left: each request is billed once (the emulator's requests_completed)."""
    emulator = openai_batch_connection
    emulator.configure(transient_failure_attempts=1)
    context = ctx(state=FakeStateStore())
    last = create(requests=prompts(8, fail=3), resubmit_unfinished=2, deferrable=False).execute(context)
    rounds = context["ti"].xcom["batch_ids"]
    assert len(rounds) == 2 and rounds[-1] == last
    assert sorted(input_ids(last)) == sorted(f"p{i}" for i in range(8))
    stats = emulator.stats()
    assert stats["batches_created"] == 2 and stats["requests_completed"] == 7


def test_a_part_way_expiry_is_finished_by_the_next_round(openai_batch_connection):
    emulator = openai_batch_connection
    emulator.configure(expire_after_fraction=0.5)
    context = ctx(state=FakeStateStore())
    # 10 -> 5 done, 5 -> 2 done, 3 -> 1 done, 2 -> 1 done: the rounds run out with one request unfinished,
    # and the last round's verdict (expired) fails the task.
    with pytest.raises(AirflowFailException, match="expired"):
        create(requests=prompts(10), resubmit_unfinished=3, deferrable=False).execute(context)
    rounds = context["ti"].xcom["batch_ids"]
    assert len(rounds) == 4 and emulator.stats()["requests_completed"] == 9


def unfinished_of(batch_id: str) -> set[str]:
    with OpenAIBatchHook() as hook:
        finished = {r.custom_id for r in hook.iter_results(batch_id) if r.ok}
    return {f"p{i}" for i in range(6)} - finished


def test_a_round_whose_create_failed_is_built_again_by_the_retry_never_the_whole_input(
    openai_batch_connection, monkeypatch
):
    """Round 2's upload or create fails (the API down past the retries, or the worker dies before the POST):
    the retry goes on from round 1's record and sends round 2 again, not the whole input."""
    from airflow_provider_openai_batch.exceptions import APIConnectionError

    emulator = openai_batch_connection
    op, context, store, first, _ = first_round_expired(emulator, 2)
    round_one = first.trigger.batch_id

    def down(*args, **kwargs):
        raise APIConnectionError("the API is down")

    real_create = OpenAIBatchHook.create_batch
    monkeypatch.setattr(OpenAIBatchHook, "create_batch", down)
    with pytest.raises(APIConnectionError):
        op.execute_complete(context, terminal_event(round_one))
    monkeypatch.setattr(OpenAIBatchHook, "create_batch", real_create)
    emulator.configure(phase_seconds=0.1)
    retry = ctx(state=store, try_number=2)
    last = create(resubmit_unfinished=2, deferrable=False).execute(retry)
    assert retry["ti"].xcom["batch_ids"] == [round_one, last]
    assert set(input_ids(last)) == unfinished_of(round_one)
    assert emulator.stats()["batches_created"] == 2


def test_a_later_round_that_failed_is_built_again_from_the_round_before(openai_batch_connection):
    """Round 2 failed at validation (nothing billed); after a clear the retry builds round 2 again from round
    1's unfinished requests, never the whole input whose finished requests round 1 billed."""
    emulator = openai_batch_connection
    op, context, store, first, _ = first_round_expired(emulator, 2)
    round_one = first.trigger.batch_id
    with pytest.raises(TaskDeferred) as second:
        op.execute_complete(context, terminal_event(round_one))
    failed_round = second.value.trigger.batch_id
    emulator.force_status(failed_round, "failed")
    emulator.configure(phase_seconds=0.1)
    retry = ctx(state=store, try_number=2)
    last = create(resubmit_unfinished=2, deferrable=False).execute(retry)
    assert last not in (round_one, failed_round)
    assert retry["ti"].xcom["batch_ids"] == [round_one, failed_round, last]
    assert set(input_ids(last)) == unfinished_of(round_one)
    assert emulator.stats()["batches_created"] == 3
