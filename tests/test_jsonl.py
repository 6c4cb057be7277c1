"""The pre-flight rules for a batch input file that the API's own validation would refuse."""

from __future__ import annotations

import hashlib
import io
import json

import msgspec
import pytest

from airflow_provider_openai_batch import jsonl
from airflow_provider_openai_batch.backends import rules_for
from airflow_provider_openai_batch.jsonl import (
    InputCheck,
    check_stream,
    count_embedding_inputs,
    line_blocks,
    validate_batch_input_lines,
)

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


# ------------------------------------------------------------------- the typed decoder changes no verdict

CHAT = "/v1/chat/completions"


def chat_line(custom_id: str, model: str = "gpt-4o-mini", **body: object) -> bytes:
    request = {"model": model, "messages": [{"role": "user", "content": f"q {custom_id}"}], **body}
    return json.dumps({"custom_id": custom_id, "method": "POST", "url": CHAT, "body": request}).encode()


GOOD = chat_line("good")
#: Lines the typed decoder must send to ``json`` (or judge exactly as ``json`` would): each is put among good
#: lines, and the problems must be the same with and without the decoder.
TRICKY: list[bytes] = [
    b"",
    b"   \r",
    b"\x0b",  # a blank line to str.strip, not to bytes.strip
    GOOD + b"\r",
    GOOD.replace(b"q good", b"caf\xe9"),  # Latin-1 inside the skipped body
    GOOD.replace(b"q good", b"\xed\xa0\x80"),  # a UTF-8-encoded surrogate
    GOOD.replace(b"q good", b"\xc0\xaf"),  # an overlong encoding
    GOOD.replace(b"q good", "café ☕ 😀".encode()),  # good UTF-8
    GOOD.replace(b"q good", b"\\ud800"),  # a lone surrogate escape: json reads it
    GOOD.replace(b'"messages"', b'"n": NaN, "messages"'),
    GOOD.replace(b'"messages"', b'"n": 1e400, "messages"'),
    GOOD.replace(b'"messages"', b'"n": 123456789012345678901234567890, "messages"'),
    GOOD.replace(b'"messages"', b'"n": [1,], "messages"'),
    GOOD.replace(b'"custom_id"', b'"custom\\u005fid"'),  # an escaped key is the same key
    GOOD[:-1] + b', "custom_id": 5}',  # a repeated key: the last one counts
    GOOD[:-1] + b', "custom_id": "good"}',
    GOOD.replace(b'"POST"', b'"P\\u004fST"'),
    GOOD.replace(b'"POST"', b'"post"'),
    GOOD.replace(CHAT.encode(), b"/v1/embeddings"),
    GOOD.replace(CHAT.encode(), b"/chat/completions"),
    GOOD.replace(b'"good"', b'""'),
    GOOD.replace(b'"good"', b"null"),
    GOOD.replace(b'"good"', b"7"),
    json.dumps({"custom_id": "nobody", "method": "POST", "url": CHAT}).encode(),
    json.dumps({"custom_id": "listbody", "method": "POST", "url": CHAT, "body": []}).encode(),
    json.dumps({"custom_id": "nomodel", "method": "POST", "url": CHAT, "body": {}}).encode(),
    chat_line("other-model", model="gpt-4o"),
    chat_line("list-model", model=["gpt-4o-mini"]),  # type: ignore[arg-type]
    chat_line("float-model", model=1.0),  # type: ignore[arg-type]
    b"[1, 2]",
    b'"text"',
    b'{"custom_id": "x"} {"custom_id": "y"}',
    GOOD + b"," + GOOD,
    b"\xef\xbb\xbf" + GOOD,  # a byte order mark
    GOOD.replace(b'"q good"', b'"tab\there"'),
]
#: Nesting deeper than ``json`` reads: it raises, and so must the check.
DEEP = GOOD.replace(b'"messages"', b'"x": ' + b"[" * 5000 + b"]" * 5000 + b', "messages"')


def file_of(*lines: bytes) -> list[bytes]:
    return [line + b"\n" for line in lines]


def judged_by_json_alone(monkeypatch: pytest.MonkeyPatch, lines: list[bytes], **kwargs: object) -> list[object]:
    """The problems when every line goes the slow way: a typed decoder that refuses everything."""

    def refuse_all(endpoint: str, embeddings: bool) -> object:
        def decode(raw: object) -> object:
            raise msgspec.DecodeError("refused")

        return decode

    with monkeypatch.context() as patch:
        patch.setattr(jsonl, "_typed_decoder", refuse_all)
        return validate_batch_input_lines(lines, CHAT, **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("tricky", [*TRICKY, DEEP], ids=range(len(TRICKY) + 1))
def test_the_typed_decoder_changes_no_verdict_and_no_message(monkeypatch, tricky):
    lines = file_of(chat_line("a"), tricky, chat_line("b"), tricky, chat_line("good"), chat_line("c"))
    try:
        expected = judged_by_json_alone(monkeypatch, lines)
    except RecursionError:  # json gives up on very deep nesting; then so must the check
        with pytest.raises(RecursionError):
            validate_batch_input_lines(lines, CHAT)
        return
    assert validate_batch_input_lines(lines, CHAT) == expected
    assert validate_batch_input_lines([line.decode("utf-8", "surrogateescape") for line in lines], CHAT) == (
        judged_by_json_alone(monkeypatch, [line.decode("utf-8", "surrogateescape") for line in lines])
    )
    assert check_stream(io.BytesIO(b"".join(lines)), CHAT) == expected


def test_good_lines_never_go_the_slow_way(monkeypatch):
    def judged(*args: object) -> bool:
        raise AssertionError("a good line was judged by json")

    monkeypatch.setattr(InputCheck, "_judge", judged)
    lines = file_of(*[chat_line(f"r{i}") for i in range(3000)])
    assert validate_batch_input_lines(lines, CHAT) == [] and check_stream(io.BytesIO(b"".join(lines)), CHAT) == []
    embeddings = file_of(*[embedding_line(n, ["a", "b"]) for n in range(10)])
    assert validate_batch_input_lines(embeddings, EMBEDDINGS) == []


@pytest.mark.parametrize("where", [3, 300, 2999])
def test_a_repeated_id_in_a_block_of_good_lines_is_named_against_its_first_use(where):
    lines = file_of(*[chat_line(f"r{i}") for i in range(3000)], chat_line(f"r{where - 1}"), chat_line("last"))
    for problems in (validate_batch_input_lines(lines, CHAT), check_stream(io.BytesIO(b"".join(lines)), CHAT)):
        assert [(p.line, p.code, p.message) for p in problems] == [
            (
                3001,
                "duplicate_custom_id",
                f"custom_id 'r{where - 1}' is also used on line {where}; custom_ids must be unique",
            )
        ]


def test_every_rule_is_named_exactly_as_json_names_it(monkeypatch):
    # All the tricky lines in one file, with the per-file rules too (a second model, a repeated id).
    lines = file_of(*[line for tricky in TRICKY for line in (chat_line(f"ok{len(tricky)}"), tricky)])
    problems = validate_batch_input_lines(lines, CHAT, max_problems=10_000)
    assert problems == judged_by_json_alone(monkeypatch, lines, max_problems=10_000)
    codes = {p.code for p in problems}
    assert codes >= {
        "invalid_encoding",
        "invalid_json_line",
        "invalid_request",
        "missing_required_parameter",
        "duplicate_custom_id",
        "invalid_method",
        "mismatched_url",
        "invalid_body",
        "mismatched_model",
    }


def test_embedding_inputs_and_limits_are_counted_the_same_either_way(monkeypatch):
    lines = file_of(*[embedding_line(n, value) for n, value in enumerate(["a", ["b", "c"], [1, 2], [[1], [2]]])])
    rules = rules_for(max_embedding_inputs=5, max_requests_per_file=3)
    fast = validate_batch_input_lines(lines, EMBEDDINGS, rules=rules)
    with monkeypatch.context() as patch:
        patch.setattr(jsonl, "_typed_decoder", lambda endpoint, embeddings: _refuse)
        slow = validate_batch_input_lines(lines, EMBEDDINGS, rules=rules)
    assert fast == slow and [p.code for p in fast] == ["too_many_requests"]
    check = InputCheck(EMBEDDINGS, rules_for(max_embedding_inputs=5))
    check.feed([line.rstrip(b"\n") for line in lines])
    assert check.embedding_inputs == 6 and [p.code for p in check.finish()] == ["too_many_embedding_inputs"]


def _refuse(raw: object) -> object:
    raise msgspec.DecodeError("refused")


# ------------------------------------------------------------------------------------------ line blocks


@pytest.mark.parametrize("block", [1, 2, 7, 64, 1 << 20])
def test_line_blocks_give_the_lines_of_iterating_the_file(monkeypatch, block):
    monkeypatch.setattr(jsonl, "BLOCK_SIZE", block)
    data = b'{"a": 1}\n\n  \r\nab\rc\n' + b"x" * 100 + b"\nlast without newline"
    digest = hashlib.sha256()
    lines: list[bytes] = []
    spanned = b""
    for item in line_blocks(io.BytesIO(data), digest):
        assert not isinstance(item, int)
        lines.extend(item[0])
        spanned += b"".join(item[1])  # the block's bytes as read, newlines included
    assert lines == [line.rstrip(b"\n") for line in io.BytesIO(data)]
    assert spanned == data and digest.hexdigest() == hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("block", [3, 16, 1 << 20])
def test_a_line_over_the_limit_is_counted_never_held(monkeypatch, block):
    monkeypatch.setattr(jsonl, "BLOCK_SIZE", block)
    data = b"short\n" + b"y" * 50 + b"\nok\n" + b"z" * 40
    items = list(line_blocks(io.BytesIO(data), None, limit=20))
    lines = [line for item in items if not isinstance(item, int) for line in item[0]]
    lengths = [item for item in items if isinstance(item, int)]
    if block < 20:  # spanning blocks: the long lines come as their lengths (newline counted when there is one)
        assert lines == [b"short", b"ok"] and lengths == [51, 40]
    else:  # a line complete within one block comes whole, for the caller's own limit check to name
        assert lines == [b"short", b"y" * 50, b"ok"] and lengths == [40]
