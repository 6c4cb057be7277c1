"""``one_file_per_batch``: every batch checked before anything is written or deleted, ``index`` as in the merged
file, every file in the manifest and the asset event, an asset URI that names what was written, and the
numbered name with one batch too."""

from __future__ import annotations

import json

import pytest
from airflow.sdk import Asset

from airflow_provider_openai_batch.exceptions import NotFoundError
from airflow_provider_openai_batch.hooks.batch import OpenAIBatchHook
from airflow_provider_openai_batch.operators.results import BatchResultsOperator
from airflow_provider_openai_batch.results.export import ResultsExportError
from tests.helpers import ctx
from tests.results.helpers import FAILS, FakeOutletEvents, chat, read_jsonl, submit


def _export(tmp_path, batch_ids, **kwargs):
    op = BatchResultsOperator(
        task_id="export",
        batch_id=batch_ids,
        destination=str(tmp_path / "answers.jsonl"),
        one_file_per_batch=True,
        **kwargs,
    )
    context = ctx()
    context["outlet_events"] = FakeOutletEvents()
    return op, op.execute(context), context["outlet_events"]


def test_a_batch_still_running_stops_the_export_before_any_file_is_written_or_deleted(
    openai_batch_connection, tmp_path
):
    emulator = openai_batch_connection
    with OpenAIBatchHook() as hook:
        done = submit(hook, [chat("a0"), chat("a1")])
        emulator.configure(phase_seconds=600)
        running = submit(hook, [chat("b0")], wait=False)

        with pytest.raises(ResultsExportError, match=f"batch {running.id} is still"):
            _export(tmp_path, [done.id, running.id], delete_files="all")

        assert list(tmp_path.iterdir()) == []  # no file of the finished batch either
        for file_id in (done.input_file_id, done.output_file_id):
            assert hook.retrieve_file(file_id).id == file_id  # nothing deleted: the retry can still export it

        emulator.force_status(running.id, "completed")
        running = hook.retrieve_batch(running.id)
        _, manifest, _ = _export(tmp_path, [done.id, running.id], delete_files="all")  # the retry finishes

        assert manifest["rows"] == 3
        assert sorted(manifest["deleted_files"]) == sorted(
            [done.input_file_id, done.output_file_id, running.input_file_id, running.output_file_id]
        )
        with pytest.raises(NotFoundError):
            hook.retrieve_file(done.output_file_id)


def test_a_file_that_cannot_be_written_deletes_nothing(openai_batch_connection, tmp_path, monkeypatch):
    from airflow_provider_openai_batch.results import writers

    with OpenAIBatchHook() as hook:
        first, second = submit(hook, [chat("a0")]), submit(hook, [chat("b0")])
        real = writers.atomic_output
        opened = []

        def failing_second_file(target):
            opened.append(target)
            if len(opened) == 2:
                raise OSError("disk full")
            return real(target)

        monkeypatch.setattr("airflow_provider_openai_batch.results.export.atomic_output", failing_second_file)
        with pytest.raises(OSError, match="disk full"):
            _export(tmp_path, [first.id, second.id], delete_files="all")
        for file_id in (first.input_file_id, first.output_file_id, second.input_file_id):
            assert hook.retrieve_file(file_id).id == file_id


def test_index_is_the_position_in_the_whole_input_and_each_file_keeps_its_own_batchs_results(
    openai_batch_connection, tmp_path
):
    emulator = openai_batch_connection
    with OpenAIBatchHook() as hook:
        a = submit(hook, [chat("a0"), chat("a1")])
        b = submit(hook, [chat("b0"), chat("b1"), chat("b2")])
        # A round of shard b: the same lines, some of them, in another order; it fails them all.
        emulator.configure(transient_failure_rate=1.0)
        again = submit(hook, [chat("b2"), chat("b0")])
        emulator.configure(transient_failure_rate=0.0)
        merged = hook.export_results([a.id, b.id, again.id], tmp_path / "merged.jsonl")

    _, manifest, _ = _export(tmp_path, [a.id, b.id, again.id])

    merged_index = {r["custom_id"]: r["index"] for r in read_jsonl(tmp_path / "merged.jsonl")}
    files = [read_jsonl(tmp_path / f"answers-{n:05d}.jsonl") for n in (1, 2, 3)]
    assert [[(r["custom_id"], r["index"]) for r in rows] for rows in files] == [
        [("a0", 0), ("a1", 1)],
        [("b0", 2), ("b1", 3), ("b2", 4)],
        [("b0", 2), ("b2", 4)],  # in input order, numbered as in the merged file
    ]
    assert all(r["index"] == merged_index[r["custom_id"]] for rows in files for r in rows)
    assert {r["batch_id"] for r in files[1]} == {b.id} and {r["status"] for r in files[1]} == {"succeeded"}
    assert {r["batch_id"] for r in files[2]} == {again.id} and {r["status"] for r in files[2]} == {"failed"}
    assert manifest["rows"] == 7 and merged["rows"] == 5


def test_the_manifest_the_asset_and_its_event_name_every_file_written(openai_batch_connection, tmp_path):
    with OpenAIBatchHook() as hook:
        a = submit(hook, [chat("a0"), chat("a1")])
        b = submit(hook, [chat("b0"), chat("b1", **FAILS), chat("b2")])

    op, manifest, events = _export(tmp_path, [a.id, b.id])

    pattern = (tmp_path / "answers.jsonl").as_uri().replace("answers.jsonl", "answers-*.jsonl")
    assert op.outlets == [Asset(uri=pattern)]  # what is written, not answers.jsonl, which never is
    assert manifest["destination"] == pattern and not (tmp_path / "answers.jsonl").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["answers-00001.jsonl", "answers-00002.jsonl"]
    files = manifest["files"]
    assert [(f["destination"], f["batch_id"], f["rows"]) for f in files] == [
        ((tmp_path / "answers-00001.jsonl").as_uri(), a.id, 2),
        ((tmp_path / "answers-00002.jsonl").as_uri(), b.id, 3),
    ]
    assert files[1]["counts"]["failed"] == 1 and files[0]["counts"]["succeeded"] == 2
    assert manifest["rows"] == 5 and manifest["counts"]["succeeded"] == 4 and manifest["counts"]["failed"] == 1
    for key in ("input_tokens", "output_tokens", "total_tokens"):
        assert manifest[key] == sum(f[key] for f in files) > 0
    assert manifest["estimated_cost_usd"] == pytest.approx(sum(f["estimated_cost_usd"] for f in files))
    assert manifest["batch_ids"] == [a.id, b.id] and manifest["models"] == {"gpt-4o-mini": 5}

    extra = events[Asset(uri=pattern)].extra
    assert extra["destination"] == pattern and extra["rows"] == 5
    assert extra["files"] == [{key: f[key] for key in ("destination", "batch_id", "rows", "counts")} for f in files]
    json.dumps(manifest), json.dumps(extra)  # XCom and the event's extra are JSON


def test_one_batch_gets_the_numbered_name_too(openai_batch_connection, tmp_path):
    with OpenAIBatchHook() as hook:
        batch = submit(hook, [chat("a0")])
    _, manifest, _ = _export(tmp_path, batch.id)
    assert [p.name for p in tmp_path.iterdir()] == ["answers-00001.jsonl"]
    assert manifest["files"][0]["destination"] == (tmp_path / "answers-00001.jsonl").as_uri()


def test_a_remote_destination_is_numbered_in_its_uri(tmp_path):
    remote = BatchResultsOperator(
        task_id="r", batch_id="batch_a", destination="s3://bucket/out/answers.parquet", one_file_per_batch=True
    )
    assert remote.outlets == [Asset(uri="s3://bucket/out/answers-*.parquet")]
    chosen = BatchResultsOperator(
        task_id="c", batch_id="batch_a", destination=tmp_path / "a.jsonl", one_file_per_batch=True, asset_uri="x://y"
    )
    assert chosen.outlets == [Asset(uri="x://y")]
