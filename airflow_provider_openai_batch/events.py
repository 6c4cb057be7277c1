"""The payload a :class:`~airflow_provider_openai_batch.triggers.batch.BatchTrigger` event carries, written and
read in one place. JSON primitives only: the event is stored in the metadata database and read back by the
task on a worker.

``{"status": "terminal" | "timeout" | "error", "batch_id": str, "batch": {...} | None, "message": str}``;
``batch`` is the last batch seen, as JSON.
"""

from __future__ import annotations

from typing import Any

TERMINAL = "terminal"
TIMEOUT = "timeout"
ERROR = "error"


def event_payload(status: str, batch_id: str, batch: dict[str, Any] | None, message: str) -> dict[str, Any]:
    """The payload of the one event a trigger emits."""
    return {"status": status, "batch_id": batch_id, "batch": batch, "message": message}


def batch_from_event(event: dict[str, Any]) -> dict[str, Any]:
    """The final batch from an event; raises when the wait ended in an error or at the deadline.

    :raises BatchTimeoutError: the deadline passed first.
    :raises OpenAIBatchError: the wait ended in an error (the event's message says which).
    """
    from airflow_provider_openai_batch.exceptions import BatchTimeoutError, OpenAIBatchError

    status = event.get("status")
    if status == TERMINAL and event.get("batch"):
        return dict(event["batch"])
    if status == TIMEOUT:
        raise BatchTimeoutError(str(event.get("message")))
    raise OpenAIBatchError(str(event.get("message") or f"unexpected trigger event {event!r}"))
