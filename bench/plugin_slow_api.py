"""Airflow's own REST API latency while the UI plugin waits on a slow Batch API.

A real ``airflow api-server`` (simple auth manager, SQLite in a temporary ``AIRFLOW_HOME``, the example DAGs
serialized into it) with the provider's plugin, whose connection ``openai_default`` points at the emulator
answering every request after ``--api-seconds``. The bench first times ``GET /api/v2/dags`` alone, then sends
``--requests`` plugin requests at once (``GET /openai-batches/api/batches?batch_id=...``, a different batch
each, so no two share a call to the API) and sends ``GET /api/v2/dags`` every second (``--interval``) until every plugin
request has its answer, timing each. It prints p50, p95 and max of both phases, and how the plugin requests ended.

    .venv/bin/python bench/plugin_slow_api.py --requests 100 --api-seconds 10

Nothing here is a test: run it on a quiet machine and compare runs of the same day.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import requests
from openai_batch_emulator.testing import run_emulator_process

from airflow_provider_openai_batch.testing import connection_json

ROOT = Path(__file__).resolve().parents[1]
AIRFLOW = str(Path(sys.executable).with_name("airflow"))
PLUGIN = "/openai-batches/api/batches"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def airflow_env(home: Path, workers: int) -> dict[str, str]:
    (home / "passwords.json").write_text(json.dumps({"admin": "admin"}))
    return {
        **os.environ,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
        "AIRFLOW__CORE__AUTH_MANAGER": (
            "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"
        ),
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(home / "passwords.json"),
        "AIRFLOW__API_AUTH__JWT_SECRET": "bench-jwt-secret-" + "x" * 48,
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "example_dags"),
        "AIRFLOW__API__WORKERS": str(workers),
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "WARNING",
    }


def percentiles(samples: list[float]) -> tuple[float, float, float]:
    ordered = sorted(samples)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return statistics.median(ordered), p95, ordered[-1]


def wait_healthy(url: str, process: subprocess.Popen[bytes], log: Path, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            sys.exit(f"the api-server exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if requests.get(f"{url}/api/v2/monitor/health", timeout=5).ok:
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    sys.exit(f"the api-server was not healthy within {timeout:.0f} s:\n{log.read_text()[-3000:]}")


def measure(url: str, token: str, count: int, interval: float) -> dict[str, Any]:
    http = requests.Session()
    http.headers["Authorization"] = f"Bearer {token}"

    def dags() -> float:
        started = time.perf_counter()
        answer = http.get(f"{url}/api/v2/dags", timeout=300)
        answer.raise_for_status()
        return time.perf_counter() - started

    for _ in range(5):  # warm: Airflow's first answers import and cache more than later ones
        dags()
    http.get(f"{url}/openai-batches/api/connections", timeout=60).raise_for_status()  # builds the plugin's app
    alone = [dags() for _ in range(40)]

    outcomes: list[tuple[int | str, float]] = []
    details: Counter[str] = Counter()
    start = threading.Barrier(count + 1)

    def plugin_request(index: int) -> None:
        start.wait()
        started = time.perf_counter()
        try:
            answer = requests.get(
                f"{url}{PLUGIN}",
                params={"batch_id": f"batch_bench{index:04d}"},
                headers={"Authorization": f"Bearer {token}"},
                timeout=300,
            )
            status: int | str = answer.status_code
            detail = str(answer.json().get("detail", "")) if not answer.ok else ""
            details[f"{status}: {re.sub(r'req_[0-9a-f]+|bench[0-9]+', '...', detail)}"] += 1
        except requests.RequestException as err:
            status = type(err).__name__
        outcomes.append((status, time.perf_counter() - started))

    threads = [threading.Thread(target=plugin_request, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    start.wait()
    sent = time.perf_counter()
    time.sleep(0.5)  # every plugin request is at the api-server and waiting on the API
    # Open loop: a new GET every `interval` seconds whether or not the last one answered, so a stall counts
    # once for every request that met it (a closed loop would take one slow sample and many fast ones).
    loaded: list[float] = []
    samplers: list[threading.Thread] = []
    while any(thread.is_alive() for thread in threads):
        sampler = threading.Thread(target=lambda: loaded.append(dags()))
        sampler.start()
        samplers.append(sampler)
        time.sleep(interval)
    for thread in threads + samplers:
        thread.join()
    return {
        "alone": alone,
        "loaded": loaded,
        "outcomes": outcomes,
        "details": details,
        "all_answered_after": time.perf_counter() - sent,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=100, help="plugin requests sent at once (default 100)")
    parser.add_argument("--api-seconds", type=float, default=10.0, help="the Batch API's answer time (default 10)")
    parser.add_argument(
        "--interval", type=float, default=1.0, help="seconds between two timed GET /api/v2/dags (default 1)"
    )
    parser.add_argument("--workers", type=int, default=1, help="api-server worker processes (default 1)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary AIRFLOW_HOME and its logs")
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="plugin-slow-api-"))
    env = airflow_env(home, args.workers)
    print(f"# AIRFLOW_HOME {home}: migrating the database and serializing the example DAGs ...", file=sys.stderr)
    subprocess.run([AIRFLOW, "db", "migrate"], env=env, check=True, capture_output=True, timeout=900)
    subprocess.run([AIRFLOW, "dags", "reserialize"], env=env, check=True, capture_output=True, timeout=900)
    with run_emulator_process(latency_ms=args.api_seconds * 1000) as emulator:
        env["AIRFLOW_CONN_OPENAI_DEFAULT"] = connection_json(emulator)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        log = home / "api-server.log"
        with log.open("wb") as out:
            server = subprocess.Popen(
                [AIRFLOW, "api-server", "--port", str(port), "--workers", str(args.workers)],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            wait_healthy(url, server, log)
            token = requests.post(
                f"{url}/auth/token", json={"username": "admin", "password": "admin"}, timeout=60
            ).json()["access_token"]
            result = measure(url, token, args.requests, args.interval)
        finally:
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait()
    if not args.keep:
        shutil.rmtree(home, ignore_errors=True)

    print(
        f"\n`GET /api/v2/dags` alone, then while {args.requests} plugin requests wait on an "
        f"API answering in {args.api_seconds:g} s (api-server workers: {args.workers}):\n"
    )
    print("| phase | samples | p50 (s) | p95 (s) | max (s) |")
    print("|---|---|---|---|---|")
    for phase in ("alone", "loaded"):
        samples = result[phase]
        if samples:
            p50, p95, top = percentiles(samples)
            print(f"| {phase} | {len(samples)} | {p50:.3f} | {p95:.3f} | {top:.3f} |")
        else:
            print(f"| {phase} | 0 | - | - | - |")
    statuses = Counter(status for status, _ in result["outcomes"])
    durations = [seconds for _, seconds in result["outcomes"]]
    p50, p95, top = percentiles(durations)
    print(
        f"\nPlugin requests: {dict(sorted(statuses.items(), key=str))}; answered in p50 {p50:.1f} s, p95 "
        f"{p95:.1f} s, max {top:.1f} s; all answered {result['all_answered_after']:.1f} s after they were sent."
    )
    for detail, times in result["details"].most_common():
        print(f"- {times} x {detail}")


if __name__ == "__main__":
    main()
