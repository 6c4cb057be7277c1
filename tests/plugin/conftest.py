"""Fixtures of the plugin's API tests: the plugin's FastAPI app mounted as the api-server mounts it, in front of
the emulator, over the migrated Airflow database and the simple auth manager's users of
:mod:`tests.airflow_api`."""

from __future__ import annotations

from typing import Any

import pytest

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
