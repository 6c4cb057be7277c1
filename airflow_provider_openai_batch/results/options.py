"""Argument checks shared by :class:`~airflow_provider_openai_batch.operators.results.BatchResultsOperator`
(at DAG-parse time) and :func:`~airflow_provider_openai_batch.results.export.export` (at run time).

Import-light on purpose: the operator imports this when a DAG file is parsed, so nothing here may pull in
sqlite3, an HTTP client or pydantic.
"""

from __future__ import annotations

from typing import Any

#: The kinds of Files API files a batch has, in the order they are deleted.
FILE_KINDS = ("input", "output", "error")


def parse_delete_files(value: Any, name: str = "delete_files") -> tuple[str, ...]:
    """``"none"`` (or ``None``/empty), ``"all"``, or a subset of ``{"input", "output", "error"}`` (a list or
    one kind as a string): the kinds of Files API files to delete after a successful export, in
    :data:`FILE_KINDS` order.

    :raises ValueError: naming ``name`` and the values it takes.
    """
    if value is None or value == "none" or (isinstance(value, (list, tuple, set, frozenset)) and not value):
        return ()
    if value == "all":
        return FILE_KINDS
    kinds = [value] if isinstance(value, str) else value
    if not isinstance(kinds, (list, tuple, set, frozenset)) or any(k not in FILE_KINDS for k in kinds):
        raise ValueError(
            f"{name} must be 'none', 'all', or a subset of {{'input', 'output', 'error'}} such as "
            f"['output', 'error']; got {value!r}"
        )
    return tuple(kind for kind in FILE_KINDS if kind in kinds)
