"""Structured outputs as the emulator plays them, judged with plain HTTP and jsonschema (no client code): a
strict schema is answered with a document valid for it, the same for the same request; a ``badjson`` model
gets an invalid one; a schema strict mode cannot take is refused on its line."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import pytest
from emulator_support import Http, request_line
from openai_batch_emulator import json_schema

#: A strict schema as Pydantic and a strict-mode client write it: $defs and $ref, enums, const, nested objects,
#: nullable unions, arrays with bounds, numbers with ranges, string formats, a recursive definition.
SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "sentiment": {"type": "string", "enum": ["positive", "negative", "mixed"]},
        "kind": {"const": "review"},
        "score": {"type": "number", "minimum": 0, "maximum": 1},
        "stars": {"type": "integer", "minimum": 1, "maximum": 5},
        "verified": {"type": "boolean"},
        "when": {"type": "string", "format": "date-time"},
        "tags": {"type": "array", "items": {"type": "string", "minLength": 3}, "minItems": 2, "maxItems": 4},
        "author": {"$ref": "#/$defs/Person"},
        "editor": {"anyOf": [{"$ref": "#/$defs/Person"}, {"type": "null"}]},
        "thread": {"$ref": "#/$defs/Comment"},
        "note": {"type": ["string", "null"]},
    },
    "required": [
        "sentiment",
        "kind",
        "score",
        "stars",
        "verified",
        "when",
        "tags",
        "author",
        "editor",
        "thread",
        "note",
    ],
    "additionalProperties": False,
    "$defs": {
        "Person": {
            "type": "object",
            "properties": {"name": {"type": "string"}, "email": {"type": "string", "format": "email"}},
            "required": ["name", "email"],
            "additionalProperties": False,
        },
        "Comment": {
            "type": "object",
            "properties": {
                "text": {"type": "string"},
                "replies": {"type": "array", "items": {"$ref": "#/$defs/Comment"}},
            },
            "required": ["text", "replies"],
            "additionalProperties": False,
        },
    },
}


def chat(custom_id: str, schema: dict[str, Any], model: str = "gpt-4o-mini", strict: bool = True) -> dict[str, Any]:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": f"review {custom_id}"}],
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "Review", "schema": schema, "strict": strict},
        },
    }
    return request_line(custom_id, body=body)


def results(http: Http, items: list[dict[str, Any]], endpoint: str = "/v1/chat/completions") -> dict[str, dict]:
    batch = http.wait(http.create_for(http.upload_id(items), endpoint).json()["id"])
    lines: dict[str, dict] = {}
    for key in ("output_file_id", "error_file_id"):
        if batch.get(key):
            text = http.get(f"/files/{batch[key]}/content").text
            lines.update({item["custom_id"]: item for item in map(json.loads, text.splitlines())})
    return lines


@pytest.mark.parametrize("seed", ["0" * 64, "ab" * 32, "f00d" * 16, "1234abcd" * 8])
def test_documents_are_valid_for_the_schema_and_the_same_for_the_same_seed(seed):
    document = json_schema.document(SCHEMA, seed)
    jsonschema.validate(document, SCHEMA, format_checker=jsonschema.FormatChecker())
    assert json_schema.document(SCHEMA, seed) == document


def test_a_strict_request_is_answered_with_a_valid_document_per_request(openai_batch_emulator):
    http = Http(openai_batch_emulator.base_url)
    lines = results(http, [chat(f"r{i}", SCHEMA) for i in range(4)])
    answers = [json.loads(lines[f"r{i}"]["response"]["body"]["choices"][0]["message"]["content"]) for i in range(4)]
    for answer in answers:
        jsonschema.validate(answer, SCHEMA)
    assert len({json.dumps(a, sort_keys=True) for a in answers}) == 4  # different requests, different documents
    again = results(http, [chat("r0", SCHEMA)])  # the same request: the same document
    assert json.loads(again["r0"]["response"]["body"]["choices"][0]["message"]["content"]) == answers[0]


def test_the_responses_endpoint_answers_in_its_output_text(openai_batch_emulator):
    http = Http(openai_batch_emulator.base_url)
    fmt = {"type": "json_schema", "name": "Review", "schema": SCHEMA, "strict": True}
    item = request_line("x", url="/v1/responses", body={"model": "gpt-4o-mini", "input": "hi", "text": {"format": fmt}})
    body = results(http, [item], "/v1/responses")["x"]["response"]["body"]
    jsonschema.validate(json.loads(body["output"][0]["content"][0]["text"]), SCHEMA)


def test_badjson_models_answer_text_that_is_not_valid_for_the_schema(openai_batch_emulator):
    http = Http(openai_batch_emulator.base_url)
    # One model per batch file, as the API takes them.
    lines = {
        **results(http, [chat("cut", SCHEMA, model="badjson")]),
        **results(http, [chat("wrong", SCHEMA, model="badjson-schema")]),
    }
    cut = lines["cut"]["response"]["body"]["choices"][0]["message"]["content"]
    with pytest.raises(json.JSONDecodeError):
        json.loads(cut)
    wrong = json.loads(lines["wrong"]["response"]["body"]["choices"][0]["message"]["content"])
    assert not jsonschema.Draft202012Validator(SCHEMA).is_valid(wrong)
    assert all(line["response"]["status_code"] == 200 for line in lines.values())  # answered, and billed


@pytest.mark.parametrize(
    ("schema", "message"),
    [
        (
            {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]},
            "In context=(), 'additionalProperties' is required to be supplied and to be false",
        ),
        (
            {
                "type": "object",
                "properties": {"a": {"type": "string"}, "b": {"type": "integer"}},
                "required": ["a"],
                "additionalProperties": False,
            },
            "'required' is required to be supplied and to be an array including every key in properties. Missing 'b'",
        ),
        ({"type": "array", "items": {"type": "string"}}, "schema must be a JSON Schema of 'type: \"object\"'"),
    ],
)
def test_a_schema_strict_mode_cannot_take_is_refused_on_its_line(openai_batch_emulator, schema, message):
    http = Http(openai_batch_emulator.base_url)
    line = results(http, [chat("bad", schema), chat("loose", schema, strict=False)])
    refused = line["bad"]["response"]
    assert refused["status_code"] == 400 and message in refused["body"]["error"]["message"]
    assert refused["body"]["error"]["param"] == "response_format"
    assert line["loose"]["response"]["status_code"] == 200  # without strict, any schema is answered
