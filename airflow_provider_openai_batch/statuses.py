"""Batch statuses as plain strings, and the one place that knows which of them end a batch.

Import-free, so the operator and sensor modules can use it at DAG-parse time without loading pydantic.
A status not listed here (the API adds them over time) counts as still running.
"""

from __future__ import annotations

COMPLETED = "completed"
CANCELLING = "cancelling"

#: A batch in one of these never changes again.
TERMINAL: frozenset[str] = frozenset({"completed", "failed", "expired", "cancelled"})

#: Terminal, but without the results that were asked for.
UNSUCCESSFUL: frozenset[str] = TERMINAL - {COMPLETED}

#: A retried task creates a new batch rather than re-attach to one that ended badly or is being cancelled.
NOT_REATTACHABLE: frozenset[str] = UNSUCCESSFUL | {CANCELLING}
