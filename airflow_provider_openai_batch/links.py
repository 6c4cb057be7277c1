"""The "OpenAI Batch" extra link on the create operator and the sensor."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlencode, urlsplit

from airflow.sdk import BaseOperatorLink

if TYPE_CHECKING:
    from airflow.sdk import BaseOperator
    from airflow.sdk.types import TaskInstanceKey

    from airflow_provider_openai_batch.connection import ClientSettings


#: Where the provider's plugin shows one batch in the Airflow UI (see :mod:`airflow_provider_openai_batch.plugins`):
#: the "OpenAI Batches" page (``/plugin/<url_route>``) showing the page the plugin's app serves.
PLUGIN_PAGE_PATH = "/plugin/openai-batches/openai-batches/"


class OpenAIBatchLink(BaseOperatorLink):
    """Links a task to its batch: the OpenAI platform page when the connection's base URL is OpenAI's (the
    ``openai_platform`` link of :mod:`~airflow_provider_openai_batch.backends`), otherwise the provider's own
    "OpenAI Batches" page in the Airflow UI, showing that batch (``airflow``): any other server (Azure, a
    self-hosted OpenAI-compatible one, the emulator) has no page of its own that is known to exist.

    The operator stores the URL in XCom under :attr:`xcom_key` as soon as the batch is known, so the link
    is there while the task is deferred.
    """

    name = "OpenAI Batch"

    def get_link(self, operator: BaseOperator, *, ti_key: TaskInstanceKey) -> str:
        url = getattr(operator, "_openai_batch_url", None)
        if url:
            return str(url)
        from airflow.sdk import BaseXCom

        return str(BaseXCom.get_value(ti_key=ti_key, key=self.xcom_key) or "")  # type: ignore[arg-type]


def remember_batch_link(operator: BaseOperator, context: Any, settings: ClientSettings, batch_id: str) -> str:
    """Record the batch's URL for :class:`OpenAIBatchLink` now (visible while deferred) and on the operator."""
    link = settings.rules().link
    url = batch_url(settings.base_url, batch_id, getattr(operator, "conn_id", None), link=link)
    operator._openai_batch_url = url  # type: ignore[attr-defined]
    context["ti"].xcom_push(key=OpenAIBatchLink().xcom_key, value=url)
    return url


def batch_url(
    base_url: str,
    batch_id: str,
    conn_id: str | None = None,
    airflow_url: str | None = None,
    *,
    link: str = "openai_platform",
) -> str:
    """The batch's page for a person: on the OpenAI platform when the back end's rules say so (``link``) and the
    base URL is OpenAI's, otherwise the
    "OpenAI Batches" page of this Airflow showing the batch (no other server is known to have a page a browser
    can open; the ``/v1`` API needs a key that a browser does not send).

    :param conn_id: The connection the batch belongs to (the page lists that connection's batches).
    :param link: The back end's link rule (:attr:`~airflow_provider_openai_batch.backends.BackendRules.link`).
    :param airflow_url: The Airflow UI's URL; default ``[api] base_url``, and without one a path from the root
        of the site the UI is served from (a browser resolves it against the Airflow page showing the link).
    """
    if link == "openai_platform" and urlsplit(base_url).hostname == "api.openai.com":
        return f"https://platform.openai.com/batches/{quote(batch_id)}"
    if airflow_url is None:
        from airflow.sdk import conf

        airflow_url = conf.get("api", "base_url", fallback=None) or ""
    query = urlencode({"conn_id": conn_id or "openai_default", "batch_id": batch_id})
    return f"{airflow_url.rstrip('/')}{PLUGIN_PAGE_PATH}?{query}"
