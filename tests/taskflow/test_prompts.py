"""What a decorated function returns, written as input lines: every shape, the defaults filled in only where a
body has none, and errors that name the item."""

from __future__ import annotations

import json
import tracemalloc

import pytest

from airflow_provider_openai_batch.prompts import RequestBuilder, write_input
from airflow_provider_openai_batch.structured import output_schema


def written(value, tmp_path, builder: RequestBuilder) -> list[dict]:
    path = tmp_path / "in.jsonl"
    write_input(value, path, builder)
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_each_item_shape_becomes_a_full_line(tmp_path):
    builder = RequestBuilder("/v1/chat/completions", "m", "sys", {"temperature": 0})
    out = written(
        [
            "plain",
            {"prompt": "Hi {name}", "variables": {"name": "Ada"}, "custom_id": "p"},
            {"messages": [{"role": "system", "content": "own"}, {"role": "user", "content": "x"}], "custom_id": "b"},
            {"custom_id": "l", "body": {"model": "other", "messages": [], "temperature": 1}},
        ],
        tmp_path,
        builder,
    )
    assert [line["custom_id"] for line in out] == ["request-1", "p", "b", "l"]
    assert all(line["method"] == "POST" and line["url"] == "/v1/chat/completions" for line in out)
    assert out[0]["body"] == {
        "messages": [{"role": "system", "content": "sys"}, {"role": "user", "content": "plain"}],
        "model": "m",
        "temperature": 0,
    }
    assert out[1]["body"]["messages"][-1] == {"role": "user", "content": "Hi Ada"}
    assert out[2]["body"]["messages"][0] == {"role": "system", "content": "own"}  # its own system message stays
    assert out[3]["body"] == {"model": "other", "messages": [{"role": "system", "content": "sys"}], "temperature": 1}


def test_prompts_for_responses_and_embeddings(tmp_path):
    responses = written(["q"], tmp_path, RequestBuilder("/v1/responses", "m", "be brief"))
    assert responses[0]["body"] == {"input": "q", "model": "m", "instructions": "be brief"}
    embeddings = written(["t"], tmp_path, RequestBuilder("/embeddings", "e"))  # Azure writes no /v1
    assert embeddings[0] == {
        "custom_id": "request-1",
        "method": "POST",
        "url": "/embeddings",
        "body": {"input": "t", "model": "e"},
    }


def test_the_output_format_is_added_and_a_conflicting_one_refused(tmp_path):
    spec = output_schema(list[int])
    chat = written(["q"], tmp_path, RequestBuilder("/v1/chat/completions", "m", output=spec))
    assert chat[0]["body"]["response_format"]["json_schema"]["schema"] == spec.schema
    responses = written(
        [{"input": "q", "text": {"verbosity": "low"}}], tmp_path, RequestBuilder("/v1/responses", "m", output=spec)
    )
    assert responses[0]["body"]["text"]["verbosity"] == "low" and responses[0]["body"]["text"]["format"]["strict"]
    with pytest.raises(ValueError, match="item 0 the function returned sets response_format and output_type"):
        written(
            [{"messages": [], "response_format": {"type": "json_object"}}],
            tmp_path,
            RequestBuilder("/v1/chat/completions", "m", output=spec),
        )


def test_a_body_without_a_model_is_refused_naming_the_fix(tmp_path):
    with pytest.raises(
        ValueError, match=r"item 1 the function returned names no model: give @task.openai_batch\(model"
    ):
        written([{"messages": [], "model": "x"}, {"messages": []}], tmp_path, RequestBuilder("/v1/chat/completions"))


def test_a_prompt_for_an_endpoint_without_prompts_is_refused(tmp_path):
    with pytest.raises(ValueError, match="takes no prompt"):
        written(["draw a cat"], tmp_path, RequestBuilder("/v1/images/generations", "m"))


def test_a_jsonl_file_is_read_as_items_and_its_bad_line_named(tmp_path):
    source = tmp_path / "src.jsonl"
    source.write_text('{"prompt": "a"}\n\n{"body": {"input": "b"}}\nnot json\n')
    with pytest.raises(ValueError, match=r"line 4 of .*src.jsonl is not valid JSON"):
        written(str(source), tmp_path, RequestBuilder("/v1/responses", "m"))


def test_nan_and_lone_surrogates_are_refused_as_the_operator_refuses_them(tmp_path):
    builder = RequestBuilder("/v1/chat/completions", "m", request_params={"temperature": float("nan")})
    with pytest.raises(ValueError, match="item 0 the function returned contains NaN"):
        written(["x"], tmp_path, builder)
    with pytest.raises(ValueError, match="lone surrogate"):
        written(["bad \udcff"], tmp_path, RequestBuilder("/v1/chat/completions", "m"))


def test_a_generator_is_written_as_it_is_consumed_in_flat_memory(tmp_path):
    """30,000 prompts of 200 characters (about 9 MB of lines) pass with a peak of a small fraction of that:
    nothing is held (bench/taskflow.py measures 120,000 through the whole task)."""
    builder = RequestBuilder("/v1/chat/completions", "m", "sys")
    tracemalloc.start()
    try:
        count = write_input((f"prompt {i} " + "x" * 200 for i in range(30_000)), tmp_path / "big.jsonl", builder)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count == 30_000 and (tmp_path / "big.jsonl").stat().st_size > 8_000_000
    assert peak < 2_000_000
