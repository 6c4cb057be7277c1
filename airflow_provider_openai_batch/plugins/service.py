"""What the "OpenAI Batches" page and the task tab show, and who may do what: no HTTP routing here.

Calls to the Batch API are coroutines on the api-server's event loop, sent with the aiohttp client the
trigger uses (:class:`~airflow_provider_openai_batch.hooks.async_client.AsyncBatchClient`): a page load
waiting on a slow or dead API holds no thread, so Airflow's own routes, which run in the api-server's shared
thread pool, never queue behind it. The rest (the auth manager's answers, the metadata database, reading a
connection) is short and may block, so it runs in that pool through :func:`in_thread`, as Airflow's own
synchronous routes do.

Calls to the API are bounded: every request times out after :data:`REQUEST_TIMEOUT` seconds (connect, and
each read) and is retried at most :data:`MAX_RETRIES` time (the hook's policy, for transient failures only);
one answer of the page waits at most :data:`ANSWER_SECONDS` for the API in all (:func:`answer_deadline`), and
then says so with a 504; a list asks for :data:`API_PAGE_SIZE` batches per call and reads at most
:data:`MAX_API_PAGES` calls per answer, however selective the filters; every answer is cached for
:data:`CACHE_SECONDS` per connection and question (:mod:`~airflow_provider_openai_batch.plugins.cache`).

Who may use a connection, read or cancel a batch is decided in :mod:`.access`. The connection's API key stays
in the api-server: only ids,
statuses, counts, usage, metadata and error messages go to the browser, and error messages name no host and
no URL (:func:`describe`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, TypeVar

from airflow_provider_openai_batch.plugins.access import (
    CONN_TYPE,
    DEFAULT_CONN_ID,
    Access,
    UIError,
    check_conn_id,
    connection_ids,
    in_thread,
    not_usable,
    owner_dag,
    require_connection,
)
from airflow_provider_openai_batch.plugins.cache import TTLCache
from airflow_provider_openai_batch.statuses import CANCELLING, TERMINAL, BatchStatus
from airflow_provider_openai_batch.task_metadata import creator

if TYPE_CHECKING:
    from airflow_provider_openai_batch.api import ApiCall
    from airflow_provider_openai_batch.connection import ClientSettings
    from airflow_provider_openai_batch.models import ApiModel

M = TypeVar("M", bound="ApiModel")

__all__ = [  # the page's app reads who may do what through this module too
    "CONN_TYPE",
    "DEFAULT_CONN_ID",
    "Access",
    "UIError",
    "check_conn_id",
    "connection_ids",
    "in_thread",
    "not_usable",
    "owner_dag",
    "require_connection",
]

#: Seconds an answer of the Batch API is reused (``OPENAI_BATCH_UI_CACHE_SECONDS`` overrides).
CACHE_SECONDS = float(os.environ.get("OPENAI_BATCH_UI_CACHE_SECONDS", "5"))
#: Seconds one request to the Batch API may take to connect and between reads, and how often a transient
#: failure is retried.
REQUEST_TIMEOUT = 10.0
MAX_RETRIES = 1
#: Seconds one answer of the page waits for the Batch API in all, every call and retry included: a read
#: time-out alone never ends a request whose answer trickles in.
ANSWER_SECONDS = 15.0
#: Batches per list call (the API's maximum), and most list calls behind one answer of the page.
API_PAGE_SIZE = 100
MAX_API_PAGES = 5
#: Batches per page of the UI: default and most.
PAGE_SIZE = 20
MAX_PAGE_SIZE = 50
#: Most batches the task tab shows (a job of many shards lists its first ones, and says how many more), and
#: how many of them it reads from the API at once.
MAX_TASK_BATCHES = 50
TASK_BATCH_READS = 8
#: Statuses a cancel can still change (not ended, not already cancelling).
CANCELLABLE = frozenset(s.value for s in BatchStatus) - TERMINAL - {CANCELLING}

cache = TTLCache(CACHE_SECONDS)


# --------------------------------------------------------------------------------------------- the API


def client_settings(conn_id: str) -> ClientSettings:
    """The settings of connection ``conn_id`` with the page's time-out and retries, refusing (as
    :func:`not_usable`) an unknown connection or one that is not of type ``openai_batch``: its password must
    never be sent as an OpenAI key to its host. Call it only after :func:`require_connection`."""
    from airflow.sdk import BaseHook

    from airflow_provider_openai_batch.hooks.batch import OpenAIBatchHook

    try:
        conn = BaseHook.get_connection(conn_id)
    except Exception:  # not found, or a secrets back end failing: the message could name more than we want
        raise not_usable(conn_id) from None
    if conn.conn_type != CONN_TYPE:
        raise not_usable(conn_id)
    try:
        return OpenAIBatchHook(conn_id, timeout=REQUEST_TIMEOUT, max_retries=MAX_RETRIES).settings
    except ValueError as err:  # a connection value the client refuses; the message names the field
        raise UIError(502, f"Connection {conn_id!r} cannot be used: {without_hosts(str(err))}") from None


_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>()]*")
_IPV4 = re.compile(r"\b\d{1,3}(?:\.\d{1,3}){3}(?::\d+)?\b")


def without_hosts(text: str, base_url: str | None = None) -> str:
    """``text`` with every URL, IPv4 address and the host of ``base_url`` replaced by a placeholder."""
    text = _URL.sub("<URL>", text)
    if base_url:
        from urllib.parse import urlsplit

        try:
            host = urlsplit(base_url).hostname
        except ValueError:
            host = None
        if host:
            text = re.sub(re.escape(host) + r"(?::\d+)?", "<host>", text, flags=re.IGNORECASE)
    return _IPV4.sub("<host>", text)


def describe(err: Exception, settings: ClientSettings) -> str:
    """What went wrong with a call, for the user, naming no host or URL: the client's own messages name the
    base URL; the API's error object is kept (its message, status, code and request id); any other answer
    (a proxy's page, a redirect, JSON of the wrong shape) is described by its status alone, as its text may
    name anything."""
    from airflow_provider_openai_batch.exceptions import APIConnectionError, APIError

    if isinstance(err, APIError) and not isinstance(err.body, dict):
        text = f"an answer that is not the Batch API's (HTTP {err.status_code})"
    elif isinstance(err, (APIError, APIConnectionError)):
        text = str(err)
    else:
        text = f"an answer the page cannot read ({type(err).__name__})"
    return without_hosts(text, settings.base_url)


def _too_slow(conn_id: str) -> UIError:
    return UIError(504, f"The Batch API of connection {conn_id!r} did not answer within {ANSWER_SECONDS:g} s")


@contextlib.asynccontextmanager
async def answer_deadline(conn_id: str) -> AsyncIterator[None]:
    """Everything one answer of the page waits for the API, within :data:`ANSWER_SECONDS` (then a 504)."""
    import anyio

    try:
        with anyio.fail_after(ANSWER_SECONDS):
            yield
    except TimeoutError:
        raise _too_slow(conn_id) from None


async def _call(conn_id: str, call: ApiCall[M]) -> M:
    """One call of the API through ``conn_id``, awaited on the event loop and bounded by
    :data:`ANSWER_SECONDS` itself: a cached fetch goes on for its other waiters when one gives up."""
    from airflow_provider_openai_batch.exceptions import ConflictError, NotFoundError, OpenAIBatchError
    from airflow_provider_openai_batch.hooks.async_client import AsyncBatchClient

    settings = await in_thread(client_settings, conn_id)
    try:
        return await asyncio.wait_for(AsyncBatchClient(settings).request(call), ANSWER_SECONDS)
    except asyncio.TimeoutError:  # TimeoutError on Python 3.11+, its own class on 3.10
        raise _too_slow(conn_id) from None
    except ConflictError as err:  # e.g. a cancel of a batch that has just ended
        raise UIError(409, f"The API refused: {describe(err, settings)}") from None
    except NotFoundError as err:
        raise UIError(404, f"Not found at the API: {describe(err, settings)}") from None
    except (OpenAIBatchError, ValueError) as err:
        raise UIError(
            502, f"The Batch API of connection {conn_id!r} did not answer as expected: {describe(err, settings)}"
        ) from None


async def list_page(conn_id: str, after: str | None) -> dict[str, Any]:
    """One page of the API's list (newest first), cached."""
    from airflow_provider_openai_batch import api

    async def fetch() -> dict[str, Any]:
        page = await _call(conn_id, api.list_batches(after=after, limit=API_PAGE_SIZE))
        return {"data": [b.model_dump(mode="json") for b in page.data], "has_more": bool(page.has_more)}

    return await cache.get_or_fetch(("list", conn_id, after), fetch)


async def get_batch(conn_id: str, batch_id: str, *, fresh: bool = False) -> dict[str, Any]:
    """One batch, cached unless ``fresh`` (a cancel decides on the batch as it is now)."""
    from airflow_provider_openai_batch import api

    async def fetch() -> dict[str, Any]:
        return (await _call(conn_id, api.retrieve_batch(batch_id))).model_dump(mode="json")

    if fresh:
        return await fetch()
    return await cache.get_or_fetch(("batch", conn_id, batch_id), fetch)


async def cancel_batch(conn_id: str, batch_id: str) -> dict[str, Any]:
    from airflow_provider_openai_batch import api

    batch = (await _call(conn_id, api.cancel_batch(batch_id))).model_dump(mode="json")
    cache.invalidate(lambda key: isinstance(key, tuple) and len(key) > 1 and key[1] == conn_id)
    return batch


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


async def search(
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
    await require_connection(conn_id, access)
    limit = max(1, min(int(limit), MAX_PAGE_SIZE))
    found: list[dict[str, Any]] = []
    cursor, scanned, next_after = after, 0, None
    async with answer_deadline(conn_id):
        for _ in range(MAX_API_PAGES):
            page = await list_page(conn_id, cursor)
            data = page["data"]
            picked, looked_at = await in_thread(_matching, data, access, status, dag_id, limit - len(found))
            found += picked
            scanned += looked_at
            if looked_at:
                cursor = data[looked_at - 1]["id"]
            rest = len(data) - looked_at
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


def _matching(
    data: list[dict[str, Any]], access: Access, status: str | None, dag_id: str | None, wanted: int
) -> tuple[list[dict[str, Any]], int]:
    """The summaries of the first ``wanted`` batches of ``data`` that match the filters and that the user may
    read, and how many batches of ``data`` were looked at to find them."""
    picked: list[dict[str, Any]] = []
    for index, batch in enumerate(data):
        owner = owner_dag(batch)
        if (status and batch.get("status") != status) or (dag_id and owner != dag_id) or not access.can_read(owner):
            continue
        picked.append(summary(batch, access))
        if len(picked) == wanted:
            return picked, index + 1
    return picked, len(data)


def _visible(batch: dict[str, Any], access: Access) -> dict[str, Any] | None:
    """The summary of ``batch`` when the user may read the DAG that created it."""
    return summary(batch, access) if access.can_read(owner_dag(batch)) else None


async def one(conn_id: str, batch_id: str, access: Access) -> dict[str, Any]:
    """The answer of :func:`search` for one batch (empty when the user may not read its DAG)."""
    await require_connection(conn_id, access)
    async with answer_deadline(conn_id):
        batch = await get_batch(conn_id, batch_id)
    shown = await in_thread(_visible, batch, access)
    return {
        "conn_id": conn_id,
        "batches": [shown] if shown else [],
        "next_after": None,
        "scanned": 1,
        "refresh_seconds": CACHE_SECONDS,
    }


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


async def task_batches(conn_id: str | None, ids: list[str], access: Access) -> dict[str, Any]:
    """The batches of a task, each with its progress, errors and files. Without ``conn_id`` the connections
    of type ``openai_batch`` the user may read are tried in turn (``openai_default`` first) until one knows
    the first batch.

    Read access to the task's DAG is not enough: each batch is shown only to a user who may read the DAG that
    created it, the rule of :func:`search` and :func:`one` (a sensor in one DAG may wait on another DAG's
    batch; a batch naming no creating DAG needs read access to every DAG). The others are left out and only
    counted in ``hidden``: their ids are the task's own (``batch_ids``), so saying that they exist tells
    nothing new, while an empty tab would wrongly say the task recorded no batch. A batch that could not be
    read is shown as such (its id and the error), which carries nothing of the batch itself.
    """
    shown = ids[:MAX_TASK_BATCHES]
    if conn_id:
        candidates = [await require_connection(conn_id, access)]
    else:
        candidates = await in_thread(connection_ids, access)
    last_error: UIError | None = None
    for candidate in candidates:
        async with answer_deadline(candidate):
            try:
                first = await get_batch(candidate, shown[0]) if shown else None
            except UIError as err:
                last_error = err
                continue
            batches = [first, *await _read_each(candidate, shown[1:])] if first is not None else []
        visible, hidden = await in_thread(_task_view, shown, batches, access)
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
    raise last_error or UIError(404, f"No connection of type {CONN_TYPE} that you may read knows this task's batch")


async def _read_each(conn_id: str, batch_ids: list[str]) -> list[dict[str, Any] | UIError]:
    """Each batch of ``batch_ids``, or the error reading it, :data:`TASK_BATCH_READS` at a time."""
    limit = asyncio.Semaphore(TASK_BATCH_READS)

    async def read(batch_id: str) -> dict[str, Any] | UIError:
        async with limit:
            try:
                return await get_batch(conn_id, batch_id)
            except UIError as err:
                return err

    return list(await asyncio.gather(*(read(batch_id) for batch_id in batch_ids)))


def _task_view(
    batch_ids: list[str], batches: list[dict[str, Any] | UIError], access: Access
) -> tuple[list[dict[str, Any]], int]:
    """The summaries the user may see of a task's batches (a batch that could not be read as its id and the
    error), and how many were hidden."""
    visible: list[dict[str, Any]] = []
    hidden = 0
    for batch_id, batch in zip(batch_ids, batches, strict=True):
        if isinstance(batch, UIError):
            unread = {"id": batch_id, "status": "unknown", "errors": {"data": [{"message": batch.message}]}}
            visible.append(summary(unread, access))
        elif access.can_read(owner_dag(batch)):
            visible.append(summary(batch, access))
        else:
            hidden += 1
    return visible, hidden
