"""Example DAGs import cleanly; operator modules stay cheap at DAG-parse time; the example runs end to end."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from airflow_provider_openai_batch.testing import connection_json
from tests.helpers import datasets, lineage_env, lineage_events

ROOT = Path(__file__).parents[1]


def dags_test(tmp_path: Path, emulator, dag_id: str, env: dict[str, str] | None = None) -> str:
    """``airflow dags test dag_id`` of the example DAGs against ``emulator`` (polling every 0.5 s) in a fresh
    Airflow home; asserts it passed and returns its log."""
    environment = {
        **os.environ,
        "AIRFLOW_HOME": str(tmp_path),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "example_dags"),
        "AIRFLOW_CONN_OPENAI_DEFAULT": connection_json(emulator),
        "OPENAI_BATCH_POLL_INTERVAL": "0.5",
        **(env or {}),
    }
    airflow = str(Path(sys.executable).parent / "airflow")
    subprocess.run([airflow, "db", "migrate"], env=environment, capture_output=True, check=True, timeout=300)
    result = subprocess.run(
        [airflow, "dags", "test", dag_id], env=environment, capture_output=True, text=True, timeout=300
    )
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-3000:]
    return log


def test_example_dags_import_without_errors():
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(ROOT / "example_dags"))
    assert bag.import_errors == {}
    assert set(bag.dag_ids) == {
        "openai_batch_example",
        "openai_batch_cancel",
        "openai_batch_mapped",
        "openai_batch_results_consumer",
        "openai_batch_large_job",
        "openai_batch_taskflow",
    }
    assert set(bag.dags["openai_batch_example"].task_ids) == {
        "build_requests",
        "create_batch",
        "wait_for_batch",
        "export_results",
        "summarise",
    }
    # The consumer is scheduled on the very asset the producer's results task declares.
    produced = {outlet.uri for outlet in bag.dags["openai_batch_example"].get_task("export_results").outlets}
    consumed = {asset.uri for asset in bag.dags["openai_batch_results_consumer"].timetable.asset_condition.objects}
    assert produced and produced == consumed


def test_operator_modules_do_not_import_heavy_modules():
    # Only what our modules add on top of ``import airflow.sdk`` counts. OpenLineage is imported only when a
    # lineage listener asks a finished task for its facets, never when a DAG file is parsed.
    code = (
        "import sys; import airflow.sdk; before = set(sys.modules); "
        "import airflow_provider_openai_batch.operators.batch, airflow_provider_openai_batch.sensors.batch; "
        "import airflow_provider_openai_batch.operators.results; "
        "import airflow_provider_openai_batch.decorators.openai_batch; "
        "added = set(sys.modules) - before; "
        "heavy = sorted(m for m in added if m.split('.')[0] in ('requests', 'aiohttp', 'tenacity', 'openai', "
        "'pydantic', 'urllib3', 'openlineage', 'jsonschema', 'pyarrow') or 'openlineage' in m "
        "or m.endswith(('.models', '.hooks.batch', '.api', '.lineage', '.structured'))); "
        "print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]"


@pytest.mark.slow
@pytest.mark.parametrize("flavor", ["openai", "azure"])
def test_airflow_dags_test_runs_the_example_end_to_end(tmp_path, flavor):
    """The same, unchanged example DAG against the emulator playing OpenAI and playing Azure OpenAI (an
    ``api_type: azure`` connection to ``/openai/v1`` with an ``api-key``)."""
    from openai_batch_emulator.testing import run_emulator_process

    with run_emulator_process(phase_seconds=0.5, flavor=flavor) as emulator:
        log = dags_test(tmp_path, emulator, "openai_batch_example", lineage_env(tmp_path / "lineage.jsonl"))
        assert "deferred" in log  # the sensor left the worker and resumed from the trigger
        assert "SUMMARY {" in log and "'status': 'completed'" in log and "'failed': 0, 'total': 5" in log
        stats = emulator.stats()
        assert stats["batches_created"] == 1
        if flavor == "azure":  # every request went Azure's way: the api-key header, Azure's paths
            assert stats["auth"] == {"api-key": sum(stats["requests"].values())}
        # The results landed as data: one row per prompt, in prompt order, and the manifest says so.
        rows = [
            json.loads(line) for line in (tmp_path / "results" / "openai_batch_example.jsonl").read_text().splitlines()
        ]
        assert [(r["index"], r["custom_id"], r["status"]) for r in rows] == [
            (i - 1, f"prompt-{i}", "succeeded") for i in range(1, 6)
        ]
        assert all(r["output_text"] for r in rows)
        assert "MANIFEST {" in log and "'rows': 5" in log and "'succeeded': 5" in log
        # ...and Airflow recorded the asset event a consumer DAG is scheduled on, with the counts.
        with sqlite3.connect(tmp_path / "airflow.db") as db:
            events = db.execute(
                "SELECT asset.uri, asset_event.extra FROM asset_event JOIN asset ON asset.id = asset_event.asset_id"
            ).fetchall()
        assert [(uri, json.loads(extra)["counts"]["succeeded"]) for uri, extra in events] == [
            ((tmp_path / "results" / "openai_batch_example.jsonl").as_uri(), 5)
        ]
        # OpenLineage (the real provider, file transport): requests uploaded -> create -> batch -> export -> file.
        [create] = lineage_events(tmp_path / "lineage.jsonl", "create_batch")
        [export] = lineage_events(tmp_path / "lineage.jsonl", "export_results")
        job = create["run"]["facets"]["openai_batch"]
        [batch_id] = job["batchIds"]
        [(namespace, uploaded)] = datasets(create, "inputs")  # the requests, uploaded as one file
        assert namespace == emulator.base_url and uploaded.startswith("files/file-")
        assert datasets(create, "outputs") == [(emulator.base_url, f"batches/{batch_id}")]
        assert datasets(export, "inputs") == datasets(create, "outputs")
        assert datasets(export, "outputs") == [("file", str(tmp_path / "results" / "openai_batch_example.jsonl"))]
        # The create returned once its batch passed validating: the job as it stood then.
        assert job["requestCounts"]["requests"] == 5 and set(job["models"]) <= {"gpt-4o-mini"}
        assert job["endpoint"] == ("/chat/completions" if flavor == "azure" else "/v1/chat/completions")
        facet = export["run"]["facets"]["openai_batch"]
        assert facet["batchIds"] == [batch_id] and facet["requestCounts"]["succeeded"] == 5
        assert facet["estimatedCostUsd"] > 0


@pytest.mark.slow
def test_airflow_dags_test_runs_the_large_job_example(tmp_path):
    """The path a 120,000-request run takes (split, queue, one deferral per wake, rounds of unfinished requests,
    merged export), at a size the suite can afford: 25 requests in batches of 10 make 3 batches, every request
    fails transiently on its first attempt, so each batch has a round (6 batches), each request is billed once,
    and the export of the task's return value is one file of 25 rows in input order. ``airflow dags test`` hands
    a resumed task only the trigger's event: the job record carries the rest. The DAG's default of 120,000
    requests was run by hand the same way (figures in bench/README.md)."""
    from openai_batch_emulator.testing import run_emulator_process

    with run_emulator_process(phase_seconds=0.5, transient_failure_attempts=1) as emulator:
        sizes = {"OPENAI_BATCH_EXAMPLE_REQUESTS": "25", "OPENAI_BATCH_MAX_REQUESTS_PER_BATCH": "10"}
        log = dags_test(tmp_path, emulator, "openai_batch_large_job", sizes)
        assert "deferred" in log and "Job: 25 requests in 3 shards" in log
        stats = emulator.stats()
        assert stats["batches_created"] == 6 and stats["requests_completed"] == 25
        rows = [
            json.loads(line)
            for line in (tmp_path / "results" / "openai_batch_large_job.jsonl").read_text().splitlines()
        ]
        assert [(r["index"], r["custom_id"], r["status"]) for r in rows] == [
            (i, f"request-{i}", "succeeded") for i in range(25)
        ]
        assert "MANIFEST {" in log and "'rows': 25" in log


@pytest.mark.slow
def test_airflow_dags_test_runs_the_taskflow_example_and_emits_its_lineage(tmp_path):
    """``@task.openai_batch`` end to end: prompts in, the job deferred to the triggerer and resumed, validated
    rows landed, a downstream task reading two of them back; and the OpenLineage events the real provider
    wrote with its file transport: the uploaded input in, the rows' file out, the job's figures."""
    from openai_batch_emulator.testing import run_emulator_process

    with run_emulator_process(phase_seconds=0.5) as emulator:
        log = dags_test(tmp_path, emulator, "openai_batch_taskflow", lineage_env(tmp_path / "lineage.jsonl"))
        assert "new_state=deferred" in log and emulator.stats()["batches_created"] == 1
        assert "MANIFEST {" in log and "'invalid_output': 0" in log and log.count("ROW request-") == 2
        destination = tmp_path / "results" / "openai_batch_taskflow.jsonl"
        rows = [json.loads(line) for line in destination.read_text().splitlines()]
        assert [(r["index"], r["status"]) for r in rows] == [(0, "succeeded"), (1, "succeeded"), (2, "succeeded")]
        assert all(set(r["output"]) == {"sentiment", "score", "summary"} for r in rows)

    [event] = lineage_events(tmp_path / "lineage.jsonl", "review")
    [(namespace, uploaded)] = datasets(event, "inputs")
    assert namespace == emulator.base_url and uploaded.startswith("files/file-")
    assert datasets(event, "outputs") == [("file", str(destination))]
    facet = event["run"]["facets"]["openai_batch"]
    assert facet["endpoint"] == "/v1/chat/completions" and facet["models"] == {"gpt-4o-mini": 3}
    assert len(facet["batchIds"]) == 1 and facet["requestCounts"]["succeeded"] == 3
    assert facet["inputTokens"] > 0 and facet["totalTokens"] == facet["inputTokens"] + facet["outputTokens"]
    assert facet["estimatedCostUsd"] > 0
