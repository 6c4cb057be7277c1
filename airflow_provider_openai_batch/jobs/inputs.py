"""A job's input: what the operator is given (request dicts, JSONL files, an uploaded file id) turned into
shards the back end accepts, each checked by the pre-flight rules before anything is uploaded or billed.

Import-light: loaded when a task runs (``check_input_file`` and ``write_requests_jsonl`` are also importable
from :mod:`airflow_provider_openai_batch.operators.batch`).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from typing import Any

from airflow_provider_openai_batch.jobs.keys import attempt_key
from airflow_provider_openai_batch.jobs.record import FULL, Attempt, JobRecord, Shard


def new_record(key: str, endpoint: str, split: Any, layout: dict[str, Any], now: float) -> JobRecord:
    """A job with nothing uploaded or created: one queued first attempt per shard of ``split``
    (:class:`~airflow_provider_openai_batch.split.SplitResult`)."""
    return JobRecord(
        job_key=key,
        started_at=now,
        endpoint=endpoint,
        layout=layout,
        shards=[
            Shard(
                s.index,
                s.digest,
                s.requests,
                s.bytes,
                s.tokens,
                [Attempt(1, FULL, attempt_key(key, s.index, 1), s.requests, file_id=s.file_id)],
            )
            for s in split.shards
        ],
    )


def uploaded_file_record(key: str, endpoint: str, file_id: str, now: float) -> JobRecord:
    """A job of one shard already uploaded (``input_file_id``): its request count comes from its batch."""
    attempt = Attempt(1, FULL, attempt_key(key, 0, 1), file_id=file_id)
    return JobRecord(job_key=key, started_at=now, endpoint=endpoint, shards=[Shard(0, "", 0, 0, 0, [attempt])])


def queue_rounds(tokens: list[int], max_active_batches: int | None, max_enqueued_tokens: int | None) -> int:
    """How many rounds of batches the queue needs at least: shards (their token estimates, in order) packed
    into rounds of at most ``max_active_batches`` shards and ``max_enqueued_tokens`` tokens, as the queue admits
    them (:mod:`~airflow_provider_openai_batch.jobs.decide`)."""
    rounds, count, total = 0, 0, 0
    for shard_tokens in tokens:
        full = max_active_batches is not None and count >= max_active_batches
        over = max_enqueued_tokens is not None and count and total + shard_tokens > max_enqueued_tokens
        if not rounds or full or over:
            rounds, count, total = rounds + 1, 0, 0
        count += 1
        total += shard_tokens
    return rounds


def check_input_expiry(
    task_id: str,
    input_expires_after: int | None,
    tokens: list[int],
    *,
    max_active_batches: int | None,
    max_enqueued_tokens: int | None,
    resubmit_unfinished: int,
    window_seconds: float,
) -> None:
    """Refuse, before anything is uploaded, an ``input_expires_after`` that an input file may not outlive while
    the job still needs it: every shard is uploaded up front and ``max_active_batches``/``max_enqueued_tokens``
    may hold the last ones back for rounds of batches, each of which may run its whole completion window; and a
    round of ``resubmit_unfinished`` is built from the input file of the batch before it, once that batch ended
    (up to a window after its create)."""
    if input_expires_after is None:
        return
    rounds = queue_rounds(tokens, max_active_batches, max_enqueued_tokens)
    windows = (rounds - 1) + (1 if resubmit_unfinished else 0)
    needed = int(windows * window_seconds + 3600)  # an hour's margin for the creates and the polls
    if windows and input_expires_after < needed:
        why = []
        if rounds > 1:
            why.append(
                f"{len(tokens)} shards need {rounds} rounds under max_active_batches={max_active_batches} and "
                f"max_enqueued_tokens={max_enqueued_tokens}, and each round may run its whole completion window"
            )
        if resubmit_unfinished:
            why.append(
                f"resubmit_unfinished={resubmit_unfinished} builds each round from the input file of the batch "
                "before it, which may run its whole completion window"
            )
        raise ValueError(
            f"{task_id}: input_expires_after={input_expires_after}s is shorter than an input file is needed: "
            + "; ".join(why)
            + f". So the files must live at least {needed}s. Set input_expires_after >= {needed} (at most 2592000), "
            "raise max_active_batches/max_enqueued_tokens, or leave input_expires_after unset. Nothing was uploaded "
            "or billed"
        )


def write_requests_jsonl(requests: Any, endpoint: str, path: str) -> int:
    """Write request dicts as a batch input file, filling ``method``, ``url`` and ``custom_id`` shorthands."""
    if not isinstance(requests, (list, tuple)) or not requests:
        raise ValueError(f"requests must be a non-empty list of request dicts; got {type(requests).__name__}")
    with open(path, "wb") as out:
        for number, item in enumerate(requests, start=1):
            if not isinstance(item, dict):
                raise ValueError(f"requests[{number - 1}] must be a dict, got {type(item).__name__}")
            out.write(encode_line(request_line(item, endpoint, number), f"requests[{number - 1}]"))
    return len(requests)


def request_line(item: Mapping[str, Any], endpoint: str, number: int) -> dict[str, Any]:
    """A request dict as a full input line: a dict with ``body`` is the line, any other is the body itself
    apart from the line-level keys it may carry (``custom_id``, ``method``, ``url``); a missing ``method`` is
    ``POST``, ``url`` is ``endpoint`` and ``custom_id`` is ``request-<number>``."""
    if "body" in item:
        line = dict(item)
    else:
        body = dict(item)
        line = {key: body.pop(key) for key in ("custom_id", "method", "url") if key in body}
        line["body"] = body
    line.setdefault("custom_id", f"request-{number}")
    line.setdefault("method", "POST")
    line.setdefault("url", endpoint)
    return line


def encode_line(line: Mapping[str, Any], where: str) -> bytes:
    """One input line as UTF-8 JSON with its newline; ``where`` names it in the error (``requests[3]``).

    :raises ValueError: for what JSON (and so the API) cannot carry, naming the fix.
    """
    try:
        # allow_nan=False: NaN and Infinity are not JSON, and the API refuses a line that has them.
        return (json.dumps(line, ensure_ascii=False, allow_nan=False) + "\n").encode("utf-8")
    except TypeError as err:
        raise ValueError(
            f"{where} cannot be written as JSON ({err}): pass plain dicts, lists, strings, numbers, booleans and None"
        ) from None
    except UnicodeEncodeError as err:  # a lone surrogate: no valid UTF-8 (nor JSON for the API) exists
        bad = err.object[err.start : err.end]
        raise ValueError(
            f"{where} contains text that is not valid Unicode ({bad!r}, a lone surrogate, often from decoding "
            "bytes with errors='surrogateescape'): fix that string"
        ) from None
    except ValueError:
        raise ValueError(
            f"{where} contains NaN or Infinity, which JSON cannot carry: replace them (e.g. with None)"
        ) from None


def check_input_file(source: Any, endpoint: str, name: str = "input_file", rules: Any = None) -> str:
    """Refuse an input file the API would fail at validation, naming every bad line; else return the
    SHA-256 of its content (read once, for both).

    :param name: What the file came from, for the message (``input_file`` or ``requests``).
    :param rules: The back end's :class:`~airflow_provider_openai_batch.backends.BackendRules` (default OpenAI's).
    :raises BatchValidationError: with the problems (at most 100 listed).
    """
    from airflow_provider_openai_batch.exceptions import BatchValidationError
    from airflow_provider_openai_batch.jsonl import check_stream, too_large
    from airflow_provider_openai_batch.locations import input_location

    source = input_location(source, "input_file")
    is_object_storage = hasattr(source, "fs")
    # Refuse an oversized file from its size alone, before reading a byte of it. A remote store that cannot
    # tell its size cheaply is measured while it is read, as before.
    try:
        size = source.stat().st_size if is_object_storage else os.path.getsize(source)
    except Exception:  # any store's failure to stat is only a missed shortcut
        size = 0
    problems = too_large(size, rules)
    digest = hashlib.sha256()
    if not problems:
        with source.open("rb") if is_object_storage else open(source, "rb") as stream:
            problems = check_stream(stream, endpoint, rules=rules, digest=digest)
    if problems:
        raise BatchValidationError.of_input(name, problems)
    return digest.hexdigest()
