"""Helpers for testing DAGs and code against the emulator: a handle over its admin API, and a runner that
starts it as a separate process (for restarts and load tests).

In pytest, use the fixtures of :mod:`openai_batch_emulator.pytest_plugin` instead.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import requests

from openai_batch_emulator.server import free_port

#: The key a handle's connections send when the emulator accepts any key.
CLIENT_KEY = "test-key"


class EmulatorHandle:
    """Controls of a running emulator, through its ``/_emulator`` admin API.

    :param base_url: The API base URL, ``http://127.0.0.1:PORT/v1``.
    :param api_key: The key clients should send.
    :param admin_key: The key the emulator was started with (``--api-key``), if any: its admin routes need it.
        :meth:`configure` keeps track of a key set through it.
    """

    def __init__(
        self, base_url: str, api_key: str = CLIENT_KEY, flavor: str = "openai", admin_key: str | None = None
    ) -> None:
        self.root = base_url[: -len("/v1")]
        self.api_key = api_key
        #: Sent to the admin routes, which need the emulator's key once one is set.
        self.admin_key = admin_key
        #: ``openai`` or ``azure``: which base URL the handle gives.
        self.flavor = flavor
        self._admin = self.root + "/_emulator"
        self._http = requests.Session()

    @property
    def base_url(self) -> str:
        """The API base URL of the flavor played: ``.../v1``, or Azure's ``.../openai/v1``."""
        return self.root + ("/openai/v1" if self.flavor == "azure" else "/v1")

    def configure(self, **settings: Any) -> dict[str, Any]:
        """Change settings at run time (see :class:`~openai_batch_emulator.config.EmulatorConfig`):
        ``fault_rate``, ``fault_kinds``, ``latency_ms``, ``phase_seconds``, ``slow_seconds``, ... For faults that
        repeat exactly: ``seed`` (re-seeds the random draw) and ``fault_script`` (the next requests' faults,
        one per ``/v1`` request, ``""`` for none, e.g. ``["500", "", "drop"]``). Inside batches:
        ``expire_after_fraction``, ``transient_failure_rate``, ``transient_failure_attempts``. ``api_key`` pins
        the key of the API and of the admin routes; this handle sends it to them from then on. Returns the
        settings now.
        """
        current = self._call("PATCH", "/config", settings)
        self.flavor = current.get("flavor", self.flavor)
        if "api_key" in settings:  # from now on the admin routes need this one (or none)
            self.admin_key = settings["api_key"]
        return current

    def force_status(self, batch_id: str, status: str) -> dict[str, Any]:
        """Put a batch into any status now (``completed``, ``failed``, ``expired``, ``cancelled``, ...)."""
        return self._call("POST", f"/batches/{batch_id}/status", {"status": status})

    def stats(self) -> dict[str, Any]:
        """Requests by route, faults injected, ``batches_created``, ``files_created`` (output and error files
        included), ``files_uploaded`` (by clients), ``requests_completed`` (batch request lines answered 2xx
        over all batches since the last reset: what the real API would bill, so a test can prove nothing was
        billed twice), and the ``batches`` and ``files`` held now."""
        return self._call("GET", "/stats")

    def reset(self) -> None:
        """Forget every batch and file, the attempt counts and the statistics; settings stay as they are."""
        self._call("POST", "/reset")

    def _call(self, method: str, path: str, payload: Any = None) -> Any:
        headers = {"Authorization": f"Bearer {self.admin_key}"} if self.admin_key else {}
        response = self._http.request(method, self._admin + path, json=payload, headers=headers, timeout=10)
        response.raise_for_status()
        return response.json()


class EmulatorProcess(EmulatorHandle):
    """The emulator as a separate process; ``restart()`` stops and starts it again on the same port.

    Its stdout and stderr go to ``log_path`` (a temporary file by default; read it with :meth:`log_text`),
    never to a pipe that could fill up and stall it.

    :param port: Port on 127.0.0.1, or ``None`` for a free one.
    :param data_dir: Persist state here (needed for :meth:`restart` to keep batches).
    :param log_path: Where its output goes.
    :param flags: Command-line flags by name (``fault_script=["503", ""]`` becomes ``--fault-script 503,``).
    """

    def __init__(
        self, port: int | None = None, data_dir: str | None = None, log_path: str | None = None, **flags: Any
    ) -> None:
        self.port = port or free_port()
        pinned = str(flags["api_key"]) if flags.get("api_key") else None  # --api-key: clients and admin need it
        super().__init__(
            f"http://127.0.0.1:{self.port}/v1",
            api_key=pinned or CLIENT_KEY,
            flavor=str(flags.get("flavor") or "openai"),
            admin_key=pinned,
        )
        self.data_dir = data_dir
        self.flags = flags
        self.log_path = log_path or tempfile.mkstemp(prefix="openai-batch-emulator-", suffix=".log")[1]
        self.process: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        cmd = [sys.executable, "-m", "openai_batch_emulator", "--port", str(self.port)]
        if self.data_dir:
            cmd += ["--data-dir", str(self.data_dir)]
        for name, value in self.flags.items():
            if value is False or value is None:
                continue
            cmd.append(f"--{name.replace('_', '-')}")
            if value is not True:
                cmd.append(",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value))
        return cmd

    def start(self) -> EmulatorProcess:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the emulator exited at start-up: {self.log_text()[-2000:]}")
            try:
                requests.get(self._admin + "/health", timeout=1)
                return self
            except requests.ConnectionError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"the emulator did not answer on port {self.port} within 30 s")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._http.close()

    def restart(self) -> None:
        self.stop()
        self.start()

    def log_text(self) -> str:
        """Everything the emulator process printed so far."""
        with open(self.log_path, encoding="utf-8", errors="replace") as log:
            return log.read()


@contextmanager
def run_emulator_process(
    port: int | None = None,
    data_dir: str | os.PathLike[str] | None = None,
    log_path: str | os.PathLike[str] | None = None,
    **flags: Any,
) -> Iterator[EmulatorProcess]:
    """Start ``python -m openai_batch_emulator`` and stop it on exit.

    :param port: Port to bind on 127.0.0.1, or ``None`` for a free one.
    :param data_dir: Persist state here (needed for :meth:`EmulatorProcess.restart` to keep batches).
    :param log_path: Where its output goes (default: a temporary file).
    :param flags: Further command-line flags, e.g. ``phase_seconds=0.2``, ``fault_rate=0.3``,
        ``fault_kinds=["429", "drop"]``, ``fault_after_processing=True``, ``seed=7``,
        ``fault_script=["503", "", "drop"]``.
    """
    emulator = EmulatorProcess(
        port, str(data_dir) if data_dir else None, str(log_path) if log_path else None, **flags
    ).start()
    try:
        yield emulator
    finally:
        emulator.stop()
        if log_path is None:
            os.unlink(emulator.log_path)
