"""Splitting a batch input of any size into shards the back end accepts, while streaming.

A shard holds at most ``max_requests_per_batch`` requests (capped by the back end's
:attr:`~airflow_provider_openai_batch.backends.BackendRules.max_requests_per_file`), at most
``max_bytes_per_file`` bytes, at most ``max_embedding_inputs`` embedding inputs (``/embeddings`` only) and,
when ``max_tokens_per_batch`` is given, at most that many estimated input tokens: a shard larger than the
enqueued-token limit could never run. Lines keep their order, so shard 0 holds the first requests and the
shards concatenated are the input (blank lines dropped).

**Memory is constant.** The input is read line by line and written to one shard file at a time under
``directory``; each shard is then checked by the pre-flight rules of :mod:`~airflow_provider_openai_batch.jsonl`
(read back from the local disk), and the ``custom_id`` values of the whole job are kept unique through a
SQLite table on disk, not a set in memory.

**The input-token estimate** of a request line is its length in bytes divided by 4, rounded up
(:func:`estimate_tokens`): about 4 characters of English text per token, with the JSON keys, the model name
and the escaping counted as text. It overestimates the tokens the model reads from the body alone, which
is the safe side for a queue bounded by an enqueued-token limit; non-Latin text (several bytes per
character) is overestimated more. It never reads a tokenizer: that would cost a dependency and time per line.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import sqlite3
from array import array
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from airflow_provider_openai_batch.backends import BackendRules, rules_for
from airflow_provider_openai_batch.jsonl import Problem, count_embedding_inputs, validate_batch_input_lines

#: Problems collected before the split stops: a hopeless input costs little.
MAX_PROBLEMS = 100


def estimate_tokens(line: bytes) -> int:
    """The input-token estimate of one request line: its bytes / 4, rounded up (see the module docstring)."""
    return (len(line) + 3) // 4


@dataclass
class Shard:
    """One shard of a job: a local JSONL file within every limit.

    :param index: 0-based position in the job.
    :param path: The shard's file under the split's directory.
    :param requests: Request lines it holds.
    :param bytes: Its size.
    :param tokens: Its input-token estimate (:func:`estimate_tokens` summed over its lines).
    :param digest: SHA-256 of its content.
    """

    index: int
    path: str
    requests: int = 0
    bytes: int = 0
    tokens: int = 0
    digest: str = ""
    embedding_inputs: int = 0
    #: Where each line came from: (source number, 1-based line number), for messages only.
    origins: array = field(default_factory=lambda: array("L"), repr=False)
    sources: array = field(default_factory=lambda: array("H"), repr=False)


@dataclass
class SplitResult:
    """The shards of one input, in order, and what identifies the input.

    :param shards: The shards, shard 0 first.
    :param digest: SHA-256 over every source's bytes, in order: the job's identity for retries.
    :param requests: Request lines in all.
    """

    shards: list[Shard]
    digest: str
    requests: int


def request_cap(max_requests_per_batch: int | None, rules: BackendRules) -> int:
    """The most requests a shard may hold: the operator's ``max_requests_per_batch``, capped by the back end."""
    if max_requests_per_batch is None:
        return rules.max_requests_per_file
    return min(int(max_requests_per_batch), rules.max_requests_per_file)


def _open(source: Any) -> Any:
    return source.open("rb") if hasattr(source, "fs") else open(source, "rb")


class _Raw(io.RawIOBase):
    """An object-storage file as a raw stream, so :class:`io.BufferedReader` gives it ``readline(limit)``
    (fsspec's own ``readline`` takes no limit, and an unbounded line would be read whole)."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self.stream.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


@contextmanager
def _open_bounded(source: Any) -> Iterator[Any]:
    """The source opened for ``readline(limit)``."""
    with _open(source) as stream:
        yield io.BufferedReader(_Raw(stream), 1 << 20) if hasattr(source, "fs") else stream


def _size(source: Any) -> int | None:
    try:
        return int(source.stat().st_size) if hasattr(source, "fs") else os.path.getsize(source)
    except Exception:  # a store that cannot tell its size cheaply: measured while read
        return None


def fits_one_batch(
    source: Any,
    endpoint: str,
    *,
    rules: BackendRules | None = None,
    max_requests_per_batch: int | None = None,
    max_tokens_per_batch: int | None = None,
) -> bool:
    """Whether one file fits one batch, read only as far as needed: its size, its request lines counted up to
    the cap (no JSON parsed, except embedding inputs for ``/embeddings``), its token estimate. A file that fits
    goes the usual one-batch way, with the same checks, logs and XCom as before jobs existed."""
    rules = rules or rules_for()
    cap = request_cap(max_requests_per_batch, rules)
    size = _size(source)
    if size is not None and size > rules.max_bytes_per_file:
        return False
    count = total = tokens = inputs = 0
    embeddings = endpoint.endswith("/embeddings") and rules.max_embedding_inputs is not None
    with _open(source) as stream:
        for line in stream:
            total += len(line)
            if not line.strip():
                continue
            count += 1
            tokens += estimate_tokens(line)
            if count > cap or total > rules.max_bytes_per_file:
                return False
            if max_tokens_per_batch is not None and tokens > max_tokens_per_batch:
                return False
            if embeddings:
                inputs += _embedding_inputs(line)
                if inputs > (rules.max_embedding_inputs or 0):
                    return False
    return True


def _embedding_inputs(line: bytes) -> int:
    try:
        item = json.loads(line)
    except ValueError:
        return 1  # the pre-flight check of the shard names the bad line
    body = item.get("body") if isinstance(item, dict) else None
    return count_embedding_inputs(body.get("input")) if isinstance(body, dict) else 1


def split_input(
    sources: Sequence[Any],
    endpoint: str,
    directory: str,
    *,
    rules: BackendRules | None = None,
    max_requests_per_batch: int | None = None,
    max_tokens_per_batch: int | None = None,
    names: Sequence[str] | None = None,
    label: str | None = None,
) -> SplitResult:
    """Split ``sources`` (local paths or ``ObjectStoragePath``\\ s, read in order as one input) into shards.

    :param sources: The JSONL files, in order.
    :param endpoint: The batch endpoint every line's ``url`` must equal.
    :param directory: Where the shard files (and the ``custom_id`` table) are written.
    :param rules: The back end's limits (default: OpenAI's).
    :param max_requests_per_batch: Most requests per shard (capped by ``rules``).
    :param max_tokens_per_batch: Most estimated input tokens per shard (``None``: no such bound).
    :param names: How each source is called in messages (default ``input_file[i]``, or ``input_file``).
    :param label: How the whole input is called in the error's first line (default: the names, joined).
    :raises BatchValidationError: naming every bad line (source and line number) across the shards; nothing
        was uploaded.
    """
    from airflow_provider_openai_batch.exceptions import BatchValidationError

    rules = rules or rules_for()
    cap = request_cap(max_requests_per_batch, rules)
    if cap < 1:
        raise ValueError(f"max_requests_per_batch must be at least 1; got {max_requests_per_batch!r}")
    names = (
        list(names)
        if names
        else (["input_file"] if len(sources) == 1 else [f"input_file[{i}]" for i in range(len(sources))])
    )
    embeddings = endpoint.endswith("/embeddings") and rules.max_embedding_inputs is not None
    whole = hashlib.sha256()
    shards: list[Shard] = []
    problems: list[str] = []
    ids = _IdTable(os.path.join(directory, "custom_ids.sqlite"))
    current: Shard | None = None
    out: Any = None
    digest: Any = None

    def close() -> None:
        nonlocal current, out
        if current is None:
            return
        out.close()
        current.digest = digest.hexdigest()
        problems.extend(_check_shard(current, endpoint, rules, names, ids))
        shards.append(current)
        current, out = None, None

    try:
        for number, source in enumerate(sources):
            for line_number, line in _lines(source, whole, rules.max_bytes_per_file):
                if isinstance(line, int):
                    limit = rules.max_bytes_per_file
                    problems.append(
                        f"{names[number]} line {line_number}: the line is {line} bytes; a batch input file holds at "
                        f"most {limit} bytes ({limit / (1024 * 1024):g} MB), so no split can make it fit: shorten it"
                    )
                    if len(problems) >= MAX_PROBLEMS:
                        break
                    continue
                if not line.endswith(b"\n"):
                    line += b"\n"
                tokens = estimate_tokens(line)
                inputs = _embedding_inputs(line) if embeddings else 0
                if current is not None and (
                    current.requests + 1 > cap
                    or current.bytes + len(line) > rules.max_bytes_per_file
                    or (embeddings and current.embedding_inputs + inputs > (rules.max_embedding_inputs or 0))
                    or (max_tokens_per_batch is not None and current.tokens + tokens > max_tokens_per_batch)
                ):
                    close()
                    if len(problems) >= MAX_PROBLEMS:
                        break
                if current is None:
                    path = os.path.join(directory, f"shard-{len(shards):05d}.jsonl")
                    current, out, digest = Shard(len(shards), path), open(path, "wb"), hashlib.sha256()  # noqa: SIM115 (closed by close())
                out.write(line)
                digest.update(line)
                current.requests += 1
                current.bytes += len(line)
                current.tokens += tokens
                current.embedding_inputs += inputs
                current.origins.append(line_number)
                current.sources.append(number)
            if len(problems) >= MAX_PROBLEMS:
                break
        close()
    finally:
        if out is not None:
            out.close()
        ids.close()
    if not shards and not problems:
        problems.append("the file contains no requests" if len(sources) == 1 else "the input contains no requests")
    if problems:
        listed = "\n".join(f"  - {p}" for p in problems[:20])
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise BatchValidationError(
            f"The batch input ({label or ', '.join(names)}) has {len(problems)} problem(s); nothing was uploaded or "
            f"billed:\n{listed}{more}",
            problems,
        )
    return SplitResult(shards, whole.hexdigest(), sum(s.requests for s in shards))


def _lines(source: Any, whole: Any, limit: int) -> Iterator[tuple[int, bytes | int]]:
    """The non-blank lines of a source with their 1-based numbers, each added to the input's digest. A line
    longer than ``limit`` bytes is read in pieces and given as its length only: memory stays bounded, and no
    split can make it fit a batch anyway."""
    with _open_bounded(source) as stream:
        number = 0
        while True:
            line = stream.readline(limit + 1)
            if not line:
                return
            number += 1
            whole.update(line)
            if len(line) > limit and not line.endswith(b"\n"):
                length = len(line)
                while True:  # the rest of the oversized line, in pieces
                    piece = stream.readline(1 << 20)
                    whole.update(piece)
                    length += len(piece)
                    if not piece or piece.endswith(b"\n"):
                        break
                yield number, length
            elif line.strip():
                yield number, line


def _where(shard: Shard, line: int | None, names: Sequence[str]) -> str:
    if line is None or not 1 <= line <= len(shard.origins):
        return f"shard {shard.index + 1}"
    return f"{names[shard.sources[line - 1]]} line {shard.origins[line - 1]}"


def _check_shard(shard: Shard, endpoint: str, rules: BackendRules, names: Sequence[str], ids: _IdTable) -> list[str]:
    """The pre-flight rules on one shard (read back from disk), then ``custom_id`` uniqueness across shards."""
    seen: dict[str, int] = {}
    with open(shard.path, "rb") as stream:
        found: list[Problem] = validate_batch_input_lines(stream, endpoint, rules=rules, seen_ids=seen)
    if found:
        return [f"{_where(shard, p.line, names)}: {p.message}" for p in found]
    return [
        f"{_where(shard, line, names)}: custom_id {custom_id!r} is also used on {earlier}; custom_ids must be "
        "unique across the whole input"
        for line, custom_id, earlier in ids.add(shard, names, seen)
    ]


class _IdTable:
    """The ``custom_id`` values seen so far, on disk: a million ids would cost ~100 MB as a Python set."""

    def __init__(self, path: str) -> None:
        self.db = sqlite3.connect(path)
        self.db.execute("PRAGMA journal_mode=OFF")
        self.db.execute("PRAGMA synchronous=OFF")
        self.db.execute("CREATE TABLE IF NOT EXISTS ids (custom_id TEXT PRIMARY KEY, source INTEGER, line INTEGER)")

    def add(self, shard: Shard, names: Sequence[str], seen: dict[str, int]) -> list[tuple[int, str, str]]:
        """Record a shard's ids (``custom_id`` -> 1-based shard line, as the pre-flight check collected them);
        return (shard line, custom_id, where it was seen first) for each clash with an earlier shard."""
        clashes: list[tuple[int, str, str]] = []
        rows = [(custom_id, shard.sources[n - 1], shard.origins[n - 1], n) for custom_id, n in seen.items()]
        before = self.db.total_changes
        self.db.executemany("INSERT OR IGNORE INTO ids VALUES (?, ?, ?)", (row[:3] for row in rows))
        if self.db.total_changes - before < len(rows):
            for custom_id, source, line, number in rows:
                first = self.db.execute("SELECT source, line FROM ids WHERE custom_id = ?", (custom_id,)).fetchone()
                if first and (first[0], first[1]) != (source, line):
                    clashes.append((number, custom_id, f"{names[first[0]]} line {first[1]}"))
        self.db.commit()
        return clashes

    def close(self) -> None:
        self.db.close()
