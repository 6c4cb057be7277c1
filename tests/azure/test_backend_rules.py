"""Each rule of the back-end table (backends.RULES) has a test here: line limit, size limit, embedding inputs,
accepted endpoints and the shape of a line's url, completion windows, one model per file, link target, and
the overrides a user can make when a back end changes a limit."""

from __future__ import annotations

import json

import pytest

from airflow_provider_openai_batch import api
from airflow_provider_openai_batch.backends import API_TYPES, AZURE, OPENAI, OPENAI_COMPATIBLE, RULES, rules_for
from airflow_provider_openai_batch.connection import settings_from_connection
from airflow_provider_openai_batch.jsonl import too_large, validate_batch_input_lines


def lines(n: int, url: str = "/chat/completions", model: str = "dep", first: int = 0) -> list[bytes]:
    one = {"custom_id": "", "method": "POST", "url": url, "body": {"model": model, "messages": []}}
    return [json.dumps({**one, "custom_id": f"r{i}"}).encode() for i in range(first, first + n)]


def codes(problems) -> list[str]:
    return [p.code for p in problems]


def test_the_table_covers_every_api_type():
    assert set(RULES) == set(API_TYPES) == {OPENAI, AZURE, OPENAI_COMPATIBLE}
    assert all(rules.api_type == name for name, rules in RULES.items())


# ------------------------------------------------------------------------------------------- line limit


def test_azure_accepts_100000_lines_where_openai_stops_at_50000():
    many = lines(100_000)
    assert validate_batch_input_lines(many, "/chat/completions", rules=rules_for(AZURE)) == []
    refused = validate_batch_input_lines(lines(100_001), "/chat/completions", rules=rules_for(AZURE))
    assert codes(refused) == ["too_many_requests"] and "100000" in str(refused[0])
    openai = validate_batch_input_lines(lines(50_001, "/v1/chat/completions"), "/v1/chat/completions")
    assert codes(openai) == ["too_many_requests"] and "50000" in str(openai[0])


def test_a_user_can_override_the_line_limit():
    rules = rules_for(AZURE, max_requests_per_file=3)
    assert codes(validate_batch_input_lines(lines(4), "/chat/completions", rules=rules)) == ["too_many_requests"]


# ------------------------------------------------------------------------------------------- size limit


@pytest.mark.parametrize("api_type", API_TYPES)
def test_the_size_limit_is_the_back_ends(api_type):
    rules = rules_for(api_type)
    assert too_large(rules.max_bytes_per_file, rules) == []
    assert codes(too_large(rules.max_bytes_per_file + 1, rules)) == ["file_too_large"]
    smaller = rules_for(api_type, max_bytes_per_file=100)
    assert codes(too_large(101, smaller)) == ["file_too_large"] and "100" in str(too_large(101, smaller)[0])


def test_the_size_limit_is_checked_over_the_lines_too():
    rules = rules_for(AZURE, max_bytes_per_file=200)
    assert "file_too_large" in codes(validate_batch_input_lines(lines(3), "/chat/completions", rules=rules))


# ------------------------------------------------------------------------------------ embedding inputs


def test_embedding_inputs_are_limited_on_openai_only():
    body = {"model": "m", "input": ["a"] * 30_000}
    two = [json.dumps({"custom_id": f"e{i}", "method": "POST", "url": "/v1/embeddings", "body": body}) for i in (1, 2)]
    assert codes(validate_batch_input_lines(two, "/v1/embeddings")) == ["too_many_embedding_inputs"]
    azure = [line.replace("/v1/embeddings", "/embeddings") for line in two]
    assert validate_batch_input_lines(azure, "/embeddings", rules=rules_for(AZURE)) == []


# ------------------------------------------------------------------------- endpoints and the url shape


@pytest.mark.parametrize(
    ("api_type", "given", "shaped"),
    [
        (OPENAI, "/v1/chat/completions", "/v1/chat/completions"),
        (OPENAI, "/chat/completions", "/v1/chat/completions"),
        (AZURE, "/v1/chat/completions", "/chat/completions"),
        (AZURE, "/embeddings", "/embeddings"),
        (AZURE, "/v1/responses", "/responses"),
        (OPENAI_COMPATIBLE, "/v1/chat/completions", "/v1/chat/completions"),
        (OPENAI_COMPATIBLE, "/v1/rerank", "/v1/rerank"),
    ],
)
def test_an_endpoint_is_put_in_the_back_ends_shape(api_type, given, shaped):
    rules = rules_for(api_type)
    assert rules.endpoint(given) == shaped
    assert api.create_batch("file-1", given, rules=rules).json["endpoint"] == shaped  # type: ignore[index]


@pytest.mark.parametrize(
    ("api_type", "endpoint"),
    [
        (OPENAI, "/v1/rerank"),
        (AZURE, "/v1/moderations"),  # OpenAI serves it in batches; Azure does not
        (AZURE, "/completions"),
        (OPENAI_COMPATIBLE, "/v1/../admin"),
        (OPENAI_COMPATIBLE, "chat/completions"),
        (AZURE, None),
    ],
)
def test_an_endpoint_the_back_end_does_not_serve_is_refused_naming_the_accepted_ones(api_type, endpoint):
    with pytest.raises(ValueError, match=f"endpoint must be one of .*{api_type}"):
        rules_for(api_type).endpoint(endpoint)


def test_a_line_in_the_other_back_ends_url_shape_is_refused_saying_so():
    azure = validate_batch_input_lines(lines(1, "/v1/chat/completions"), "/chat/completions", rules=rules_for(AZURE))
    assert codes(azure) == ["mismatched_url"] and "written without /v1" in str(azure[0])
    openai = validate_batch_input_lines(lines(1, "/chat/completions"), "/v1/chat/completions")
    assert codes(openai) == ["mismatched_url"] and "written with /v1" in str(openai[0])


# -------------------------------------------------------------------------------- completion windows


@pytest.mark.parametrize("api_type", API_TYPES)
def test_completion_windows(api_type):
    rules = rules_for(api_type)
    assert rules.completion_window("24h") == "24h"
    with pytest.raises(ValueError, match="completion_window must be one of '24h'"):
        rules.completion_window("48h")
    longer = rules_for(api_type, completion_windows=("24h", "48h"))
    assert api.create_batch("file-1", "/chat/completions", "48h", rules=longer).json["completion_window"] == "48h"  # type: ignore[index]


# ------------------------------------------------------------------------------- one model per file


def test_azure_and_openai_refuse_two_models_in_one_file_other_servers_do_not():
    mixed = lines(2) + lines(1, model="other-deployment", first=2)
    refused = validate_batch_input_lines(mixed, "/chat/completions", rules=rules_for(AZURE))
    assert codes(refused) == ["mismatched_model"]
    assert refused[0].line == 3 and "'other-deployment' differs from 'dep' on line 1" in str(refused[0])
    assert "on azure a batch file may use one model (deployment) only; split the file by model" in str(refused[0])
    openai_mixed = [line.replace(b'"/chat/completions"', b'"/v1/chat/completions"') for line in mixed]
    refused = validate_batch_input_lines(openai_mixed, "/v1/chat/completions")
    assert codes(refused) == ["mismatched_model"] and refused[0].line == 3
    assert "on openai a batch file may use one model only; split the file by model" in str(refused[0])
    assert validate_batch_input_lines(openai_mixed, "/v1/chat/completions", rules=rules_for(OPENAI_COMPATIBLE)) == []


# ---------------------------------------------------------------------------------------- link target


def test_the_link_target_is_openais_dashboard_only_for_openai():
    assert {name: rules.link for name, rules in RULES.items()} == {
        OPENAI: "openai_platform",
        AZURE: "airflow",
        OPENAI_COMPATIBLE: "airflow",
    }


# ----------------------------------------------------------------------------------------- overrides


def test_unknown_api_types_and_rules_are_refused_by_name():
    with pytest.raises(ValueError, match="api_type must be one of openai, azure, openai_compatible"):
        rules_for("bedrock")
    with pytest.raises(ValueError, match=r"unknown back-end rule.*max_lines"):
        rules_for(AZURE, max_lines=5)


class Conn:
    conn_id = "c"
    host = "https://r.openai.azure.com/openai/v1"
    password = "k"
    port = None
    schema = None

    def __init__(self, extra: dict) -> None:
        self.extra = json.dumps(extra)


def test_a_connection_overrides_a_rule_with_extra_backend_rules():
    settings = settings_from_connection(Conn({"api_type": "azure", "backend_rules": {"max_requests_per_file": 7}}))
    assert settings.rules().max_requests_per_file == 7 and settings.rules().one_model_per_file is True
    with pytest.raises(ValueError, match=r"'c': extra field 'backend_rules': unknown back-end rule.*max_lines"):
        settings_from_connection(Conn({"api_type": "azure", "backend_rules": {"max_lines": 7}}))
    with pytest.raises(ValueError, match=r"backend_rules\.max_requests_per_file' must be a whole number"):
        settings_from_connection(Conn({"api_type": "azure", "backend_rules": {"max_requests_per_file": "many"}}))
    with pytest.raises(ValueError, match="must be a JSON object"):
        settings_from_connection(Conn({"api_type": "azure", "backend_rules": "[1]"}))
