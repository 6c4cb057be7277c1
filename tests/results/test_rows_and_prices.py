"""The row classification, text and token extraction, the price table, and the join without a server."""

from __future__ import annotations

import json
import re

import pytest

from airflow_provider_openai_batch.results.export import export, parse_batch_ids, parse_delete_files
from airflow_provider_openai_batch.results.join import ResultJoin
from airflow_provider_openai_batch.results.prices import (
    DEFAULT_PRICES,
    PRICE_TABLE_DATE,
    PRICE_TABLE_VERSION,
    SNAPSHOTS,
    CostEstimate,
    check_price_table,
)
from airflow_provider_openai_batch.results.rows import classify_line, classify_missing, output_text, usage_tokens
from tests.results.helpers import FakeHook, jsonl_bytes, lines_file, read_jsonl


@pytest.mark.parametrize(
    ("status_code", "error_code", "has_error", "expected"),
    [
        (200, None, False, "succeeded"),
        (204, None, False, "succeeded"),
        (400, "model_not_found", False, "failed"),
        (500, None, False, "failed"),
        (None, "batch_expired", True, "expired"),
        (None, "server_error", True, "failed"),
        (None, None, False, "failed"),
    ],
)
def test_a_result_line_is_classified(status_code, error_code, has_error, expected):
    assert classify_line(status_code, error_code, has_error) == expected


@pytest.mark.parametrize(
    ("batch_status", "expected"),
    [("expired", "expired"), ("cancelled", "cancelled"), ("failed", "failed"), ("completed", "missing")],
)
def test_a_request_without_a_line_takes_its_batch_ending(batch_status, expected):
    assert classify_missing(batch_status) == expected


def test_output_text_and_tokens_of_each_body_shape():
    chat = {"choices": [{"message": {"content": "hi"}}], "usage": {"prompt_tokens": 3, "completion_tokens": 1}}
    responses = {
        "output": [
            {"type": "reasoning", "content": []},
            {"type": "message", "content": [{"type": "output_text", "text": "a"}, {"type": "refusal"}]},
            {"type": "message", "content": [{"type": "output_text", "text": "b"}]},
        ],
        "usage": {"input_tokens": 5, "output_tokens": 2, "total_tokens": 7},
    }
    assert output_text("/v1/chat/completions", chat) == "hi"
    assert output_text("/v1/responses", responses) == "ab"
    assert output_text("/v1/completions", {"choices": [{"text": "x"}]}) is None
    assert output_text("/v1/chat/completions", {"choices": []}) is None
    assert usage_tokens(chat) == (3, 1, 4)
    assert usage_tokens(responses) == (5, 2, 7)
    assert usage_tokens({"usage": {"prompt_tokens": 4, "total_tokens": 4}}) == (4, None, 4)
    assert usage_tokens(None) == (None, None, None)


def test_models_are_priced_by_exact_name_or_a_known_snapshot_and_every_other_name_is_listed():
    cost = CostEstimate()
    # A name that starts like a listed model is not that model: o3-mini is not o3, and the first GPT-4o snapshot
    # costs twice what gpt-4o costs now.
    assert cost.match("o3-mini") == "o3-mini" and DEFAULT_PRICES["o3-mini"] != DEFAULT_PRICES["o3"]
    assert DEFAULT_PRICES["gpt-4o-2024-05-13"] == {"input": 2.50, "output": 7.50} != DEFAULT_PRICES["gpt-4o"]
    assert cost.match("gpt-4o-mini-2024-07-18") == "gpt-4o-mini-2024-07-18"  # a snapshot known to cost the same
    assert DEFAULT_PRICES["gpt-4o-mini-2024-07-18"] == DEFAULT_PRICES["gpt-4o-mini"]
    for name in ("o3-pro", "o3-mini-high", "gpt-4o-2024-08-06", "gpt-4o-mini-2099-01-01", "gpt-5.1", "claude-3"):
        assert cost.match(name) is None, name

    cost.add("o3-mini", 1_000_000, 1_000_000, None)
    cost.add("gpt-4o-2024-05-13", 1_000_000, 0, None)
    assert cost.cost_usd == pytest.approx(0.55 + 2.20 + 2.50)
    cost.add("o3-pro", 10, 10, 20)  # not in the table: priced at 0 and listed, never as o3
    cost.add("gpt-4o-2024-08-06", 10, 10, 20, requested="o9")
    cost.add(None, 0, 0, 0)  # nothing billed: not listed as unpriced
    assert cost.cost_usd == pytest.approx(0.55 + 2.20 + 2.50)
    assert cost.unpriced == {"o3-pro", "gpt-4o-2024-08-06"}


def test_a_snapshot_the_table_does_not_list_is_priced_by_the_model_the_input_asked_for():
    cost = CostEstimate()
    cost.add("gpt-4.1-2025-04-14", 1_000_000, 1_000_000, None, requested="gpt-4.1")
    assert cost.cost_usd == pytest.approx(DEFAULT_PRICES["gpt-4.1"]["input"] + DEFAULT_PRICES["gpt-4.1"]["output"])
    assert cost.unpriced == set()
    mine = CostEstimate({"o3-pro": {"input": 10, "output": 40}})  # a user's table is exact too
    mine.add("o3-pro", 1_000_000, 0, None)
    mine.add("o3-pro-2025-06-10", 1_000_000, 0, None)
    assert mine.cost_usd == pytest.approx(10) and mine.unpriced == {"o3-pro-2025-06-10"}


def test_the_price_table_is_dated_and_every_snapshot_names_a_listed_model():
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", PRICE_TABLE_DATE)
    assert PRICE_TABLE_VERSION.endswith(f"-{PRICE_TABLE_DATE}")
    assert all(model in DEFAULT_PRICES and snapshot.startswith(model + "-") for snapshot, model in SNAPSHOTS.items())
    assert all(set(entry) == {"input", "output"} and min(entry.values()) >= 0 for entry in DEFAULT_PRICES.values())


def test_the_default_table_holds_batch_prices_and_a_user_table_is_checked():
    # Batch prices are half the list price (gpt-4o-mini lists at 0.15 / 0.60 USD per 1M tokens, o3 at 2 / 8).
    assert DEFAULT_PRICES["gpt-4o-mini"] == {"input": 0.075, "output": 0.30}
    assert DEFAULT_PRICES["o3"] == {"input": 1.00, "output": 4.00}
    assert check_price_table({"m": {"input": 1}}) == {"m": {"input": 1.0, "output": 0.0}}
    with pytest.raises(ValueError, match=r"price_table must be a dict like"):
        check_price_table([("gpt-4o", 1)])


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("batch_a", ["batch_a"]),
        (" batch_a ", ["batch_a"]),
        (["batch_a", "batch_b", "batch_a"], ["batch_a", "batch_b"]),
        ('["batch_a", "batch_b"]', ["batch_a", "batch_b"]),
        ("['batch_a', 'batch_b']", ["batch_a", "batch_b"]),  # a list rendered by Jinja as text
        ({"id": "batch_a", "status": "completed"}, ["batch_a"]),  # the sensor's XCom
        ([{"id": "batch_a"}, "batch_b"], ["batch_a", "batch_b"]),
    ],
)
def test_batch_ids_are_read_from_every_shape_a_template_gives(value, expected):
    assert parse_batch_ids(value) == expected


def test_delete_files_choices():
    assert parse_delete_files("none") == () and parse_delete_files(None) == ()
    assert parse_delete_files("all") == ("input", "output", "error")
    assert parse_delete_files({"error", "output"}) == ("output", "error")
    assert parse_delete_files("input") == ("input",)
    with pytest.raises(ValueError, match=r"delete_files must be 'none', 'all'"):
        parse_delete_files(["outputs"])


def test_the_join_keeps_first_positions_and_the_latest_result(tmp_path):
    join = ResultJoin(tmp_path / "j.sqlite")
    lines = [json.dumps({"custom_id": c, "body": {"model": "m"}}).encode() for c in ("a", "b", "c")]
    assert join.add_inputs(0, lines_file(tmp_path, [*lines, b"not json"])) == 3
    second = [lines[2], json.dumps({"custom_id": "d"}).encode()]
    assert join.add_inputs(1, lines_file(tmp_path, second)) == 2  # a round repeats the line
    results = [json.dumps({"custom_id": "c", "v": 0}).encode(), json.dumps({"custom_id": "z"}).encode()]
    join.add_results(0, lines_file(tmp_path / "0.jsonl", results))
    join.add_results(1, lines_file(tmp_path / "1.jsonl", [json.dumps({"custom_id": "c", "v": 1}).encode()]))
    rows = list(join.rows())
    join.close()
    assert [(r.index, r.custom_id, r.last_rank) for r in rows] == [(0, "a", 0), (1, "b", 0), (2, "c", 1), (3, "d", 1)]
    assert json.loads(rows[2].line or b"")["v"] == 1 and rows[2].result_rank == 1
    assert rows[0].line is None and rows[0].model == "m" and rows[3].model is None
    assert join.unreadable_input_lines == 1


@pytest.mark.parametrize(("batch_status", "expected"), [("completed", "missing"), ("expired", "expired")])
def test_a_request_no_file_mentions_is_missing_or_takes_its_batch_ending(tmp_path, batch_status, expected):
    ok = {"custom_id": "a", "response": {"status_code": 200, "body": {"usage": {"prompt_tokens": 1}}}, "error": None}
    hook = FakeHook(
        [{"id": "batch_1", "status": batch_status, "input_file_id": "in", "output_file_id": "out"}],
        {"in": jsonl_bytes({"custom_id": "a", "body": {}}, {"custom_id": "b", "body": {}}), "out": jsonl_bytes(ok)},
    )
    manifest = export(hook, "batch_1", tmp_path / "out.jsonl")  # type: ignore[arg-type]
    rows = read_jsonl(tmp_path / "out.jsonl")
    assert [r["status"] for r in rows] == ["succeeded", expected]
    assert rows[1]["batch_id"] == "batch_1" and "no result line" in rows[1]["error_message"]
    assert manifest["counts"][expected] == 1 and manifest["models"] == {"unknown": 2}
