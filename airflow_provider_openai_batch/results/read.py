"""Reading an export back: its rows, one at a time, the same from JSONL and from Parquet.

In a downstream task, one line::

    for row in read_rows(manifest): ...

``manifest`` is what :class:`~airflow_provider_openai_batch.operators.results.BatchResultsOperator` or
``@task.openai_batch`` returned (its ``files`` in order with one file per batch), or a destination (a path, a
URI, an ``ObjectStoragePath``, read as :mod:`airflow_provider_openai_batch.locations` says). Parquet's JSON
text columns (``response``, ``output``) are decoded back to values, so a row reads the same from either
format. Memory stays flat: JSONL is read line by line, Parquet a record batch at a time.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from typing import Any

from airflow_provider_openai_batch.locations import input_location
from airflow_provider_openai_batch.results.rows import COLUMNS, OUTPUT_COLUMNS
from airflow_provider_openai_batch.results.writers import resolve_format

#: The columns Parquet holds as JSON text.
JSON_COLUMNS = frozenset(name for name, kind in COLUMNS + OUTPUT_COLUMNS if kind == "json")
#: Rows of Parquet decoded at a time.
BATCH_ROWS = 1_000


def read_rows(source: Any, *, format: str | None = None) -> Iterator[dict[str, Any]]:
    """Every row of an export, in file order (input order within a file).

    :param source: A manifest (a dict with ``destination``, and ``files`` for one file per batch) or a
        destination.
    :param format: ``"jsonl"`` or ``"parquet"``; default: the manifest's, else ``parquet`` for a ``.parquet``
        name, else ``jsonl``.
    """
    if isinstance(source, Mapping):
        if "destination" not in source:
            raise ValueError("read_rows needs a manifest (with 'destination') or a destination; got a dict without it")
        fmt = format or source.get("format")
        files = [entry["destination"] for entry in source.get("files") or []] or [source["destination"]]
    else:
        fmt, files = format, [source]
    for destination in files:
        location = input_location(destination, "source")
        if resolve_format(fmt, location) == "parquet":
            yield from _parquet_rows(location)
        else:
            yield from _jsonl_rows(location)


def _jsonl_rows(location: Any) -> Iterator[dict[str, Any]]:
    with location.open("rb") as handle:
        for line in handle:
            if line.strip():
                yield json.loads(line)


def _parquet_rows(location: Any) -> Iterator[dict[str, Any]]:
    from airflow_provider_openai_batch.results.writers import require_pyarrow

    require_pyarrow()
    import pyarrow.parquet as pq

    with location.open("rb") as handle:
        table = pq.ParquetFile(handle)
        decoded = [name for name in table.schema_arrow.names if name in JSON_COLUMNS]
        for batch in table.iter_batches(batch_size=BATCH_ROWS):
            for row in batch.to_pylist():
                for name in decoded:
                    if row[name] is not None:
                        row[name] = json.loads(row[name])
                yield row
