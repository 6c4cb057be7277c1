"""The provider's Airflow UI plugin in a real browser (``make e2e``): the "OpenAI Batches" page lists the example
run's batch with its progress and a working link to its task instance, the task tab shows the batch, a viewer
(who may not read connections) sees no batch and cannot cancel, an admin cancels a running batch, a
``<script>`` in metadata stays text, and the endpoints answer 401 without a session. Screenshots go to
``docs/images/`` (batches-page.png, batch-tab.png).

Skipped unless ``OPENAI_BATCH_E2E=1``; see ``conftest.py`` for how Airflow and Chromium are started.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import requests

from tests.e2e.conftest import VIEWER, login

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
FAKE_KEY = "emulator-key-not-secret"
PAGE = "/plugin/openai-batches"
TIMEOUT = 150.0
INERT = '<script>window.__pwned = 1</script><img src="x" onerror="window.__pwned = 2">'


def _page_frame(page: Any) -> Any:
    return page.frame_locator("iframe[title='OpenAI Batches']")


def _emulator(airflow: Airflow) -> Any:
    from openai_batch_emulator.testing import EmulatorHandle

    return EmulatorHandle(airflow.emulator_url, api_key=FAKE_KEY)


def _running_batch(airflow: Airflow, metadata: dict[str, str]) -> str:
    """A batch at the emulator made over plain HTTP, held ``in_progress`` until it is cancelled."""
    http = requests.Session()
    http.headers["Authorization"] = f"Bearer {FAKE_KEY}"
    line = {"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": {"model": "m", "messages": []}}
    file_id = http.post(
        f"{airflow.emulator_url}/files",
        files={"file": ("in.jsonl", json.dumps(line) + "\n")},
        data={"purpose": "batch"},
        timeout=30,
    ).json()["id"]
    batch = http.post(
        f"{airflow.emulator_url}/batches",
        json={
            "input_file_id": file_id,
            "endpoint": "/v1/chat/completions",
            "completion_window": "24h",
            "metadata": metadata,
        },
        timeout=30,
    ).json()
    _emulator(airflow).force_status(batch["id"], "in_progress")
    return str(batch["id"])


def _open_page_showing(page: Any, airflow: Airflow, batch_id: str) -> Any:
    """Open the batches page until it lists ``batch_id`` and return its row. The plugin caches the API's answer
    for a few seconds, so a page opened just after the batch was made may show the list from before it."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    deadline = time.monotonic() + 90
    while True:
        page.goto(f"{airflow.url}{PAGE}")
        row = _page_frame(page).locator(f"tr[data-batch='{batch_id}']")
        try:
            row.wait_for(timeout=10_000)
            return row
        except PlaywrightTimeout:
            if time.monotonic() > deadline:
                raise


def _made_by(run_id: str) -> dict[str, str]:
    return {
        "airflow_dag_id": DAG_ID,
        "airflow_task_id": CREATE_TASK,
        "airflow_run_id": run_id,
        "airflow_map_index": "-1",
    }


@pytest.fixture(autouse=True)
def _patient_expect() -> None:
    """The UI loads its plugins' tabs and its translations after the page: on a busy 2-core machine that
    takes more than Playwright's 5 s default. A condition with a generous bound, not a sleep."""
    from playwright.sync_api import expect

    expect.set_options(timeout=30_000)


@pytest.fixture(scope="module")
def example_run(airflow: Airflow) -> tuple[str, str]:
    """A run of the example DAG, once its create task has made the batch: (run id, batch id)."""
    run_id = f"e2e_batches_{int(time.time())}"
    airflow.api("POST", f"/dags/{DAG_ID}/dagRuns", json={"dag_run_id": run_id, "logical_date": None})
    ti = f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/{CREATE_TASK}"
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        try:
            return run_id, str(airflow.api("GET", f"{ti}/xcomEntries/return_value")["value"])
        except requests.HTTPError:
            time.sleep(0.5)
    pytest.fail(f"{CREATE_TASK} of {run_id} made no batch within {TIMEOUT:.0f}s")


@pytest.fixture
def viewer_page(browser: Any, airflow: Airflow) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1600, "height": 1000})
    context.set_default_timeout(30_000)
    page = context.new_page()
    try:
        login(page, airflow, VIEWER, VIEWER)
        yield page
    finally:
        context.close()


def test_every_endpoint_answers_401_without_a_session(airflow: Airflow) -> None:
    for method, path in [
        ("GET", "/openai-batches/"),
        ("GET", "/openai-batches/task?dag_id=d&run_id=r&task_id=t"),
        ("GET", "/openai-batches/static/app.js"),
        ("GET", "/openai-batches/api/connections"),
        ("GET", "/openai-batches/api/batches"),
        ("GET", "/openai-batches/api/task-batches?dag_id=d&run_id=r&task_id=t"),
        ("POST", "/openai-batches/api/batches/batch_1/cancel"),
    ]:
        answer = requests.request(method, airflow.url + path, headers={"X-OpenAI-Batches": "cancel"}, timeout=30)
        assert answer.status_code == 401, (method, path, answer.status_code, answer.text)


def test_the_page_lists_the_runs_batch_with_progress_and_links_to_its_task(
    page: Any, airflow: Airflow, example_run: tuple[str, str]
) -> None:
    from playwright.sync_api import expect

    run_id, batch_id = example_run
    page.goto(f"{airflow.url}{PAGE}")
    frame = _page_frame(page)
    frame.get_by_label("DAG").fill(DAG_ID)
    frame.get_by_role("button", name="Apply").click()
    row = frame.locator(f"tr[data-batch='{batch_id}']")
    expect(row).to_contain_text(f"{DAG_ID} / {CREATE_TASK} / {run_id}", timeout=30_000)
    # The page refreshes itself while the batch runs: it reaches "completed" without a reload.
    expect(row.locator(".status")).to_have_text("completed", timeout=TIMEOUT * 1000)
    expect(row.locator(".progress-text")).to_have_text("5 / 5 done, 0 failed")
    expect(row.locator(".tokens")).to_have_text(re.compile(r"^\d+ \(in \d+, out \d+\)$"))
    expect(row.locator(".age")).to_have_text(re.compile(r"^\d+[smhd]"))
    expect(row.get_by_role("button", name="Cancel")).to_have_count(0)  # it ended: nothing to cancel
    IMAGES.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(IMAGES / "batches-page.png"))

    link = row.get_by_role("link", name="Open task instance")
    expect(link).to_have_attribute("href", f"/dags/{DAG_ID}/runs/{run_id}/tasks/{CREATE_TASK}")
    link.click()
    page.wait_for_url(re.compile(rf"/dags/{DAG_ID}/runs/{run_id}/tasks/{CREATE_TASK}"))
    expect(page.get_by_text("CreateBatchOperator").first).to_be_visible()


def test_the_task_tab_shows_the_batch_with_its_files(page: Any, airflow: Airflow, example_run: tuple[str, str]) -> None:
    from playwright.sync_api import expect

    run_id, batch_id = example_run
    page.goto(f"{airflow.url}/dags/{DAG_ID}/runs/{run_id}/tasks/{CREATE_TASK}")
    tab = page.locator("a[href$='/plugin/openai-batch-task']")  # the plugin's tab among the task's tabs
    expect(tab).to_have_text("Batch status")
    tab.click()
    frame = page.frame_locator("iframe[title='Batch status']")
    card = frame.locator(f"section[data-batch='{batch_id}']")
    expect(card.locator(".status")).to_have_text("completed", timeout=TIMEOUT * 1000)
    expect(card.locator(".progress-text")).to_have_text("5 / 5 done, 0 failed")
    expect(card.locator(".input-file")).to_have_text(re.compile(r"^file-"))
    expect(card.locator(".output-file")).to_have_text(re.compile(r"^file-"))
    expect(card).to_contain_text("purpose: example")
    page.screenshot(path=str(IMAGES / "batch-tab.png"))
    # The sensor's tab shows the same batch (from its rendered batch_id, or its return value once done).
    page.goto(f"{airflow.url}/dags/{DAG_ID}/runs/{run_id}/tasks/{SENSOR_TASK}/plugin/openai-batch-task")
    expect(
        page.frame_locator("iframe[title='Batch status']").locator(f"section[data-batch='{batch_id}']")
    ).to_be_visible()


def test_a_viewer_airflow_refuses_connections_sees_no_batch_and_cannot_cancel(
    viewer_page: Any, airflow: Airflow, example_run: tuple[str, str]
) -> None:
    """The simple auth manager's Viewer may read DAGs but not connections (Airflow answers 403), and the page
    acts with a connection's key: it shows the viewer no connection and no batch, says so, and the cancel
    endpoint answers the same 404 as for an unknown connection, without a call to the API."""
    from playwright.sync_api import expect

    batch_id = _running_batch(airflow, _made_by(example_run[0]))
    cancels = _emulator(airflow).stats()["requests"].get("POST /v1/batches/{id}/cancel", 0)
    assert viewer_page.request.get(f"{airflow.url}/api/v2/connections/openai_default").status == 403
    viewer_page.goto(f"{airflow.url}{PAGE}")
    frame = _page_frame(viewer_page)
    expect(frame.locator("#message")).to_contain_text("not allowed")
    expect(frame.locator(f"tr[data-batch='{batch_id}']")).to_have_count(0)
    answer = viewer_page.request.post(
        f"{airflow.url}/openai-batches/api/batches/{batch_id}/cancel?conn_id=openai_default",
        headers={"X-OpenAI-Batches": "cancel"},
    )
    assert answer.status == 404 and "not allowed" in answer.text(), answer.text()
    assert _emulator(airflow).stats()["requests"].get("POST /v1/batches/{id}/cancel", 0) == cancels
    _emulator(airflow).force_status(batch_id, "completed")  # it ran on, untouched


def test_an_admin_cancels_a_running_batch_and_script_metadata_stays_text(
    page: Any, airflow: Airflow, example_run: tuple[str, str]
) -> None:
    from playwright.sync_api import expect

    batch_id = _running_batch(airflow, {**_made_by(example_run[0]), "note": INERT})
    row = _open_page_showing(page, airflow, batch_id)
    expect(row.locator(".status")).to_have_text("in_progress", timeout=30_000)
    expect(row.locator(".meta .value")).to_have_text(INERT)  # shown as the text it is
    cancel = row.get_by_role("button", name="Cancel")
    cancel.click()
    row.get_by_role("button", name="Confirm cancel").click()
    expect(row.locator(".status")).to_have_text(re.compile(r"^cancell(ing|ed)$"))
    # Nothing in the metadata ran, in the plugin's frame or in the UI around it.
    plugin_frame = next(f for f in page.frames if "/openai-batches/" in f.url)
    assert plugin_frame.evaluate("window.__pwned") is None
    assert page.evaluate("window.__pwned") is None
    assert plugin_frame.locator("img[src='x']").count() == 0
    # The cancel is in Airflow's audit log, under the admin's name and the batch's DAG.
    logs = airflow.api("GET", "/eventLogs?limit=100&order_by=-when")["event_logs"]
    entry = next(e for e in logs if e["event"] == "openai_batch.cancel" and batch_id in (e.get("extra") or ""))
    assert entry["owner"] == "admin" and entry["dag_id"] == DAG_ID
