"""``ResultJoin`` on its own: which batch a request's row comes from."""

from __future__ import annotations

import json

import pytest

from airflow_provider_openai_batch.results.join import ResultJoin


def line(custom_id: str, text: str = "hi", url: str = "/v1/chat/completions") -> bytes:
    body = {"model": "m", "messages": [{"role": "user", "content": text}]}
    return json.dumps({"custom_id": custom_id, "method": "POST", "url": url, "body": body}).encode() + b"\n"


@pytest.fixture
def join(tmp_path):
    j = ResultJoin(tmp_path / "join.sqlite")
    yield j
    j.close()


def test_the_line_of_an_older_round_does_not_stand_in_for_the_last_round_that_held_the_request(join):
    join.add_inputs(0, [line("a"), line("b")])
    join.add_results(0, [b'{"custom_id": "a"}\n', b'{"custom_id": "b"}\n'])
    join.add_inputs(1, [line("b")])  # round 2 held "b" but wrote no line for it
    rows = {r.custom_id: r for r in join.rows()}
    assert (rows["a"].result_rank, rows["a"].line) == (0, b'{"custom_id": "a"}\n')
    assert (rows["b"].last_rank, rows["b"].result_rank, rows["b"].line) == (1, None, None)
