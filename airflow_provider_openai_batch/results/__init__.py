"""Exporting a batch's results: one row per input request, in input order, to JSONL or Parquet.

- :mod:`.rows`: the row schema and how a result line (or its absence) is classified.
- :mod:`.join`: the constant-memory join of input files and result files (positions in SQLite).
- :mod:`.codec`: JSON read and written with msgspec, byte for byte as the ``json`` module would.
- :mod:`.writers`: JSONL and Parquet writers that replace the destination atomically.
- :mod:`.prices`: the dated price table and the cost estimate.
- :mod:`.export`: the orchestration that returns the manifest.
- :mod:`.read`: :func:`read_rows`, an export's rows read back in a downstream task.

Nothing heavy is imported here (``read_rows`` needs only the standard library until it opens Parquet): the
operator module imports this package at DAG-parse time only lazily.
"""

from airflow_provider_openai_batch.results.read import read_rows

__all__ = ["read_rows"]
