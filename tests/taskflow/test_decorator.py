"""``@task.openai_batch`` against the emulator: prompts in, one validated row per prompt out, through the same
job engine and export as the operators, a deferral that never calls the function again, and retries that
re-attach."""

from __future__ import annotations

import json
from typing import Any

import pytest
from airflow.sdk import DAG, task
from airflow.sdk.exceptions import TaskDeferred
from pydantic import BaseModel

from airflow_provider_openai_batch.decorators.openai_batch import OpenAIBatchDecoratedOperator, openai_batch_task
from airflow_provider_openai_batch.results import read_rows
from airflow_provider_openai_batch.triggers.batch import BatchTrigger
from tests.helpers import FakeStateStore, ctx, run


class Review(BaseModel):
    sentiment: str
    score: float
    tags: list[str]


def make(function: Any, **settings: Any) -> OpenAIBatchDecoratedOperator:
    """The operator ``@task.openai_batch(**settings)`` makes of ``function`` in a DAG."""
    settings.setdefault("poll_interval", 0.05)
    settings.setdefault("deferrable", False)
    settings.setdefault("task_id", "answers")
    with DAG("taskflow_test", schedule=None):
        return task.openai_batch(**settings)(function)().operator


def test_the_decorator_is_registered_as_task_openai_batch():
    from airflow_provider_openai_batch.get_provider_info import get_provider_info

    assert task.openai_batch is openai_batch_task  # found by airflow.sdk through the provider info

    assert get_provider_info()["task-decorators"] == [
        {
            "name": "openai_batch",
            "class-name": "airflow_provider_openai_batch.decorators.openai_batch.openai_batch_task",
        }
    ]


def test_prompts_in_validated_rows_out_in_prompt_order(openai_batch_connection, tmp_path):
    calls = []

    def prompts() -> list[str]:
        calls.append(1)
        return [f"Review product {i}" for i in range(5)]

    destination = tmp_path / "reviews.jsonl"
    op = make(prompts, model="gpt-4o-mini", output_type=Review, destination=str(destination), system_prompt="Be terse")
    context = ctx(FakeStateStore())
    manifest = op.execute(context)
    assert calls == [1]
    assert manifest["rows"] == 5 and manifest["counts"]["succeeded"] == 5 and manifest["counts"]["invalid_output"] == 0
    assert manifest["destination"] == destination.as_uri() and context["ti"].xcom["batch_ids"]
    rows = list(read_rows(manifest))
    assert [(r["index"], r["custom_id"], r["status"]) for r in rows] == [
        (i, f"request-{i + 1}", "succeeded") for i in range(5)
    ]
    for row in rows:
        Review.model_validate(row["output"])  # the parsed answer, valid for the output type
        assert json.loads(row["output_text"]) == row["output"]
    # The same request gets the same document; different prompts get different ones.
    assert len({json.dumps(r["output"], sort_keys=True) for r in rows}) == 5


def test_every_request_asks_for_the_strict_schema_with_model_system_prompt_and_params(
    openai_batch_connection, tmp_path
):
    import io

    from airflow_provider_openai_batch.hooks.batch import OpenAIBatchHook

    op = make(
        lambda: ["one", {"prompt": "Say {word}", "variables": {"word": "two"}, "custom_id": "mine"}],
        model="gpt-4o-mini",
        output_type=Review,
        system_prompt="Be terse",
        request_params={"temperature": 0},
        destination=str(tmp_path / "out.jsonl"),
    )
    context = ctx(FakeStateStore())
    op.execute(context)
    with OpenAIBatchHook() as hook:
        batch = hook.retrieve_batch(context["ti"].xcom["batch_ids"][0])
        buffer = io.BytesIO()
        hook.download_file(str(batch.input_file_id), buffer)
    lines = [json.loads(line) for line in buffer.getvalue().splitlines()]
    assert [line["custom_id"] for line in lines] == ["request-1", "mine"]
    body = lines[1]["body"]
    assert body["model"] == "gpt-4o-mini" and body["temperature"] == 0
    assert body["messages"] == [{"role": "system", "content": "Be terse"}, {"role": "user", "content": "Say two"}]
    spec = body["response_format"]["json_schema"]
    assert body["response_format"]["type"] == "json_schema" and spec["strict"] is True and spec["name"] == "Review"
    assert spec["schema"]["additionalProperties"] is False and spec["schema"]["required"] == [
        "sentiment",
        "score",
        "tags",
    ]


def test_answers_that_do_not_validate_are_invalid_output_rows_counted_apart(openai_batch_connection, tmp_path):
    op = make(
        lambda: [{"prompt": f"p{i}"} for i in range(3)],
        model="badjson-schema",
        output_type=Review,
        destination=str(tmp_path / "bad.jsonl"),
    )
    manifest = op.execute(ctx(FakeStateStore()))
    assert manifest["counts"]["invalid_output"] == 3 and manifest["counts"]["failed"] == 0
    assert manifest["counts"]["succeeded"] == 0
    for row in read_rows(manifest):
        assert row["status"] == "invalid_output" and row["output"] is None
        assert row["output_text"] and "does not match output_type" in row["error_message"]
        assert "sentiment: Field required" in row["error_message"]


def test_answers_that_do_not_parse_are_invalid_output_on_the_responses_endpoint(openai_batch_connection, tmp_path):
    op = make(
        lambda: ["a", "b"],
        model="badjson",
        endpoint="/v1/responses",
        output_type=list[str],
        destination=str(tmp_path / "bad.jsonl"),
    )
    manifest = op.execute(ctx(FakeStateStore()))
    assert manifest["counts"]["invalid_output"] == 2
    assert all("not valid JSON" in row["error_message"] for row in read_rows(manifest))


def test_responses_endpoint_with_a_typed_list_output(openai_batch_connection, tmp_path):
    op = make(
        lambda: ["name three colours"],
        model="gpt-4o-mini",
        endpoint="/v1/responses",
        output_type=list[str],
        system_prompt="Answer in JSON",
        destination=str(tmp_path / "out.jsonl"),
    )
    [row] = read_rows(op.execute(ctx(FakeStateStore())))
    assert row["status"] == "succeeded" and isinstance(row["output"], list)
    assert all(isinstance(item, str) for item in row["output"])


def test_embeddings_land_in_parquet_as_float_lists(openai_batch_connection, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    def inputs():
        yield "one input"
        yield {"input": ["first", "second", "third"], "custom_id": "several"}

    destination = tmp_path / "vectors.parquet"
    op = make(inputs, model="text-embedding-3-small", endpoint="/v1/embeddings", destination=str(destination))
    manifest = op.execute(ctx(FakeStateStore()))
    assert manifest["format"] == "parquet" and manifest["counts"]["succeeded"] == 2
    table = pq.read_table(destination)
    assert table.schema.field("embedding").type == pa.list_(pa.float32())
    assert table.schema.field("embeddings").type == pa.list_(pa.list_(pa.float32()))
    one, several = table.to_pylist()
    assert len(one["embedding"]) == 8 and one["embeddings"] is None
    assert several["embedding"] is None and [len(v) for v in several["embeddings"]] == [8, 8, 8]
    rows = list(read_rows(manifest))
    assert rows[0]["embedding"] == pytest.approx(one["embedding"]) and isinstance(rows[1]["response"], dict)


def test_a_generator_is_consumed_once_and_never_held(openai_batch_connection, tmp_path):
    consumed = []

    def prompts():
        for i in range(30):
            consumed.append(i)
            yield f"prompt {i}"

    op = make(prompts, model="gpt-4o-mini", max_requests_per_batch=10, destination=str(tmp_path / "o.jsonl"))
    manifest = op.execute(ctx(FakeStateStore()))
    assert consumed == list(range(30)) and len(manifest["batch_ids"]) == 3
    assert [r["index"] for r in read_rows(manifest)] == list(range(30))


def test_a_returned_jsonl_file_is_read_line_by_line(openai_batch_connection, tmp_path):
    source = tmp_path / "in.jsonl"
    source.write_text(
        json.dumps({"custom_id": "x", "body": {"messages": [{"role": "user", "content": "hi"}]}})
        + "\n"
        + json.dumps({"custom_id": "y", "prompt": "hello"})
        + "\n"
    )
    op = make(lambda: source.as_uri(), model="gpt-4o-mini", destination=str(tmp_path / "o.jsonl"))
    manifest = op.execute(ctx(FakeStateStore()))
    assert [(r["custom_id"], r["status"]) for r in read_rows(manifest)] == [("x", "succeeded"), ("y", "succeeded")]
    assert op._input_uri == source.as_uri()


def test_resuming_after_a_deferral_never_calls_the_function_again(openai_batch_connection, tmp_path):
    calls = []

    def prompts() -> list[str]:
        calls.append(1)
        return ["a", "b", "c"]

    op = make(prompts, model="gpt-4o-mini", deferrable=True, destination=str(tmp_path / "o.jsonl"))
    state = FakeStateStore()
    with pytest.raises(TaskDeferred) as deferred:
        op.execute(ctx(state))
    # The resumed task is another process: a fresh operator, the same task state store.
    resumed = make(prompts, model="gpt-4o-mini", deferrable=True, destination=str(tmp_path / "o.jsonl"))
    trigger = deferred.value.trigger
    payload = run(BatchTrigger(**json.loads(json.dumps(trigger.serialize()[1]))))
    manifest = resumed.execute_complete(ctx(state), payload)
    assert calls == [1]
    assert manifest["rows"] == 3 and manifest["counts"]["succeeded"] == 3
    assert openai_batch_connection.stats()["batches_created"] == 1


def test_a_resume_without_the_job_record_fails_and_asks_for_a_retry(openai_batch_connection, tmp_path):
    from airflow_provider_openai_batch.exceptions import OpenAIBatchError

    op = make(lambda: ["a"], model="gpt-4o-mini", deferrable=True, destination=str(tmp_path / "o.jsonl"))
    with pytest.raises(TaskDeferred) as deferred:
        op.execute(ctx(FakeStateStore()))
    payload = run(BatchTrigger(**json.loads(json.dumps(deferred.value.trigger.serialize()[1]))))
    with pytest.raises(OpenAIBatchError, match="resumed without its job record"):
        op.execute_complete(ctx(FakeStateStore()), payload)


def test_a_retry_calls_the_function_again_and_reattaches_to_the_same_input(openai_batch_connection, tmp_path):
    calls = []

    def prompts() -> list[str]:
        calls.append(1)
        return ["a", "b"]

    state = FakeStateStore()
    first = make(prompts, model="gpt-4o-mini", destination=str(tmp_path / "o.jsonl"))
    first.execute(ctx(state))
    second = make(prompts, model="gpt-4o-mini", destination=str(tmp_path / "o.jsonl"))
    manifest = second.execute(ctx(state, try_number=2))
    assert calls == [1, 1] and manifest["rows"] == 2
    assert openai_batch_connection.stats()["batches_created"] == 1  # the retry billed nothing again


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"endpoint": "/v1/embeddings", "output_type": Review}, "output_type needs /v1/chat/completions or /v1/"),
        ({"endpoint": "/v1/embeddings", "system_prompt": "x"}, "system_prompt needs .* /v1/embeddings has no use"),
        ({"endpoint": "/v1/completions", "output_type": Review}, "output_type needs"),
        ({"output_type": dict[str, int]}, "free-form keys"),
        ({"destination": "relative/out.jsonl"}, "relative path"),
        ({"wait_for_completion": False}, "always waits"),
        ({"requests": [{"a": 1}]}, "requests is what the decorated function returns"),
        ({"request_params": ["x"]}, "request_params must be a dict"),
    ],
)
def test_bad_arguments_are_refused_when_the_dag_is_parsed(settings, message, tmp_path):
    settings.setdefault("destination", str(tmp_path / "o.jsonl"))
    with pytest.raises(ValueError, match=message):
        make(lambda: ["a"], model="m", **settings)


@pytest.mark.parametrize(
    ("returned", "message"),
    [
        (None, "returned None"),
        ([], "returned no requests"),
        ({"prompt": "x"}, "returned a dict"),
        ([1], "item 0 the function returned is a int"),
        ([{"prompt": "x", "temperature": 1}], "beside 'prompt'"),
        ([{"prompt": "{missing}", "variables": {}}], "uses {missing}"),
    ],
)
def test_what_the_function_returns_is_checked_before_anything_is_uploaded(
    returned, message, openai_batch_connection, tmp_path
):
    op = make(lambda: returned, model="gpt-4o-mini", destination=str(tmp_path / "o.jsonl"))
    with pytest.raises(ValueError, match=message):
        op.execute(ctx(FakeStateStore()))
    assert openai_batch_connection.stats()["files_uploaded"] == 0
