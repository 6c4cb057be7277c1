"""Row building for structured outputs and embeddings without a server, and read_rows over every kind of
export (one file or one per batch, JSONL or Parquet, a manifest or a destination)."""

from __future__ import annotations

import base64
import struct

import pytest

from airflow_provider_openai_batch.hooks.batch import OpenAIBatchHook
from airflow_provider_openai_batch.results import read_rows
from airflow_provider_openai_batch.results.rows import INVALID_OUTPUT, RowShape, row_from_line, row_without_line
from airflow_provider_openai_batch.structured import output_schema
from tests.results.helpers import chat, submit

CHAT = "/v1/chat/completions"


def chat_line(message: dict) -> dict:
    body = {"choices": [{"message": message}], "usage": {"prompt_tokens": 3, "completion_tokens": 4}}
    return {"custom_id": "a", "response": {"status_code": 200, "body": body}, "error": None}


def test_a_refusal_is_invalid_output_with_the_refusal_named():
    shape = RowShape(output_schema(list[int]))
    row = row_from_line("a", 0, chat_line({"content": None, "refusal": "I can't help"}), "batch_1", CHAT, shape)
    assert row["status"] == INVALID_OUTPUT and row["error_message"] == "the model refused: I can't help"
    assert row["output"] is None and row["input_tokens"] == 3  # billed all the same


def test_a_valid_answer_fills_output_and_a_row_without_a_line_has_every_optional_column_empty():
    shape = RowShape(output_schema(list[int]), embeddings=True)
    row = row_from_line("a", 0, chat_line({"content": '{"value": [1, 2]}'}), "batch_1", CHAT, shape)
    assert row["status"] == "succeeded" and row["output"] == [1, 2] and row["error_message"] is None
    missing = row_without_line("b", 1, "batch_1", "expired", None, shape)
    assert [name for name, _ in shape.columns] == list(row) == list(missing)
    assert (missing["output"], missing["embedding"], missing["embeddings"]) == (None, None, None)


def test_embeddings_one_vector_several_in_input_order_and_base64_decoded():
    def line(data: list[dict]) -> dict:
        return {"custom_id": "e", "response": {"status_code": 200, "body": {"data": data}}, "error": None}

    shape = RowShape(embeddings=True)
    one = row_from_line("e", 0, line([{"index": 0, "embedding": [0.5, 1]}]), "b", "/v1/embeddings", shape)
    assert (one["embedding"], one["embeddings"]) == ([0.5, 1.0], None)
    packed = base64.b64encode(struct.pack("<2f", 0.25, -2.0)).decode()
    several = row_from_line(
        "e",
        0,
        line([{"index": 1, "embedding": packed}, {"index": 0, "embedding": [1.0]}]),
        "b",
        "/v1/embeddings",
        shape,
    )
    assert (several["embedding"], several["embeddings"]) == (None, [[1.0], [0.25, -2.0]])


@pytest.mark.parametrize("suffix", ["jsonl", "parquet"])
def test_read_rows_reads_every_file_of_a_manifest_and_a_destination_alike(openai_batch_connection, tmp_path, suffix):
    with OpenAIBatchHook() as hook:
        first = submit(hook, [chat("a"), chat("b")])
        second = submit(hook, [chat("c")])
        manifest = hook.export_results([first.id, second.id], tmp_path / f"out.{suffix}", one_file_per_batch=True)
    rows = list(read_rows(manifest))
    assert [(r["custom_id"], r["index"]) for r in rows] == [("a", 0), ("b", 1), ("c", 2)]
    assert all(isinstance(r["response"], dict) for r in rows)  # JSON text in Parquet, a value here
    assert list(read_rows(manifest["files"][1]["destination"])) == rows[2:]
    with pytest.raises(ValueError, match="without it"):
        list(read_rows({"rows": 3}))


def test_the_decorator_never_splits_its_manifest_whatever_the_function_is_annotated(tmp_path):
    from airflow.sdk import DAG, task

    def prompts() -> dict:  # an annotation Airflow would read as "push every key as its own XCom"
        return {"prompt": "x"}

    with DAG("annotated", schedule=None):
        op = task.openai_batch(task_id="t", model="m", destination=str(tmp_path / "o.jsonl"))(prompts)().operator
    assert op.multiple_outputs is False
