"""The provider's Airflow UI plugin: an "OpenAI Batches" page and a "Batch status" tab on task instances.

Registered through the package's ``airflow.plugins`` entry point (nothing to copy into ``plugins/``).

Which of Airflow 3.3's plugin interfaces, and why:

- ``fastapi_apps``: a FastAPI app the api-server mounts under ``/openai-batches``. It talks to the Batch API
  with the connection's key on the server side (the key never reaches a browser), and checks every request
  with Airflow's own authentication (``get_user``) and auth manager (``is_authorized_dag``).
- ``external_views``, not ``react_apps``: Airflow 3.3 shows an external view whose ``href`` is on its own
  origin in an iframe of its UI (sandboxed, scripts and same-origin allowed, so the session cookie reaches
  the app), both as a navigation entry (``destination="nav"``) and as a task instance tab
  (``destination="task_instance"``, with ``{DAG_ID}``, ``{RUN_ID}``, ``{TASK_ID}`` and ``{MAP_INDEX}``
  filled in). React apps are still marked experimental in 3.3 and must be built against the UI's React
  and Chakra versions; a plain page and one small script need no build step and no Node.js, and cannot
  break when the UI upgrades React. Airflow 3.3 cannot limit a task tab to some operators, so the tab is on
  every task instance and says when a task has no batch.

Importing this module is cheap: the FastAPI app (and everything it imports) is built on its first request,
so processes that load plugins but serve no UI (workers, the scheduler) pay nothing, and the operators never
import it.
"""

from __future__ import annotations

from typing import Any

from airflow.plugins_manager import AirflowPlugin

#: Where the api-server mounts the plugin's app, and the UI route of its page (``/plugin/openai-batches``).
URL_PREFIX = "/openai-batches"
URL_ROUTE = "openai-batches"


class _LazyApp:
    """An ASGI app that builds the real one (:func:`~airflow_provider_openai_batch.plugins.app.create_app`)
    on its first request."""

    def __init__(self) -> None:
        self._app: Any = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if self._app is None:
            from airflow_provider_openai_batch.plugins.app import create_app

            self._app = create_app()
        await self._app(scope, receive, send)


def _base_path() -> str:
    """The path the UI is served under (``[api] base_url``'s path), so the views' hrefs point into it."""
    from urllib.parse import urlsplit

    from airflow.configuration import conf

    return urlsplit(conf.get("api", "base_url", fallback="") or "").path.rstrip("/")


class OpenAIBatchesPlugin(AirflowPlugin):
    """The "OpenAI Batches" page (Browse menu) and the "Batch status" task instance tab."""

    name = "openai_batches"
    fastapi_apps = [{"app": _LazyApp(), "url_prefix": URL_PREFIX, "name": "OpenAI Batches"}]
    external_views = [
        {
            "name": "OpenAI Batches",
            "href": f"{_base_path()}{URL_PREFIX}/",
            "destination": "nav",
            "category": "browse",
            "url_route": URL_ROUTE,
        },
        {
            # Not "OpenAI Batch": that is the extra link's name, shown on the same page.
            "name": "Batch status",
            "href": (
                f"{_base_path()}{URL_PREFIX}/task?dag_id={{DAG_ID}}&run_id={{RUN_ID}}&task_id={{TASK_ID}}"
                "&map_index={MAP_INDEX}"
            ),
            "destination": "task_instance",
            "url_route": "openai-batch-task",
        },
    ]
