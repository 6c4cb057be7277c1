"""The "OpenAI Batch" extra link on the create operator and the sensor."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit

from airflow.sdk import BaseOperatorLink

if TYPE_CHECKING:
    from airflow.sdk import BaseOperator
    from airflow.sdk.types import TaskInstanceKey


class OpenAIBatchLink(BaseOperatorLink):
    """Links a task to its batch: the OpenAI platform page when the connection's base URL is OpenAI's,
    otherwise ``{scheme}://{host}/batches/{id}``, the page the local emulator serves.

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


def remember_batch_link(operator: BaseOperator, context: Any, base_url: str, batch_id: str) -> str:
    """Record the batch's URL for :class:`OpenAIBatchLink` now (visible while deferred) and on the operator."""
    url = batch_url(base_url, batch_id)
    operator._openai_batch_url = url  # type: ignore[attr-defined]
    context["ti"].xcom_push(key=OpenAIBatchLink().xcom_key, value=url)
    return url


def batch_url(base_url: str, batch_id: str) -> str:
    """The batch's page for a person: on the OpenAI platform when the base URL is OpenAI's, otherwise
    ``{scheme}://{host}/batches/{id}`` on the server itself, where the emulator serves one (the ``/v1`` API
    needs a key that a browser does not send). Other OpenAI-compatible servers may have no such page."""
    parts = urlsplit(base_url)
    if parts.hostname == "api.openai.com":
        return f"https://platform.openai.com/batches/{quote(batch_id)}"
    return f"{parts.scheme}://{parts.netloc}/batches/{quote(batch_id)}"
