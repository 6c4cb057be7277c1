"""Progress lines for the log of a task that waits for a batch or a job of batches.

One line says where the work stands::

    Progress: batches 5/20 done, requests 250,000/1,000,000 (25.0%), 12 failed, tokens 1,234,567,
    rate 850 requests/min, ETA 1h12m (14:35 UTC)

(``batches`` only for a job of several batches; ``tokens`` once the API reports usage; the rate and the ETA
once two looks some time apart saw requests finish.)

**Cadence.** Not every poll: a poll every 5 seconds would bury the log, and one every minute of a 20-hour
batch would still write 1,200 lines. :class:`ProgressLog` writes a line when the progress *changed* and at
least ``min_seconds`` (default 5 minutes) passed since the last line, and in any case after
``heartbeat_polls`` polls without a line (default 30: half an hour at the default 60 s poll), so a batch
that sits still in ``validating`` or at 0% still shows the wait is alive. A 20-hour batch that moves all the
time thus writes at most 240 lines; one that sits still writes one line per 30 polls. The first look writes
a line at once, so the log says where the wait started.

Import-free (the standard library only): the trigger imports it at module level.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from airflow_provider_openai_batch.statuses import TERMINAL

#: A changed progress is written at most this often.
MIN_SECONDS = 300.0
#: An unchanged progress is written after this many polls without a line.
HEARTBEAT_POLLS = 30


@dataclass(frozen=True)
class Snapshot:
    """Where a wait stands: counts summed over the batches of a job (or one batch).

    :param done: Requests finished (completed + failed).
    :param total: Requests in all (``0`` while a batch is still validating and nothing else is known).
    :param failed: Requests failed.
    :param tokens: Total tokens reported so far (usage appears when a batch ends).
    :param batches_done: Batches that ended (for a job).
    :param batches_total: Batches of the job; ``None`` for a single batch.
    """

    done: int
    total: int
    failed: int = 0
    tokens: int = 0
    batches_done: int = 0
    batches_total: int | None = None


def snapshot(
    batches: Iterable[dict[str, Any]],
    *,
    batches_total: int | None = None,
    base: dict[str, Any] | None = None,
    expected: dict[str, int] | None = None,
) -> Snapshot:
    """Sum the request counts and usage of ``batches`` (as JSON dicts) with ``base``, the totals of the job's
    batches that are not among them (``done``, ``total``, ``failed``, ``tokens``, ``batches_done``).

    :param expected: Requests per batch id as the job split them, so the total is right while a batch is still
        ``validating`` (the API counts its requests only afterwards).
    """
    expected = expected or {}
    base = base or {}
    done = int(base.get("done") or 0)
    total = int(base.get("total") or 0)
    failed = int(base.get("failed") or 0)
    tokens = int(base.get("tokens") or 0)
    ended = int(base.get("batches_done") or 0)
    for batch in batches:
        counts = batch.get("request_counts") or {}
        finished = int(counts.get("completed") or 0) + int(counts.get("failed") or 0)
        done += finished
        failed += int(counts.get("failed") or 0)
        total += max(int(counts.get("total") or 0), int(expected.get(str(batch.get("id")), 0)))
        tokens += int((batch.get("usage") or {}).get("total_tokens") or 0)
        ended += batch.get("status") in TERMINAL
    return Snapshot(done, total, failed, tokens, ended, batches_total)


def _duration(seconds: float) -> str:
    minutes = int(seconds // 60)
    if minutes < 1:
        return f"{int(seconds)}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m"


def format_line(now: Snapshot, rate_per_second: float | None, clock: float) -> str:
    """The progress line for ``now``; ``rate_per_second`` (requests) gives the rate and the ETA."""
    parts = []
    if now.batches_total is not None:
        parts.append(f"batches {now.batches_done}/{now.batches_total} done")
    percent = f" ({100.0 * now.done / now.total:.1f}%)" if now.total else ""
    parts.append(f"requests {now.done:,}/{now.total:,}{percent}")
    parts.append(f"{now.failed:,} failed")
    if now.tokens:
        parts.append(f"tokens {now.tokens:,}")
    if rate_per_second:
        parts.append(f"rate {rate_per_second * 60:,.0f} requests/min")
        left = now.total - now.done
        if left > 0:
            eta = left / rate_per_second
            at = time.strftime("%H:%M UTC", time.gmtime(clock + eta))
            parts.append(f"ETA {_duration(eta)} ({at})")
    return "Progress: " + ", ".join(parts)


class ProgressLog:
    """Decides when a progress line is due and writes it (see the module docstring for the cadence).

    :param log: Where lines go (``log.info``).
    :param min_seconds: A changed progress is written at most this often.
    :param heartbeat_polls: An unchanged progress is written after this many polls without a line.
    :param clock: The time source (seconds); tests pass their own.
    """

    def __init__(
        self,
        log: Any,
        *,
        min_seconds: float = MIN_SECONDS,
        heartbeat_polls: int = HEARTBEAT_POLLS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.log = log
        self.min_seconds = min_seconds
        self.heartbeat_polls = max(1, heartbeat_polls)
        self.clock = clock
        self._last_line: float | None = None
        self._last_written: Snapshot | None = None
        self._polls_since = 0
        self._first: tuple[float, int] | None = None  # (time, done) of the first look with a known total

    def rate(self, now: Snapshot, at: float) -> float | None:
        """Requests per second since the first look, once some finished and some time passed."""
        if self._first is None:
            return None
        since, done = self._first
        if at - since < 1.0 or now.done <= done:
            return None
        return (now.done - done) / (at - since)

    def observe(self, now: Snapshot) -> str | None:
        """Take one poll's snapshot; write and return the line when one is due, else ``None``."""
        at = self.clock()
        if self._first is None and now.total:
            self._first = (at, now.done)
        self._polls_since += 1
        changed = now != self._last_written
        due = (
            (self._last_line is None and now.total > 0)  # the first look that knows how much there is to do
            or (self._last_line is not None and changed and at - self._last_line >= self.min_seconds)
            or self._polls_since >= self.heartbeat_polls
        )
        if not due:
            return None
        line = format_line(now, self.rate(now, at), at)
        self.log.info("%s", line)
        self._last_line, self._last_written, self._polls_since = at, now, 0
        return line
