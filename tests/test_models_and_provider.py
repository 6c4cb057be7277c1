"""Models tolerate the live API's drift; the provider info is valid for Airflow's discovery."""

from __future__ import annotations

import json
import re
from importlib.metadata import entry_points
from pathlib import Path

import jsonschema
import openai_batch_emulator

from airflow_provider_openai_batch import statuses
from airflow_provider_openai_batch.get_provider_info import get_provider_info
from airflow_provider_openai_batch.models import Batch, ResultRecord
from airflow_provider_openai_batch.statuses import TERMINAL, BatchStatus

# The official spec, vendored once: in the emulator's package.
SPEC = json.loads((Path(openai_batch_emulator.__file__).parent / "contract" / "openai-batch-files.v1.json").read_text())


def test_spec_example_batch_with_nulls_parses():
    text = SPEC["components"]["schemas"]["Batch"]["x-oaiMeta"]["example"]
    example = json.loads(re.sub(r",(\s*[}\]])", r"\1", text))  # the docs example has trailing commas
    batch = Batch.model_validate(example)
    assert batch.id == example["id"] and batch.failed_at is None and batch.is_terminal


def test_unknown_fields_nulls_and_statuses_are_accepted():
    raw = {
        "id": "batch_1",
        "status": "paused_by_ops",
        "request_counts": None,
        "usage": None,
        "errors": None,
        "metadata": None,
        "brand_new_field": {"x": 1},
        "created_at": None,
    }
    batch = Batch.model_validate(raw)
    assert batch.status == "paused_by_ops" and not batch.is_terminal
    assert batch.request_counts.failed == 0 and batch.failed_fraction == 0.0
    assert batch.brand_new_field == {"x": 1}  # type: ignore[attr-defined]
    assert batch.raw is raw and batch.error_messages == []
    assert "_http" not in batch.model_dump() and "http" not in batch.model_dump()


def test_terminal_statuses_are_defined_once():
    assert {s.value for s in BatchStatus} >= TERMINAL
    assert {"completed", "failed", "expired", "cancelled"} == TERMINAL
    assert BatchStatus.EXPIRED == "expired" and str(BatchStatus.EXPIRED) == "expired"
    package = Path(statuses.__file__).parent
    spelled_out = [
        str(path.relative_to(package))
        for path in package.rglob("*.py")
        # The emulator is the API's independent stand-in: it keeps its own reading of the contract.
        if path.name != "statuses.py"
        and "emulator" not in path.parts
        and re.search(r"[\"']expired[\"'],\s*[\"']cancelled[\"']", path.read_text())
    ]
    assert spelled_out == []  # everything else asks statuses.py


def test_a_batch_without_a_status_is_malformed_not_validating():
    import pydantic
    import pytest

    with pytest.raises(pydantic.ValidationError, match="status"):
        Batch.model_validate({"id": "batch_1"})


def test_error_messages_and_result_records():
    batch = Batch.model_validate(
        {
            "id": "b",
            "status": "failed",
            "errors": {"data": [{"code": "invalid_json_line", "message": "not JSON", "line": 7, "param": None}]},
        }
    )
    assert batch.error_messages == ["line 7: [invalid_json_line] not JSON"]
    failed = ResultRecord.model_validate(
        {"custom_id": "x", "response": None, "error": {"code": "timeout", "message": "took too long"}}
    )
    assert not failed.ok and failed.error_message == "[timeout] took too long"


def test_provider_info_validates_against_airflows_schema():
    import airflow

    schema = json.loads((Path(airflow.__file__).parent / "provider_info.schema.json").read_text())
    info = get_provider_info()
    jsonschema.validate(info, schema)
    conn = info["connection-types"][0]
    assert (conn["connection-type"], conn["hook-name"]) == ("openai_batch", "OpenAI Batch")
    behaviour = conn["ui-field-behaviour"]
    assert behaviour["relabeling"] == {"host": "Base URL", "password": "API key"}
    assert {"login", "schema", "port"} <= set(behaviour["hidden-fields"])
    assert set(conn["conn-fields"]) == {
        "organization",
        "project",
        "timeout",
        "max_retries",
        # the back end, and Azure's API version and Entra ID settings
        "api_type",
        "api_version",
        "auth_type",
        "tenant_id",
        "client_id",
        "managed_identity",
    }


def test_entry_point_and_providers_manager_see_the_provider():
    points = [
        ep
        for ep in entry_points(group="apache_airflow_provider")
        if ep.value.startswith("airflow_provider_openai_batch")
    ]
    assert points and points[0].load()() == get_provider_info()
    from airflow.providers_manager import ProvidersManager

    manager = ProvidersManager()
    assert "airflow-provider-openai-batch" in manager.providers
    from airflow.sdk.providers_manager_runtime import ProvidersManagerTaskRuntime

    hook = ProvidersManagerTaskRuntime().hooks["openai_batch"]  # what tasks use to resolve conn types
    assert hook is not None and hook.hook_class_name.endswith("OpenAIBatchHook")
    assert manager.field_behaviours["openai_batch"]["relabeling"]["host"] == "Base URL"
    assert "extra__openai_batch__max_retries" in manager.connection_form_widgets


def test_the_package_requires_what_its_promises_need_ships_hints_and_keeps_its_fixtures_opt_in():
    from importlib.metadata import requires

    from packaging.requirements import Requirement

    airflow = next(Requirement(r) for r in requires("airflow-provider-openai-batch") or [] if r.startswith("apache"))
    # cancel_on_kill of deferred tasks and the task state store both arrived in Airflow 3.3.
    assert airflow.name == "apache-airflow" and "3.2.9" not in airflow.specifier and "3.3.0" in airflow.specifier
    assert (Path(statuses.__file__).parent / "py.typed").is_file()  # PEP 561: users' type checkers see our hints
    # Installing the provider must not load the emulator's fixtures into every other project's pytest run.
    ours = [ep.value for ep in entry_points(group="pytest11") if ep.value.startswith("airflow_provider_openai_batch")]
    assert ours == []
