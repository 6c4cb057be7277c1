"""The constant-memory join of input files and result files.

Result lines arrive in no order, and a job can hold a million requests with large answers, so neither the
input positions nor the results are held in memory. Every line stays in the file it was downloaded to, and a
SQLite file (stdlib ``sqlite3``) records where (file, offset, length): each request's position, and each
result under the position of its request, so rows come back out in input order by one ordered scan and one
read per line. SQLite's page cache is the only thing that grows, and it is capped (:data:`CACHE_KIB`).

Rounds and shards are told apart by content: a later batch that holds a known ``custom_id`` with the same
request (method, url, body; the lines are compared when a ``custom_id`` comes again, not before) is a round
of it; one with a different request is not, and :meth:`ResultJoin.add_inputs` raises
:class:`RequestConflict` rather than let one answer silently replace another.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
from collections.abc import Generator, Iterable, Iterator
from dataclasses import dataclass
from os import PathLike
from typing import Any

import msgspec

from airflow_provider_openai_batch.results.codec import canonical, decode, decoder

#: SQLite page cache, in KiB: enough to keep the indexes hot, small next to the 100 MB budget.
CACHE_KIB = 16 * 1024


@dataclass(slots=True)  # not frozen: a frozen dataclass takes four times as long to make, once per row
class JoinedRow:
    """One input request and its winning result line, if any.

    :param index: 0-based position of the request over the inputs, in order of first appearance.
    :param custom_id: The request's ``custom_id``.
    :param last_rank: Rank (position in the list of batches) of the batch the row is for: the last batch whose
        input held it (:meth:`ResultJoin.rows`), or the batch asked for (:meth:`ResultJoin.batch_rows`).
    :param model: The ``model`` of its body in that input, if any.
    :param result_rank: ``last_rank`` when that batch has a result line for the request, else ``None``.
    :param line: That result line (JSON bytes), or ``None`` when that batch's result files do not mention the
        request (it ended before running it): another round's line does not stand in for it.
    """

    index: int
    custom_id: str
    last_rank: int
    model: str | None
    result_rank: int | None
    line: bytes | None


class RequestConflict(Exception):
    """Two batches hold the same ``custom_id`` with different requests: they are shards, not rounds.

    :param custom_id: The ``custom_id``.
    :param earlier_rank: Rank of the last earlier batch whose input held it (with the other request).
    :param rank: Rank of the batch being added.
    """

    def __init__(self, custom_id: str, earlier_rank: int, rank: int) -> None:
        super().__init__(f"custom_id {custom_id!r} holds different requests in batches {earlier_rank} and {rank}")
        self.custom_id = custom_id
        self.earlier_rank = earlier_rank
        self.rank = rank


class _Body(msgspec.Struct):
    model: Any = None


class _Request(msgspec.Struct):
    """What the join reads of an input line (the rest of the line is skipped, not built)."""

    custom_id: str
    body: _Body | None = None


class _Result(msgspec.Struct):
    custom_id: str


_read_request = decoder(_Request)
_read_result = decoder(_Result)


def request_digest(item: dict) -> bytes:
    """SHA-256 of the request an input line makes: its method, url and body, keys sorted (so the same request
    written with its keys in another order has the same digest)."""
    return hashlib.sha256(canonical([item.get("method"), item.get("url"), item.get("body")])).digest()


class ResultJoin:
    """Positions and results of several batches, indexed in a SQLite file at ``path`` (the lines stay in theirs).

    Add the batches in the order given (rank 0, 1, ...): each batch's input, then its results. A request's
    position is that of its first appearance, so shards concatenate and a later round (a subset of the
    first) keeps the first round's positions. A request's row comes from the last batch whose input held it:
    its result line there, or none (an older round's line is kept but never wins over a later round that held
    the request and ended without running it).

    :param path: The SQLite file (a scratch file: nobody reads it afterwards).
    :param per_batch: Also record which batch's input held which request, for :meth:`batch_rows` (one file
        per batch); off by default, as a merged export does not need it.
    """

    def __init__(self, path: str | PathLike[str], per_batch: bool = False) -> None:
        self.db = sqlite3.connect(str(path))
        # A scratch file: no journal and no fsync (a crash loses only a file nobody will read again).
        self.db.execute("PRAGMA journal_mode = OFF")
        self.db.execute("PRAGMA synchronous = OFF")
        self.db.execute(f"PRAGMA cache_size = -{CACHE_KIB}")
        self.db.execute("PRAGMA temp_store = FILE")
        # idx is the rowid: SQLite gives a new row max(rowid) + 1 and no row is ever deleted, so positions
        # are dense and in order of first insertion; an upsert of a known custom_id does not take one.
        self.db.execute(
            "CREATE TABLE positions (idx INTEGER PRIMARY KEY, custom_id TEXT NOT NULL UNIQUE, "
            "last_rank INTEGER NOT NULL, model TEXT, file INTEGER NOT NULL, offset INTEGER NOT NULL, "
            "length INTEGER NOT NULL)"
        )
        # One file's lines, in order, before they are checked against the positions and merged in: appended
        # without an index, then joined in one statement each.
        self.db.execute(
            "CREATE TABLE incoming (seq INTEGER PRIMARY KEY, custom_id TEXT NOT NULL, model TEXT, "
            "offset INTEGER NOT NULL, length INTEGER NOT NULL)"
        )
        self.db.execute(
            "CREATE TABLE arriving (seq INTEGER PRIMARY KEY, custom_id TEXT NOT NULL, offset INTEGER NOT NULL, "
            "length INTEGER NOT NULL)"
        )
        self.per_batch = per_batch
        if per_batch:
            self.db.execute(
                "CREATE TABLE members (rank INTEGER NOT NULL, idx INTEGER NOT NULL, PRIMARY KEY (rank, idx)) "
                "WITHOUT ROWID"
            )
        # Keyed by position, so the rows come out by walking positions and results side by side.
        self.db.execute(
            "CREATE TABLE results (idx INTEGER NOT NULL, rank INTEGER NOT NULL, file INTEGER NOT NULL, "
            "offset INTEGER NOT NULL, length INTEGER NOT NULL, PRIMARY KEY (idx, rank)) WITHOUT ROWID"
        )
        # Result lines whose custom_id no input had held when they arrived (a later input may still hold it).
        self.db.execute("CREATE TABLE strays (custom_id TEXT NOT NULL)")
        self.files: list[int] = []
        self.unreadable_input_lines = 0
        self.unreadable_result_lines = 0

    def close(self) -> None:
        self.db.close()
        for fd in self.files:
            os.close(fd)
        self.files.clear()

    def add_inputs(self, rank: int, path: str | PathLike[str]) -> int:
        """Record the requests of one batch's input file; returns how many lines were read.

        The lines are read from ``path`` again when a later batch names one of its requests: keep the file
        until :meth:`close`.

        :raises RequestConflict: when a ``custom_id`` already recorded (or repeated in this file) comes with a
            different request; nothing of this file is recorded then.
        """
        file = self._open(path)
        with self.db:
            self.db.execute("DELETE FROM incoming")
            with open(self.files[file], "rb", closefd=False) as handle:
                self.db.executemany(
                    "INSERT INTO incoming (custom_id, model, offset, length) VALUES (?, ?, ?, ?)",
                    self._requests(handle),
                )
            # seq counts from 1 again in the emptied table (a new rowid is the largest plus one).
            count = self.db.execute("SELECT COALESCE(MAX(seq), 0) FROM incoming").fetchone()[0]
            before = self.db.execute("SELECT COALESCE(MAX(idx), 0) FROM positions").fetchone()[0]
            # Known requests first, by line: a different request under a custom_id an earlier batch held.
            clash = self._first_clash(
                "SELECT i.custom_id, p.last_rank, p.file, p.offset, p.length, ?, i.offset, i.length FROM incoming i "
                "JOIN positions p ON p.custom_id = i.custom_id ORDER BY i.seq",
                (file,),
            )
            if clash is not None:
                raise RequestConflict(clash[0], int(clash[1]), rank)
            # "WHERE true" keeps SQLite from reading ON CONFLICT as part of the SELECT's join.
            self.db.execute(
                "INSERT INTO positions (custom_id, last_rank, model, file, offset, length) "
                "SELECT custom_id, ?, model, ?, offset, length FROM incoming WHERE true ORDER BY seq "
                "ON CONFLICT (custom_id) DO UPDATE SET last_rank = excluded.last_rank, model = excluded.model",
                (rank, file),
            )
            if self.db.execute("SELECT COALESCE(MAX(idx), 0) FROM positions").fetchone()[0] - before != count:
                # Fewer new positions than lines: some lines name known requests (checked above) or repeat one
                # new to this file. A new position keeps its first line, so each later line of it is compared
                # with that one; the first custom_id in order of first appearance whose lines differ is the one
                # an earlier line of the file names first.
                clash = self._first_clash(
                    "SELECT p.custom_id, ?, p.file, p.offset, p.length, p.file, i.offset, i.length FROM incoming i "
                    "JOIN positions p ON p.custom_id = i.custom_id WHERE p.idx > ? AND i.offset != p.offset "
                    "ORDER BY p.idx, i.seq",
                    (rank, before),
                )
                if clash is not None:
                    raise RequestConflict(clash[0], int(clash[1]), rank)
            if self.per_batch:
                self.db.execute(
                    "INSERT OR IGNORE INTO members (rank, idx) "
                    "SELECT ?, p.idx FROM incoming i JOIN positions p ON p.custom_id = i.custom_id",
                    (rank,),
                )
            self.db.execute("DELETE FROM incoming")
        return count

    def _requests(self, handle: Iterable[bytes]) -> Iterator[tuple[str, str | None, int, int]]:
        """(custom_id, model, offset, length) of each line that is a request."""
        for offset, line in _lines(handle):
            try:
                request = _read_request(line)
                custom_id, model = request.custom_id, None if request.body is None else request.body.model
            except msgspec.DecodeError:
                item = _named(line)
                if item is None:  # only a batch that failed validation has such lines; they are no request
                    self.unreadable_input_lines += 1
                    continue
                custom_id, body = item["custom_id"], item.get("body")
                model = body.get("model") if isinstance(body, dict) else None
            yield custom_id, model if isinstance(model, str) else None, offset, len(line)

    def _first_clash(self, query: str, parameters: tuple[int, ...]) -> tuple[str, int] | None:
        """(custom_id, rank) of the first pair of input lines ``query`` gives (custom_id, rank, then file,
        offset and length of each line) that make different requests: not the same bytes (a round copies its
        lines), nor the same :func:`request_digest`."""
        cursor = self.db.execute(query, parameters)
        try:
            for custom_id, rank, *places in cursor:
                one, two = (os.pread(self.files[f], n, at).strip() for f, at, n in (places[:3], places[3:]))
                if one != two and request_digest(decode(one)) != request_digest(decode(two)):
                    return custom_id, rank
        finally:
            cursor.close()  # before a RequestConflict rolls the file back
        return None

    def _open(self, path: str | PathLike[str]) -> int:
        self.files.append(os.open(path, os.O_RDONLY))
        return len(self.files) - 1

    def add_results(self, rank: int, path: str | PathLike[str]) -> int:
        """Record the lines of one output or error file; returns how many were read.

        The lines are read from ``path`` again when rows are made: keep the file until :meth:`close`.
        """
        file = self._open(path)
        with self.db:
            self.db.execute("DELETE FROM arriving")
            with open(self.files[file], "rb", closefd=False) as handle:
                self.db.executemany(
                    "INSERT INTO arriving (custom_id, offset, length) VALUES (?, ?, ?)", self._results(handle)
                )
            count = self.db.execute("SELECT COALESCE(MAX(seq), 0) FROM arriving").fetchone()[0]
            # A later line for the same request in the same batch replaces an earlier one.
            matched = self.db.execute(
                "INSERT INTO results (idx, rank, file, offset, length) "
                "SELECT p.idx, ?, ?, a.offset, a.length FROM arriving a JOIN positions p ON p.custom_id = a.custom_id "
                "WHERE true ORDER BY a.seq "
                "ON CONFLICT (idx, rank) DO UPDATE SET file = excluded.file, offset = excluded.offset, "
                "length = excluded.length",
                (rank, file),
            ).rowcount
            if matched != count:
                self.db.execute(
                    "INSERT INTO strays (custom_id) SELECT custom_id FROM arriving a "
                    "WHERE NOT EXISTS (SELECT 1 FROM positions p WHERE p.custom_id = a.custom_id)"
                )
            self.db.execute("DELETE FROM arriving")
        return count

    def _results(self, handle: Iterable[bytes]) -> Iterator[tuple[str, int, int]]:
        """(custom_id, offset, length) of each line that names a request."""
        for offset, line in _lines(handle):
            try:
                custom_id = _read_result(line).custom_id
            except msgspec.DecodeError:
                item = _named(line)
                if item is None:
                    self.unreadable_result_lines += 1
                    continue
                custom_id = item["custom_id"]
            yield custom_id, offset, len(line)

    def unmatched_results(self) -> int:
        """Result lines whose ``custom_id`` no input file holds (they have no position, so no row)."""
        query = "SELECT COUNT(DISTINCT custom_id) FROM strays WHERE custom_id NOT IN (SELECT custom_id FROM positions)"
        return int(self.db.execute(query).fetchone()[0])

    def rows(self) -> Generator[JoinedRow, None, None]:
        """Every input request with the result line of the last batch whose input held it (if that batch has
        one), in input order, one at a time."""
        return self._joined(
            "SELECT p.idx - 1, p.custom_id, p.last_rank, p.model, r.rank, r.file, r.offset, r.length "
            "FROM positions p LEFT JOIN results r ON r.idx = p.idx AND r.rank = p.last_rank ORDER BY p.idx",
            (),
        )

    def batch_rows(self, rank: int, final: bool = False) -> Generator[JoinedRow, None, None]:
        """Every request the input of batch ``rank`` held, in input order (positions over all the inputs, as
        :meth:`rows` numbers them), one at a time: with that batch's result line (if any), or with ``final``,
        with the result of the last batch whose input held the request (a shard's later attempts).

        :raises RuntimeError: when the join was not made with ``per_batch=True``.
        """
        if not self.per_batch:
            raise RuntimeError("batch_rows needs a ResultJoin made with per_batch=True")
        of = "p.last_rank" if final else "m.rank"
        return self._joined(
            f"SELECT p.idx - 1, p.custom_id, {of}, p.model, r.rank, r.file, r.offset, r.length FROM members m "
            "JOIN positions p ON p.idx = m.idx "
            f"LEFT JOIN results r ON r.idx = p.idx AND r.rank = {of} WHERE m.rank = ? ORDER BY m.idx",
            (rank,),
        )

    def _joined(self, query: str, parameters: tuple[int, ...]) -> Generator[JoinedRow, None, None]:
        cursor = self.db.execute(query, parameters)
        files, pread = self.files, os.pread
        try:
            for index, custom_id, rank, model, result_rank, file, offset, length in cursor:
                line = None if file is None else pread(files[file], length, offset)
                yield JoinedRow(index, custom_id, rank, model, result_rank, line)
        finally:
            cursor.close()


def _lines(handle: Iterable[bytes]) -> Iterator[tuple[int, bytes]]:
    """Each line that is not blank, with its offset in the file."""
    offset = 0
    for line in handle:
        if line.strip():
            yield offset, line
        offset += len(line)


def _named(line: bytes) -> dict | None:
    """A line the msgspec structs refused, read as json would (a line only json reads, or another shape): the
    object, when it is one with a string ``custom_id``."""
    try:
        item = decode(line)
    except ValueError:
        return None
    return item if isinstance(item, dict) and isinstance(item.get("custom_id"), str) else None
