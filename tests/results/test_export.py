"""``OpenAIBatchHook.export_results`` against the emulator: order, statuses, merging rounds, text, manifest,
formats, destinations, atomic replace and storage hygiene."""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path

import pytest

from airflow_provider_openai_batch.exceptions import NotFoundError
from airflow_provider_openai_batch.hooks.batch import OpenAIBatchHook
from airflow_provider_openai_batch.results import writers
from airflow_provider_openai_batch.results.export import ResultsExportError
from airflow_provider_openai_batch.results.prices import PRICE_TABLE_VERSION
from airflow_provider_openai_batch.results.rows import COLUMNS, STATUSES
from tests.results.helpers import FAILS, chat, file_lines, read_jsonl, submit


@pytest.fixture
def hook(openai_batch_connection):
    with OpenAIBatchHook() as h:
        yield h


def test_rows_follow_input_order_although_output_is_shuffled(hook, tmp_path):
    ids = [f"q{i:02d}" for i in range(30)]
    batch = submit(hook, [chat(i, f"question {i}") for i in ids])
    assert batch.output_file_id is not None
    output_order = [line["custom_id"] for line in file_lines(hook, batch.output_file_id, tmp_path)]
    assert sorted(output_order) == ids and output_order != ids  # the emulator shuffles, as the API may

    manifest = hook.export_results(batch.id, tmp_path / "out.jsonl")

    rows = read_jsonl(tmp_path / "out.jsonl")
    assert [r["custom_id"] for r in rows] == ids
    assert [r["index"] for r in rows] == list(range(30))
    assert [list(r) for r in rows[:1]] == [[name for name, _ in COLUMNS]]
    assert all(r["status"] == "succeeded" and r["status_code"] == 200 and r["batch_id"] == batch.id for r in rows)
    assert manifest["rows"] == 30 and manifest["counts"]["succeeded"] == 30


def test_succeeded_and_failed_requests(hook, tmp_path):
    batch = submit(hook, [chat("a"), chat("b", **FAILS), chat("c")])
    manifest = hook.export_results(batch.id, tmp_path / "out.jsonl")
    rows = {r["custom_id"]: r for r in read_jsonl(tmp_path / "out.jsonl")}
    assert rows["a"]["status"] == "succeeded" and rows["a"]["error_code"] is None
    failed = rows["b"]
    assert failed["status"] == "failed" and failed["status_code"] == 400
    assert failed["error_code"] == "decimal_above_max_value" and "'temperature'" in failed["error_message"]
    assert failed["output_text"] is None and failed["response"]["error"]["code"] == "decimal_above_max_value"
    assert manifest["counts"] == {
        "succeeded": 2,
        "invalid_output": 0,
        "failed": 1,
        "expired": 0,
        "cancelled": 0,
        "missing": 0,
    }


@pytest.mark.parametrize(
    ("forced", "unfinished"),
    [("expired", "expired"), ("cancelled", "cancelled"), ("failed", "failed")],
)
def test_a_batch_that_ended_early_classifies_its_unfinished_requests(
    hook, openai_batch_emulator, tmp_path, forced, unfinished
):
    # Slow phases: the batch is still validating when it is forced to end, so half of it never ran.
    openai_batch_emulator.configure(phase_seconds=600)
    batch = submit(hook, [chat(f"r{i}") for i in range(6)], wait=False)
    openai_batch_emulator.force_status(batch.id, forced)

    manifest = hook.export_results(batch.id, tmp_path / "out.jsonl")

    rows = read_jsonl(tmp_path / "out.jsonl")
    assert [r["custom_id"] for r in rows] == [f"r{i}" for i in range(6)]
    statuses = [r["status"] for r in rows]
    if forced == "failed":  # refused as a whole: no request ran, every row carries the batch's error
        assert statuses == ["failed"] * 6
        assert {r["error_code"] for r in rows} == {"forced_failure"}
    else:  # the first half ran, the rest did not
        assert statuses == ["succeeded"] * 3 + [unfinished] * 3
    if forced == "expired":  # the API lists unfinished requests in the error file with code batch_expired
        assert {r["error_code"] for r in rows[3:]} == {"batch_expired"}
    assert manifest["counts"][unfinished] == (6 if forced == "failed" else 3)
    assert sum(manifest["counts"].values()) == 6


def test_rounds_merge_latest_result_wins_and_positions_come_from_the_first(hook, openai_batch_emulator, tmp_path):
    # Every request fails transiently on its first attempt: round 1 fails them all, round 2 (the same input
    # lines, as resubmit_unfinished writes them) succeeds.
    openai_batch_emulator.configure(transient_failure_attempts=1)
    first = submit(hook, [chat(f"p{i}", f"question {i}") for i in range(5)])
    # The resubmitted round holds only some requests, in another order.
    second = submit(hook, [chat("p4", "question 4"), chat("p2", "question 2")])

    manifest = hook.export_results([first.id, second.id], tmp_path / "out.jsonl")

    rows = read_jsonl(tmp_path / "out.jsonl")
    assert [(r["custom_id"], r["index"]) for r in rows] == [(f"p{i}", i) for i in range(5)]
    by_id = {r["custom_id"]: r for r in rows}
    for custom_id in ("p2", "p4"):
        assert by_id[custom_id]["status"] == "succeeded" and by_id[custom_id]["batch_id"] == second.id
    assert "question 4" in by_id["p4"]["output_text"]
    for custom_id in ("p0", "p1", "p3"):
        assert by_id[custom_id]["status"] == "failed" and by_id[custom_id]["batch_id"] == first.id
    assert manifest["batch_ids"] == [first.id, second.id]
    assert manifest["counts"]["succeeded"] == 2 and manifest["counts"]["failed"] == 3 and manifest["rows"] == 5


def test_shards_that_reuse_custom_ids_are_refused_not_merged(hook, tmp_path):
    a = submit(hook, [chat("request-1", "shard a, first"), chat("request-2", "shard a, second")])
    b = submit(hook, [chat("request-1", "shard b, first"), chat("request-2", "shard b, second"), chat("request-3")])
    with pytest.raises(ResultsExportError) as caught:
        hook.export_results([a.id, b.id], tmp_path / "out.jsonl")
    message = str(caught.value)
    assert a.id in message and b.id in message and "request-1" in message
    assert "shards of one job need unique custom_ids" in message
    assert not (tmp_path / "out.jsonl").exists()


def test_a_round_with_the_same_request_under_another_method_or_url_is_refused(hook, tmp_path):
    first = submit(hook, [chat("x")])
    other = submit(hook, [{"custom_id": "x", "body": {"model": "gpt-4o-mini", "input": "hello"}}], "/v1/responses")
    with pytest.raises(ResultsExportError, match=f"custom_id 'x'.*{first.id}.*{other.id}"):
        hook.export_results([first.id, other.id], tmp_path / "out.jsonl")


def test_identical_requests_merge_whatever_the_key_order_of_their_lines(hook, tmp_path):
    first = submit(hook, [chat("x", "same"), chat("y")])
    body = chat("x", "same")["body"]
    reordered = {"custom_id": "x", "body": dict(reversed(list(body.items())))}
    second = submit(hook, [reordered])
    manifest = hook.export_results([first.id, second.id], tmp_path / "out.jsonl")
    rows = read_jsonl(tmp_path / "out.jsonl")
    assert [(r["custom_id"], r["batch_id"]) for r in rows] == [("x", second.id), ("y", first.id)]
    assert manifest["rows"] == 2


@pytest.mark.parametrize("ending", ["cancelled", "failed"])
def test_a_later_round_that_ended_before_running_a_request_labels_its_row(
    hook, openai_batch_emulator, tmp_path, ending
):
    openai_batch_emulator.configure(transient_failure_attempts=1)
    first = submit(hook, [chat("x0"), chat("x1"), chat("x2")])  # all fail transiently: lines in round 1
    openai_batch_emulator.configure(phase_seconds=600)
    second = submit(hook, [chat("x1"), chat("x2")], wait=False)
    openai_batch_emulator.force_status(second.id, ending)  # ends before running x2 (and x1, if failed)

    manifest = hook.export_results([first.id, second.id], tmp_path / "out.jsonl")

    by_id = {r["custom_id"]: r for r in read_jsonl(tmp_path / "out.jsonl")}
    assert by_id["x0"]["status"] == "failed" and by_id["x0"]["batch_id"] == first.id
    assert by_id["x2"]["status"] == ending and by_id["x2"]["batch_id"] == second.id
    assert by_id["x2"]["status_code"] is None and by_id["x2"]["response"] is None
    if ending == "cancelled":  # the first half of round 2 ran
        assert by_id["x1"]["status"] == "succeeded" and by_id["x1"]["batch_id"] == second.id
    else:  # refused as a whole: the batch's own error on each of its rows
        assert by_id["x1"]["status"] == "failed" and by_id["x1"]["batch_id"] == second.id
        assert by_id["x1"]["error_code"] == by_id["x2"]["error_code"] == "forced_failure"
    assert manifest["counts"][ending] >= 1


def test_shards_concatenate_in_the_order_given(hook, tmp_path):
    a = submit(hook, [chat("a0"), chat("a1")])
    b = submit(hook, [chat("b0"), chat("b1"), chat("b2")])
    hook.export_results(json.dumps([b.id, a.id]), tmp_path / "out.jsonl")
    rows = read_jsonl(tmp_path / "out.jsonl")
    assert [(r["custom_id"], r["index"]) for r in rows] == [("b0", 0), ("b1", 1), ("b2", 2), ("a0", 3), ("a1", 4)]


def test_output_text_for_chat_and_responses(hook, tmp_path):
    chat_batch = submit(hook, [chat("c", "tell me")])
    responses_batch = submit(
        hook, [{"custom_id": "r", "body": {"model": "gpt-4o-mini", "input": "tell me too"}}], endpoint="/v1/responses"
    )
    embeddings = submit(
        hook,
        [{"custom_id": "e", "body": {"model": "text-embedding-3-small", "input": "x"}}],
        endpoint="/v1/embeddings",
    )
    hook.export_results([chat_batch.id, responses_batch.id, embeddings.id], tmp_path / "out.jsonl")
    rows = {r["custom_id"]: r for r in read_jsonl(tmp_path / "out.jsonl")}
    assert rows["c"]["output_text"] == rows["c"]["response"]["choices"][0]["message"]["content"]
    assert "tell me" in rows["c"]["output_text"]
    parts = rows["r"]["response"]["output"][0]["content"]
    assert rows["r"]["output_text"] == "".join(p["text"] for p in parts) and "tell me too" in rows["r"]["output_text"]
    assert rows["e"]["output_text"] is None and rows["e"]["input_tokens"] > 0 and rows["e"]["output_tokens"] is None


def test_manifest_counts_tokens_and_cost_with_the_default_and_an_overridden_table(hook, tmp_path):
    # One model per batch: the model priced in no table comes in a second batch of the same job.
    batch = submit(hook, [chat("a"), chat("b", "a longer question"), chat("c", **FAILS)])
    other = submit(hook, [chat("d", model="x1")])
    manifest = hook.export_results([batch.id, other.id], tmp_path / "out.jsonl")
    rows = read_jsonl(tmp_path / "out.jsonl")
    tokens_in = sum(r["input_tokens"] or 0 for r in rows)
    tokens_out = sum(r["output_tokens"] or 0 for r in rows)
    mini_in = sum(r["input_tokens"] or 0 for r in rows if r["custom_id"] in ("a", "b"))
    mini_out = sum(r["output_tokens"] or 0 for r in rows if r["custom_id"] in ("a", "b"))
    assert manifest["input_tokens"] == tokens_in > 0 and manifest["output_tokens"] == tokens_out > 0
    assert manifest["total_tokens"] == tokens_in + tokens_out
    assert manifest["models"] == {"gpt-4o-mini": 3, "x1": 1}
    # gpt-4o-mini at batch prices: 0.075 / 0.30 USD per 1M tokens; "x1" is in no table.
    assert manifest["estimated_cost_usd"] == pytest.approx(round((mini_in * 0.075 + mini_out * 0.30) / 1e6, 6))
    assert manifest["unpriced_models"] == ["x1"]
    assert manifest["price_table"] == PRICE_TABLE_VERSION and manifest["estimated"] is True
    assert manifest["destination"] == (tmp_path / "out.jsonl").as_uri() and manifest["format"] == "jsonl"
    assert set(manifest["counts"]) == set(STATUSES)

    custom = {"gpt-4o-mini": {"input": 1000, "output": 2000}, "x1": {"input": 10}}
    again = hook.export_results([batch.id, other.id], tmp_path / "out.jsonl", price_table=custom)
    x1 = next(r for r in rows if r["custom_id"] == "d")
    expected = (mini_in * 1000 + mini_out * 2000 + x1["input_tokens"] * 10) / 1e6
    assert again["estimated_cost_usd"] == pytest.approx(round(expected, 6))
    assert again["unpriced_models"] == [] and again["price_table"] == f"custom over {PRICE_TABLE_VERSION}"


def test_models_are_priced_by_their_own_row_never_by_a_model_whose_name_they_start_with(hook, tmp_path):
    # One model per batch file, as the API takes them: one batch each, exported together.
    batches = [
        submit(hook, [chat("a", model="o3-mini")]),
        submit(hook, [chat("b", "a longer question", model="gpt-4o-2024-05-13")]),
        submit(hook, [chat("c", model="o3-pro")]),
    ]
    manifest = hook.export_results([b.id for b in batches], tmp_path / "out.jsonl")
    rows = {r["custom_id"]: r for r in read_jsonl(tmp_path / "out.jsonl")}
    a, b = rows["a"], rows["b"]
    # o3-mini at 0.55 / 2.20 (not o3's 1 / 4), gpt-4o-2024-05-13 at 2.50 / 7.50 (not gpt-4o's 1.25 / 5).
    expected = (
        a["input_tokens"] * 0.55 + a["output_tokens"] * 2.20 + b["input_tokens"] * 2.50 + b["output_tokens"] * 7.50
    )
    assert manifest["estimated_cost_usd"] == pytest.approx(round(expected / 1e6, 6))
    assert manifest["unpriced_models"] == ["o3-pro"]  # not priced as o3


def test_parquet_by_suffix_has_the_row_schema(hook, tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    batch = submit(hook, [chat("a"), chat("b", **FAILS)])
    manifest = hook.export_results(batch.id, tmp_path / "out.parquet")
    table = pq.read_table(tmp_path / "out.parquet")
    assert manifest["format"] == "parquet" and table.column_names == [name for name, _ in COLUMNS]
    rows = table.to_pylist()
    assert [r["custom_id"] for r in rows] == ["a", "b"] and [r["status"] for r in rows] == ["succeeded", "failed"]
    assert json.loads(rows[0]["response"])["object"] == "chat.completion"  # JSON text in Parquet

    hook.export_results(batch.id, tmp_path / "named.data", format="parquet")
    assert pq.read_table(tmp_path / "named.data").num_rows == 2


def test_parquet_without_pyarrow_names_the_extra_before_downloading(hook, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # import pyarrow now raises ImportError
    with pytest.raises(ImportError, match=r"airflow-provider-openai-batch\[parquet\]"):
        hook.export_results("batch_never_fetched", tmp_path / "out.parquet")
    assert not (tmp_path / "out.parquet").exists()


def test_object_storage_path_destination(hook, tmp_path):
    from airflow.sdk import ObjectStoragePath

    batch = submit(hook, [chat("a"), chat("b")])
    target = ObjectStoragePath(f"file://{tmp_path}/store/out.jsonl")
    target.parent.mkdir(parents=True, exist_ok=True)
    manifest = hook.export_results(batch.id, target)
    assert [r["custom_id"] for r in read_jsonl(tmp_path / "store" / "out.jsonl")] == ["a", "b"]
    assert manifest["destination"] == str(target)
    assert sorted(p.name for p in (tmp_path / "store").iterdir()) == ["out.jsonl"]  # no partial sibling left

    hook.export_results(batch.id, f"file://{tmp_path}/uri/out.jsonl")  # a file:// URI string
    assert len(read_jsonl(tmp_path / "uri" / "out.jsonl")) == 2


def test_a_failed_export_leaves_the_previous_file_and_a_retry_replaces_it_whole(hook, tmp_path, monkeypatch):
    batch = submit(hook, [chat(f"r{i}") for i in range(5)])
    destination = tmp_path / "out.jsonl"
    destination.write_text("previous export\n")
    written = 0
    real_write = writers.JsonlWriter.write

    def failing_write(self, row):
        nonlocal written
        written += 1
        if written == 3:
            raise OSError("disk full")
        real_write(self, row)

    monkeypatch.setattr(writers.JsonlWriter, "write", failing_write)
    with pytest.raises(OSError, match="disk full"):
        hook.export_results(batch.id, destination)
    assert destination.read_text() == "previous export\n"
    assert [p.name for p in tmp_path.iterdir()] == ["out.jsonl"]  # the partial sibling is gone

    monkeypatch.setattr(writers.JsonlWriter, "write", real_write)
    hook.export_results(batch.id, destination)
    first = destination.read_bytes()
    hook.export_results(batch.id, destination)  # a retry: the same rows, the file replaced whole
    assert destination.read_bytes() == first and len(read_jsonl(destination)) == 5


def test_delete_files_after_a_successful_export(hook, tmp_path):
    batch = submit(hook, [chat("a"), chat("b", **FAILS)])
    manifest = hook.export_results(batch.id, tmp_path / "out.jsonl", delete_files=["output", "error"])
    assert manifest["deleted_files"] == [batch.output_file_id, batch.error_file_id]
    for file_id in (batch.output_file_id, batch.error_file_id):
        with pytest.raises(NotFoundError):
            hook.retrieve_file(file_id)
    assert hook.retrieve_file(batch.input_file_id).id == batch.input_file_id  # not asked for: kept
    assert len(read_jsonl(tmp_path / "out.jsonl")) == 2


def test_a_failed_delete_is_a_warning_not_a_failure(hook, tmp_path, capfd, monkeypatch):
    batch = submit(hook, [chat("a")])

    def refuse(file_id):
        raise NotFoundError("gone already", status_code=404)

    monkeypatch.setattr(hook, "delete_file", refuse)
    manifest = hook.export_results(batch.id, tmp_path / "out.jsonl", delete_files="all")
    assert manifest["deleted_files"] == [] and manifest["rows"] == 1
    assert f"Could not delete the input file {batch.input_file_id}" in "".join(capfd.readouterr())


def test_a_batch_still_running_is_refused_with_the_fix(hook, openai_batch_emulator, tmp_path):
    openai_batch_emulator.configure(phase_seconds=600)
    batch = submit(hook, [chat("a")], wait=False)
    with pytest.raises(ResultsExportError, match=r"still validating.*BatchSensor"):
        hook.export_results(batch.id, tmp_path / "out.jsonl")
    assert not (tmp_path / "out.jsonl").exists()


def test_a_deleted_result_file_is_named(hook, tmp_path):
    batch = submit(hook, [chat("a")])
    hook.delete_file(batch.output_file_id)
    with pytest.raises(ResultsExportError, match=f"output file {batch.output_file_id} of batch {batch.id} is gone"):
        hook.export_results(batch.id, tmp_path / "out.jsonl")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"batch_ids": []}, "batch_ids must be a batch id"),
        ({"batch_ids": "a/b"}, "batch_ids 'a/b' is not a valid id"),
        ({"batch_ids": "[1, 2]"}, "batch_ids must hold batch ids"),
        ({"format": "csv"}, "format must be one of jsonl, parquet"),
        ({"delete_files": "some"}, "delete_files must be 'none', 'all', or a subset"),
        ({"price_table": {"gpt-4o": 1.0}}, r"price_table\['gpt-4o'\] must be a dict"),
        ({"price_table": {"gpt-4o": {"input": -1}}}, "must be a non-negative number"),
        ({"destination": 42}, "destination must be a local path, a file:// URI"),
        ({"destination": "out.jsonl"}, r"destination 'out.jsonl' is a relative path.*absolute path or a URI"),
        ({"destination": Path("exports/out.jsonl")}, "destination 'exports/out.jsonl' is a relative path"),
        ({"destination": "file://out.jsonl"}, r"names the host 'out.jsonl'.*write 'file:///out.jsonl'"),
    ],
)
def test_bad_arguments_are_refused_before_any_request(tmp_path, kwargs, message):
    arguments = {"batch_ids": "batch_abc", "destination": tmp_path / "out.jsonl", **kwargs}
    hook = OpenAIBatchHook("no_such_connection")  # never used: the checks come first
    with pytest.raises(ValueError, match=message):
        hook.export_results(arguments.pop("batch_ids"), arguments.pop("destination"), **arguments)


def test_the_manifest_is_json(hook, tmp_path):
    batch = submit(hook, [chat("a")])
    manifest = hook.export_results(batch.id, str(tmp_path / "out.jsonl"))
    assert json.loads(json.dumps(manifest)) == manifest
    assert Path(tmp_path / "out.jsonl").exists()


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o027, 0o640), (0o002, 0o664)])
def test_a_local_export_gets_the_usual_permissions(hook, tmp_path, umask, mode):
    batch = submit(hook, [chat("a")])
    previous = os.umask(umask)
    try:
        hook.export_results(batch.id, tmp_path / "out.jsonl")
        (tmp_path / "old.jsonl").write_text("x")
        (tmp_path / "old.jsonl").chmod(0o600)
        hook.export_results(batch.id, tmp_path / "old.jsonl")  # a replaced file gets them too
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "out.jsonl").stat().st_mode) == mode
    assert stat.S_IMODE((tmp_path / "old.jsonl").stat().st_mode) == mode
