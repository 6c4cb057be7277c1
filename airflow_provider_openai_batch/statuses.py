"""Batch statuses: the documented ones, and the one place that knows which of them end a batch.

Import-free (``enum`` only), so the operator and sensor modules can use it at DAG-parse time without loading
pydantic. ``Batch.status`` stays a plain ``str``: a status the API adds later parses, and counts as still
running.
"""

from __future__ import annotations

from enum import Enum


class BatchStatus(str, Enum):
    """The documented batch statuses."""

    VALIDATING = "validating"
    FAILED = "failed"
    IN_PROGRESS = "in_progress"
    FINALIZING = "finalizing"
    COMPLETED = "completed"
    EXPIRED = "expired"
    CANCELLING = "cancelling"
    CANCELLED = "cancelled"

    def __str__(self) -> str:
        return self.value


COMPLETED = BatchStatus.COMPLETED.value
EXPIRED = BatchStatus.EXPIRED.value
CANCELLED = BatchStatus.CANCELLED.value
FAILED = BatchStatus.FAILED.value
CANCELLING = BatchStatus.CANCELLING.value
VALIDATING = BatchStatus.VALIDATING.value

#: A batch in one of these never changes again.
TERMINAL: frozenset[str] = frozenset(
    s.value for s in (BatchStatus.COMPLETED, BatchStatus.FAILED, BatchStatus.EXPIRED, BatchStatus.CANCELLED)
)

#: Terminal, but without the results that were asked for.
UNSUCCESSFUL: frozenset[str] = TERMINAL - {COMPLETED}

#: A retried task creates a new batch rather than re-attach to one that ended badly or is being cancelled.
NOT_REATTACHABLE: frozenset[str] = UNSUCCESSFUL | {CANCELLING}


def is_terminal(status: object) -> bool:
    """Whether a batch with this status can no longer change (unknown statuses are still running)."""
    return status in TERMINAL
