"""Fixtures for tests that talk to Airflow's own API: a migrated Airflow database of their own (SQLite in a
temporary directory) and the simple auth manager with an admin, a viewer (may read DAGs), an editor (may edit
DAGs) and an op (may manage connections). Loaded for every test by ``tests/conftest.py``; nothing is built
unless a test asks for a fixture."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

USERS = {"admin": "ADMIN", "viewer": "VIEWER", "editor": "USER", "op": "OP"}
_ENV = {
    "AIRFLOW__CORE__AUTH_MANAGER": "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager",
    "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": ",".join(f"{u}:{r.lower()}" for u, r in USERS.items()),
    "AIRFLOW__API_AUTH__JWT_SECRET": "plugin-tests-jwt-secret-not-a-real-one-" + "x" * 40,
    "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
}


@pytest.fixture(scope="module")
def airflow_db(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A migrated SQLite database, the ORM of this process pointed at it for the module (and the environment,
    for Airflow code that reads the configuration; both are restored after the module, so later tests and
    their subprocesses never see them)."""
    from airflow import settings

    home = tmp_path_factory.mktemp("airflow-home")
    url = f"sqlite:///{home / 'airflow.db'}"
    env = {**os.environ, **_ENV, "AIRFLOW_HOME": str(home), "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": url}
    airflow = str(Path(sys.executable).with_name("airflow"))
    subprocess.run([airflow, "db", "migrate"], env=env, capture_output=True, check=True, timeout=600)
    saved_env = {k: os.environ.get(k) for k in [*_ENV, "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]}
    saved_conn = settings.SQL_ALCHEMY_CONN
    os.environ.update(_ENV)
    os.environ["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = url
    settings.dispose_orm(do_log=False)
    settings.SQL_ALCHEMY_CONN = url
    settings.configure_orm()
    try:
        yield home
    finally:
        settings.dispose_orm(do_log=False)
        settings.SQL_ALCHEMY_CONN = saved_conn
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        settings.configure_orm()


@pytest.fixture(scope="module")
def tokens(airflow_db: Path) -> Iterator[dict[str, str]]:
    """A JWT of each user, signed as the api-server signs the UI's session token."""
    from airflow.api_fastapi.app import _AuthManagerState, create_auth_manager
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser

    _AuthManagerState.instance = None
    manager = create_auth_manager()
    try:
        yield {
            name: manager.generate_jwt(SimpleAuthManagerUser(username=name, role=role)) for name, role in USERS.items()
        }
    finally:
        _AuthManagerState.instance = None
