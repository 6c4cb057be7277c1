"""Splitting a batch input of any size into shards the back end accepts, while streaming.

A shard holds at most ``max_requests_per_batch`` requests (capped by the back end's
:attr:`~airflow_provider_openai_batch.backends.BackendRules.max_requests_per_file`), at most
``max_bytes_per_file`` bytes, at most ``max_embedding_inputs`` embedding inputs (``/embeddings`` only) and,
when ``max_tokens_per_batch`` is given, at most that many estimated input tokens: a shard larger than the
enqueued-token limit could never run. Lines keep their order, so shard 0 holds the first requests and the
shards concatenated are the input (blank lines dropped).

**One pass, at about the speed of parsing.** The input is read in large blocks; each line is judged by the
pre-flight rules of :class:`~airflow_provider_openai_batch.jsonl.InputCheck` (one per shard, as the back
end judges each shard's file) on its way into the shard file, so nothing is read twice, and a block that
fits the shard being filled goes in whole, with no decision per line. The SHA-256 digests of the input and
of each shard are computed on a second thread (:class:`_Digests`).

**Memory stays flat** but for 8 bytes per request: one shard file is written at a time, and the
``custom_id`` values of the whole job are kept unique across shards by their 8-byte hashes
(:mod:`~airflow_provider_openai_batch.custom_ids`), not by the ids themselves (1,000,000 ids would be about
100 MB as a Python set).

**The input-token estimate** of a request line is its length in bytes divided by 4, rounded up
(:func:`estimate_tokens`): about 4 characters of English text per token, with the JSON keys, the model name
and the escaping counted as text. It overestimates the tokens the model reads from the body alone, which
is the safe side for a queue bounded by an enqueued-token limit; non-Latin text (several bytes per
character) is overestimated more. It never reads a tokenizer: that would cost a dependency and time per line.
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import threading
from bisect import bisect_right
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from itertools import repeat
from operator import floordiv, itemgetter
from typing import Any

from airflow_provider_openai_batch.backends import BackendRules, rules_for
from airflow_provider_openai_batch.custom_ids import UniqueIds
from airflow_provider_openai_batch.jsonl import MAX_PROBLEMS, InputCheck, count_embedding_inputs, line_blocks


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
    #: Its uploaded file, when it was uploaded as it was cut (``split_input``'s ``on_shard``).
    file_id: str | None = None
    embedding_inputs: int = 0
    #: Where its lines came from, for messages only: (its first line, source number, that line's number in
    #: the source) for each run of lines that follow each other in a source.
    runs: list[tuple[int, int, int]] = field(default_factory=list, repr=False)

    def origin(self, line: int) -> tuple[int, int]:
        """The source number and line number there of the shard's line ``line`` (1-based)."""
        first, source, origin = self.runs[bisect_right(self.runs, line, key=itemgetter(0)) - 1]
        return source, origin + line - first


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


def _size(source: Any) -> int | None:
    try:
        return int(source.stat().st_size) if hasattr(source, "fs") else os.path.getsize(source)
    except Exception:  # a store that cannot tell its size cheaply: measured while read
        return None


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
    on_shard: Callable[[Shard], None] | None = None,
) -> SplitResult:
    """Split ``sources`` (local paths or ``ObjectStoragePath``\\ s, read in order as one input) into shards.

    :param sources: The JSONL files, in order.
    :param endpoint: The batch endpoint every line's ``url`` must equal.
    :param directory: Where the shard files are written.
    :param rules: The back end's limits (default: OpenAI's).
    :param max_requests_per_batch: Most requests per shard (capped by ``rules``).
    :param max_tokens_per_batch: Most estimated input tokens per shard (``None``: no such bound).
    :param names: How each source is called in messages (default ``input_file[i]``, or ``input_file``).
    :param label: How the whole input is called in the error's first line (default: the names, joined).
    :param on_shard: Called with each shard as soon as its file is written and passed its own checks, while no
        problem was found so far (to upload it while the rest is cut); the split may still fail afterwards, on a
        later line or a ``custom_id`` used again in a later shard.
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
    split = _Split(endpoint, directory, rules, names, cap, max_tokens_per_batch, on_shard)
    try:
        for number, source in enumerate(sources):
            line_number = 0
            with _open(source) as stream:
                for block in line_blocks(stream, split.whole, rules.max_bytes_per_file):
                    if isinstance(block, int):
                        line_number += 1
                        split.oversized(number, line_number, block)
                    else:
                        split.block(block, number, line_number)
                        line_number += len(block[0])
                    if split.full():
                        break
            if split.full():
                break
        split.finish()
    finally:
        split.discard()
    problems = split.problems
    if not split.done and not problems:
        problems.append("the file contains no requests" if len(sources) == 1 else "the input contains no requests")
    if problems:
        raise BatchValidationError.of_input(label or ", ".join(names), problems)
    return SplitResult(split.done, split.whole.hexdigest(), sum(s.requests for s in split.done))


class _Split:
    """One split under way: the finished shards, the one being filled (its counts, file and pre-flight
    check, fed a block's lines at a time), the job's ``custom_id`` values, and the problems found so far as
    messages naming the input's files and lines."""

    def __init__(
        self,
        endpoint: str,
        directory: str,
        rules: BackendRules,
        names: Sequence[str],
        cap: int,
        max_tokens: int | None,
        on_shard: Callable[[Shard], None] | None = None,
    ) -> None:
        self.endpoint, self.directory, self.rules, self.names = endpoint, directory, rules, names
        self.on_shard = on_shard
        self.cap, self.max_tokens = cap, max_tokens
        self.limit = rules.max_bytes_per_file
        self.max_inputs = rules.max_embedding_inputs
        self.embeddings = endpoint.endswith("/embeddings") and self.max_inputs is not None
        self.done: list[Shard] = []
        self.hashed: list[tuple[Shard, _Hashed]] = []
        self.problems: list[str] = []
        self.ids = UniqueIds(self.ids_of)
        self.digests = _Digests()
        self.whole = _Hashed(self.digests)
        # The shard being filled (None between shards) and its counts.
        self.shard: Shard | None = None
        self.check: InputCheck | None = None
        self.out: Any = None
        self.digest: Any = None
        self.requests = self.size = self.tokens = self.inputs = 0
        self.stopped = False
        self.lines_in_shard = 0
        self.read_all = InputCheck(endpoint, rules).read_all

    def block(self, block: tuple[list[bytes], list[Any]], source: int, before: int) -> None:
        """The lines of one block of ``source`` (its lines ``before + 1``...) into shards."""
        lines, spans = block
        unterminated = bytes(spans[-1][-1:]) != b"\n"  # the input's last line, without its newline
        decoded = self.read_all(lines) if self.embeddings else None
        lengths = list(map(len, lines))
        count = len(lines)
        if max(lengths) <= self.limit and all(map(bytes.strip, lines)):  # no blank or oversized line
            size = sum(lengths) + count  # with their newlines, which the shard file has
            tokens = sum(map(floordiv, lengths, repeat(4))) + count  # estimate_tokens of each, summed
            inputs = sum(map(_inputs, lines, decoded)) if decoded is not None else 0
            if (
                self.requests + count <= self.cap
                and self.size + size <= self.limit
                and (self.max_tokens is None or self.tokens + tokens <= self.max_tokens)
                and (not self.embeddings or self.inputs + inputs <= (self.max_inputs or 0))
            ):  # the whole block fits the shard being filled: no decision per line, and its bytes as read
                self.requests, self.size = self.requests + count, self.size + size
                self.tokens, self.inputs = self.tokens + tokens, self.inputs + inputs
                self.take(lines, source, before + 1, decoded, [*spans, b"\n"] if unterminated else spans)
                return
        self.lines(lines, source, before, decoded, unterminated)

    def lines(
        self, lines: list[bytes], source: int, before: int, decoded: list[Any] | None, unterminated: bool
    ) -> None:
        """:meth:`block`, deciding line by line where the shard ends."""
        taken: list[bytes] = []
        picked: list[Any] | None = None if decoded is None else []
        first = 0  # the number in the source of the first line taken since the last write
        for index, line in enumerate(lines):
            number = before + index + 1
            if not line.strip():
                continue
            length = len(line) + 1  # with its newline, which the shard file has
            if length > self.limit + 1:  # more than a whole file may hold, even without its newline
                self.oversized(source, number, length - (unterminated and index == len(lines) - 1))
                continue
            estimate = (length + 3) >> 2  # estimate_tokens of the line with its newline
            inputs = _inputs(line, decoded[index]) if decoded is not None else 0
            if self.requests and (
                self.requests >= self.cap
                or self.size + length > self.limit
                or (self.embeddings and self.inputs + inputs > (self.max_inputs or 0))
                or (self.max_tokens is not None and self.tokens + estimate > self.max_tokens)
            ):
                self.take(taken, source, first, picked)
                self.close()
                taken, picked = [], None if picked is None else []
            elif taken and number != first + len(taken):  # a run of lines ends at a blank or skipped one
                self.take(taken, source, first, picked)
                taken, picked = [], None if picked is None else []
            if not taken:
                first = number
            self.requests += 1
            self.size += length
            self.tokens += estimate
            self.inputs += inputs
            taken.append(line)
            if picked is not None and decoded is not None:
                picked.append(decoded[index])
        self.take(taken, source, first, picked)

    def take(
        self, lines: list[bytes], source: int, first: int, decoded: list[Any] | None, spans: list[Any] | None = None
    ) -> None:
        """Lines that follow each other in ``source`` from its line ``first`` (with what ``read_all`` gave for
        them if it was called, and the bytes they span if they are all a block's) into the shard being
        filled, checked."""
        if not lines:
            return
        if self.shard is None:
            index = len(self.done)
            shard = self.shard = Shard(index, os.path.join(self.directory, f"shard-{index:05d}.jsonl"))
            self.out, self.digest = open(shard.path, "wb"), _Hashed(self.digests)  # noqa: SIM115 (closed by close())
            self.check = InputCheck(self.endpoint, self.rules, where=partial(self.refer, shard))
            self.lines_in_shard = 0
        shard, check = self.shard, self.check
        assert check is not None
        shard.runs.append((self.lines_in_shard + 1, source, first))
        if spans is None:
            spans = [b"\n".join(lines), b"\n"]
        for span in spans:
            self.out.write(span)
            self.digest.update(span)
        check.size += sum(map(len, spans))
        if not check.feed(lines, self.lines_in_shard, decoded):
            self.stopped = True
        self.lines_in_shard += len(lines)

    def close(self) -> None:
        """Finish the shard being filled: its counts, digest, and the problems of its file."""
        shard, check = self.shard, self.check
        assert shard is not None and check is not None
        shard.requests, shard.bytes, shard.tokens, shard.embedding_inputs = (
            self.requests,
            self.size,
            self.tokens,
            self.inputs,
        )
        self.out.close()
        self.hashed.append((shard, self.digest))
        for problem in check.finish():
            place = f"shard {shard.index + 1}" if problem.line is None else self.where(shard, problem.line)
            self.problems.append(f"{place}: {problem.message}")
        self.ids.add(shard, check.seen)
        self.done.append(shard)
        if self.on_shard is not None and not self.problems:
            self.on_shard(shard)
        self.shard, self.check, self.out = None, None, None
        self.requests = self.size = self.tokens = self.inputs = 0

    def finish(self) -> None:
        """Close the last shard, wait for every file to be written, and name ids used in several shards."""
        if self.shard is not None:
            self.close()
        self.digests.stop()
        for shard, digest in self.hashed:
            shard.digest = digest.hexdigest()
        self.problems.extend(self.ids.duplicates(self.where, self.refer))

    def discard(self) -> None:
        """Whatever way the split ends: no file left open, no thread left running."""
        self.digests.stop()
        if self.out is not None:
            self.out.close()

    def where(self, shard: Shard, line: int) -> str:
        """Where a shard's line (1-based) came from: ``input_file line 12``."""
        source, origin = shard.origin(line)
        return f"{self.names[source]} line {origin}"

    def refer(self, shard: Shard, line: int) -> str:
        """An earlier line a message points back to: ``line 12`` in an input of one file (the message already
        names it), ``input_file[1] line 12`` in an input of several."""
        source, origin = shard.origin(line)
        return f"line {origin}" if len(self.names) == 1 else f"{self.names[source]} line {origin}"

    def ids_of(self, shard: Shard) -> dict[str, int]:
        """A finished shard's ``custom_id`` values and their lines, read back from its file."""
        check = InputCheck(self.endpoint, self.rules)
        number = 0
        with open(shard.path, "rb") as stream:
            for block in line_blocks(stream):
                lines = block[0] if isinstance(block, tuple) else []
                if not check.feed(lines, number):
                    break
                number += len(lines)
        return check.seen

    def oversized(self, source: int, line: int, length: int) -> None:
        limit = self.limit
        self.problems.append(
            f"{self.names[source]} line {line}: the line is {length} bytes; a batch input file holds at most "
            f"{limit} bytes ({limit / (1024 * 1024):g} MB), so no split can make it fit: shorten it"
        )

    def full(self) -> bool:
        """Whether enough problems were found to stop reading: a hopeless input costs little."""
        pending = len(self.check.problems) if self.check is not None else 0
        return self.stopped or len(self.problems) + pending >= MAX_PROBLEMS


def _inputs(line: bytes, item: Any = None) -> int:
    """The embedding inputs of a line, from what the typed decoder read of it; for a line it refused (which the
    pre-flight check names), as ``json`` reads it, or 1."""
    if item is not None:
        return count_embedding_inputs(item.body.input)
    try:
        value = json.loads(line)
    except ValueError:
        return 1
    body = value.get("body") if isinstance(value, dict) else None
    return count_embedding_inputs(body.get("input")) if isinstance(body, dict) else 1


class _Digests:
    """SHA-256 digests computed on a second thread. Hashing a large block releases the GIL, so it runs beside
    the parsing; the splitting thread writes the shard files itself, and those writes (and its reads) are
    where this thread takes the GIL back in between. At most a few blocks wait, so memory stays bounded."""

    def __init__(self) -> None:
        self.tasks: queue.Queue[tuple[Any, Any] | None] = queue.Queue(maxsize=8)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="split-digests", daemon=True)
        self.thread.start()

    def update(self, digest: Any, data: Any) -> None:
        """``digest.update(data)``, soon."""
        self.tasks.put((digest, data))

    def stop(self) -> None:
        """Wait for every update; raise the first error, if one came."""
        if self.thread.is_alive():
            self.tasks.put(None)
            self.thread.join()
        if self.error is not None:
            raise self.error

    def _run(self) -> None:
        while (task := self.tasks.get()) is not None:
            if self.error is None:  # after an error, only drain: the splitting thread must never wait on it
                try:
                    task[0].update(task[1])
                except BaseException as err:
                    self.error = err


class _Hashed:
    """A ``hashlib`` object whose updates :class:`_Digests` does (read it once its ``stop`` ran)."""

    def __init__(self, digests: _Digests) -> None:
        self.digest, self.digests = hashlib.sha256(), digests

    def update(self, data: Any) -> None:
        self.digests.update(self.digest, data)

    def hexdigest(self) -> str:
        return str(self.digest.hexdigest())
