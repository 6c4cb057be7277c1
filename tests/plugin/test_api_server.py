"""The plugin inside a real ``airflow api-server`` (the simple auth manager, the module's database), as users
reach it: a Batch API that never finishes answering costs Airflow's own routes nothing; the plugin asks the
auth manager before it touches a connection, answers alike for unknown, foreign and forbidden ones, and names
no host; and the audit row of a cancel is one an admin reads through Airflow's own event log API.

The api-server reads the connections of ``AIRFLOW_CONN_...`` variables (as it reads a secrets backend) and of
its database: ``openai_default`` (the emulator), ``slow_api`` (:class:`HeldAPI`), ``dead_api`` (a closed
port), ``some_db`` (type ``postgres``) and, in the database, ``payroll_batches`` (the emulator)."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.plugin.conftest import ApiServer, free_port, run_api_server
from tests.plugin.test_plugin_api import create, made_by

pytestmark = pytest.mark.slow
CANCEL = {"X-OpenAI-Batches": "cancel"}
FOREIGN_HOST = "db.internal.example"


class HeldAPI:
    """A Batch API that answers every request with a 200 whose body trickles in, a byte a second, and never
    ends until :meth:`release`: a read time-out (``requests`` and aiohttp time each read) never fires, only a
    deadline on the whole answer does."""

    def __init__(self) -> None:
        self.arrived = 0
        self.released = threading.Event()
        held = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                held.arrived += 1
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", "1000000")
                self.end_headers()
                try:
                    while not held.released.wait(1.0):
                        self.wfile.write(b" ")
                        self.wfile.flush()
                except OSError:  # the client gave up
                    pass
                self.close_connection = True

            do_POST = do_GET

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def release(self) -> None:
        self.released.set()
        self._server.shutdown()
        self._server.server_close()


def openai_batch_conn(host: str) -> str:
    return json.dumps({"conn_type": "openai_batch", "host": host, "password": "plugin-server-test-key"})


@pytest.fixture(scope="module")
def held_api() -> Iterator[HeldAPI]:
    api = HeldAPI()
    try:
        yield api
    finally:
        api.release()


@pytest.fixture(scope="module")
def dead_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def server(
    airflow_db: Path, tokens: dict[str, str], held_api: HeldAPI, dead_port: int, _openai_batch_emulator_server: Any
) -> Iterator[ApiServer]:
    from airflow.models import Connection
    from airflow.utils.session import create_session

    emulator_url = _openai_batch_emulator_server.base_url
    with create_session() as session:
        session.add(
            Connection(conn_id="payroll_batches", conn_type="openai_batch", host=emulator_url, password="payroll-key")
        )
    env = {
        "AIRFLOW_CONN_OPENAI_DEFAULT": openai_batch_conn(emulator_url),
        "AIRFLOW_CONN_SLOW_API": openai_batch_conn(f"http://127.0.0.1:{held_api.port}/v1"),
        "AIRFLOW_CONN_DEAD_API": openai_batch_conn(f"http://127.0.0.1:{dead_port}/v1"),
        "AIRFLOW_CONN_SOME_DB": json.dumps({"conn_type": "postgres", "host": FOREIGN_HOST, "password": "pw"}),
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "WARNING",
    }
    with run_api_server(airflow_db, tokens, env) as api:
        yield api


def test_a_batch_api_that_never_answers_costs_airflows_own_routes_nothing(server: ApiServer, held_api: HeldAPI) -> None:
    """100 page loads, each asking for a different batch, wait on an API that never finishes its answer.
    Airflow's own ``GET /api/v2/dags`` still answers meanwhile (when the plugin's handlers blocked threads of
    the api-server's shared pool, it queued behind them for as long as the API held them), and every page
    load ends at the plugin's deadline with a 504 that names no host."""
    answers: list[Any] = [None] * 100

    def load(index: int) -> None:
        answers[index] = server.get(f"/openai-batches/api/batches?conn_id=slow_api&batch_id=batch_held{index:03d}")

    threads = [threading.Thread(target=load, args=(i,), daemon=True) for i in range(len(answers))]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 120
    while held_api.arrived < 30:  # most page loads are waiting on the API now
        assert time.monotonic() < deadline, f"only {held_api.arrived} requests reached the API"
        time.sleep(0.1)

    dags = server.get("/api/v2/dags", timeout=60)
    assert dags.status_code == 200, dags.text
    assert not held_api.released.is_set()  # the API is still holding every one of them

    for thread in threads:
        thread.join(timeout=240)
    assert Counter(answer.status_code for answer in answers) == {504: 100}
    detail = answers[0].json()["detail"]
    assert "slow_api" in detail and "did not answer within" in detail
    for answer in answers:
        assert "127.0.0.1" not in answer.text and str(held_api.port) not in answer.text


def test_a_user_airflow_refuses_connections_gets_nothing_through_them(
    server: ApiServer, openai_batch_emulator: Any
) -> None:
    """The viewer may read every DAG but no connection: the plugin lists no connection to them, and for a
    forbidden, an unknown and a foreign-typed id answers the same 404, without calling the API. The editor
    (may edit DAGs, not read connections) cannot cancel through a connection either."""
    openai_batch_emulator.configure(phase_seconds=600)
    batch_id = create(openai_batch_emulator, made_by("reports"))
    assert server.get("/api/v2/connections", user="viewer").status_code == 403  # Airflow's own answer
    assert server.get("/api/v2/connections/openai_default", user="viewer").status_code == 403

    listed = server.get("/openai-batches/api/connections", user="viewer")
    assert listed.status_code == 200 and listed.json()["connections"] == []
    assert "payroll_batches" not in listed.text and "openai_default" not in listed.text

    def refusal(answer: Any, conn_id: str) -> tuple[int, str]:
        return answer.status_code, answer.json()["detail"].replace(repr(conn_id), "<id>")

    answers = {
        conn_id: server.get(f"/openai-batches/api/batches?conn_id={conn_id}", user="viewer")
        for conn_id in ("openai_default", "payroll_batches", "some_db", "no_such_conn", "slow_api")
    }
    shapes = {refusal(answer, conn_id) for conn_id, answer in answers.items()}
    assert len(shapes) == 1, shapes
    [(status, detail)] = shapes
    assert status == 404 and "not allowed" in detail
    assert all(FOREIGN_HOST not in a.text and "postgres" not in a.text for a in answers.values())

    one = server.get(f"/openai-batches/api/batches?batch_id={batch_id}", user="viewer")
    assert refusal(one, "openai_default") == (status, detail)
    tab = server.get("/openai-batches/api/task-batches?dag_id=reports&run_id=r&task_id=t&conn_id=payroll_batches")
    assert tab.status_code == 200  # the admin may
    tab = server.get(
        "/openai-batches/api/task-batches?dag_id=reports&run_id=r&task_id=t&conn_id=payroll_batches", user="viewer"
    )
    assert refusal(tab, "payroll_batches") == (status, detail)
    cancel = server.post(f"/openai-batches/api/batches/{batch_id}/cancel", user="editor", headers=CANCEL)
    assert refusal(cancel, "openai_default") == (status, detail)
    assert openai_batch_emulator.stats()["requests"].get("GET /v1/batches/{id}", 0) == 0
    assert openai_batch_emulator.stats()["requests"].get("POST /v1/batches/{id}/cancel", 0) == 0
    assert openai_batch_emulator.stats()["requests"].get("GET /v1/batches", 0) == 0


def test_who_may_use_connections_gets_the_same_404_for_unknown_and_foreign_ids_and_errors_name_no_host(
    server: ApiServer, dead_port: int
) -> None:
    listed = server.get("/openai-batches/api/connections").json()
    assert listed["connections"] == ["openai_default", "payroll_batches"] and listed["default"] == "openai_default"
    unknown = server.get("/openai-batches/api/batches?conn_id=no_such_conn")
    foreign = server.get("/openai-batches/api/batches?conn_id=some_db")
    assert unknown.status_code == foreign.status_code == 404
    assert unknown.json()["detail"].replace("no_such_conn", "<id>") == foreign.json()["detail"].replace(
        "some_db", "<id>"
    )
    assert "postgres" not in foreign.text and FOREIGN_HOST not in foreign.text

    dead = server.get("/openai-batches/api/batches?conn_id=dead_api")
    assert dead.status_code == 502 and "'dead_api'" in dead.json()["detail"]
    assert "127.0.0.1" not in dead.text and str(dead_port) not in dead.text and "http" not in dead.text


def test_the_audit_row_of_a_cancel_is_read_by_an_admin_whether_or_not_airflow_knows_the_dag(
    server: ApiServer, openai_batch_emulator: Any
) -> None:
    """Airflow's event log API shows a user only the rows of DAGs they may read, and a row whose ``dag_id``
    names no DAG Airflow knows (deleted, renamed, or metadata written outside Airflow) to nobody. A batch
    naming such a DAG gets a row without ``dag_id``, its creator in ``extra``; a known DAG keeps its columns."""
    from tests.plugin.test_plugin_api import add_dag

    add_dag("reports")
    openai_batch_emulator.configure(phase_seconds=600)
    renamed = create(openai_batch_emulator, made_by("renamed_dag", "create", "manual__3", 1))
    known = create(openai_batch_emulator, made_by("reports", "create", "manual__4"))
    for batch_id in (renamed, known):
        answer = server.post(f"/openai-batches/api/batches/{batch_id}/cancel", headers=CANCEL)
        assert answer.status_code == 200, answer.text

    logs = server.get("/api/v2/eventLogs?event=openai_batch.cancel&limit=100")
    assert logs.status_code == 200, logs.text
    rows = {json.loads(row["extra"])["batch_id"]: row for row in logs.json()["event_logs"]}
    assert renamed in rows, "the row of the batch naming an unknown DAG is hidden from the admin"
    row = rows[renamed]
    assert (row["dag_id"], row["task_id"], row["run_id"], row["owner"]) == (None, None, None, "admin")
    assert json.loads(row["extra"])["creator"] == {
        "dag_id": "renamed_dag",
        "task_id": "create",
        "run_id": "manual__3",
        "map_index": 1,
    }
    assert (rows[known]["dag_id"], rows[known]["task_id"], rows[known]["run_id"]) == ("reports", "create", "manual__4")
