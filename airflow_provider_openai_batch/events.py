"""The payload a :class:`~airflow_provider_openai_batch.triggers.batch.BatchTrigger` event carries, written and
read in one place. JSON primitives only: the event is stored in the metadata database and read back by the
task on a worker.

``{"status": "terminal" | "wake" | "timeout" | "error", "batch_id": str, "batch": {...} | None, "message": str,
"batches": [...]}``: ``batches`` holds every batch of the wait as last seen (ended or still running);
``batch_id``/``batch`` name the batch the event is about (the first that ended, or the first of the wait).
``wake`` ends a wait whose condition was a time (a back-off is over) or admission (every batch passed
``validating``). An event of the previous release may lack ``batches`` (a one-batch wait): readers fall back to
``batch``.
"""

from __future__ import annotations

from typing import Any

TERMINAL = "terminal"
TIMEOUT = "timeout"
ERROR = "error"
WAKE = "wake"


def event_payload(
    status: str, batch_id: str, batch: dict[str, Any] | None, message: str, batches: list[dict[str, Any]]
) -> dict[str, Any]:
    """The payload of the one event a trigger emits."""
    return {"status": status, "batch_id": batch_id, "batch": batch, "message": message, "batches": batches}


def batches_from_event(event: dict[str, Any]) -> list[dict[str, Any]]:
    """Every batch an event carries, as last seen."""
    if event.get("batches") is not None:
        return [dict(b) for b in event["batches"]]
    return [dict(event["batch"])] if event.get("batch") else []


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
