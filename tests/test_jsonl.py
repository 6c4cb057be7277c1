"""The pre-flight rules for a batch input file that the API's own validation would refuse."""

from __future__ import annotations

import json

import pytest

from airflow_provider_openai_batch.jsonl import count_embedding_inputs, validate_batch_input_lines

EMBEDDINGS = "/v1/embeddings"


def embedding_line(number: int, value: object) -> bytes:
    body = {"model": "text-embedding-3-small", "input": value}
    return json.dumps({"custom_id": f"e{number}", "method": "POST", "url": EMBEDDINGS, "body": body}).encode()


@pytest.mark.parametrize(
    ("value", "inputs"),
    [
        ("one text", 1),
        (["a", "b", "c"], 3),
        (list(range(30_000)), 1),  # one token array: one input, however many tokens
        ([[1, 2, 3], [4, 5]], 2),  # a list of token arrays: one input each
        ([], 1),
    ],
)
def test_embedding_inputs_are_counted_as_the_api_counts_them(value, inputs):
    assert count_embedding_inputs(value) == inputs


def test_a_file_of_long_token_arrays_is_valid():
    """Two lines of 30,000 tokens each are two inputs, not 60,000 (which the old count refused)."""
    lines = [embedding_line(n, list(range(30_000))) for n in range(2)]
    assert validate_batch_input_lines(lines, EMBEDDINGS) == []
    too_many = [embedding_line(0, [[1]] * 50_000), embedding_line(1, [[2]])]
    assert [p.code for p in validate_batch_input_lines(too_many, EMBEDDINGS)] == ["too_many_embedding_inputs"]


def test_invalid_utf8_is_refused_and_the_line_named():
    good = embedding_line(1, "fine")
    bad = embedding_line(2, "caf").replace(b"caf", b"caf\xe9")  # Latin-1, not UTF-8
    problems = validate_batch_input_lines([good, bad, embedding_line(3, "x")], EMBEDDINGS)
    assert [(p.line, p.code) for p in problems] == [(2, "invalid_encoding")]
    assert "line 2: not valid UTF-8 (byte 0xe9 at column" in str(problems[0]) and "save the file as UTF-8" in str(
        problems[0]
    )
