"""Who may do what on the "OpenAI Batches" page and the task tab, asked of Airflow's auth manager.

A connection is used only for a user who may read it (:meth:`Access.can_use_connection`); an unknown id, a
connection of another type and a forbidden one get the same 404 (:func:`not_usable`), so the page tells
nobody which connections exist or what they are. Reading a batch needs read access to the DAG that created it,
cancelling it edit access (:class:`Access`).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from typing import Any, TypeVar

from airflow_provider_openai_batch.task_metadata import creator

T = TypeVar("T")

CONN_TYPE = "openai_batch"
DEFAULT_CONN_ID = "openai_default"


class UIError(Exception):
    """A refusal or failure to show the user, with its HTTP status (never carrying a secret or a host)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


async def in_thread(func: Callable[..., T], *args: Any) -> T:
    """``func(*args)`` in the api-server's thread pool: short work that may block (the metadata database, the
    auth manager, a secrets backend), never a wait on the Batch API."""
    import anyio.to_thread

    return await anyio.to_thread.run_sync(func, *args)


def check_conn_id(conn_id: Any) -> str:
    if not isinstance(conn_id, str) or not conn_id or len(conn_id) > 250 or not conn_id.isprintable():
        raise UIError(400, "conn_id must be the id of an Airflow connection of type openai_batch")
    return conn_id


def not_usable(conn_id: str) -> UIError:
    """The one answer for a connection id the page will not use: unknown, of another type, or not readable by
    the user (telling these apart would tell who may not read connections which ids exist and their type)."""
    return UIError(
        404,
        f"Connection {conn_id!r} was not found or is not allowed: the page uses only connections of type "
        f"{CONN_TYPE} that you may read",
    )


async def require_connection(conn_id: Any, access: Access) -> str:
    """``conn_id``, checked, when the user may use it; else :func:`not_usable`. Asked on every request, before
    the cache, so a cached answer never reaches a user who may not read its connection."""
    check_conn_id(conn_id)
    if not await in_thread(access.can_use_connection, conn_id):
        raise not_usable(conn_id)
    return str(conn_id)


def connection_ids(access: Access) -> list[str]:
    """Ids of the connections of type ``openai_batch`` in Airflow's database that the user may read
    (``openai_default`` first, also when only a secrets backend holds it); the ids only, never a host or key.
    The rest of the list is what Airflow's own list of connections would show the user, filtered by type."""
    from airflow.models import Connection
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        rows = session.execute(
            select(Connection.conn_id, Connection.team_name).where(Connection.conn_type == CONN_TYPE)
        ).all()
    teams: dict[str, str | None] = {DEFAULT_CONN_ID: None}
    teams.update({conn_id: team for conn_id, team in rows})
    allowed = access.usable_connections(teams)
    ids = sorted(i for i in allowed if i != DEFAULT_CONN_ID)
    return [DEFAULT_CONN_ID, *ids] if DEFAULT_CONN_ID in allowed else ids


# ------------------------------------------------------------------------------------------ who may do what


class Access:
    """The auth manager's answers for one user, asked once per DAG id and connection id per request. Its
    methods may block (an auth manager may ask a database or a server): call them through :func:`in_thread`.

    Using a connection (listing, reading or cancelling its batches) needs read access to it, as Airflow's
    ``GET /api/v2/connections/{connection_id}`` does: the page acts with the connection's key for the user.
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
        self._connections: dict[str, bool] = {}

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

    def can_use_connection(self, conn_id: str) -> bool:
        """Whether the user may read connection ``conn_id``, asked as Airflow's own connection routes ask."""
        if conn_id not in self._connections:
            from airflow.api_fastapi.auth.managers.models.resource_details import ConnectionDetails

            details = ConnectionDetails(conn_id=conn_id, team_name=_connection_team(conn_id))
            self._connections[conn_id] = bool(
                self.auth_manager.is_authorized_connection(method="GET", details=details, user=self.user)
            )
        return self._connections[conn_id]

    def usable_connections(self, teams: dict[str, str | None]) -> set[str]:
        """The ids of ``teams`` (connection id: its team) the user may read, asked as Airflow's list of
        connections asks (``filter_authorized_connections``, one question per team)."""
        by_team: dict[str | None, set[str]] = defaultdict(set)
        for conn_id, team in teams.items():
            by_team[team if _multi_team() else None].add(conn_id)
        allowed: set[str] = set()
        for team, conn_ids in by_team.items():
            allowed |= self.auth_manager.filter_authorized_connections(
                conn_ids=conn_ids, user=self.user, method="GET", team_name=team
            )
        self._connections.update({conn_id: conn_id in allowed for conn_id in teams})
        return allowed & set(teams)


def _multi_team() -> bool:
    from airflow.configuration import conf

    return conf.getboolean("core", "multi_team", fallback=False)


def _connection_team(conn_id: str) -> str | None:
    """The team of a connection in the database (``None`` outside multi-team mode, and for connections only a
    secrets backend holds), as Airflow's connection routes look it up."""
    if not _multi_team():
        return None
    from airflow.models import Connection

    return Connection.get_team_name(conn_id)  # type: ignore[no-any-return]


def _team_of(dag_id: str) -> str | None:
    if not _multi_team():
        return None
    from airflow.models import DagModel

    return DagModel.get_team_name(dag_id)  # type: ignore[no-any-return]


def owner_dag(batch: dict[str, Any]) -> str | None:
    """The DAG id whose permissions govern ``batch``: its creating DAG, or ``None`` (all DAGs)."""
    made_by = creator(batch.get("metadata"))
    return made_by["dag_id"] if made_by and made_by["dag_id_complete"] else None
