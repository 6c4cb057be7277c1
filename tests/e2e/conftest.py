"""Fixtures of the browser tests: a local Airflow started with ``scripts/airflow.sh`` (as ``make airflow`` does, on
free ports and a fresh database), its REST API, and Debian's headless Chromium driven by Playwright.

Nothing here runs unless ``OPENAI_BATCH_E2E=1`` (``make e2e``): the tests in this folder are skipped otherwise.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "airflow.sh"
AIRFLOW_HOME = ROOT / ".airflow" / "e2e"
ARTIFACTS = ROOT / "e2e-artifacts"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
USERNAME = PASSWORD = "admin"
#: The user scripts/airflow.sh adds with the viewer role: may read DAGs, not edit them.
VIEWER = "viewer"
START_TIMEOUT = 240.0
STOP_TIMEOUT = 60.0
#: Every process the script starts inherits this variable, so the teardown can prove none is left over.
RUN_TAG_VAR = "OPENAI_BATCH_E2E_RUN"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def tagged_pids(tag: str) -> list[int]:
    """Live processes whose environment carries ``RUN_TAG_VAR=tag`` (the script, Airflow, tasks, the emulator)."""
    needle = f"{RUN_TAG_VAR}={tag}".encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            env = (entry / "environ").read_bytes()
        except OSError:
            continue
        if needle in env.split(b"\0"):
            pids.append(int(entry.name))
    return pids


@dataclass
class Airflow:
    """A running local Airflow: its URL, the emulator's base URL, and an authenticated REST session."""

    url: str
    emulator_url: str
    log: Path
    session: requests.Session = field(default_factory=requests.Session)

    def login(self) -> None:
        answer = requests.post(f"{self.url}/auth/token", json={"username": USERNAME, "password": PASSWORD}, timeout=30)
        answer.raise_for_status()
        self.session.headers["Authorization"] = f"Bearer {answer.json()['access_token']}"

    def api(self, method: str, path: str, **kwargs: Any) -> Any:
        answer = self.session.request(method, f"{self.url}/api/v2{path}", timeout=30, **kwargs)
        answer.raise_for_status()
        return answer.json() if answer.content else None


def _ensure_chromium() -> None:
    if os.path.exists(CHROMIUM):
        return
    if os.geteuid() != 0:
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium (apt-get install -y chromium)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-q"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-q", "chromium"], check=True, env=env)


def _wait_healthy(airflow: Airflow, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"scripts/airflow.sh exited with {process.returncode}:\n{airflow.log.read_text()[-4000:]}")
        try:
            health = requests.get(f"{airflow.url}/api/v2/monitor/health", timeout=5).json()
            if all(part.get("status") == "healthy" for part in health.values()):
                airflow.login()
                airflow.api("GET", "/dags/openai_batch_example")  # parsed by the dag-processor
                return
        except (requests.RequestException, ValueError):
            pass
        time.sleep(1)
    pytest.fail(f"Airflow was not healthy within {START_TIMEOUT:.0f}s:\n{airflow.log.read_text()[-4000:]}")


def _stop(process: subprocess.Popen[bytes], tag: str) -> list[int]:
    """SIGTERM the script (it stops its children), then make sure nothing it started survives."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
    leftovers = tagged_pids(tag)
    for pid in leftovers:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return leftovers


@pytest.fixture(scope="session")
def airflow() -> Iterator[Airflow]:
    """``scripts/airflow.sh`` in the background on free ports, healthy and with the example DAGs parsed."""
    airflow_port, emulator_port = free_port(), free_port()
    ARTIFACTS.mkdir(exist_ok=True)
    for stale in ARTIFACTS.glob("*-failure.png"):
        stale.unlink()
    log = ARTIFACTS / "airflow.log"
    tag = uuid.uuid4().hex
    env = {
        **os.environ,
        RUN_TAG_VAR: tag,
        "AIRFLOW_PORT": str(airflow_port),
        "EMULATOR_PORT": str(emulator_port),
        "AIRFLOW_UI_HOME": str(AIRFLOW_HOME),
        "AIRFLOW_UI_FRESH": "1",
        # Batches take 3 phases of 4 s, and the sensor polls every second: long enough to see it deferred.
        "EMULATOR_PHASE_SECONDS": "4",
        "OPENAI_BATCH_POLL_INTERVAL": "1",
    }
    with log.open("wb") as out:
        process = subprocess.Popen(
            ["bash", str(SCRIPT)], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    airflow = Airflow(f"http://127.0.0.1:{airflow_port}", f"http://127.0.0.1:{emulator_port}/v1", log)
    try:
        _wait_healthy(airflow, process)
        yield airflow
    finally:
        leftovers = _stop(process, tag)
        assert not leftovers, f"processes left running after scripts/airflow.sh stopped: {leftovers}"


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    """Debian's Chromium, headless; Playwright never downloads a browser of its own."""
    _ensure_chromium()
    os.environ.setdefault("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()


def login(page: Any, airflow: Airflow, username: str = USERNAME, password: str = PASSWORD) -> None:
    """Log in through Airflow's login form."""
    from playwright.sync_api import expect

    page.goto(f"{airflow.url}/")
    expect(page.get_by_text("Sign into Airflow")).to_be_visible()
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(lambda url: "/auth/login" not in url)


@pytest.fixture
def page(browser: Any, airflow: Airflow, request: pytest.FixtureRequest) -> Iterator[Any]:
    """A fresh browser page, logged in to Airflow as admin through the login form."""
    context = browser.new_context(viewport={"width": 1600, "height": 1000})
    context.set_default_timeout(30_000)
    page = context.new_page()
    try:
        login(page, airflow)
        yield page
    finally:
        report = getattr(request.node, "rep_call", None)
        if report is not None and report.failed:  # keep what the browser saw for the failure
            page.screenshot(path=str(ARTIFACTS / f"{request.node.name}-failure.png"), full_page=True)
        context.close()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)
