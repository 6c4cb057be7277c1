"""The payload a :class:`~airflow_provider_openai_batch.triggers.batch.BatchTrigger` event carries, written and
read in one place. JSON primitives only: the event is stored in the metadata database and read back by the
task on a worker.

``{"status": "terminal" | "timeout" | "error", "batch_id": str, "batch": {...} | None, "message": str}``;
``batch`` is the last batch seen, as JSON.

A wait for several batches of one job adds ``"batches"``: every batch of the wait as last seen (the ended
ones and those still running), and may end with status ``"wake"`` when the job asked to be woken at a time
(a shard waits out its back-off after ``token_limit_exceeded``). ``batch_id``/``batch`` then name the first
batch that ended (or the first of the wait). A job's wait also hands back ``"resume"``, the job's record, so
the task resumes from it wherever the deferral's kwargs are not handed back.
"""

from __future__ import annotations

from typing import Any

TERMINAL = "terminal"
TIMEOUT = "timeout"
ERROR = "error"
WAKE = "wake"


def event_payload(
    status: str,
    batch_id: str,
    batch: dict[str, Any] | None,
    message: str,
    batches: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The payload of the one event a trigger emits; ``batches`` only for a wait on several batches."""
    payload: dict[str, Any] = {"status": status, "batch_id": batch_id, "batch": batch, "message": message}
    if batches is not None:
        payload["batches"] = batches
    return payload


def batches_from_event(event: dict[str, Any]) -> list[dict[str, Any]]:
    """Every batch an event carries, as last seen: ``batches`` of a multi-batch wait, else ``[batch]``."""
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
