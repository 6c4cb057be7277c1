"""Fixtures of the plugin's API tests: the plugin's FastAPI app mounted as the api-server mounts it, in front of
the emulator, over the migrated Airflow database and the simple auth manager's users of
:mod:`tests.airflow_api`; or a real ``airflow api-server`` on that database (:func:`run_api_server`)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

PREFIX = "/openai-batches"


@pytest.fixture(scope="module")
def app(tokens: dict[str, str]) -> Any:
    from fastapi import FastAPI

    from airflow_provider_openai_batch.plugins import OpenAIBatchesPlugin

    root = FastAPI()
    for entry in OpenAIBatchesPlugin.fastapi_apps:  # mounted exactly as airflow.api_fastapi.app.init_plugins does
        root.mount(entry["url_prefix"], entry["app"])
    return root


class Client:
    """The app's HTTP client, as a given user (or none)."""

    def __init__(self, app: Any, tokens: dict[str, str]) -> None:
        from fastapi.testclient import TestClient

        self._client = TestClient(app)
        self._tokens = tokens

    def request(self, method: str, path: str, user: str | None = "admin", cookie: bool = False, **kwargs: Any) -> Any:
        headers = dict(kwargs.pop("headers", {}))
        self._client.cookies.clear()
        if user is not None and cookie:
            self._client.cookies.set("_token", self._tokens[user])
        elif user is not None:
            headers["Authorization"] = f"Bearer {self._tokens[user]}"
        return self._client.request(method, PREFIX + path, headers=headers, **kwargs)

    def get(self, path: str, **kwargs: Any) -> Any:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> Any:
        return self.request("POST", path, **kwargs)


@pytest.fixture
def client(app: Any, tokens: dict[str, str]) -> Client:
    from airflow_provider_openai_batch.plugins import service

    service.cache.clear()
    return Client(app, tokens)


def free_port() -> int:
    """A loopback port nothing listens on (bound, then closed)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def unused_port() -> int:
    return free_port()


class ApiServer:
    """A running ``airflow api-server``: Airflow's REST API and UI with the plugin mounted, as users of
    :data:`tests.airflow_api.USERS` (their JWTs, as the UI's session carries them)."""

    def __init__(self, url: str, tokens: dict[str, str]) -> None:
        self.url = url
        self._tokens = tokens

    def request(self, method: str, path: str, user: str = "admin", timeout: float = 60, **kwargs: Any) -> Any:
        headers = {"Authorization": f"Bearer {self._tokens[user]}", **kwargs.pop("headers", {})}
        return requests.request(method, self.url + path, headers=headers, timeout=timeout, **kwargs)

    def get(self, path: str, **kwargs: Any) -> Any:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> Any:
        return self.request("POST", path, **kwargs)


@contextlib.contextmanager
def run_api_server(home: Path, tokens: dict[str, str], env: dict[str, str]) -> Iterator[ApiServer]:
    """``airflow api-server`` (one worker, as ``make airflow`` runs it) on the module's database, with the
    environment of this process plus ``env`` (e.g. ``AIRFLOW_CONN_...`` variables, which it reads as a
    secrets backend), until the block ends."""
    port = free_port()
    log = home / f"api-server-{port}.log"
    full_env = {**os.environ, "AIRFLOW_HOME": str(home), "AIRFLOW__API__WORKERS": "1", **env}
    airflow = str(Path(sys.executable).with_name("airflow"))
    with log.open("wb") as out:
        process = subprocess.Popen(
            [airflow, "api-server", "--port", str(port), "--workers", "1"],
            env=full_env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = ApiServer(f"http://127.0.0.1:{port}", tokens)
    try:
        deadline = time.monotonic() + 240
        while True:
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the api-server did not start:\n{log.read_text()[-4000:]}")
            with contextlib.suppress(requests.RequestException):
                if requests.get(f"{server.url}/api/v2/monitor/health", timeout=5).ok:
                    break
            time.sleep(0.5)
        yield server
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
