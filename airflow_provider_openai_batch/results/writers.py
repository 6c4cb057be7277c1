"""Writing export rows to JSONL or Parquet, replacing the destination atomically.

Rows are written to a temporary sibling of the destination and renamed into place once the last one is
written (as :func:`~airflow_provider_openai_batch.hooks.transfer.write_destination` does for downloads), so
a failed or killed export never leaves a partial result where a reader looks, and a re-export replaces the
previous file whole.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import IO, Any, Protocol

from airflow_provider_openai_batch.results.codec import encode
from airflow_provider_openai_batch.results.rows import COLUMNS

FORMATS = ("jsonl", "parquet")
PARQUET_EXTRA_HINT = "pip install 'airflow-provider-openai-batch[parquet]'"
#: A Parquet row group is flushed at this many rows or this many bytes of JSON, whichever comes first, so
#: memory stays bounded even when every answer is large. The writer keeps every group's metadata for the
#: file's footer (about 11 KB a group), so small rows make large groups: 1,000-row groups grew memory by
#: 11 MB per million rows, 5,000-row groups by 2 MB (and take more memory while they fill: 50 MB at their
#: peak against 33 MB, for answers of a few hundred bytes).
PARQUET_GROUP_ROWS = 5_000
PARQUET_GROUP_BYTES = 4 * 1024 * 1024


class RowWriter(Protocol):
    def write(self, row: dict[str, Any]) -> None: ...

    def close(self) -> None: ...


def resolve_format(format: str | None, destination: Any) -> str:
    """``jsonl`` or ``parquet``: the one asked for, else ``parquet`` for a destination ending in ``.parquet``."""
    if format is None:
        name = str(getattr(destination, "name", None) or destination)
        return "parquet" if name.lower().endswith(".parquet") else "jsonl"
    if not isinstance(format, str) or format.lower() not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)} or None (from the destination); got {format!r}")
    return format.lower()


def require_pyarrow() -> None:
    """Fail early, before anything is downloaded, when Parquet is asked for without pyarrow."""
    try:
        import pyarrow
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        raise ImportError(
            f"Parquet export needs pyarrow, which is not installed: {PARQUET_EXTRA_HINT} "
            "(or write JSONL: format='jsonl')"
        ) from None


@contextmanager
def atomic_output(target: Any) -> Iterator[IO[bytes]]:
    """A binary handle on a temporary sibling of ``target``, renamed onto ``target`` when the block ends
    without an error; on any error (a kill included) the sibling is removed and ``target`` is untouched.

    A local file gets the mode a plain ``open()`` would give it (``0o666`` less the umask), not the ``0600``
    of :func:`tempfile.mkstemp`: the export is for other processes (and users) to read."""
    if isinstance(target, Path):
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
        try:
            with os.fdopen(fd, "wb") as handle:
                yield handle
            os.chmod(tmp_name, 0o666 & ~_umask())
            os.replace(tmp_name, target)
        except BaseException:
            Path(tmp_name).unlink(missing_ok=True)
            raise
        return
    partial = target.with_name(f".{target.name}.{uuid.uuid4().hex}.part")
    try:
        with partial.open("wb") as handle:
            yield handle
        partial.rename(target)
    except BaseException:
        with suppress(Exception):
            partial.unlink()
        raise


def _umask() -> int:
    """The process's umask, read without changing it where the system allows (``/proc`` on Linux): setting it
    to read it back would, for a moment, apply to files other threads create."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


class JsonlWriter:
    """One JSON object per line, UTF-8, keys in :data:`~.rows.COLUMNS` order."""

    def __init__(self, handle: IO[bytes]) -> None:
        self.handle = handle

    def write(self, row: dict[str, Any]) -> None:
        self.handle.write(encode(row) + b"\n")

    def close(self) -> None:
        self.handle.flush()


class ParquetWriter:
    """Parquet with a fixed schema (``columns``, by default :data:`~.rows.COLUMNS`), in bounded row groups.

    A ``json`` column (``response``, ``output``) holds its value's JSON text, since a Parquet column needs one
    type; a ``vector`` column (``embedding``) is a list of float32, and ``vectors`` (``embeddings``) a list of
    them, as the embeddings are computed and as vector stores load them.
    """

    def __init__(self, handle: IO[bytes], columns: Sequence[tuple[str, str]] = COLUMNS) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        vector = pa.list_(pa.float32())
        types = {"string": pa.string(), "int64": pa.int64(), "json": pa.string(), "vector": vector}
        types["vectors"] = pa.list_(vector)
        self._pa = pa
        self._names = [name for name, _ in columns]
        self.schema = pa.schema([(name, types[kind]) for name, kind in columns])
        self._json_columns = [name for name, kind in columns if kind == "json"]
        self._plain_columns = [name for name, kind in columns if kind != "json"]
        self._vector_columns = [name for name, kind in columns if kind.startswith("vector")]
        self._writer = pq.ParquetWriter(handle, self.schema, compression="zstd")
        self._columns: dict[str, list[Any]] = {name: [] for name in self._names}
        self._rows = 0
        self._bytes = 0

    def write(self, row: dict[str, Any]) -> None:
        for name in self._json_columns:
            value = row[name]
            text = None if value is None else encode(value).decode("utf-8")
            self._bytes += len(text) if text else 0
            self._columns[name].append(text)
        for name in self._plain_columns:
            self._columns[name].append(row[name])
        for name in self._vector_columns:  # a float is 4 bytes in the group's buffers
            value = row[name] or []
            self._bytes += 4 * sum(len(v) if isinstance(v, list) else 1 for v in value)
        self._rows += 1
        if self._rows >= PARQUET_GROUP_ROWS or self._bytes >= PARQUET_GROUP_BYTES:
            self._flush()

    def _flush(self) -> None:
        if self._rows:
            self._writer.write_table(self._pa.table(self._columns, schema=self.schema))
        self._columns = {name: [] for name in self._names}
        self._rows = self._bytes = 0

    def close(self) -> None:
        self._flush()
        self._writer.close()


def open_writer(format: str, handle: IO[bytes], columns: Sequence[tuple[str, str]] = COLUMNS) -> RowWriter:
    """A writer of rows with ``columns`` (JSONL writes each row's keys as they come, in the same order)."""
    return ParquetWriter(handle, columns) if format == "parquet" else JsonlWriter(handle)


#: The number of every file in :func:`numbered_destination`'s pattern: a glob, as fsspec and ``ObjectStoragePath.glob``
#: read it.
EVERY_NUMBER = "*"


def numbered_destination(destination: Any, number: int | str) -> Any:
    """``destination`` with ``-NNNNN`` before its extension: ``s3://b/answers.jsonl`` -> ``s3://b/answers-00001.jsonl``
    (a path, a URI string or an ``ObjectStoragePath``), for one file per batch; ``number`` :data:`EVERY_NUMBER`
    gives the pattern that names them all (``s3://b/answers-*.jsonl``)."""
    tag = f"-{number:05d}" if isinstance(number, int) else f"-{number}"
    if hasattr(destination, "with_name") and not isinstance(destination, str):
        return destination.with_name(f"{destination.stem}{tag}{destination.suffix}")
    text = str(destination)
    slash = text.rfind("/")
    dot = text.rfind(".")
    if dot > slash + 1:
        return f"{text[:dot]}{tag}{text[dot:]}"
    return f"{text}{tag}"


def export_uri(destination: Any, one_file_per_batch: bool) -> str:
    """The URI an export reports and its asset carries: the destination's, or with one file per batch the
    pattern that names every numbered file (``file:///data/answers-*.jsonl``), since no file has the
    destination's own name then."""
    from airflow_provider_openai_batch.locations import location_uri

    uri = location_uri(destination)
    return numbered_destination(uri, EVERY_NUMBER) if one_file_per_batch else uri
