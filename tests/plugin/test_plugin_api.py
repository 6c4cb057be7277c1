"""The plugin's endpoints over HTTP, as the api-server mounts them, against the emulator and a real Airflow
database and auth manager: authentication on every route, who may read and cancel, the audit log, no API key
in any answer, pagination, filters and the cache that keeps many open pages from multiplying API calls.

Every user here may read every connection (:func:`every_user_may_read_connections`): an auth manager with
per-resource rights (FAB, Keycloak) can grant that to a viewer, the simple auth manager only to its Op and
Admin roles. ``test_api_server.py`` checks the simple auth manager's own refusals in a real api-server.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
import requests

from airflow_provider_openai_batch.testing import connection_json
from tests.helpers import ENDPOINT

ROUTES = [
    ("GET", "/"),
    ("GET", "/task?dag_id=d&run_id=r&task_id=t&map_index=-1"),
    ("GET", "/static/app.js"),
    ("GET", "/api/connections"),
    ("GET", "/api/batches"),
    ("GET", "/api/task-batches?dag_id=d&run_id=r&task_id=t"),
    ("POST", "/api/batches/batch_1/cancel"),
]
KEY = "plugin-test-key-canary-93c1"


def create(handle: Any, metadata: dict[str, str] | None = None, lines: int = 2) -> str:
    """A batch at the emulator, made over plain HTTP (not through the code under test)."""
    http = requests.Session()
    http.headers["Authorization"] = f"Bearer {handle.api_key}"
    data = "".join(
        json.dumps({"custom_id": f"r{i}", "method": "POST", "url": ENDPOINT, "body": {"model": "m", "messages": []}})
        + "\n"
        for i in range(lines)
    )
    file_id = http.post(
        f"{handle.base_url}/files", files={"file": ("a.jsonl", data)}, data={"purpose": "batch"}, timeout=10
    ).json()["id"]
    body: dict[str, Any] = {"input_file_id": file_id, "endpoint": ENDPOINT, "completion_window": "24h"}
    if metadata:
        body["metadata"] = metadata
    return str(http.post(f"{handle.base_url}/batches", json=body, timeout=10).json()["id"])


def made_by(dag_id: str, task_id: str = "create", run_id: str = "manual__1", map_index: int = -1) -> dict[str, str]:
    return {
        "airflow_dag_id": dag_id,
        "airflow_task_id": task_id,
        "airflow_run_id": run_id,
        "airflow_map_index": str(map_index),
    }


@pytest.fixture(autouse=True)
def every_user_may_read_connections(tokens: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    from airflow.api_fastapi.app import get_auth_manager

    monkeypatch.setattr(
        get_auth_manager(), "is_authorized_connection", lambda *, method, user, details=None: method == "GET"
    )


@pytest.fixture
def emulator(openai_batch_emulator: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The emulator, slow enough that batches stay running, behind ``openai_default`` with a canary key."""
    openai_batch_emulator.configure(phase_seconds=600, api_key=KEY)
    monkeypatch.setattr(openai_batch_emulator, "api_key", KEY)
    monkeypatch.setenv("AIRFLOW_CONN_OPENAI_DEFAULT", connection_json(openai_batch_emulator))
    conn = json.loads(connection_json(openai_batch_emulator))
    assert conn["password"] == KEY
    return openai_batch_emulator


def add_dag(dag_id: str) -> None:
    """A DAG Airflow knows (its row in ``dag``, as the dag-processor writes it); nothing is parsed."""
    from airflow.models import DagModel
    from airflow.models.dagbundle import DagBundleModel
    from airflow.utils.session import create_session

    with create_session() as session:
        if session.get(DagBundleModel, "plugin-tests") is None:
            session.add(DagBundleModel(name="plugin-tests"))
            session.flush()
        if session.get(DagModel, dag_id) is None:
            session.add(DagModel(dag_id=dag_id, bundle_name="plugin-tests"))


def api_calls(handle: Any, route: str) -> int:
    return int(handle.stats()["requests"].get(route, 0))


# ---------------------------------------------------------------------------------------------- auth


@pytest.mark.parametrize(("method", "path"), ROUTES)
def test_every_route_needs_a_session(client: Any, method: str, path: str) -> None:
    answer = client.request(method, path, user=None)
    assert answer.status_code == 401, answer.text
    bad = client.request(method, path, user=None, headers={"Authorization": "Bearer not-a-jwt"})
    assert bad.status_code in (401, 403), bad.text


def test_the_pages_are_served_with_a_session_cookie_and_a_strict_policy(client: Any, emulator: Any) -> None:
    for path in ("/", "/task?dag_id=d&run_id=r&task_id=t&map_index={MAP_INDEX}"):
        answer = client.get(path, user="viewer", cookie=True)
        assert answer.status_code == 200
        assert answer.headers["content-type"].startswith("text/html")
        policy = answer.headers["content-security-policy"]
        assert "script-src 'self'" in policy and "unsafe-inline" not in policy
        assert '<script src="static/app.js"' in answer.text
    script = client.get("/static/app.js", user="viewer", cookie=True)
    assert script.status_code == 200 and "textContent" in script.text and "innerHTML" not in script.text
    assert client.get("/static/../service.py", user="admin").status_code == 404


def test_a_viewer_sees_batches_but_may_not_cancel(client: Any, emulator: Any) -> None:
    batch_id = create(emulator, made_by("reports"))
    listed = client.get("/api/batches", user="viewer").json()["batches"]
    assert [b["id"] for b in listed] == [batch_id]
    assert listed[0]["can_cancel"] is False
    refused = client.post(f"/api/batches/{batch_id}/cancel", user="viewer", headers={"X-OpenAI-Batches": "cancel"})
    assert refused.status_code == 403
    assert "edit DAG 'reports'" in refused.json()["detail"]
    assert emulator.stats()["requests"].get("POST /v1/batches/{id}/cancel", 0) == 0
    assert client.get(f"/api/batches?batch_id={batch_id}", user="viewer").json()["batches"][0]["status"] != "cancelling"


def test_a_refused_cancel_decides_on_the_cached_batch_and_an_allowed_one_reads_it_afresh(
    client: Any, emulator: Any
) -> None:
    """Refused cancels cost no uncached call to the API (a viewer cannot make the server call it at will);
    an allowed cancel still decides on the batch as it is now."""
    batch_id = create(emulator, made_by("reports"))
    before = api_calls(emulator, "GET /v1/batches/{id}")
    for _ in range(5):
        refused = client.post(f"/api/batches/{batch_id}/cancel", user="viewer", headers={"X-OpenAI-Batches": "cancel"})
        assert refused.status_code == 403
    assert api_calls(emulator, "GET /v1/batches/{id}") - before == 1  # the first read, cached for the rest
    ok = client.post(f"/api/batches/{batch_id}/cancel", user="editor", headers={"X-OpenAI-Batches": "cancel"})
    assert ok.status_code == 200, ok.text
    assert api_calls(emulator, "GET /v1/batches/{id}") - before == 2  # past the cache, once allowed
    assert api_calls(emulator, "POST /v1/batches/{id}/cancel") == 1


def test_an_editor_cancels_and_the_audit_log_records_it(client: Any, emulator: Any) -> None:
    from airflow.models import Log
    from airflow.utils.session import create_session
    from sqlalchemy import select

    add_dag("reports")
    batch_id = create(emulator, made_by("reports", "create", "manual__7", 3))
    listed = client.get("/api/batches", user="editor").json()["batches"]
    assert listed[0]["can_cancel"] is True
    without_header = client.post(f"/api/batches/{batch_id}/cancel", user="editor")
    assert without_header.status_code == 400  # a cross-site form cannot add the header
    answer = client.post(f"/api/batches/{batch_id}/cancel", user="editor", headers={"X-OpenAI-Batches": "cancel"})
    assert answer.status_code == 200, answer.text
    assert answer.json()["status"] in ("cancelling", "cancelled")
    # The cache was dropped: the list shows the new status at once.
    assert client.get("/api/batches", user="editor").json()["batches"][0]["status"] in ("cancelling", "cancelled")
    with create_session() as session:
        rows = session.scalars(select(Log).where(Log.event == "openai_batch.cancel")).all()
        row = next(r for r in rows if json.loads(r.extra)["batch_id"] == batch_id)
        assert (row.owner, row.dag_id, row.task_id, row.run_id, row.map_index) == (
            "editor",
            "reports",
            "create",
            "manual__7",
            3,
        )
        assert json.loads(row.extra)["outcome"] in ("cancelling", "cancelled")
    again = client.post(f"/api/batches/{batch_id}/cancel", user="editor", headers={"X-OpenAI-Batches": "cancel"})
    assert again.status_code in (200, 409)  # cancelling again: the API's answer, never a 500


def test_a_batch_without_a_creating_dag_is_cancelled_only_by_who_may_edit_every_dag(
    client: Any, emulator: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from airflow.api_fastapi.app import get_auth_manager

    batch_id = create(emulator, {"team": "search"})
    manager = get_auth_manager()
    real = manager.is_authorized_dag
    # An auth manager with per-DAG rights (as FAB or Keycloak have): the editor may edit DAG "reports" only.
    monkeypatch.setattr(
        manager,
        "is_authorized_dag",
        lambda *, method, user, details=None, access_entity=None: (
            real(method=method, user=user, details=details)
            if user.get_name() != "editor" or method == "GET"
            else details is not None and details.id == "reports"
        ),
    )
    assert client.get("/api/batches", user="editor").json()["batches"][0]["can_cancel"] is False
    refused = client.post(f"/api/batches/{batch_id}/cancel", user="editor", headers={"X-OpenAI-Batches": "cancel"})
    assert refused.status_code == 403 and "every DAG" in refused.json()["detail"]
    ok = client.post(f"/api/batches/{batch_id}/cancel", user="admin", headers={"X-OpenAI-Batches": "cancel"})
    assert ok.status_code == 200


def test_batches_of_dags_a_user_may_not_read_are_not_shown(
    client: Any, emulator: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from airflow.api_fastapi.app import get_auth_manager

    secret, public = create(emulator, made_by("payroll")), create(emulator, made_by("reports"))
    manager = get_auth_manager()
    monkeypatch.setattr(
        manager,
        "is_authorized_dag",
        lambda *, method, user, details=None, access_entity=None: details is not None and details.id == "reports",
    )
    assert [b["id"] for b in client.get("/api/batches", user="viewer").json()["batches"]] == [public]
    assert client.get(f"/api/batches?batch_id={secret}", user="viewer").json()["batches"] == []


# ------------------------------------------------------------------------------------------ contents


def test_no_answer_carries_the_api_key(client: Any, emulator: Any) -> None:
    batch_id = create(emulator, made_by("reports"))
    answers = [
        client.get("/api/connections"),
        client.get("/api/batches"),
        client.get(f"/api/batches?batch_id={batch_id}"),
        client.get("/api/task-batches?dag_id=reports&run_id=manual__1&task_id=create"),
        client.post(f"/api/batches/{batch_id}/cancel", headers={"X-OpenAI-Batches": "cancel"}),
        client.get("/api/batches?conn_id=missing_conn"),
        client.get("/"),
        client.get("/static/app.js"),
    ]
    for answer in answers:
        assert KEY not in answer.text and KEY not in str(answer.headers)
    assert "password" not in answers[0].text and emulator.base_url not in answers[0].text


def test_a_batch_shows_progress_usage_age_and_its_task(client: Any, emulator: Any) -> None:
    emulator.configure(phase_seconds=0.1)
    batch_id = create(emulator, {**made_by("reports", "create", "scheduled__2026", 2), "note": "<script>x()</script>"})
    emulator.force_status(batch_id, "completed")
    batch = client.get(f"/api/batches?batch_id={batch_id}").json()["batches"][0]
    assert batch["status"] == "completed"
    assert batch["requests"]["total"] == 2
    assert batch["age_seconds"] is not None and batch["age_seconds"] >= 0
    assert batch["creator"] == {
        "dag_id": "reports",
        "task_id": "create",
        "run_id": "scheduled__2026",
        "map_index": 2,
        "linkable": True,
        "dag_id_complete": True,
    }
    assert batch["ti_path"] == "/dags/reports/runs/scheduled__2026/tasks/create/mapped/2"
    assert batch["metadata"]["note"] == "<script>x()</script>"  # JSON carries it as data; the page shows text
    assert batch["can_cancel"] is False and batch["terminal"] is True


def test_unknown_foreign_and_forbidden_connections_get_one_answer_without_a_call(
    client: Any, emulator: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The auth manager is asked as Airflow's own connection routes ask it (``GET`` with the connection's
    ``ConnectionDetails``), before the connection is read; an unknown id, one of another type (a secrets
    backend's ``postgres`` here) and a forbidden one get the same 404, naming neither type nor host."""
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.models.resource_details import ConnectionDetails

    monkeypatch.setenv(
        "AIRFLOW_CONN_SOME_DB", json.dumps({"conn_type": "postgres", "host": "db.internal.example", "password": "pw"})
    )
    asked: list[tuple[str, Any]] = []

    def is_authorized_connection(*, method: str, user: Any, details: Any = None) -> bool:
        asked.append((method, details))
        return details.conn_id != "openai_default"

    monkeypatch.setattr(get_auth_manager(), "is_authorized_connection", is_authorized_connection)
    answers = {c: client.get(f"/api/batches?conn_id={c}", user="viewer") for c in ("some_db", "nope", "openai_default")}
    shapes = {(a.status_code, a.json()["detail"].replace(repr(c), "<id>")) for c, a in answers.items()}
    assert len(shapes) == 1 and next(iter(shapes))[0] == 404, shapes
    assert all("postgres" not in a.text and "db.internal.example" not in a.text for a in answers.values())
    assert ("GET", ConnectionDetails(conn_id="openai_default", team_name=None)) in asked
    assert {method for method, _ in asked} == {"GET"}
    assert client.get("/api/batches?after=../x").status_code == 400
    assert api_calls(emulator, "GET /v1/batches") == 0


def test_only_connections_the_user_may_read_are_listed_or_tried(
    client: Any, emulator: Any, monkeypatch: pytest.MonkeyPatch, unused_port: int
) -> None:
    """The list is Airflow's list of connections the user may read (``filter_authorized_connections``),
    filtered by type; the task tab without a connection tries only those, never another team's."""
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.models import Connection
    from airflow.utils.session import create_session

    monkeypatch.setenv("_AIRFLOW_PROCESS_CONTEXT", "server")  # connections from the database, as the api-server
    with create_session() as session:
        for conn_id in ("team_a_batches", "team_b_batches"):
            if session.get(Connection, conn_id) is None:  # type: ignore[arg-type]
                host = f"http://127.0.0.1:{unused_port}/v1"
                session.add(Connection(conn_id=conn_id, conn_type="openai_batch", host=host, password="k"))
    allowed = {"team_a_batches", "team_b_batches", "openai_default"}
    monkeypatch.setattr(
        get_auth_manager(),
        "is_authorized_connection",
        lambda *, method, user, details=None: (
            details.conn_id in allowed if user.get_name() != "viewer" else (details.conn_id == "team_a_batches")
        ),
    )
    assert client.get("/api/connections").json() == {
        "connections": ["openai_default", "team_a_batches", "team_b_batches"],
        "default": "openai_default",
    }
    assert client.get("/api/connections", user="viewer").json() == {
        "connections": ["team_a_batches"],
        "default": "team_a_batches",
    }
    batch_id = create(emulator, made_by("reports"))  # known only behind openai_default
    xcom("create_other_team", "batch_ids", [batch_id])
    tab = "/api/task-batches?dag_id=reports&run_id=manual__1&task_id=create_other_team"
    assert client.get(tab).json()["batches"][0]["id"] == batch_id  # the admin's openai_default knows it
    refused = client.get(tab, user="viewer")
    assert refused.status_code == 502, refused.text  # team_a_batches was tried, and answers nothing
    assert api_calls(emulator, "GET /v1/batches/{id}") == 1  # the admin's read only
    assert str(unused_port) not in refused.text and "127.0.0.1" not in refused.text


# ------------------------------------------------------------------------------- paging, filters, cache


def test_pages_filters_and_newest_first(client: Any, emulator: Any) -> None:
    ids = [create(emulator, made_by("reports" if i % 2 else "ingest"), lines=1) for i in range(7)]
    emulator.force_status(ids[0], "completed")
    first = client.get("/api/batches?limit=3").json()
    assert [b["id"] for b in first["batches"]] == ids[::-1][:3]
    second = client.get(f"/api/batches?limit=3&after={first['next_after']}").json()
    assert [b["id"] for b in second["batches"]] == ids[::-1][3:6]
    third = client.get(f"/api/batches?limit=3&after={second['next_after']}").json()
    assert [b["id"] for b in third["batches"]] == ids[:1] and third["next_after"] is None
    reports = client.get("/api/batches?dag_id=reports").json()["batches"]
    assert [b["id"] for b in reports] == [ids[5], ids[3], ids[1]]
    done = client.get("/api/batches?status=completed").json()["batches"]
    assert [b["id"] for b in done] == [ids[0]]
    assert client.get("/api/batches?limit=0").status_code == 422
    assert client.get("/api/batches?limit=51").status_code == 422


def test_many_open_pages_cost_one_api_call_per_cache_period(client: Any, emulator: Any) -> None:
    from airflow_provider_openai_batch.plugins import service

    create(emulator, made_by("reports"))
    before = api_calls(emulator, "GET /v1/batches")
    for user in ["admin", "viewer", "editor"] * 10:
        assert client.get("/api/batches", user=user).status_code == 200
    assert api_calls(emulator, "GET /v1/batches") - before == 1
    service.cache.clear()  # the period is over
    client.get("/api/batches")
    assert api_calls(emulator, "GET /v1/batches") - before == 2


def test_concurrent_identical_questions_share_one_api_call(client: Any, emulator: Any) -> None:
    from airflow_provider_openai_batch.plugins import service

    create(emulator, made_by("reports"))
    emulator.configure(latency_ms=300)  # the first call is still under way when the others arrive
    before = api_calls(emulator, "GET /v1/batches")

    async def eight() -> list[dict[str, Any]]:
        return await asyncio.gather(*(service.list_page("openai_default", None) for _ in range(8)))

    pages = asyncio.run(eight())
    assert all(page == pages[0] for page in pages)
    assert api_calls(emulator, "GET /v1/batches") - before == 1


# ----------------------------------------------------------------------------------------- the task tab


def record(table: Any, **row: Any) -> None:
    """A row of a task's XCom or rendered fields, as a task would leave it. Foreign keys are off for this
    insert only: a task instance needs a DAG run, a serialized DAG and a bundle, none of which the tab reads."""
    from airflow.utils.session import create_session

    with create_session() as session:
        session.connection().exec_driver_sql("PRAGMA foreign_keys=OFF")
        session.execute(table.__table__.insert().values(**row))
        session.commit()
        session.connection().exec_driver_sql("PRAGMA foreign_keys=ON")


def xcom(task_id: str, key: str, value: Any, run_id: str = "manual__1", map_index: int = -1) -> None:
    from airflow.models.xcom import XComModel

    record(
        XComModel,
        dag_run_id=1,
        dag_id="reports",
        run_id=run_id,
        task_id=task_id,
        map_index=map_index,
        key=key,
        value=XComModel.serialize_value(value),
    )


def test_the_tab_shows_every_batch_of_a_task_with_files_and_errors(client: Any, emulator: Any) -> None:
    first, second = create(emulator, made_by("reports")), create(emulator, made_by("reports"))
    emulator.force_status(second, "failed")
    xcom("create", "batch_ids", [first, second])
    xcom("create", "return_value", second)
    answer = client.get(
        "/api/task-batches?dag_id=reports&run_id=manual__1&task_id=create&map_index={MAP_INDEX}", user="viewer"
    )
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["conn_id"] == "openai_default" and body["batch_ids"] == [first, second]
    assert body["task"]["map_index"] == -1  # the UI leaves {MAP_INDEX} as is for a task that is not mapped
    shown = {b["id"]: b for b in body["batches"]}
    assert shown[first]["input_file_id"].startswith("file-") and shown[first]["can_cancel"] is False  # a viewer
    assert shown[second]["status"] == "failed" and shown[second]["errors"][0]["code"] == "forced_failure"


def test_the_tab_falls_back_to_the_return_value_and_the_rendered_batch_id(client: Any, emulator: Any) -> None:
    from airflow.models.renderedtifields import RenderedTaskInstanceFields

    done, waiting = create(emulator, made_by("reports")), create(emulator, made_by("reports"))
    xcom("sensor_done", "return_value", {"id": done, "status": "completed"}, map_index=2)
    record(
        RenderedTaskInstanceFields,
        dag_id="reports",
        task_id="sensor_waiting",
        run_id="manual__1",
        map_index=-1,
        rendered_fields={"batch_id": waiting},
        k8s_pod_yaml=None,
    )
    tab = "/api/task-batches?dag_id=reports&run_id=manual__1&task_id={}&map_index={}&conn_id=openai_default"
    assert [b["id"] for b in client.get(tab.format("sensor_done", 2)).json()["batches"]] == [done]
    assert [b["id"] for b in client.get(tab.format("sensor_waiting", -1)).json()["batches"]] == [waiting]
    nothing = client.get(tab.format("build_requests", -1)).json()
    assert nothing["batches"] == [] and nothing["batch_ids"] == []


def test_the_tab_needs_read_access_to_the_dag(client: Any, emulator: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from airflow.api_fastapi.app import get_auth_manager

    monkeypatch.setattr(
        get_auth_manager(),
        "is_authorized_dag",
        lambda *, method, user, details=None, access_entity=None: details is not None and details.id == "reports",
    )
    assert client.get("/api/task-batches?dag_id=payroll&run_id=r&task_id=t", user="viewer").status_code == 403
    assert client.get("/api/task-batches?dag_id=reports&run_id=r&task_id=t", user="viewer").status_code == 200


def test_the_tab_shows_only_the_batches_of_dags_the_user_may_read(
    client: Any, emulator: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A task of DAG 'reports' may record (or a sensor there wait on) a batch created by DAG 'payroll': the tab
    applies the page's rule to each batch, so a user who may read only 'reports' gets neither its metadata,
    errors nor file ids, just how many were left out. A batch naming no creating DAG needs every DAG."""
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.models.renderedtifields import RenderedTaskInstanceFields

    ours = create(emulator, made_by("reports"))
    theirs = create(emulator, {**made_by("payroll"), "note": "payroll-only"})
    nobodys = create(emulator, {"note": "no-creating-dag"})
    emulator.force_status(theirs, "failed")
    xcom("create_all", "batch_ids", [theirs, ours, nobodys])
    record(
        RenderedTaskInstanceFields,
        dag_id="reports",
        task_id="watch_payroll",
        run_id="manual__1",
        map_index=-1,
        rendered_fields={"batch_id": theirs},
        k8s_pod_yaml=None,
    )
    tab = "/api/task-batches?dag_id=reports&run_id=manual__1&task_id={}&conn_id=openai_default"
    everything = client.get(tab.format("create_all"), user="viewer").json()  # may read every DAG
    assert [b["id"] for b in everything["batches"]] == [theirs, ours, nobodys] and everything["hidden"] == 0

    monkeypatch.setattr(
        get_auth_manager(),
        "is_authorized_dag",
        lambda *, method, user, details=None, access_entity=None: details is not None and details.id == "reports",
    )
    answer = client.get(tab.format("create_all"), user="viewer")
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert [b["id"] for b in body["batches"]] == [ours] and body["hidden"] == 2
    assert body["batch_ids"] == [theirs, ours, nobodys]  # the task's own XCom, readable in Airflow anyway
    assert "payroll-only" not in answer.text and "no-creating-dag" not in answer.text
    assert "forced_failure" not in answer.text  # nor the other DAG's errors

    watching = client.get(tab.format("watch_payroll"), user="viewer")
    assert watching.status_code == 200 and watching.json()["batches"] == [] and watching.json()["hidden"] == 1
    assert "payroll-only" not in watching.text and "file-" not in watching.text
