"""The constant-memory join of input files and result files.

Result lines arrive in no order, and a batch can hold 50,000 requests with large answers, so neither the
input positions nor the results are held in memory: both go to a SQLite file (stdlib ``sqlite3``) and rows
come back out of it one at a time, in input order. SQLite's page cache is the only thing that grows, and it
is capped (:data:`CACHE_KIB`).

Rounds and shards are told apart by content: each input line's request (method, url, body) is recorded as a
digest per ``custom_id``. A later batch that holds a known ``custom_id`` with the same request is a round of
it; one with a different request is not, and :meth:`ResultJoin.add_inputs` raises :class:`RequestConflict`
rather than let one answer silently replace another.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Generator, Iterable, Iterator
from dataclasses import dataclass
from os import PathLike

#: SQLite page cache, in KiB: enough to keep the indexes hot, small next to the 100 MB budget.
CACHE_KIB = 16 * 1024


@dataclass(frozen=True)
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


def request_digest(item: dict) -> bytes:
    """SHA-256 of the request an input line makes: its method, url and body, keys sorted (so the same request
    written with its keys in another order has the same digest)."""
    request = [item.get("method"), item.get("url"), item.get("body")]
    text = json.dumps(request, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).digest()


class ResultJoin:
    """Positions and results of several batches, spilled to a SQLite file at ``path``.

    Add the batches in the order given (rank 0, 1, ...): each batch's input, then its results. A request's
    position is that of its first appearance, so shards concatenate and a later round (a subset of the
    first) keeps the first round's positions. A request's row comes from the last batch whose input held it:
    its result line there, or none (an older round's line is kept on disk but never wins over a later round
    that held the request and ended without running it).

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
            "last_rank INTEGER NOT NULL, model TEXT, digest BLOB NOT NULL)"
        )
        # One batch's input lines, in order, before they are checked against the positions and merged in.
        self.db.execute(
            "CREATE TABLE incoming (seq INTEGER PRIMARY KEY, custom_id TEXT NOT NULL, model TEXT, digest BLOB NOT NULL)"
        )
        self.db.execute("CREATE INDEX incoming_custom_id ON incoming (custom_id)")
        self.per_batch = per_batch
        if per_batch:
            self.db.execute(
                "CREATE TABLE members (rank INTEGER NOT NULL, idx INTEGER NOT NULL, PRIMARY KEY (rank, idx)) "
                "WITHOUT ROWID"
            )
        self.db.execute(
            "CREATE TABLE results (custom_id TEXT NOT NULL, rank INTEGER NOT NULL, line BLOB NOT NULL, "
            "PRIMARY KEY (custom_id, rank))"
        )
        self.unreadable_input_lines = 0
        self.unreadable_result_lines = 0

    def close(self) -> None:
        self.db.close()

    def add_inputs(self, rank: int, lines: Iterable[bytes]) -> int:
        """Record the requests of one batch's input file; returns how many lines were read.

        :raises RequestConflict: when a ``custom_id`` already recorded (or repeated in this file) comes with a
            different request; nothing of this file is recorded then.
        """
        count = 0

        def records() -> Iterator[tuple[str, str | None, bytes]]:
            nonlocal count
            for line in lines:
                try:
                    item = json.loads(line)
                    custom_id = item["custom_id"]
                except (ValueError, TypeError, KeyError):
                    # Only a batch that failed validation has such lines; they are no request.
                    self.unreadable_input_lines += 1
                    continue
                if not isinstance(custom_id, str):
                    self.unreadable_input_lines += 1
                    continue
                body = item.get("body")
                model = body.get("model") if isinstance(body, dict) else None
                count += 1
                yield custom_id, model if isinstance(model, str) else None, request_digest(item)

        with self.db:
            self.db.execute("DELETE FROM incoming")
            self.db.executemany("INSERT INTO incoming (custom_id, model, digest) VALUES (?, ?, ?)", records())
            clash = self.db.execute(
                "SELECT i.custom_id, p.last_rank FROM incoming i JOIN positions p ON p.custom_id = i.custom_id "
                "WHERE p.digest != i.digest ORDER BY i.seq LIMIT 1"
            ).fetchone()
            if clash is None:
                clash = self.db.execute(
                    "SELECT a.custom_id, ? FROM incoming a JOIN incoming b ON b.custom_id = a.custom_id "
                    "AND b.seq > a.seq WHERE b.digest != a.digest ORDER BY a.seq LIMIT 1",
                    (rank,),
                ).fetchone()
            if clash is not None:
                self.db.execute("DELETE FROM incoming")
                raise RequestConflict(clash[0], int(clash[1]), rank)
            # "WHERE true" keeps SQLite from reading ON CONFLICT as part of the SELECT's join.
            self.db.execute(
                "INSERT INTO positions (custom_id, last_rank, model, digest) "
                "SELECT custom_id, ?, model, digest FROM incoming WHERE true ORDER BY seq "
                "ON CONFLICT (custom_id) DO UPDATE SET last_rank = excluded.last_rank, model = excluded.model",
                (rank,),
            )
            if self.per_batch:
                self.db.execute(
                    "INSERT OR IGNORE INTO members (rank, idx) "
                    "SELECT ?, p.idx FROM incoming i JOIN positions p ON p.custom_id = i.custom_id",
                    (rank,),
                )
            self.db.execute("DELETE FROM incoming")
        return count

    def add_results(self, rank: int, lines: Iterable[bytes]) -> int:
        """Record the lines of one output or error file; returns how many were read."""
        count = 0

        def records() -> Iterator[tuple[str, int, bytes]]:
            nonlocal count
            for line in lines:
                try:
                    custom_id = json.loads(line)["custom_id"]
                except (ValueError, TypeError, KeyError):
                    self.unreadable_result_lines += 1
                    continue
                if not isinstance(custom_id, str):
                    self.unreadable_result_lines += 1
                    continue
                count += 1
                yield custom_id, rank, bytes(line)

        with self.db:
            self.db.executemany(
                "INSERT INTO results (custom_id, rank, line) VALUES (?, ?, ?) "
                "ON CONFLICT (custom_id, rank) DO UPDATE SET line = excluded.line",
                records(),
            )
        return count

    def unmatched_results(self) -> int:
        """Result lines whose ``custom_id`` no input file holds (they have no position, so no row)."""
        query = "SELECT COUNT(DISTINCT custom_id) FROM results WHERE custom_id NOT IN (SELECT custom_id FROM positions)"
        return int(self.db.execute(query).fetchone()[0])

    def rows(self) -> Generator[JoinedRow, None, None]:
        """Every input request with the result line of the last batch whose input held it (if that batch has
        one), in input order, one at a time."""
        cursor = self.db.execute(
            "SELECT p.idx - 1, p.custom_id, p.last_rank, p.model, r.rank, r.line FROM positions p "
            "LEFT JOIN results r ON r.custom_id = p.custom_id AND r.rank = p.last_rank ORDER BY p.idx"
        )
        try:
            for index, custom_id, last_rank, model, result_rank, line in cursor:
                yield JoinedRow(index, custom_id, last_rank, model, result_rank, line)
        finally:
            cursor.close()

    def batch_rows(self, rank: int, final: bool = False) -> Generator[JoinedRow, None, None]:
        """Every request the input of batch ``rank`` held, in input order (positions over all the inputs, as
        :meth:`rows` numbers them), one at a time: with that batch's result line (if any), or with ``final``,
        with the result of the last batch whose input held the request (a shard's later attempts).

        :raises RuntimeError: when the join was not made with ``per_batch=True``.
        """
        if not self.per_batch:
            raise RuntimeError("batch_rows needs a ResultJoin made with per_batch=True")
        of = "p.last_rank" if final else "m.rank"
        cursor = self.db.execute(
            f"SELECT p.idx - 1, p.custom_id, {of}, p.model, r.rank, r.line FROM members m "
            "JOIN positions p ON p.idx = m.idx "
            f"LEFT JOIN results r ON r.custom_id = p.custom_id AND r.rank = {of} WHERE m.rank = ? ORDER BY m.idx",
            (rank,),
        )
        try:
            for index, custom_id, batch_rank, model, result_rank, line in cursor:
                yield JoinedRow(index, custom_id, batch_rank, model, result_rank, line)
        finally:
            cursor.close()
