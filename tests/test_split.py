"""The split of a large input into shards, with its pre-flight check in the same pass: what it writes, what it
names, and the custom_id rule across shards in bounded memory."""

from __future__ import annotations

import hashlib
import io
import json
import threading
from pathlib import Path

import pytest

from airflow_provider_openai_batch import custom_ids, jsonl, split
from airflow_provider_openai_batch.backends import OPENAI_COMPATIBLE, rules_for
from airflow_provider_openai_batch.exceptions import BatchValidationError
from airflow_provider_openai_batch.split import split_input

CHAT = "/v1/chat/completions"


def line(custom_id: str, model: str = "gpt-4o-mini") -> str:
    body = {"model": model, "messages": [{"role": "user", "content": f"question {custom_id}"}]}
    return json.dumps({"custom_id": custom_id, "method": "POST", "url": CHAT, "body": body})


def write(path: Path, lines: list[str], end: str = "\n") -> Path:
    path.write_bytes("".join(text + end for text in lines).encode())
    return path


def refused(tmp_path: Path, sources: list[Path], **kwargs: object) -> list[str]:
    with pytest.raises(BatchValidationError) as caught:
        split_input(sources, CHAT, str(tmp_path), **kwargs)  # type: ignore[arg-type]
    return list(caught.value.problems)  # type: ignore[attr-defined]


@pytest.mark.parametrize("block", [5, 300, 1 << 20])  # lines across blocks, a few per block, all in one
def test_the_shards_are_the_input_and_their_digests_are_their_bytes(tmp_path, monkeypatch, block):
    monkeypatch.setattr(jsonl, "BLOCK_SIZE", block)
    texts = [line(f"r{i}") for i in range(11)]
    data = ("\n".join(texts[:4]) + "\n\n  \r\n" + "\r\n".join(texts[4:8]) + "\r\n" + "\n".join(texts[8:])).encode()
    source = tmp_path / "in.jsonl"
    source.write_bytes(data)  # blank lines, CRLF lines, and no newline at the end
    (tmp_path / "out").mkdir()
    result = split_input([source], CHAT, str(tmp_path / "out"), max_requests_per_batch=3)
    assert [s.requests for s in result.shards] == [3, 3, 3, 2] and result.requests == 11
    written = b"".join(Path(s.path).read_bytes() for s in result.shards)
    assert written.split(b"\n")[:-1] == [t.encode() for t in texts[:4]] + [t.encode() + b"\r" for t in texts[4:8]] + [
        t.encode() for t in texts[8:]
    ]
    assert result.digest == hashlib.sha256(data).hexdigest()
    for shard in result.shards:
        content = Path(shard.path).read_bytes()
        assert shard.digest == hashlib.sha256(content).hexdigest() and shard.bytes == len(content)
        assert shard.tokens == sum((len(x) + 3) // 4 for x in content.splitlines(keepends=True))
    assert [result.shards[1].origin(n) for n in (1, 2, 3)] == [(0, 4), (0, 7), (0, 8)]  # lines 5 and 6 are blank


def test_a_repeated_custom_id_inside_a_shard_names_both_input_lines(tmp_path):
    source = write(tmp_path / "in.jsonl", [line("a"), "", line("b"), line("c"), line("b")])
    problems = refused(tmp_path, [source], max_requests_per_batch=10)
    assert problems == ["input_file line 5: custom_id 'b' is also used on line 3; custom_ids must be unique"]


@pytest.mark.parametrize("group", [2, 250_000])  # the set of recent ids, and the scan of older shards
def test_a_custom_id_repeated_in_another_shard_names_both_places(tmp_path, monkeypatch, group):
    monkeypatch.setattr(custom_ids.UniqueIds, "GROUP", group)
    first = write(tmp_path / "a.jsonl", [line(f"r{i}") for i in range(6)])
    second = write(tmp_path / "b.jsonl", [line("x"), line("r1"), line("y"), line("x"), line("r1")])
    problems = refused(tmp_path, [first, second], max_requests_per_batch=2)
    assert sorted(problems) == [
        "input_file[1] line 2: custom_id 'r1' is also used on input_file[0] line 2; custom_ids must be unique across "
        "the whole input",
        "input_file[1] line 4: custom_id 'x' is also used on input_file[1] line 1; custom_ids must be unique across "
        "the whole input",
        "input_file[1] line 5: custom_id 'r1' is also used on input_file[0] line 2; custom_ids must be unique across "
        "the whole input",  # a third use, named against the first
    ]


@pytest.mark.parametrize("group", [2, 250_000])
def test_a_hash_collision_never_refuses_a_valid_input(tmp_path, monkeypatch, group):
    # Every id hashes alike: each one is a suspect, and reading the ids back clears them all.
    monkeypatch.setattr(custom_ids.UniqueIds, "GROUP", group)
    monkeypatch.setattr(split, "hash", lambda value: 42, raising=False)
    source = write(tmp_path / "in.jsonl", [line(f"r{i}") for i in range(9)])
    (tmp_path / "ok").mkdir()
    assert split_input([source], CHAT, str(tmp_path / "ok"), max_requests_per_batch=2).requests == 9
    again = write(tmp_path / "again.jsonl", [line(f"r{i}") for i in range(9)] + [line("r4")])
    assert refused(tmp_path, [again], max_requests_per_batch=2) == [
        "input_file line 10: custom_id 'r4' is also used on line 5; custom_ids must be unique across the whole input"
    ]


def test_a_shard_names_one_model_and_a_mixed_one_is_refused_by_input_line(tmp_path):
    mixed = [line("a"), line("b"), line("c", model="gpt-4o"), line("d", model="gpt-4o")]
    source = write(tmp_path / "in.jsonl", mixed)
    assert refused(tmp_path, [source], max_requests_per_batch=3) == [
        "input_file line 3: model 'gpt-4o' differs from 'gpt-4o-mini' on line 1: on openai a batch file "
        "may use one model only; split the file by model"
    ]
    (tmp_path / "cut").mkdir()  # each shard names one model: the input may change model at a shard's edge
    assert split_input([source], CHAT, str(tmp_path / "cut"), max_requests_per_batch=2).requests == 4
    (tmp_path / "other").mkdir()
    rules = rules_for(OPENAI_COMPATIBLE)
    assert split_input([source], CHAT, str(tmp_path / "other"), rules=rules).requests == 4


def test_a_failed_write_stops_the_split_with_its_error(tmp_path, monkeypatch):
    class Full(io.BytesIO):
        def write(self, data: object) -> int:
            raise OSError(28, "No space left on device")

    real_open = open
    monkeypatch.setattr(
        split, "open", lambda path, mode="r": Full() if "w" in mode else real_open(path, mode), raising=False
    )
    source = write(tmp_path / "in.jsonl", [line(f"r{i}") for i in range(5)])
    with pytest.raises(OSError, match="No space left"):
        split_input([source], CHAT, str(tmp_path), max_requests_per_batch=2)
    assert [t.name for t in threading.enumerate() if t.name == "split-digests"] == []  # no thread left behind


def test_a_hopeless_input_stops_at_a_hundred_problems(tmp_path):
    source = write(tmp_path / "in.jsonl", ["not json"] * 5000)
    problems = refused(tmp_path, [source], max_requests_per_batch=50_000)
    assert 100 <= len(problems) < 200 and problems[0] == "input_file line 1: not valid JSON (Expecting value)"


def test_an_id_used_again_in_a_group_and_beyond_it_is_named_once_per_use(tmp_path, monkeypatch):
    monkeypatch.setattr(custom_ids.UniqueIds, "GROUP", 3)  # shards 1-2 fill the set, shard 3 is checked later
    source = write(tmp_path / "in.jsonl", [line("a"), line("x"), line("b"), line("x"), line("c"), line("x")])
    assert refused(tmp_path, [source], max_requests_per_batch=2) == [
        "input_file line 4: custom_id 'x' is also used on line 2; custom_ids must be unique across the whole input",
        "input_file line 6: custom_id 'x' is also used on line 2; custom_ids must be unique across the whole input",
    ]
