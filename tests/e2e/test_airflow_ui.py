"""The provider in a real Airflow 3 UI (``make e2e``): the connection form, the Test button against the emulator,
and the example DAG's run with its deferred sensor, extra link and logs. Screenshots go to ``docs/images/``
(connection-form.png, finished-run.png, sensor-log.png).

Skipped unless ``OPENAI_BATCH_E2E=1``; see ``conftest.py`` for how Airflow and Chromium are started.
"""

from __future__ import annotations

import base64
import os
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from tests.e2e.conftest import Airflow

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(os.environ.get("OPENAI_BATCH_E2E") != "1", reason="browser test: run with make e2e"),
]

IMAGES = Path(__file__).resolve().parents[2] / "docs" / "images"
DAG_ID = "openai_batch_example"
CREATE_TASK = "create_batch"
SENSOR_TASK = "wait_for_batch"
TASKS = ["build_requests", CREATE_TASK, SENSOR_TASK, "export_results", "summarise"]
FAKE_KEY = "emulator-key-not-secret"
RUN_TIMEOUT = 150.0


def _side_by_side(page: Any, shots: list[tuple[str, bytes]], path: Path) -> None:
    """Save several screenshots as one image, each under its caption, by laying them out in the browser."""
    cells = "".join(
        f'<figure><figcaption>{caption}</figcaption><img src="data:image/png;base64,{base64.b64encode(png).decode()}">'
        "</figure>"
        for caption, png in shots
    )
    style = (
        "body{margin:0;background:#e2e8f0;font:600 18px sans-serif;color:#1a202c}"
        "main{display:inline-flex;gap:24px;padding:24px;align-items:flex-start}"
        "figure{margin:0}figcaption{margin:0 0 8px 4px}img{display:block;border-radius:8px}"
    )
    page.set_content(f"<style>{style}</style><main>{cells}</main>")
    page.locator("main").screenshot(path=str(path))


def test_connection_form_and_test_button(page: Any, airflow: Airflow) -> None:
    from playwright.sync_api import expect

    page.goto(f"{airflow.url}/connections")
    page.get_by_role("button", name="Add Connection").click()
    dialog = page.get_by_role("dialog")
    expect(dialog.get_by_text("Add Connection", exact=True)).to_be_visible()
    dialog.get_by_label("Connection ID").fill("openai_e2e")
    conn_type = dialog.get_by_role("combobox")
    conn_type.click()
    conn_type.fill("OpenAI Batch")
    page.get_by_role("option", name="OpenAI Batch", exact=True).click()

    # Standard fields: relabelled by the provider, with its placeholders; login, schema and port hidden.
    base_url, api_key = dialog.get_by_label("Base URL", exact=True), dialog.get_by_label("API key", exact=True)
    expect(base_url).to_be_visible()
    expect(base_url).to_have_attribute("placeholder", "https://api.openai.com/v1")
    expect(api_key).to_have_attribute("placeholder", "sk-...")
    for hidden in ("Login", "Schema", "Port", "Host", "Password"):
        expect(dialog.get_by_label(hidden, exact=True)).to_have_count(0)
    base_url.fill(airflow.emulator_url)
    api_key.fill(FAKE_KEY)
    standard_png = dialog.screenshot()

    # Extra fields: the provider's conn-fields with their labels, descriptions and defaults.
    dialog.get_by_role("button", name="Extra Fields", exact=True).click()
    for label in ("Organization ID", "Project ID", "Request timeout (seconds)", "Max retries"):
        expect(dialog.get_by_text(label, exact=True)).to_be_visible()
    expect(dialog.get_by_text("Sent as the OpenAI-Organization header (optional).")).to_be_visible()
    expect(dialog.get_by_label("Request timeout (seconds)", exact=True)).to_have_value("60")
    expect(dialog.get_by_label("Max retries", exact=True)).to_have_value("5")
    extra_png = dialog.screenshot()

    dialog.get_by_role("button", name="Save").click()
    expect(dialog).to_be_hidden()
    expect(page.get_by_role("row").filter(has_text="openai_e2e")).to_be_visible()
    saved = airflow.api("GET", "/connections/openai_e2e")
    assert saved["conn_type"] == "openai_batch"
    assert saved["host"] == airflow.emulator_url

    # The Test button of the connection list (enabled by AIRFLOW__CORE__TEST_CONNECTION) calls the hook's
    # test_connection() in the api-server, which lists batches on the emulator.
    row = page.get_by_role("row").filter(has_text="openai_default")
    expect(row).to_contain_text(airflow.emulator_url)
    row.get_by_role("button", name="Test Connection").click()
    expect(page.get_by_text("Test Connection Successful")).to_be_visible()
    expect(page.get_by_text(f"Connection works: {airflow.emulator_url} answered")).to_be_visible()

    IMAGES.mkdir(parents=True, exist_ok=True)
    shots = [("Standard fields", standard_png), ("Extra fields", extra_png)]
    _side_by_side(page, shots, IMAGES / "connection-form.png")


def _wait_for_run(airflow: Airflow, run_id: str) -> tuple[str, set[str]]:
    """Poll the run until it ends; return its final state and every state the sensor was seen in."""
    seen: set[str] = set()
    deadline = time.monotonic() + RUN_TIMEOUT
    while time.monotonic() < deadline:
        tis = airflow.api("GET", f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances")["task_instances"]
        seen.update(str(ti["state"]) for ti in tis if ti["task_id"] == SENSOR_TASK)
        state = airflow.api("GET", f"/dags/{DAG_ID}/dagRuns/{run_id}")["state"]
        if state in ("success", "failed"):
            return state, seen
        time.sleep(0.25)
    pytest.fail(f"run {run_id} did not finish within {RUN_TIMEOUT:.0f}s; sensor states seen: {sorted(seen)}")


def _log_text(airflow: Airflow, run_id: str, task_id: str) -> str:
    answer = airflow.api("GET", f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/{task_id}/logs/1?full_content=true")
    return "\n".join(str(e.get("event", "")) if isinstance(e, dict) else str(e) for e in answer["content"])


def test_example_dag_run(page: Any, airflow: Airflow) -> None:
    from playwright.sync_api import expect

    run_id = f"e2e_{int(time.time())}"
    run = airflow.api("POST", f"/dags/{DAG_ID}/dagRuns", json={"dag_run_id": run_id, "logical_date": None})
    assert run["state"] == "queued"

    # While the batch runs at the emulator the sensor waits in the triggerer: state "deferred", shown in the UI too.
    deadline = time.monotonic() + RUN_TIMEOUT
    while airflow.api("GET", f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/{SENSOR_TASK}")["state"] != "deferred":
        assert time.monotonic() < deadline, "the sensor never deferred"
        time.sleep(0.25)
    page.goto(f"{airflow.url}/dags/{DAG_ID}/runs/{run_id}/tasks/{SENSOR_TASK}")
    expect(page.get_by_text("Deferred", exact=True).first).to_be_visible(timeout=10_000)

    state, sensor_states = _wait_for_run(airflow, run_id)
    assert state == "success", f"run {run_id} ended {state}"
    assert "deferred" in sensor_states

    # The run page, in the browser: every task succeeded.
    page.goto(f"{airflow.url}/dags/{DAG_ID}/runs/{run_id}")
    expect(page.get_by_text(run_id, exact=True).first).to_be_visible()
    table = page.get_by_role("table")
    for task_id in TASKS:
        expect(table.get_by_role("row").filter(has_text=task_id)).to_contain_text("Success")
    expect(table.get_by_text("Success", exact=True)).to_have_count(len(TASKS))
    IMAGES.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(IMAGES / "finished-run.png"))

    # The create task's "OpenAI Batch" extra link: not OpenAI's base URL, so the batch on the provider's
    # "OpenAI Batches" page of this Airflow (never a page that does not exist).
    ti_path = f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/{CREATE_TASK}"
    batch_id = airflow.api("GET", f"{ti_path}/xcomEntries/return_value")["value"]
    assert re.fullmatch(r"batch_\w+", str(batch_id)), batch_id
    batch_url = f"/plugin/openai-batches/openai-batches/?conn_id=openai_default&batch_id={batch_id}"
    links = airflow.api("GET", f"{ti_path}/links")["extra_links"]
    assert links == {"OpenAI Batch": batch_url}
    page.goto(f"{airflow.url}/dags/{DAG_ID}/runs/{run_id}/tasks/{CREATE_TASK}/details")
    expect(page.get_by_text("Extra Links")).to_be_visible()
    expect(page.get_by_role("link", name="OpenAI Batch", exact=True)).to_have_attribute("href", batch_url)
    page.goto(airflow.url + batch_url)  # the link leads somewhere a browser can read
    frame = page.frame_locator("iframe[title='OpenAI Batches']")
    expect(frame.locator(f"tr[data-batch='{batch_id}']")).to_contain_text("5 / 5 done, 0 failed")

    # The task logs tell the batch's story: id, status transitions, request counts and token usage.
    create_log = _log_text(airflow, run_id, CREATE_TASK)
    assert f"OpenAI batch {batch_id} validating: 0/0 requests done, 0 failed" in create_log
    sensor_log = _log_text(airflow, run_id, SENSOR_TASK)
    # The sensor's first check, then the trigger's line per status it saw (how many depends on when the
    # triggerer starts polling: its first trigger after start-up takes a few seconds), ending in "completed".
    statuses = re.findall(rf"[Bb]atch {batch_id} (?:is )?(\w+)[:(]? ?\(?(\d+)/(\d+)", create_log + sensor_log)
    assert statuses[0] == ("validating", "0", "0"), statuses
    assert statuses[-1] == ("completed", "5", "5"), statuses
    order = ["validating", "in_progress", "finalizing", "completed"]
    seen = [status for status, _, _ in statuses]
    assert seen == sorted(seen, key=order.index), f"status went backwards: {seen}"
    # The trigger logs the same line as the operators: it says "completed", then the resumed sensor does.
    assert len(re.findall(rf"OpenAI batch {batch_id} completed: 5/5 requests done", sensor_log)) >= 2, sensor_log
    final = re.search(
        rf"OpenAI batch {batch_id} completed: 5/5 requests done, 0 failed; tokens in (\d+), out (\d+), total (\d+)",
        sensor_log,
    )
    assert final, sensor_log
    tokens_in, tokens_out, total = map(int, final.groups())
    assert tokens_in > 0 and tokens_out > 0 and total == tokens_in + tokens_out
    summary_log = _log_text(airflow, run_id, "summarise")
    assert f"SUMMARY {{'batch_id': '{batch_id}', 'status': 'completed', 'completed': 5" in summary_log

    # The same final line in the UI's log view of the sensor.
    page.goto(f"{airflow.url}/dags/{DAG_ID}/runs/{run_id}/tasks/{SENSOR_TASK}")
    final_lines = page.get_by_text(re.compile(rf"batch {batch_id} completed: 5/5 requests done.*tokens in"))
    expect(final_lines.last).to_be_visible()
    expect(final_lines).to_have_count(2)  # the trigger's line and the resumed sensor's
    page.screenshot(path=str(IMAGES / "sensor-log.png"))
