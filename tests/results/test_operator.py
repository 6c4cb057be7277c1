"""``BatchResultsOperator``: arguments, the export through the task, the outlet asset and its event, and a
cheap import at DAG-parse time."""

from __future__ import annotations

import json
from typing import Any

import pytest
from airflow.sdk import Asset

from airflow_provider_openai_batch.hooks.batch import OpenAIBatchHook
from airflow_provider_openai_batch.operators.results import BatchResultsOperator
from tests.helpers import ctx, modules_added
from tests.results.helpers import FAILS, FakeOutletEvents, chat, read_jsonl, submit


def test_the_task_exports_pushes_the_manifest_and_fills_the_asset_event(
    openai_batch_connection, openai_batch_emulator, tmp_path
):
    # Round 1 expires after running "a"; round 2 re-sends "b" (the same line) and completes.
    openai_batch_emulator.configure(expire_after_fraction=0.5)
    with OpenAIBatchHook() as hook:
        first = submit(hook, [chat("a"), chat("b")])
        openai_batch_emulator.configure(expire_after_fraction=None)
        second = submit(hook, [chat("b")])
    destination = tmp_path / "answers.jsonl"
    op = BatchResultsOperator(
        task_id="export", batch_id=json.dumps([first.id, second.id]), destination=str(destination)
    )
    asset = Asset(uri=destination.as_uri())
    assert op.outlets == [asset]

    context = ctx()
    context["outlet_events"] = FakeOutletEvents()
    manifest = op.execute(context)

    json.dumps(manifest)  # XCom-able
    assert [r["status"] for r in read_jsonl(destination)] == ["succeeded", "succeeded"]
    assert manifest["counts"]["succeeded"] == 2 and manifest["batch_ids"] == [first.id, second.id]
    extra = context["outlet_events"][asset].extra
    assert extra["counts"] == manifest["counts"] and extra["rows"] == 2
    assert extra["destination"] == destination.as_uri() and extra["batch_ids"] == [first.id, second.id]


def test_delete_files_through_the_operator(openai_batch_connection, tmp_path):
    with OpenAIBatchHook() as hook:
        batch = submit(hook, [chat("a")])
    op = BatchResultsOperator(task_id="export", batch_id=batch.id, destination=tmp_path / "o.jsonl", delete_files="all")
    manifest = op.execute(ctx())
    assert manifest["deleted_files"] == [batch.input_file_id, batch.output_file_id]
    assert openai_batch_connection.stats()["files"] == 0


def test_the_asset_uri_of_templated_and_explicit_destinations(tmp_path):
    templated = BatchResultsOperator(task_id="t", batch_id="batch_a", destination="/data/{{ ds }}.jsonl")
    assert templated.outlets == []  # unknown until run time: no asset guessed
    chosen = BatchResultsOperator(
        task_id="c", batch_id="batch_a", destination="/data/{{ ds }}.jsonl", asset_uri="file:///data/answers"
    )
    assert chosen.outlets == [Asset(uri="file:///data/answers")]
    remote = BatchResultsOperator(task_id="r", batch_id="batch_a", destination="s3://bucket/out.parquet")
    assert remote.outlets == [Asset(uri="s3://bucket/out.parquet")]
    mine = Asset(uri="s3://bucket/other")
    both = BatchResultsOperator(task_id="b", batch_id="batch_a", destination="s3://bucket/x.jsonl", outlets=[mine])
    assert both.outlets == [mine, Asset(uri="s3://bucket/x.jsonl")]
    none = BatchResultsOperator(task_id="n", batch_id="batch_a", destination=tmp_path / "o.jsonl", asset_uri="")
    assert none.outlets == []
    assert set(BatchResultsOperator.template_fields) == {"batch_id", "destination", "format"}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"batch_id": ""}, "batch_id is required"),
        ({"destination": None}, "destination is required"),
        ({"destination": 42}, "destination must be a local path"),
        ({"format": "csv"}, "format must be 'jsonl', 'parquet' or None"),
        ({"delete_files": "everything"}, "delete_files must be 'none', 'all', or a subset"),
        ({"delete_files": ["input", "logs"]}, "delete_files must be"),
        ({"price_table": {"gpt-4o": {"output": 1}}}, r"price_table\['gpt-4o'\] must be a dict with \"input\""),
        ({"asset_uri": "file:///x/{{ ds }}"}, "asset_uri must be a fixed URI string"),
        ({"destination": "out.jsonl"}, r"export: destination 'out.jsonl' is a relative path.*absolute path or a URI"),
        ({"destination": "out.jsonl", "asset_uri": "s3://b/x"}, "destination 'out.jsonl' is a relative path"),
        ({"destination": "data/out.jsonl", "asset_uri": ""}, "destination 'data/out.jsonl' is a relative path"),
    ],
)
def test_bad_arguments_fail_at_parse_time_naming_the_parameter(kwargs, message):
    arguments = {"task_id": "export", "batch_id": "batch_a", "destination": "/tmp/out.jsonl", **kwargs}
    with pytest.raises(ValueError, match=message):
        BatchResultsOperator(**arguments)


def test_a_bad_rendered_batch_id_fails_the_task_naming_the_parameter(tmp_path):
    op = BatchResultsOperator(task_id="export", batch_id="{{ nothing }}", destination=tmp_path / "o.jsonl")
    op.batch_id = "['batch_a', 7]"  # as rendered
    with pytest.raises(ValueError, match="batch_id must hold batch ids"):
        op.execute(ctx())


def test_importing_the_operator_stays_cheap():
    added = modules_added("import airflow_provider_openai_batch.operators.results")
    heavy = (
        "requests", "aiohttp", "tenacity", "openai", "pydantic", "urllib3", "sqlite3", "_sqlite3", "pyarrow",
        "fsspec", "upath",
    )  # fmt: skip
    ours = (".models", ".hooks.batch", ".api", ".results.export", ".results.join")
    assert [m for m in added if m.split(".")[0] in heavy or m.endswith(ours)] == []


def test_a_templated_relative_destination_is_refused_when_the_task_runs(tmp_path):
    op = BatchResultsOperator(task_id="export", batch_id="batch_a", destination="{{ ds }}.jsonl")
    assert op.outlets == []  # unknown at parse time
    op.destination = "2026-01-01.jsonl"  # as rendered
    with pytest.raises(ValueError, match=r"destination '2026-01-01\.jsonl' is a relative path"):
        op.execute(ctx())


@pytest.mark.parametrize("value", ["none", None, [], "all", "error", ["error", "input"], {"output", "error"}])
def test_delete_files_is_checked_once_the_same_way_as_the_export(value):
    from airflow_provider_openai_batch.operators import results as operator_module
    from airflow_provider_openai_batch.results import export, options

    assert not hasattr(operator_module, "_check_delete_files")
    assert export.parse_delete_files is options.parse_delete_files
    op = BatchResultsOperator(task_id="export", batch_id="batch_a", destination="/tmp/o.jsonl", delete_files=value)
    assert op.delete_files == options.parse_delete_files(value)


def test_output_type_validates_the_answers_of_batches_made_any_other_way(openai_batch_connection, tmp_path):
    """Batches whose requests asked for a JSON schema themselves: the export parses and validates each answer
    into ``output``, counts ``invalid_output`` apart from ``failed``, and keeps Parquet's ``output`` as JSON text
    that read_rows gives back as the value."""
    from typing_extensions import TypedDict

    from airflow_provider_openai_batch.results import read_rows

    class Movie(TypedDict):
        title: str
        year: int

    schema = {
        "type": "object",
        "properties": {"title": {"type": "string"}, "year": {"type": "integer"}},
        "required": ["title", "year"],
        "additionalProperties": False,
    }
    fmt = {"type": "json_schema", "json_schema": {"name": "Movie", "schema": schema, "strict": True}}

    def asking(custom_id: str, model: str = "gpt-4o-mini", **body: Any) -> dict:
        request = chat(custom_id, model=model, **body)
        request["body"]["response_format"] = fmt
        return request

    with OpenAIBatchHook() as hook:  # one model per batch file, as the API takes them
        good = submit(hook, [asking("a"), asking("c", **FAILS), asking("d")])
        bad = submit(hook, [asking("b", "badjson-schema")])
    destination = tmp_path / "movies.parquet"
    ids = [good.id, bad.id]
    op = BatchResultsOperator(task_id="export", batch_id=ids, destination=destination, output_type=Movie)
    manifest = op.execute(ctx())
    counts = manifest["counts"]
    assert (counts["succeeded"], counts["invalid_output"], counts["failed"]) == (2, 1, 1)
    rows = {row["custom_id"]: row for row in read_rows(manifest)}
    assert set(rows["a"]["output"]) == {"title", "year"} and isinstance(rows["a"]["output"]["year"], int)
    invalid = rows["b"]
    assert invalid["status"] == "invalid_output" and invalid["output"] is None and invalid["status_code"] == 200
    assert json.loads(invalid["output_text"]) and "title: Field required" in invalid["error_message"]
    assert rows["c"]["status"] == "failed" and rows["c"]["output"] is None
    import pyarrow.parquet as pq

    assert pq.read_schema(destination).field("output").type == "string"  # JSON text, like response
    # Without output_type the same batch exports as before: no output column, no invalid_output row.
    plain = BatchResultsOperator(task_id="plain", batch_id=ids, destination=tmp_path / "plain.jsonl")
    manifest = plain.execute(ctx())
    assert manifest["counts"]["invalid_output"] == 0 and manifest["counts"]["succeeded"] == 3
    assert all("output" not in row for row in read_rows(manifest))


def test_output_type_is_checked_when_the_dag_is_parsed(tmp_path):
    with pytest.raises(ValueError, match="export: output_type has an object with free-form keys"):
        BatchResultsOperator(
            task_id="export", batch_id="batch_a", destination=tmp_path / "o.jsonl", output_type=dict[str, int]
        )
