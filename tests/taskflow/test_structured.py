"""output_type -> the strict JSON schema the API is asked for, and each answer parsed and validated against it."""

from __future__ import annotations

import json
from typing import Literal, Optional

import pytest
from pydantic import BaseModel, Field
from typing_extensions import TypedDict

from airflow_provider_openai_batch.structured import InvalidOutput, output_schema, strict_schema


class Inner(BaseModel):
    x: int


class Review(BaseModel):
    sentiment: Literal["positive", "negative"]
    score: float = Field(ge=0, le=1)
    tags: list[str] = []
    inner: Inner = Field(description="a nested model")
    maybe: Optional[Inner] = None  # noqa: UP045  (the Optional spelling users write)


class Node(BaseModel):
    name: str
    children: list[Node] = []


class Movie(TypedDict):
    title: str
    year: int


def objects(schema: dict) -> list[dict]:
    found = []

    def walk(node):
        if isinstance(node, dict):
            if node.get("type") == "object":
                found.append(node)
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(schema)
    return found


def test_a_pydantic_model_becomes_a_strict_schema_every_object_closed_and_fully_required():
    spec = output_schema(Review)
    assert spec.name == "Review" and not spec.wrapped
    for node in objects(spec.schema):
        assert node["additionalProperties"] is False and node["required"] == list(node["properties"])
    # A $ref with a description beside it is inlined (strict mode allows a lone $ref only); defaults are gone.
    assert "$ref" not in spec.schema["properties"]["inner"] and spec.schema["properties"]["inner"]["type"] == "object"
    assert "default" not in json.dumps(spec.schema)
    assert spec.schema["properties"]["maybe"]["anyOf"][0] == {"$ref": "#/$defs/Inner"}


def test_answers_are_parsed_validated_and_returned_json_native():
    spec = output_schema(Review)
    answer = {"sentiment": "positive", "score": 0.5, "tags": [], "inner": {"x": 1}, "maybe": None}
    assert spec.parse(json.dumps(answer)) == answer
    with pytest.raises(InvalidOutput, match=r"sentiment: Input should be 'positive' or 'negative'; score: Field"):
        spec.parse('{"sentiment": "meh"}')
    with pytest.raises(InvalidOutput, match="not valid JSON"):
        spec.parse('{"sentiment": "positive"')
    with pytest.raises(InvalidOutput, match="no text"):
        spec.parse(None)


def test_a_non_object_type_is_wrapped_and_unwrapped():
    spec = output_schema(list[str])
    assert spec.wrapped and spec.schema == {
        "type": "object",
        "properties": {"value": {"type": "array", "items": {"type": "string"}}},
        "required": ["value"],
        "additionalProperties": False,
    }
    assert spec.parse('{"value": ["a", "b"]}') == ["a", "b"]
    with pytest.raises(InvalidOutput, match="one key 'value'"):
        spec.parse('["a"]')


def test_a_typed_dict_a_recursive_model_and_a_json_schema_dict():
    assert output_schema(Movie).parse('{"title": "Up", "year": 2009}') == {"title": "Up", "year": 2009}
    node = output_schema(Node)  # Pydantic's root $ref to itself is taken as the object it names
    assert not node.wrapped and node.schema["$defs"]["Node"]["additionalProperties"] is False
    assert node.parse('{"name": "a", "children": [{"name": "b", "children": []}]}')["children"][0]["name"] == "b"
    raw = {"title": "Point", "type": "object", "properties": {"x": {"type": "integer"}}, "required": ["x"]}
    spec = output_schema(raw)
    assert spec.name == "Point" and spec.parse('{"x": 3}') == {"x": 3}
    with pytest.raises(InvalidOutput, match="x: 'a' is not of type 'integer'"):
        spec.parse('{"x": "a"}')


@pytest.mark.parametrize(
    ("output_type", "message"),
    [
        (dict[str, int], "free-form keys at the root"),
        ({"type": "nope"}, "not a valid JSON schema"),
        (object(), "has no JSON schema|cannot be described"),
    ],
)
def test_types_strict_mode_cannot_express_are_refused_with_the_fix(output_type, message):
    with pytest.raises(ValueError, match=message):
        output_schema(output_type)


def test_the_request_fields_of_each_endpoint():
    spec = output_schema(Movie)
    chat = spec.request_fields("/v1/chat/completions")["response_format"]
    assert chat == {"type": "json_schema", "json_schema": {"name": "Movie", "schema": spec.schema, "strict": True}}
    assert spec.request_fields("/chat/completions") == {"response_format": chat}  # Azure's spelling
    assert spec.request_fields("/v1/responses") == {
        "text": {"format": {"type": "json_schema", "name": "Movie", "schema": spec.schema, "strict": True}}
    }
    with pytest.raises(ValueError, match="has none"):
        spec.request_fields("/v1/embeddings")


def test_strict_schema_is_idempotent():
    once = strict_schema(output_schema(Review).schema)
    assert strict_schema(once) == once
