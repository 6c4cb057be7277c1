"""The hook, the trigger's async client, the operators, the sensor (deferred, through the trigger) and the
results export against the emulator's Azure flavor, on both path shapes, unchanged from OpenAI's use."""

from __future__ import annotations

import asyncio
import json

import pytest
from airflow.sdk.exceptions import TaskDeferred

from airflow_provider_openai_batch.exceptions import AuthenticationError, BatchValidationError, NotFoundError
from airflow_provider_openai_batch.hooks.async_client import AsyncBatchClient, close_shared_session
from airflow_provider_openai_batch.hooks.batch import OpenAIBatchHook
from airflow_provider_openai_batch.operators.batch import CreateBatchOperator
from airflow_provider_openai_batch.operators.results import BatchResultsOperator
from airflow_provider_openai_batch.sensors.batch import BatchSensor
from airflow_provider_openai_batch.testing import connection_json
from tests.helpers import ctx, prompts, run


def test_the_hook_runs_a_batch_and_reads_its_results(azure_connection):
    data = b"".join(
        json.dumps(
            {
                "custom_id": f"r{i}",
                "method": "POST",
                "url": "/chat/completions",
                "body": {"model": "my-deployment", "messages": [{"role": "user", "content": "hi"}]},
            }
        ).encode()
        + b"\n"
        for i in range(3)
    )
    with OpenAIBatchHook() as hook:
        uploaded = hook.upload_file(data)
        # An OpenAI-style endpoint is sent in Azure's shape, so the same DAG code works on both.
        batch = hook.create_batch(uploaded.id, "/v1/chat/completions", idempotency_key="k-1")
        assert batch.endpoint == "/chat/completions" and batch.http.status_code == 201
        assert batch.http.request_id == batch.http.headers["apim-request-id"]
        assert hook.find_batch_by_idempotency_key("k-1").id == batch.id
        done = hook.wait_for_batch(batch.id, poll_interval=0.05, timeout=60)
        assert done.status == "completed"
        results = hook.get_results(done)
        assert sorted(results) == ["r0", "r1", "r2"] and all(r.ok for r in results.values())
        assert hook.delete_file(uploaded.id).deleted
    stats = azure_connection.stats()
    assert stats["auth"]["api-key"] == sum(stats["requests"].values()) and "bearer" not in stats["auth"]


def test_errors_keep_their_meaning_on_azure(azure_connection):
    with OpenAIBatchHook() as hook:
        with pytest.raises(NotFoundError) as missing:
            hook.retrieve_batch("batch_nope")
        assert missing.value.request_id
        azure_connection.configure(api_key="another-key")
        with pytest.raises(AuthenticationError) as refused:
            hook.list_batches()
    assert refused.value.code == "401" and "invalid subscription key" in refused.value.message
    assert refused.value.request_id and "test-key" not in str(refused.value)


def test_a_429_is_retried_on_azure_as_on_openai(azure_connection, monkeypatch):
    azure_connection.configure(fault_script=["429", "429"], retry_after=0.01)
    with OpenAIBatchHook(max_retries=2) as hook:
        assert hook.list_batches().object == "list"
    assert azure_connection.stats()["faults"] == {"429": 2}


def test_the_async_client_speaks_both_shapes(azure_connection):
    azure_connection.configure(phase_seconds=60)  # still running when cancelled, however slow the machine
    with OpenAIBatchHook() as hook:
        settings = hook.settings
        batch_id = hook.create_batch(
            hook.upload_file(
                b'{"custom_id": "a", "method": "POST", "url": "/chat/completions", "body": {"model": "d"}}\n'
            ).id,
            "/chat/completions",
        ).id

    async def poll() -> tuple[str, str]:
        client = AsyncBatchClient(settings)
        try:
            got = await client.retrieve_batch(batch_id)
            cancelled = await client.cancel_batch(batch_id)
            return got.id, cancelled.status
        finally:
            await close_shared_session()

    assert asyncio.run(poll()) == (batch_id, "cancelling")


def test_operators_sensor_trigger_and_results_work_unchanged(azure_connection, tmp_path):
    azure_connection.configure(phase_seconds=0.3)
    context = ctx()
    # The OpenAI-shaped endpoint default and the usual requests: nothing Azure-specific in the task.
    create = CreateBatchOperator(task_id="create", requests=prompts(4))
    batch_id = create.execute(context)
    assert create.endpoint == "/chat/completions"
    sensor = BatchSensor(task_id="wait", batch_id=batch_id, poll_interval=0.1, timeout=120)
    with pytest.raises(TaskDeferred) as deferred:
        sensor.execute(ctx())
    event = run(deferred.value.trigger, timeout=120)
    assert event["status"] == "terminal" and event["batch"]["status"] == "completed"
    finished = sensor.execute_complete(ctx(), event)
    assert finished["request_counts"]["completed"] == 4
    destination = tmp_path / "results.jsonl"
    manifest = BatchResultsOperator(task_id="export", batch_id=batch_id, destination=str(destination)).execute(ctx())
    assert manifest["rows"] == 4 and manifest["counts"]["succeeded"] == 4
    rows = [json.loads(row) for row in destination.read_text().splitlines()]
    assert [r["custom_id"] for r in rows] == ["p0", "p1", "p2", "p3"]
    assert all(r["output_text"] for r in rows)  # read from the answers although Azure's endpoint has no /v1


def test_the_pre_flight_speaks_azures_rules(azure_connection, tmp_path):
    two_deployments = [{"custom_id": "a", "body": {"model": "dep-1"}}, {"custom_id": "b", "body": {"model": "dep-2"}}]
    with pytest.raises(BatchValidationError, match="line 2: model 'dep-2' differs from 'dep-1' on line 1"):
        CreateBatchOperator(task_id="create", requests=two_deployments).execute(ctx())
    path = tmp_path / "in.jsonl"
    path.write_text(json.dumps({"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": {}}) + "\n")
    with pytest.raises(BatchValidationError, match="azure lines' url is written without /v1"):
        CreateBatchOperator(task_id="create", input_file=str(path)).execute(ctx())
    with pytest.raises(ValueError, match="endpoint must be one of /chat/completions, /embeddings, /responses"):
        CreateBatchOperator(task_id="create", endpoint="/v1/moderations", requests=prompts()).execute(ctx())
    assert azure_connection.stats()["files_uploaded"] == 0  # refused before anything was uploaded


def test_an_openai_compatible_server_takes_any_endpoint_path_and_the_usual_bearer(openai_batch_emulator, monkeypatch):
    """``api_type: openai_compatible``: OpenAI's wire format at the server's own base URL, any endpoint path the
    server serves (here the emulator playing OpenAI), the Bearer key, OpenAI's line limit."""
    monkeypatch.setenv(
        "AIRFLOW_CONN_OPENAI_DEFAULT", connection_json(openai_batch_emulator, {"api_type": "openai_compatible"})
    )
    create = CreateBatchOperator(
        task_id="create", requests=prompts(2), wait_for_completion=True, deferrable=False, poll_interval=0.05
    )
    create.execute(ctx())
    with OpenAIBatchHook() as hook:
        assert hook.rules.api_type == "openai_compatible" and hook.rules.endpoints is None
        assert hook.settings.headers()["Authorization"] == "Bearer test-key"
        assert hook.list_batches().data[0].request_counts.completed == 2
