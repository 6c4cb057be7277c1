"""``ResultJoin`` on its own: rounds are told from shards by the request each input line makes."""

from __future__ import annotations

import json

import pytest

from airflow_provider_openai_batch.results.join import RequestConflict, ResultJoin, request_digest
from tests.results.helpers import lines_file


def line(custom_id: str, text: str = "hi", url: str = "/v1/chat/completions") -> bytes:
    body = {"model": "m", "messages": [{"role": "user", "content": text}]}
    return json.dumps({"custom_id": custom_id, "method": "POST", "url": url, "body": body}).encode() + b"\n"


@pytest.fixture
def join(tmp_path):
    j = ResultJoin(tmp_path / "join.sqlite")
    yield j
    j.close()


def test_the_digest_covers_method_url_and_body_but_not_key_order_or_custom_id():
    item = json.loads(line("a"))
    reordered = {**json.loads(line("b")), "body": dict(reversed(item["body"].items()))}
    assert request_digest(item) == request_digest(reordered)
    assert request_digest(item) != request_digest(json.loads(line("a", "other")))
    assert request_digest(item) != request_digest(json.loads(line("a", url="/v1/responses")))
    assert request_digest(item) != request_digest({**item, "method": "GET"})


def test_a_conflicting_batch_records_nothing_and_names_both_ranks(join, tmp_path):
    join.add_inputs(0, lines_file(tmp_path, [line("a"), line("b")]))
    with pytest.raises(RequestConflict) as caught:
        join.add_inputs(1, lines_file(tmp_path, [line("c"), line("b", "changed")]))
    assert (caught.value.custom_id, caught.value.earlier_rank, caught.value.rank) == ("b", 0, 1)
    assert [(r.custom_id, r.last_rank) for r in join.rows()] == [("a", 0), ("b", 0)]  # "c" was not added


def test_one_file_holding_a_custom_id_twice_with_different_requests(join, tmp_path):
    with pytest.raises(RequestConflict) as caught:
        join.add_inputs(0, lines_file(tmp_path, [line("a"), line("b"), line("a", "again")]))
    assert (caught.value.custom_id, caught.value.earlier_rank, caught.value.rank) == ("a", 0, 0)


def test_the_line_of_an_older_round_does_not_stand_in_for_the_last_round_that_held_the_request(join, tmp_path):
    join.add_inputs(0, lines_file(tmp_path, [line("a"), line("b")]))
    join.add_results(0, lines_file(tmp_path / "0.jsonl", [b'{"custom_id": "a"}\n', b'{"custom_id": "b"}\n']))
    join.add_inputs(1, lines_file(tmp_path, [line("b")]))  # round 2 held "b" but wrote no line for it
    rows = {r.custom_id: r for r in join.rows()}
    assert (rows["a"].result_rank, rows["a"].line) == (0, b'{"custom_id": "a"}\n')
    assert (rows["b"].last_rank, rows["b"].result_rank, rows["b"].line) == (1, None, None)


def test_in_one_file_the_custom_id_named_first_is_reported_and_nothing_of_the_file_is_kept(join, tmp_path):
    join.add_inputs(0, lines_file(tmp_path, [line("kept")]))
    # y's two requests are closer together, but x was named first.
    with pytest.raises(RequestConflict) as caught:
        join.add_inputs(1, lines_file(tmp_path, [line("x"), line("y"), line("y", "other"), line("x", "other")]))
    assert (caught.value.custom_id, caught.value.earlier_rank, caught.value.rank) == ("x", 1, 1)
    assert [(r.index, r.custom_id, r.last_rank) for r in join.rows()] == [(0, "kept", 0)]
    join.add_inputs(1, lines_file(tmp_path, [line("x"), line("y")]))  # the positions it would have taken are still free
    assert [(r.index, r.custom_id) for r in join.rows()] == [(0, "kept"), (1, "x"), (2, "y")]


def test_a_known_custom_id_sent_again_with_another_request_names_the_last_batch_that_held_it(join, tmp_path):
    join.add_inputs(0, lines_file(tmp_path, [line("a"), line("b")]))
    join.add_inputs(1, lines_file(tmp_path, [line("a")]))
    with pytest.raises(RequestConflict) as caught:
        join.add_inputs(2, lines_file(tmp_path, [line("b"), line("a"), line("a", "changed")]))
    assert (caught.value.custom_id, caught.value.earlier_rank, caught.value.rank) == ("a", 1, 2)
