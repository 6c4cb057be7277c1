"""What the "OpenAI Batches" page and the task tab show, and who may do what: no HTTP routing here.

Calls to the Batch API are bounded: every request times out after :data:`REQUEST_TIMEOUT` seconds and is
retried at most :data:`MAX_RETRIES` time (the hook's policy, for transient failures only); a list asks for
:data:`API_PAGE_SIZE` batches per call and reads at most :data:`MAX_API_PAGES` calls per answer, however
selective the filters; every answer is cached for :data:`CACHE_SECONDS` per connection and question
(:mod:`~airflow_provider_openai_batch.plugins.cache`). The connection's API key stays in the api-server:
only ids, statuses, counts, usage, metadata and error messages go to the browser.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

from airflow_provider_openai_batch.plugins.cache import TTLCache
from airflow_provider_openai_batch.statuses import CANCELLING, TERMINAL, BatchStatus
from airflow_provider_openai_batch.task_metadata import creator

CONN_TYPE = "openai_batch"
DEFAULT_CONN_ID = "openai_default"
#: Seconds an answer of the Batch API is reused (``OPENAI_BATCH_UI_CACHE_SECONDS`` overrides).
CACHE_SECONDS = float(os.environ.get("OPENAI_BATCH_UI_CACHE_SECONDS", "5"))
#: Seconds one request to the Batch API may take, and how often a transient failure is retried.
REQUEST_TIMEOUT = 10.0
MAX_RETRIES = 1
#: Batches per list call (the API's maximum), and most list calls behind one answer of the page.
API_PAGE_SIZE = 100
MAX_API_PAGES = 5
#: Batches per page of the UI: default and most.
PAGE_SIZE = 20
MAX_PAGE_SIZE = 50
#: Most batches the task tab shows (a job of many shards lists its first ones, and says how many more).
MAX_TASK_BATCHES = 50
#: Statuses a cancel can still change (not ended, not already cancelling).
CANCELLABLE = frozenset(s.value for s in BatchStatus) - TERMINAL - {CANCELLING}

cache = TTLCache(CACHE_SECONDS)


class UIError(Exception):
    """A refusal or failure to show the user, with its HTTP status (never carrying a secret)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


# --------------------------------------------------------------------------------------------- the API


def check_conn_id(conn_id: Any) -> str:
    if not isinstance(conn_id, str) or not conn_id or len(conn_id) > 250 or not conn_id.isprintable():
        raise UIError(400, "conn_id must be the id of an Airflow connection of type openai_batch")
    return conn_id


def open_hook(conn_id: str) -> Any:
    """A hook for ``conn_id`` with the page's short time-out and retries, refusing any connection that is not
    of type ``openai_batch`` (its password must never be sent as an OpenAI key to its host)."""
    from airflow.sdk import BaseHook

    from airflow_provider_openai_batch.hooks.batch import OpenAIBatchHook

    check_conn_id(conn_id)
    try:
        conn = BaseHook.get_connection(conn_id)
    except Exception:  # not found, or a secrets back end failing: the message could name more than we want
        raise UIError(404, f"There is no connection {conn_id!r}") from None
    if conn.conn_type != CONN_TYPE:
        raise UIError(400, f"Connection {conn_id!r} is not of type {CONN_TYPE} (it is {conn.conn_type!r})")
    return OpenAIBatchHook(conn_id, timeout=REQUEST_TIMEOUT, max_retries=MAX_RETRIES)


def _call(conn_id: str, action: Callable[[Any], Any]) -> Any:
    from airflow_provider_openai_batch.exceptions import ConflictError, NotFoundError, OpenAIBatchError

    with open_hook(conn_id) as hook:
        try:
            return action(hook)
        except ConflictError as err:  # e.g. a cancel of a batch that has just ended
            raise UIError(409, f"The API refused: {err}") from None
        except NotFoundError as err:
            raise UIError(404, f"Not found at the API: {err}") from None
        except (OpenAIBatchError, ValueError) as err:
            raise UIError(502, f"The Batch API of connection {conn_id!r} did not answer as expected: {err}") from None


def list_page(conn_id: str, after: str | None) -> dict[str, Any]:
    """One page of the API's list (newest first), cached."""

    def fetch() -> dict[str, Any]:
        page = _call(conn_id, lambda hook: hook.list_batches(after=after, limit=API_PAGE_SIZE))
        return {"data": [b.model_dump(mode="json") for b in page.data], "has_more": bool(page.has_more)}

    return cache.get_or_fetch(("list", conn_id, after), fetch)  # type: ignore[no-any-return]


def get_batch(conn_id: str, batch_id: str, *, fresh: bool = False) -> dict[str, Any]:
    """One batch, cached unless ``fresh`` (a cancel decides on the batch as it is now)."""

    def fetch() -> dict[str, Any]:
        return _call(conn_id, lambda hook: hook.retrieve_batch(batch_id)).model_dump(mode="json")  # type: ignore[no-any-return]

    if fresh:
        return fetch()
    return cache.get_or_fetch(("batch", conn_id, batch_id), fetch)  # type: ignore[no-any-return]


def cancel_batch(conn_id: str, batch_id: str) -> dict[str, Any]:
    batch = _call(conn_id, lambda hook: hook.cancel_batch(batch_id)).model_dump(mode="json")
    cache.invalidate(lambda key: isinstance(key, tuple) and len(key) > 1 and key[1] == conn_id)
    return batch  # type: ignore[no-any-return]


def connection_ids() -> list[str]:
    """Ids of the connections of type ``openai_batch`` in Airflow's database (``openai_default`` first); the
    ids only, never a host or key."""
    from airflow.models import Connection
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        ids = sorted(session.scalars(select(Connection.conn_id).where(Connection.conn_type == CONN_TYPE)))
    return [DEFAULT_CONN_ID, *(i for i in ids if i != DEFAULT_CONN_ID)]


# ------------------------------------------------------------------------------------------ who may do what


class Access:
    """The auth manager's answers for one user, asked once per DAG id per request.

    Reading a batch needs read access to the DAG that created it; cancelling needs edit access (``PUT``).
    A batch without a (complete) creating DAG id in its metadata is treated as belonging to every DAG: it is
    shown to users who may read all DAGs and may be cancelled only by users who may edit all DAGs.
    """

    def __init__(self, user: Any, auth_manager: Any = None) -> None:
        self.user = user
        if auth_manager is None:
            from airflow.api_fastapi.app import get_auth_manager

            auth_manager = get_auth_manager()
        self.auth_manager = auth_manager
        self._answers: dict[tuple[str, str | None], bool] = {}

    def _allowed(self, method: str, dag_id: str | None) -> bool:
        key = (method, dag_id)
        if key not in self._answers:
            details = None
            if dag_id is not None:
                from airflow.api_fastapi.auth.managers.models.resource_details import DagDetails

                details = DagDetails(id=dag_id, team_name=_team_of(dag_id))
            self._answers[key] = bool(
                self.auth_manager.is_authorized_dag(method=method, details=details, user=self.user)
            )
        return self._answers[key]

    def can_read(self, dag_id: str | None) -> bool:
        return self._allowed("GET", dag_id)

    def can_edit(self, dag_id: str | None) -> bool:
        return self._allowed("PUT", dag_id)


def _team_of(dag_id: str) -> str | None:
    from airflow.configuration import conf

    if not conf.getboolean("core", "multi_team", fallback=False):
        return None
    from airflow.models import DagModel

    return DagModel.get_team_name(dag_id)  # type: ignore[no-any-return]


def owner_dag(batch: dict[str, Any]) -> str | None:
    """The DAG id whose permissions govern ``batch``: its creating DAG, or ``None`` (all DAGs)."""
    made_by = creator(batch.get("metadata"))
    return made_by["dag_id"] if made_by and made_by["dag_id_complete"] else None


# --------------------------------------------------------------------------------------------- the views


def ti_path(made_by: dict[str, Any] | None) -> str | None:
    """The task instance page in the Airflow UI (a path below the UI's root), when the metadata names one."""
    if not made_by or not made_by["linkable"]:
        return None
    from urllib.parse import quote

    parts = [quote(str(made_by[k]), safe="") for k in ("dag_id", "run_id", "task_id")]
    path = f"/dags/{parts[0]}/runs/{parts[1]}/tasks/{parts[2]}"
    return path + (f"/mapped/{made_by['map_index']}" if made_by["map_index"] >= 0 else "")


def summary(batch: dict[str, Any], access: Access, now: float | None = None) -> dict[str, Any]:
    """What the UI shows of one batch. Every string is shown as text by the page."""
    now = time.time() if now is None else now
    counts = batch.get("request_counts") or {}
    usage = batch.get("usage") or None
    made_by = creator(batch.get("metadata"))
    status = str(batch.get("status"))
    errors = ((batch.get("errors") or {}).get("data")) or []
    created = batch.get("created_at")
    return {
        "id": batch.get("id"),
        "status": status,
        "endpoint": batch.get("endpoint"),
        "model": batch.get("model"),
        "created_at": created,
        "age_seconds": max(0, int(now - created)) if isinstance(created, (int, float)) else None,
        "ended_at": next(
            (batch.get(k) for k in ("completed_at", "failed_at", "expired_at", "cancelled_at") if batch.get(k)), None
        ),
        "requests": {
            "total": int(counts.get("total") or 0),
            "completed": int(counts.get("completed") or 0),
            "failed": int(counts.get("failed") or 0),
        },
        "usage": None if not usage else {k: usage.get(k) for k in ("input_tokens", "output_tokens", "total_tokens")},
        "creator": made_by,
        "ti_path": ti_path(made_by),
        "metadata": batch.get("metadata") or {},
        "errors": [
            {k: e.get(k) for k in ("code", "message", "param", "line")} for e in errors[:20] if isinstance(e, dict)
        ],
        "input_file_id": batch.get("input_file_id"),
        "output_file_id": batch.get("output_file_id"),
        "error_file_id": batch.get("error_file_id"),
        "terminal": status in TERMINAL,
        "can_cancel": status in CANCELLABLE and access.can_edit(owner_dag(batch)),
    }


def search(
    conn_id: str,
    access: Access,
    *,
    status: str | None = None,
    dag_id: str | None = None,
    after: str | None = None,
    limit: int = PAGE_SIZE,
) -> dict[str, Any]:
    """A page of the batches ``access`` may read, newest first, matching the filters.

    The API filters nothing, so pages of :data:`API_PAGE_SIZE` are read from ``after`` on until ``limit``
    batches match or :data:`MAX_API_PAGES` were read. ``next_after`` is the cursor of the following page
    (``None`` at the end), ``scanned`` how many batches were looked at.
    """
    check_conn_id(conn_id)
    limit = max(1, min(int(limit), MAX_PAGE_SIZE))
    found: list[dict[str, Any]] = []
    cursor, scanned, next_after = after, 0, None
    for _ in range(MAX_API_PAGES):
        page = list_page(conn_id, cursor)
        data, rest = page["data"], 0
        for index, batch in enumerate(data):
            scanned += 1
            cursor = batch["id"]
            owner = owner_dag(batch)
            if (status and batch.get("status") != status) or (dag_id and owner != dag_id) or not access.can_read(owner):
                continue
            found.append(summary(batch, access))
            if len(found) == limit:
                rest = len(data) - index - 1
                break
        if not data or (not page["has_more"] and (len(found) < limit or rest == 0)):
            next_after = None  # the end of the list
            break
        next_after = cursor
        if len(found) == limit:
            break
    return {
        "conn_id": conn_id,
        "batches": found,
        "next_after": next_after,
        "scanned": scanned,
        "refresh_seconds": CACHE_SECONDS,
    }


def one(conn_id: str, batch_id: str, access: Access) -> dict[str, Any]:
    """The answer of :func:`search` for one batch (empty when the user may not read its DAG)."""
    batch = get_batch(check_conn_id(conn_id), batch_id)
    shown = [summary(batch, access)] if access.can_read(owner_dag(batch)) else []
    return {"conn_id": conn_id, "batches": shown, "next_after": None, "scanned": 1, "refresh_seconds": CACHE_SECONDS}


def task_batch_ids(dag_id: str, run_id: str, task_id: str, map_index: int) -> list[str]:
    """The batch ids a task instance recorded: XCom ``batch_ids`` (every batch of the task), else the batch of
    its ``return_value`` or XCom ``batch``, else the rendered ``batch_id`` of a sensor or cancel task that has
    not finished yet."""
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        rows = session.execute(
            select(XComModel.key, XComModel.value).where(
                XComModel.dag_id == dag_id,
                XComModel.run_id == run_id,
                XComModel.task_id == task_id,
                XComModel.map_index == map_index,
                XComModel.key.in_(("batch_ids", "return_value", "batch")),
            )
        ).all()
        values = {key: XComModel.deserialize_value(_Row(value)) for key, value in rows}
        ids = _ids_from(values.get("batch_ids"))
        for key in ("return_value", "batch"):
            if not ids:
                ids = _ids_from(values.get(key))
        if not ids:
            from airflow.models.renderedtifields import RenderedTaskInstanceFields as Rendered

            fields = session.scalar(
                select(Rendered.rendered_fields).where(
                    Rendered.dag_id == dag_id,
                    Rendered.run_id == run_id,
                    Rendered.task_id == task_id,
                    Rendered.map_index == map_index,
                )
            )
            if isinstance(fields, dict):
                ids = _ids_from(fields.get("batch_id"))
    return ids


class _Row:
    """What :meth:`XComModel.deserialize_value` reads: an object with a ``value``."""

    def __init__(self, value: Any) -> None:
        self.value = value


def _ids_from(value: Any) -> list[str]:
    from airflow_provider_openai_batch.api import validate_id

    if isinstance(value, dict):
        value = value.get("id")
    items = value if isinstance(value, list) else [value]
    ids = []
    for item in items:
        if isinstance(item, dict):
            item = item.get("id")
        try:
            validate_id(item, "batch_id")
        except ValueError:
            continue
        if item not in ids:
            ids.append(item)
    return ids


def task_batches(conn_id: str | None, ids: list[str], access: Access) -> dict[str, Any]:
    """The batches of a task, each with its progress, errors and files. Without ``conn_id`` the connections
    of type ``openai_batch`` are tried in turn (``openai_default`` first) until one knows the first batch.

    Read access to the task's DAG is not enough: each batch is shown only to a user who may read the DAG that
    created it, the rule of :func:`search` and :func:`one` (a sensor in one DAG may wait on another DAG's
    batch; a batch naming no creating DAG needs read access to every DAG). The others are left out and only
    counted in ``hidden``: their ids are the task's own (``batch_ids``), so saying that they exist tells
    nothing new, while an empty tab would wrongly say the task recorded no batch. A batch that could not be
    read is shown as such (its id and the error), which carries nothing of the batch itself.
    """
    shown = ids[:MAX_TASK_BATCHES]
    candidates = [check_conn_id(conn_id)] if conn_id else connection_ids()
    last_error: UIError | None = None
    for candidate in candidates:
        try:
            first = get_batch(candidate, shown[0]) if shown else None
        except UIError as err:
            last_error = err
            continue
        visible: list[dict[str, Any]] = []
        hidden = 0
        for index, batch_id in enumerate(shown):
            try:
                batch = first if index == 0 and first is not None else get_batch(candidate, batch_id)
            except UIError as err:
                unread = {"id": batch_id, "status": "unknown", "errors": {"data": [{"message": err.message}]}}
                visible.append(summary(unread, access))
                continue
            if access.can_read(owner_dag(batch)):
                visible.append(summary(batch, access))
            else:
                hidden += 1
        return {
            "conn_id": candidate,
            "batch_ids": ids,
            "batches": visible,
            "hidden": hidden,
            "more": max(0, len(ids) - len(shown)),
            "refresh_seconds": CACHE_SECONDS,
        }
    if not shown:
        return {
            "conn_id": conn_id,
            "batch_ids": [],
            "batches": [],
            "hidden": 0,
            "more": 0,
            "refresh_seconds": CACHE_SECONDS,
        }
    raise last_error or UIError(404, "No connection of type openai_batch knows this task's batch")
