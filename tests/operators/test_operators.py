"""Operators and sensor against the emulator with a minimal task-instance context."""

from __future__ import annotations

import json

import pytest
from airflow.sdk.exceptions import AirflowFailException

from airflow_provider_openai_batch.exceptions import BatchNotSuccessfulError, BatchValidationError
from airflow_provider_openai_batch.links import OpenAIBatchLink, batch_url
from airflow_provider_openai_batch.operators.batch import (
    CancelBatchOperator,
    CreateBatchOperator,
    write_requests_jsonl,
)
from airflow_provider_openai_batch.sensors.batch import BatchSensor
from tests.helpers import ENDPOINT, created, ctx, prompts, run


def test_create_from_requests_pushes_id_batch_and_link(openai_batch_connection):
    context = ctx()
    batch_id = CreateBatchOperator(task_id="create", requests=prompts()).execute(context)
    ti = context["ti"]
    # Without wait_for_completion the task returns once its batch passed validation (where a batch over the
    # enqueued-token limit is refused): no refusal can come any more.
    assert ti.xcom["batch"]["id"] == batch_id and ti.xcom["batch"]["status"] != "validating"
    assert ti.xcom["batch"]["metadata"]["airflow_idempotency_key"]
    # Not OpenAI's base URL: the link shows the batch on the plugin's "OpenAI Batches" page of the Airflow UI
    # (checked in a browser by tests/e2e); no other server is known to have a page a browser can open.
    page = f"/plugin/openai-batches/openai-batches/?conn_id=openai_default&batch_id={batch_id}"
    assert ti.xcom[OpenAIBatchLink().xcom_key] == page
    # The creating task instance is recorded in the batch's metadata, next to the idempotency key.
    assert {k: v for k, v in ti.xcom["batch"]["metadata"].items() if k != "airflow_idempotency_key"} == {
        "airflow_dag_id": "dag",
        "airflow_task_id": "create",
        "airflow_run_id": "manual__1",
        "airflow_map_index": "-1",
    }


@pytest.mark.parametrize(
    ("base_url", "expected"),
    [
        ("https://api.openai.com/v1", "https://platform.openai.com/batches/batch_1"),
        ("https://api.openai.com/v1/", "https://platform.openai.com/batches/batch_1"),
        ("http://127.0.0.1:8089/v1", "/plugin/openai-batches/openai-batches/?conn_id=c&batch_id=batch_1"),
        ("https://llm.example.com/openai/v1", "/plugin/openai-batches/openai-batches/?conn_id=c&batch_id=batch_1"),
    ],
)
def test_extra_link_url(base_url, expected):
    assert batch_url(base_url, "batch_1", "c") == expected


@pytest.mark.parametrize("link", ["airflow", "unknown"])
def test_extra_link_follows_the_back_ends_link_rule(link):
    # An Azure or compatible connection pointed at OpenAI's host (a proxy, a misconfiguration) still gets the
    # Airflow page: only the openai back end's rule sends a person to OpenAI's dashboard.
    url = batch_url("https://api.openai.com/v1", "batch_1", "c", link=link)
    assert url == "/plugin/openai-batches/openai-batches/?conn_id=c&batch_id=batch_1"


def test_extra_link_uses_the_airflow_base_url(monkeypatch):
    monkeypatch.setenv("AIRFLOW__API__BASE_URL", "https://airflow.example.com/team/")
    assert batch_url("http://127.0.0.1:8089/v1", "batch_1", "c") == (
        "https://airflow.example.com/team/plugin/openai-batches/openai-batches/?conn_id=c&batch_id=batch_1"
    )
    assert batch_url("https://api.openai.com/v1", "b") == "https://platform.openai.com/batches/b"


def test_shorthand_requests_and_input_file(openai_batch_connection, tmp_path):
    op = CreateBatchOperator(
        task_id="create",
        requests=[{"model": "m", "messages": []}],
        wait_for_completion=True,
        deferrable=False,
        poll_interval=0.05,
    )
    assert op.execute(ctx())
    path = tmp_path / "in.jsonl"
    path.write_text(json.dumps({"custom_id": "a", "method": "POST", "url": ENDPOINT, "body": {}}) + "\n")
    assert CreateBatchOperator(task_id="create2", input_file=str(path)).execute(ctx())
    assert openai_batch_connection.stats()["batches_created"] == 2


def test_bad_input_is_refused_before_anything_is_uploaded(openai_batch_connection, tmp_path):
    bad = [*prompts(2), {"custom_id": "p0", "body": {}}, {"custom_id": "x", "url": "/v1/embeddings", "body": {}}]
    with pytest.raises(BatchValidationError) as err:
        CreateBatchOperator(task_id="create", requests=bad).execute(ctx())
    assert "line 3: custom_id 'p0' is also used on line 1" in str(err.value)
    assert "line 4: url '/v1/embeddings' does not match" in str(err.value)
    path = tmp_path / "in.jsonl"
    path.write_text(
        "\n".join(
            [json.dumps({"custom_id": f"c{i}", "method": "POST", "url": ENDPOINT, "body": {}}) for i in range(6)]
            + ["{not json"]
        )
        + "\n"
    )
    with pytest.raises(BatchValidationError, match="line 7: not valid JSON"):
        CreateBatchOperator(task_id="create", input_file=path).execute(ctx())
    with pytest.raises(ValueError, match="endpoint must be one of"):
        CreateBatchOperator(task_id="create", requests=prompts(), endpoint="/v1/nope").execute(ctx())
    stats = openai_batch_connection.stats()
    assert stats["files_created"] == 0 and stats["batches_created"] == 0


def test_exactly_one_input_is_required():
    with pytest.raises(ValueError, match="exactly one of requests, input_file or input_file_id"):
        CreateBatchOperator(task_id="t", requests=prompts(), input_file_id="file-1")


def test_a_retried_try_reattaches_instead_of_billing_again(openai_batch_connection):
    first = CreateBatchOperator(task_id="create", requests=prompts()).execute(ctx(try_number=1))
    # The worker died right after the POST; the retry must find that batch, not create another.
    second = CreateBatchOperator(task_id="create", requests=prompts()).execute(ctx(try_number=2))
    assert first == second and openai_batch_connection.stats()["batches_created"] == 1
    # Another map index is another task instance, so another batch.
    third = CreateBatchOperator(task_id="create", requests=prompts()).execute(ctx(try_number=2, map_index=1))
    assert third != first and openai_batch_connection.stats()["batches_created"] == 2


def test_a_retry_after_a_failed_batch_creates_a_new_one(openai_batch_connection):
    """A batch refused at validation billed nothing: the retry makes a new one."""
    openai_batch_connection.configure(phase_seconds=30)
    (first,) = created(CreateBatchOperator(task_id="create", requests=prompts()), ctx(try_number=1))
    openai_batch_connection.force_status(first, "failed")  # while no try watched it
    ids = created(CreateBatchOperator(task_id="create", requests=prompts()), ctx(try_number=2))
    assert ids[0] == first and ids[1] != first and len(ids) == 2  # every attempt is listed, the new one last


def test_wait_polls_and_judges_partial_failures(openai_batch_connection):
    ok = CreateBatchOperator(
        task_id="create", requests=prompts(4, fail=0), wait_for_completion=True, deferrable=False, poll_interval=0.05
    )
    context = ctx()
    ok.execute(context)
    assert context["ti"].xcom["batch"]["request_counts"] == {"total": 4, "completed": 3, "failed": 1}
    strict = CreateBatchOperator(
        task_id="create",
        requests=prompts(4, fail=0),
        wait_for_completion=True,
        deferrable=False,
        poll_interval=0.05,
        max_failed_fraction=0.0,
    )
    # A final verdict: the batch will not change, so the task fails without its retries.
    with pytest.raises(AirflowFailException, match=r"25\.0% of the job's 4 requests failed.*not retried") as verdict:
        strict.execute(ctx(map_index=3))
    assert isinstance(verdict.value.__cause__, BatchNotSuccessfulError)


def test_deferrable_create_defers_with_an_absolute_deadline(openai_batch_connection):
    from airflow.sdk.exceptions import TaskDeferred

    op = CreateBatchOperator(
        task_id="create",
        requests=prompts(),
        wait_for_completion=True,
        deferrable=True,
        timeout=100,
        cancel_on_kill=True,
    )
    with pytest.raises(TaskDeferred) as deferred:
        op.execute(ctx())
    trigger = deferred.value.trigger
    _, kwargs = trigger.serialize()
    assert kwargs["cancel_on_kill"] and kwargs["end_time"] > 0 and deferred.value.method_name == "execute_complete"


def test_sensor_finished_batch_returns_without_deferring(openai_batch_connection):
    batch_id = CreateBatchOperator(
        task_id="create", requests=prompts(), wait_for_completion=True, deferrable=False, poll_interval=0.05
    ).execute(ctx())
    result = BatchSensor(task_id="wait", batch_id=batch_id).execute(ctx())
    assert result["status"] == "completed" and result["output_file_id"] and result["usage"]["total_tokens"] > 0


def test_sensor_defers_a_running_batch_and_judges_events(openai_batch_connection):
    from airflow.sdk.exceptions import AirflowSensorTimeout, TaskDeferred

    openai_batch_connection.configure(phase_seconds=30)
    (batch_id,) = created(CreateBatchOperator(task_id="create", requests=prompts()), ctx())
    sensor = BatchSensor(task_id="wait", batch_id=batch_id, timeout=60, cancel_on_timeout=True)
    with pytest.raises(TaskDeferred) as deferred:
        sensor.execute(ctx())
    assert deferred.value.trigger.end_time is not None
    failed = {
        "id": batch_id,
        "status": "failed",
        "request_counts": {},
        "errors": {"data": [{"code": "invalid_json_line", "message": "bad", "line": 7}]},
    }
    # A finished batch never changes: the verdict fails the task outright, no retry to wait for it again.
    with pytest.raises(AirflowFailException, match=r"line 7: \[invalid_json_line\] bad") as verdict:
        sensor.execute_complete(ctx(), {"status": "terminal", "batch": failed})
    assert isinstance(verdict.value.__cause__, BatchNotSuccessfulError)
    with pytest.raises(AirflowSensorTimeout):
        sensor.execute_complete(ctx(), {"status": "timeout", "message": "late", "batch": None})


def test_sensor_poke_mode(openai_batch_connection):
    openai_batch_connection.configure(phase_seconds=30)
    (batch_id,) = created(CreateBatchOperator(task_id="create", requests=prompts()), ctx())
    sensor = BatchSensor(task_id="wait", batch_id=batch_id, deferrable=False, mode="reschedule")
    assert sensor.poke(ctx()) is False
    openai_batch_connection.force_status(batch_id, "cancelled")
    with pytest.raises(AirflowFailException, match="cancelled"):
        sensor.poke(ctx())


def test_cancel_operator(openai_batch_connection):
    openai_batch_connection.configure(phase_seconds=30)
    (batch_id,) = created(CreateBatchOperator(task_id="create", requests=prompts()), ctx())
    openai_batch_connection.configure(phase_seconds=0.2)
    result = CancelBatchOperator(
        task_id="cancel", batch_id=batch_id, wait_for_completion=True, deferrable=False, poll_interval=0.05
    ).execute(ctx())
    assert result["status"] == "cancelled"
    again = CancelBatchOperator(task_id="cancel", batch_id=batch_id).execute(ctx())  # finished: logged, no error
    assert again["status"] == "cancelled"


def test_cancel_operator_defers_until_cancelled(openai_batch_connection):
    from airflow.sdk.exceptions import TaskDeferred

    openai_batch_connection.configure(phase_seconds=30)
    (batch_id,) = created(CreateBatchOperator(task_id="create", requests=prompts()), ctx())
    openai_batch_connection.configure(phase_seconds=0.3)  # still validating; cancelling will be quick
    cancel = CancelBatchOperator(
        task_id="cancel", batch_id=batch_id, wait_for_completion=True, deferrable=True, poll_interval=0.05
    )
    with pytest.raises(TaskDeferred) as deferred:
        cancel.execute(ctx())
    trigger = deferred.value.trigger
    assert trigger.batch_id == batch_id and trigger.end_time is not None
    assert run(trigger)["batch"]["status"] == "cancelled"  # cancelling takes one phase
    assert cancel.execute_complete(ctx(), run(trigger))["status"] == "cancelled"


def test_shorthand_keeps_line_keys_out_of_the_body(tmp_path):
    path = tmp_path / "in.jsonl"
    write_requests_jsonl([{"custom_id": "mine", "model": "m", "messages": []}, {"model": "m"}], ENDPOINT, str(path))
    first, second = (json.loads(line) for line in path.read_text().splitlines())
    assert first == {"custom_id": "mine", "body": {"model": "m", "messages": []}, "method": "POST", "url": ENDPOINT}
    assert second["custom_id"] == "request-2" and second["body"] == {"model": "m"}


def test_a_retry_never_reattaches_to_a_batch_being_cancelled(openai_batch_connection):
    from airflow_provider_openai_batch.hooks.batch import OpenAIBatchHook

    openai_batch_connection.configure(phase_seconds=30)
    (first,) = created(CreateBatchOperator(task_id="create", requests=prompts()), ctx(try_number=1))
    with OpenAIBatchHook() as hook:
        assert hook.cancel_batch(first).status == "cancelling"  # a user killed the task with cancel_on_kill
    openai_batch_connection.configure(phase_seconds=0.3)  # the cancel now completes in 0.3 s
    # The retry waits for the cancel to end, then decides: it ended while no try watched it and billed
    # nothing, so a new batch.
    context = ctx(try_number=2)
    second = CreateBatchOperator(task_id="create", requests=prompts(), poll_interval=0.1).execute(context)
    assert second != first and context["ti"].xcom["batch_ids"] == [first, second]


def test_a_cleared_task_reattaches_only_when_its_input_is_unchanged(openai_batch_connection):
    first = CreateBatchOperator(task_id="create", requests=prompts(3)).execute(ctx(try_number=1))
    openai_batch_connection.force_status(first, "completed")
    same = CreateBatchOperator(task_id="create", requests=prompts(3)).execute(ctx(try_number=2))
    changed = CreateBatchOperator(task_id="create", requests=prompts(4)).execute(ctx(try_number=3))
    assert same == first  # same input: its results are already paid for
    assert changed != first and openai_batch_connection.stats()["batches_created"] == 2


@pytest.mark.parametrize(("status", "file_kept"), [(400, False), (401, False), (429, False), (500, True), (503, True)])
def test_an_upload_is_deleted_when_a_create_is_refused(openai_batch_connection, monkeypatch, status, file_kept):
    from airflow_provider_openai_batch.api import error_from_response
    from airflow_provider_openai_batch.exceptions import APIError
    from airflow_provider_openai_batch.hooks.batch import OpenAIBatchHook

    def refuse(*args, **kwargs):
        raise error_from_response(status, {}, b'{"error": {"message": "no"}}')

    monkeypatch.setattr(OpenAIBatchHook, "create_batch", refuse)
    with pytest.raises(APIError):
        CreateBatchOperator(task_id="create", requests=prompts()).execute(ctx())
    # After a 5xx the batch may exist after all, and it would need its input file.
    assert openai_batch_connection.stats()["files"] == (1 if file_kept else 0)


def test_on_kill_cancels_quietly_even_when_the_batch_already_ended(openai_batch_connection, capfd):
    openai_batch_connection.configure(phase_seconds=30)
    op = CreateBatchOperator(task_id="create", requests=prompts(), cancel_on_kill=True)
    (batch_id,) = created(op, ctx())
    sensor = BatchSensor(task_id="wait", batch_id=batch_id, deferrable=False, cancel_on_kill=True)
    op.on_kill()
    assert openai_batch_connection.stats()["requests"]["POST /v1/batches/{id}/cancel"] == 1
    openai_batch_connection.force_status(batch_id, "completed")
    op.on_kill()  # 409 from the API: logged, not raised
    sensor.on_kill()
    assert capfd.readouterr().out.count("Could not cancel batch") == 2
    untouched = CreateBatchOperator(task_id="create", requests=prompts(), cancel_on_kill=False)
    created(untouched, ctx(map_index=1))
    untouched.on_kill()
    assert openai_batch_connection.stats()["requests"]["POST /v1/batches/{id}/cancel"] == 3


def test_a_refused_create_never_deletes_a_file_the_user_gave(openai_batch_connection, monkeypatch):
    from airflow_provider_openai_batch.api import error_from_response
    from airflow_provider_openai_batch.exceptions import InvalidRequestError
    from airflow_provider_openai_batch.hooks.batch import OpenAIBatchHook

    file_id = OpenAIBatchHook().upload_file(b'{"custom_id": "a", "method": "POST", "url": "x", "body": {}}\n').id

    def refuse(*args, **kwargs):
        raise error_from_response(400, {}, b'{"error": {"message": "no"}}')

    monkeypatch.setattr(OpenAIBatchHook, "create_batch", refuse)
    with pytest.raises(InvalidRequestError):
        CreateBatchOperator(task_id="create", input_file_id=file_id).execute(ctx())
    assert OpenAIBatchHook().retrieve_file(file_id).id == file_id


def test_a_store_that_cannot_tell_its_size_is_checked_while_read():
    import hashlib
    import io

    from airflow_provider_openai_batch.operators.batch import check_input_file

    content = (json.dumps({"custom_id": "a", "method": "POST", "url": ENDPOINT, "body": {}}) + "\n").encode()

    class Remote:  # the parts of an ObjectStoragePath the pre-flight uses
        fs = object()

        def stat(self):
            raise OSError("size unknown")

        def open(self, mode):
            return io.BytesIO(content)

    assert check_input_file(Remote(), ENDPOINT) == hashlib.sha256(content).hexdigest()


def test_an_input_can_expire_on_its_own_at_the_api(openai_batch_connection):
    """Storage hygiene: the Files API's expires_after on the upload, so inputs do not pile up."""
    from airflow_provider_openai_batch.hooks.batch import OpenAIBatchHook

    context = ctx()
    CreateBatchOperator(task_id="create", requests=prompts(), input_expires_after=7200).execute(context)
    with OpenAIBatchHook() as hook:
        uploaded = hook.retrieve_file(context["ti"].xcom["batch"]["input_file_id"])
    assert uploaded.expires_at == uploaded.created_at + 7200
    with pytest.raises(ValueError, match=r"input_expires_after\.seconds must be an integer from 3600"):
        CreateBatchOperator(task_id="create", requests=prompts(), input_expires_after=60).execute(ctx())
