"""The plugin's FastAPI app, mounted by the api-server under ``/openai-batches``.

Every route, the HTML pages and their script included, needs an authenticated Airflow user: the app-wide
dependency is Airflow's own ``get_user`` (the UI's session cookie or a ``Bearer`` token), which answers 401
without a credential and 403 for an invalid one. What a user then sees and may do is the auth manager's
answer for the connection and for the DAG that created each batch
(:class:`~airflow_provider_openai_batch.plugins.service.Access`).

Routes (below ``/openai-batches``):

- ``GET /`` the "OpenAI Batches" page; ``GET /task`` the task instance tab; ``GET /static/...`` their
  script and style.
- ``GET /api/connections``: ids of the connections of type ``openai_batch`` the user may read.
- ``GET /api/batches?conn_id=&status=&dag_id=&after=&limit=``: a page of batches, newest first
  (``&batch_id=`` instead: that batch alone, where the task's extra link points).
- ``GET /api/task-batches?dag_id=&run_id=&task_id=&map_index=[&conn_id=]``: the batches of a task instance
  (needs read access to that DAG).
- ``POST /api/batches/{batch_id}/cancel?conn_id=``: cancel, for users who may edit the creating DAG; it
  must carry the header ``X-OpenAI-Batches: cancel`` (a cross-site form cannot set it, so the session cookie
  alone cannot be used to cancel). Every cancel that was allowed is written to Airflow's audit log (the
  ``log`` table, event ``openai_batch.cancel``, shown under Browse → Audit Log), with the outcome.

Routes that call the Batch API are coroutines: they await the API on the event loop and hand only short
blocking work to the thread pool (see :mod:`~airflow_provider_openai_batch.plugins.service`), so no wait on
the API holds a thread Airflow's own routes need.

The HTML pages are static files: all data arrives as JSON and is put into the page with ``textContent``,
and a Content-Security-Policy allowing only the app's own script makes an injected ``<script>`` inert.
"""

import json
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Header, Query, Request
from fastapi.responses import FileResponse, JSONResponse

from airflow_provider_openai_batch.plugins import service
from airflow_provider_openai_batch.plugins.service import UIError

STATIC = Path(__file__).parent / "static"
CANCEL_HEADER = "X-OpenAI-Batches"
AUDIT_EVENT = "openai_batch.cancel"
#: No inline script or style, nothing from elsewhere; framed only by the Airflow UI itself.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; "
    "frame-ancestors 'self'; base-uri 'none'; form-action 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


def _user_dependency() -> Any:
    from airflow.api_fastapi.core_api.security import get_user

    return get_user


def create_app() -> FastAPI:
    """The app; built on the first request the api-server routes to it, never at DAG-parse time."""
    get_user = _user_dependency()
    User = Annotated[Any, Depends(get_user)]
    app = FastAPI(
        title="OpenAI Batches (airflow-provider-openai-batch)",
        dependencies=[Depends(get_user)],
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )

    @app.exception_handler(UIError)
    async def ui_error(_: Request, err: UIError) -> JSONResponse:
        return JSONResponse({"detail": err.message}, status_code=err.status, headers=SECURITY_HEADERS)

    @app.middleware("http")
    async def security_headers(request: Request, call_next: Any) -> Any:
        response = await call_next(request)
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        return response

    def page(name: str, media_type: str) -> FileResponse:
        return FileResponse(STATIC / name, media_type=media_type, headers=SECURITY_HEADERS)

    @app.get("/", include_in_schema=False)
    def batches_page() -> FileResponse:
        return page("batches.html", "text/html; charset=utf-8")

    @app.get("/task", include_in_schema=False)
    def task_page() -> FileResponse:
        return page("task.html", "text/html; charset=utf-8")

    @app.get("/static/{name}", include_in_schema=False)
    def static(name: str) -> FileResponse:
        types = {"app.js": "text/javascript; charset=utf-8", "app.css": "text/css; charset=utf-8"}
        if name not in types:
            raise UIError(404, "Not found")
        return page(name, types[name])

    @app.get("/api/connections")
    def connections(user: User) -> dict[str, Any]:  # the database and the auth manager: in the thread pool
        ids = service.connection_ids(service.Access(user))
        return {"connections": ids, "default": ids[0] if ids else None}

    @app.get("/api/batches")
    async def batches(
        user: User,
        conn_id: str = service.DEFAULT_CONN_ID,
        status: str | None = None,
        dag_id: str | None = None,
        after: str | None = None,
        limit: Annotated[int, Query(ge=1, le=service.MAX_PAGE_SIZE)] = service.PAGE_SIZE,
        batch_id: str | None = None,
    ) -> dict[str, Any]:
        if batch_id:  # one batch, as the extra link asks for
            _check_batch_id(batch_id)
            return await service.one(conn_id, batch_id, service.Access(user))
        if after:
            _check_batch_id(after)
        return await service.search(
            conn_id, service.Access(user), status=status or None, dag_id=dag_id or None, after=after, limit=limit
        )

    @app.get("/api/task-batches")
    async def task_batches(
        user: User,
        dag_id: str,
        run_id: str,
        task_id: str,
        map_index: str = "-1",
        conn_id: str | None = None,
    ) -> dict[str, Any]:
        access = service.Access(user)
        if not await service.in_thread(access.can_read, dag_id):
            raise UIError(403, f"You may not read DAG {dag_id!r}")
        index = int(map_index) if map_index.lstrip("-").isdigit() else -1  # "{MAP_INDEX}" for unmapped tasks
        ids = await service.in_thread(service.task_batch_ids, dag_id, run_id, task_id, index)
        answer = await service.task_batches(conn_id or None, ids, access)
        return {**answer, "task": {"dag_id": dag_id, "run_id": run_id, "task_id": task_id, "map_index": index}}

    @app.post("/api/batches/{batch_id}/cancel")
    async def cancel(
        user: User,
        batch_id: str,
        conn_id: str = service.DEFAULT_CONN_ID,
        x_openai_batches: Annotated[str | None, Header()] = None,
    ) -> dict[str, Any]:
        if x_openai_batches != "cancel":
            raise UIError(400, f"Send the header {CANCEL_HEADER}: cancel with a cancel request")
        _check_batch_id(batch_id)
        access = service.Access(user)
        await service.require_connection(conn_id, access)
        # Permission from the cached read (the creating DAG is in the metadata, fixed at creation), so that a
        # refused cancel costs no call to the API; only an allowed one re-reads the batch as it is now.
        async with service.answer_deadline(conn_id):
            cached = await service.get_batch(conn_id, batch_id)
        await service.in_thread(_check_can_cancel, access, cached)
        async with service.answer_deadline(conn_id):
            batch = await service.get_batch(conn_id, batch_id, fresh=True)
        await service.in_thread(_check_can_cancel, access, batch)  # Access keeps the answer: no second question
        try:
            async with service.answer_deadline(conn_id):
                cancelled = await service.cancel_batch(conn_id, batch_id)
        except UIError as err:
            await service.in_thread(_audit, user, batch, conn_id, f"refused: {err.message}")
            raise err from None
        await service.in_thread(_audit, user, cancelled, conn_id, str(cancelled.get("status")))
        return await service.in_thread(service.summary, cancelled, access)

    return app


def _check_can_cancel(access: service.Access, batch: dict[str, Any]) -> None:
    owner = service.owner_dag(batch)
    if not access.can_edit(owner):
        whose = f"DAG {owner!r}" if owner else "every DAG (the batch names no creating DAG)"
        raise UIError(403, f"Cancelling this batch needs permission to edit {whose}")


def _check_batch_id(batch_id: str) -> None:
    from airflow_provider_openai_batch.api import validate_id

    try:
        validate_id(batch_id, "batch_id")
    except ValueError as err:
        raise UIError(400, str(err)) from None


def _audit(user: Any, batch: dict[str, Any], conn_id: str, outcome: str) -> None:
    """A row in Airflow's audit log (``log`` table), as Airflow's own API writes one for a user's action.

    The batch's creating DAG, task, run and map index go into the row's columns only when Airflow knows that
    DAG: its event log API shows a row with a ``dag_id`` only to users who may read that DAG, and one naming
    a DAG it does not know (deleted, renamed, or metadata written outside Airflow) to nobody. Such a row keeps
    no ``dag_id`` (shown to whoever may read the audit log, as Airflow's own rows without a DAG) and names the
    creator in ``extra`` instead.
    """
    from airflow.models import DagModel, Log
    from airflow.utils.session import create_session
    from sqlalchemy import select

    from airflow_provider_openai_batch.task_metadata import creator

    made_by = creator(batch.get("metadata")) or {}
    extra: dict[str, Any] = {"batch_id": batch.get("id"), "conn_id": conn_id, "outcome": outcome, "method": "POST"}
    named: dict[str, Any] = {}
    if made_by.get("dag_id_complete"):
        named["dag_id"] = made_by["dag_id"]
        if made_by.get("linkable"):
            named.update(task_id=made_by["task_id"], run_id=made_by["run_id"], map_index=made_by["map_index"])
    name = user.get_name()
    with create_session() as session:
        known = bool(named) and session.scalar(select(DagModel.dag_id).where(DagModel.dag_id == named["dag_id"]))
        fields = named if known else {}
        if named and not known:
            extra["creator"] = named
        session.add(Log(event=AUDIT_EVENT, owner=name, owner_display_name=name, extra=json.dumps(extra), **fields))
