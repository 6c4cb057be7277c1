"""The OpenLineage facets each task reports, asked as the OpenLineage provider's listener asks a finished task
(``get_openlineage_facets_on_complete``); the events the real provider emits in a DAG run are checked in
tests/test_example_dags_and_import_cost.py."""

from __future__ import annotations

import json

import pytest
from airflow.sdk import DAG, task
from airflow.sdk.exceptions import TaskDeferred
from airflow.sdk.io import ObjectStoragePath

from airflow_provider_openai_batch.operators.batch import CreateBatchOperator
from airflow_provider_openai_batch.operators.results import BatchResultsOperator
from airflow_provider_openai_batch.triggers.batch import BatchTrigger
from tests.helpers import ENDPOINT, FakeStateStore, ctx, prompts, run


def lines(n: int) -> str:
    return "".join(
        json.dumps({"custom_id": item["custom_id"], "method": "POST", "url": ENDPOINT, "body": item["body"]}) + "\n"
        for item in prompts(n)
    )


def test_a_job_reports_its_input_file_its_batches_and_its_figures(openai_batch_connection, tmp_path):
    source = tmp_path / "in.jsonl"
    source.write_text(lines(4))
    op = CreateBatchOperator(
        task_id="create", input_file=str(source), wait_for_completion=True, poll_interval=0.05, max_requests_per_batch=2
    )
    ids = op.execute(ctx(FakeStateStore()))
    lineage = op.get_openlineage_facets_on_complete(None)
    assert [(d.namespace, d.name) for d in lineage.inputs] == [("file", str(source))]
    base = openai_batch_connection.base_url
    assert [(d.namespace, d.name) for d in lineage.outputs] == [(base, f"batches/{batch_id}") for batch_id in ids]
    facet = lineage.run_facets["openai_batch"]
    assert facet.batchIds == ids and facet.endpoint == ENDPOINT and facet.models == {"gpt-4o-mini": 2}
    assert facet.requestCounts == {"requests": 4, "completed": 4, "failed": 0}
    assert facet.totalTokens == facet.inputTokens + facet.outputTokens > 0 and facet.estimatedCostUsd > 0


def test_an_object_storage_input_is_named_by_its_store_and_key(openai_batch_connection, memory_store):
    path = ObjectStoragePath("memory://bucket/jobs/in.jsonl")
    path.write_text(lines(2))
    op = CreateBatchOperator(task_id="create", input_file="memory://bucket/jobs/in.jsonl")
    op.execute(ctx(FakeStateStore()))
    [dataset] = op.get_openlineage_facets_on_complete(None).inputs
    assert (dataset.namespace, dataset.name) == ("memory://bucket", "jobs/in.jsonl")


def test_request_dicts_are_lineaged_as_the_file_uploaded_for_them(openai_batch_connection):
    op = CreateBatchOperator(task_id="create", requests=prompts(2))
    context = ctx(FakeStateStore())
    op.execute(context)
    [dataset] = op.get_openlineage_facets_on_complete(None).inputs
    assert dataset.namespace == openai_batch_connection.base_url and dataset.name.startswith("files/file-")


def test_an_export_reports_its_batches_in_and_its_destination_out(openai_batch_connection, tmp_path):
    ids = CreateBatchOperator(
        task_id="create", requests=prompts(3, fail=1), wait_for_completion=True, poll_interval=0.05
    ).execute(ctx(FakeStateStore()))
    op = BatchResultsOperator(task_id="export", batch_id=ids, destination=tmp_path / "out.parquet")
    assert op.get_openlineage_facets_on_complete(None).outputs == []  # nothing exported yet: nothing claimed
    op.execute(ctx())
    lineage = op.get_openlineage_facets_on_complete(None)
    assert [(d.namespace, d.name) for d in lineage.inputs] == [(openai_batch_connection.base_url, f"batches/{ids}")]
    assert [(d.namespace, d.name) for d in lineage.outputs] == [("file", str(tmp_path / "out.parquet"))]
    facet = lineage.run_facets["openai_batch"]
    assert (
        facet.requestCounts["rows"] == 3 and facet.requestCounts["failed"] == 1 and facet.models == {"gpt-4o-mini": 3}
    )


def test_the_decorator_reports_the_file_its_function_returned_also_once_resumed(openai_batch_connection, tmp_path):
    source = tmp_path / "in.jsonl"
    source.write_text(lines(2))
    destination = tmp_path / "rows.jsonl"

    def build():
        with DAG("lineage", schedule=None):
            return task.openai_batch(task_id="rows", destination=str(destination), poll_interval=0.05)(
                lambda: str(source)
            )().operator

    state = FakeStateStore()
    with pytest.raises(TaskDeferred) as deferred:
        build().execute(ctx(state))
    payload = run(BatchTrigger(**json.loads(json.dumps(deferred.value.trigger.serialize()[1]))))
    resumed = build()  # another process: the function is not called, the file is known from the state store
    manifest = resumed.execute_complete(ctx(state), payload)
    lineage = resumed.get_openlineage_facets_on_complete(None)
    assert [(d.namespace, d.name) for d in lineage.inputs] == [("file", str(source))]
    assert [(d.namespace, d.name) for d in lineage.outputs] == [("file", str(destination))]
    facet = lineage.run_facets["openai_batch"]
    assert facet.batchIds == manifest["batch_ids"] and facet.endpoint == ENDPOINT
    assert facet.requestCounts["succeeded"] == 2 and facet.estimatedCostUsd == manifest["estimated_cost_usd"]
