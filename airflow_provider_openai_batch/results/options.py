"""Argument checks shared by :class:`~airflow_provider_openai_batch.operators.results.BatchResultsOperator`
(at DAG-parse time) and :func:`~airflow_provider_openai_batch.results.export.export` (at run time).

Import-light on purpose: the operator imports this when a DAG file is parsed, so nothing here may pull in
sqlite3, an HTTP client or pydantic.
"""

from __future__ import annotations

import ast
import json
from collections.abc import Mapping
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


def parse_batch_ids(value: Any, name: str = "batch_id") -> list[str]:
    """One batch id, a list of them, a JSON (or Python literal) string of a list, or batch dicts with an
    ``id`` (the sensor's XCom): the ids, in order, each once.

    :raises ValueError: naming ``name`` and what to pass instead.
    """
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                value = json.loads(text)
            except ValueError:
                try:  # a list rendered by Jinja without native types: "['batch_a', 'batch_b']"
                    value = ast.literal_eval(text)
                except (ValueError, SyntaxError):
                    raise ValueError(
                        f"{name} looks like a list but is neither JSON nor a Python literal: {text[:100]!r}"
                    ) from None
        else:
            value = [text]
    elif isinstance(value, Mapping):
        value = [value]
    if not isinstance(value, (list, tuple)) or not value:
        raise ValueError(
            f"{name} must be a batch id such as 'batch_abc123', a non-empty list of them (the rounds or shards of "
            f"one job), or a JSON string of such a list; got {value!r}"
        )
    ids: list[str] = []
    for item in value:
        batch_id = item.get("id") if isinstance(item, Mapping) else item
        if not isinstance(batch_id, str) or not batch_id.strip():
            raise ValueError(f"{name} must hold batch ids (strings such as 'batch_abc123'); got {item!r}")
        from airflow_provider_openai_batch import api

        api.validate_id(batch_id.strip(), name)
        if batch_id.strip() not in ids:
            ids.append(batch_id.strip())
    return ids
