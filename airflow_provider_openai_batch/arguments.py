"""Checks of operator and sensor arguments made when a DAG is parsed, so a bad value fails there and not
hours later when a batch ends. Import-free: operator modules use it at DAG-parse time."""

from __future__ import annotations

from typing import Any


def check_fraction(value: Any, task_id: str) -> None:
    """Refuse a ``max_failed_fraction`` outside 0.0..1.0."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise ValueError(
            f"{task_id}: max_failed_fraction must be a number from 0.0 (fail on any failed request) to 1.0 "
            f"(never fail on request errors); got {value!r}"
        )


def check_seconds(value: Any, name: str, task_id: str) -> None:
    """Refuse a duration that is not a positive number (a zero poll interval would hammer the API)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < float("inf"):
        raise ValueError(f"{task_id}: {name} must be a positive number of seconds; got {value!r}")


def check_count(value: Any, name: str, task_id: str, *, minimum: int = 1, optional: bool = True) -> None:
    """Refuse a count that is not a whole number of at least ``minimum`` (``None`` allowed when ``optional``)."""
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        allowed = f"a whole number >= {minimum}" + (" (or None)" if optional else "")
        raise ValueError(f"{task_id}: {name} must be {allowed}; got {value!r}")
