"""Coalesced status checks: the batch waits of one connection in one event loop share their polls.

A triggerer holding thousands of :class:`~airflow_provider_openai_batch.triggers.batch.BatchTrigger` waits
would send one ``GET /batches/{id}`` per wait per poll interval. The API's list call returns 100 batches a
page, newest first, each as complete as a retrieve, so one page answers for every waited batch it holds.
:class:`BatchPoller` gathers the status checks its waits ask for and answers them with *sweeps*:

1. **Pages** (when at least :data:`LIST_MIN` batches are asked for): the first page (the newest batches),
   plus, fetched concurrently, every page that held a waited batch in an earlier sweep (``after`` the same
   cursor; a page after a given batch always holds the same older batches, so the cursor stays right as new
   batches are created), then a *walk* down the list for waits not yet placed on a page: one page per 100
   waits plus :data:`WALK_SLACK`, and further only while its pages keep answering waits (the waits of
   two triggerers interleave in the list), so the list is never read further than recent waits need. The
   walk is sequential (each page's cursor is the previous page's last batch): placing 10,000 new waits
   takes 100 pages one after the other, about 100 answer times once, and later sweeps fetch those pages
   concurrently.
2. **Retrieves**: every asked-for batch no page reached gets its own ``GET /batches/{id}`` (at most
   :data:`RETRIEVE_CONCURRENCY` at a time). A list call that fails (after the shared retry policy) leaves
   its batches to this step, so an error always reaches the waits it concerns, one by one: a 404 ends only
   the wait of the batch that is gone.

A sweep starts when a wait asks and the previous sweep started at least one poll interval (the smallest
of the waits asking) ago; a wait that asks meanwhile waits for the next sweep, which is how the waits fall
into one cadence: each is answered by every sweep, so the end of a batch is still seen at most one poll
interval (plus the answer's latency) after it. When the poller knows only one wait, or a wait's last
check failed, or its deadline is less than an interval away, the sweep starts at once: nothing would be
gained by waiting, and a single trigger behaves exactly as without the poller (one retrieve per poll, at
its own cadence).

What happens, and why:

- **Independence**: triggers stay independent as Airflow sees them. Each still serialises, restarts, times
  out and is killed on its own; the poller holds no state that a trigger needs to survive a restart, only
  where its batch was last found (lost with the process, and relearnt by the next sweep).
- **A trigger that leaves** (its event fired, it was killed, it timed out, its triggerer moved it): a check
  it was waiting for is withdrawn when its await is cancelled, and its registration goes when the trigger
  object is released (a weak reference), or at the latest after :data:`IDLE_FORGET_INTERVALS` poll
  intervals without a check (a backstop).
- **Retry**: each list and retrieve call runs with the shared retry policy of the client (transient errors
  are retried inside it); a check that still fails raises to the wait that asked, which counts it as a
  failed poll exactly as before, and its next check starts a sweep at once.
- The poller's task runs only while checks are waiting, and ends on its own: nothing needs closing.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
import weakref
from collections.abc import Iterable
from typing import Any

from airflow_provider_openai_batch import api
from airflow_provider_openai_batch.hooks.async_client import AsyncBatchClient
from airflow_provider_openai_batch.models import Batch, BatchPage

#: Batches a list page holds (the API's maximum).
PAGE_SIZE = 100
#: From how many asked-for batches on a list page is worth it; below, each gets a retrieve.
LIST_MIN = 2
#: Pages the walk down the list may read beyond one per 100 waits it looks for (each page waits for the
#: one before: the cursor is the last batch of the previous page). Waits on recent batches are all found
#: within that bound; those further down (among many batches of other users of the key) get retrieves.
WALK_SLACK = 5
#: Sweeps a wait the walk did not reach is only retrieved, before a walk looks for it again.
UNLISTED_SWEEPS = 10
#: Concurrent page fetches of known cursors: one per this many pages, at least 2 and at most
#: :data:`PAGE_CONCURRENCY`. Pages that arrive together are parsed in one turn of the event loop (about
#: 1-2 ms each), so fewer at a time keeps the loop responsive; a sweep of the known pages then lasts about
#: this many answer times whatever the number of waits (2.5 s at 100 ms), well within a poll interval.
PAGES_PER_FETCHER = 25
#: Concurrent page fetches and retrieves, at most; the shared session holds 100 connections, so the
#: triggers' other calls (a cancel, a late retrieve) still find one.
PAGE_CONCURRENCY = 20
RETRIEVE_CONCURRENCY = 50
#: A registration with no check for this many poll intervals (plus a minute) is dropped (its trigger left
#: without its object being released, e.g. a reference kept elsewhere).
IDLE_FORGET_INTERVALS = 3


def fresh_for(interval: float) -> float:
    """How old an answer nobody has taken yet may be for a check to take it instead of waiting a sweep.

    A wait that asks just after the sweep read its page (its own timer and the sweep's drift apart by a few
    milliseconds of loop lag) would otherwise wait a whole interval, and see the end of its batch up to two
    intervals late; with this, at most one interval plus this long (0.5 s at 5 s, at most 1 s).
    """
    return min(interval / 10, 1.0)


class _Wait:
    """What the poller knows of one waited batch."""

    __slots__ = ("asked_at", "cursor", "failed", "interval", "owners", "placed", "seen", "seen_at", "unlisted")

    def __init__(self, interval: float, now: float) -> None:
        #: The ``after`` of the page that last held the batch (``None``: the first page).
        self.cursor: str | None = None
        #: Whether a page held it in an earlier sweep (``cursor`` is then meaningful).
        self.placed = False
        #: The sweep whose walk did not reach it (0: none): it gets retrieves, and no walk looks for it again
        #: for :data:`UNLISTED_SWEEPS` sweeps.
        self.unlisted = 0
        self.interval = interval
        self.asked_at = now
        #: The last check failed: the next one starts a sweep at once.
        self.failed = False
        self.owners: set[weakref.ref[Any]] = set()
        #: What a sweep saw while no check waited for it (the wait asked just after its page came in), and
        #: when (loop time): handed to the next check if it comes within :func:`fresh_for` of it.
        self.seen: Batch | None = None
        self.seen_at = 0.0


class BatchPoller:
    """The shared status checks of one connection in one event loop (see the module docstring).

    :param conn_id: The Airflow connection the waits use (the poller sends with the client of the latest
        check, so a connection whose key was rotated is used with the new key from the next sweep on).
    """

    def __init__(self, conn_id: str) -> None:
        self.conn_id = conn_id
        self._loop = asyncio.get_running_loop()
        self._waits: dict[str, _Wait] = {}
        #: Checks waiting for the next sweep: batch id -> the futures of the waits that asked.
        self._pending: dict[str, list[asyncio.Future[Batch]]] = {}
        self._client: AsyncBatchClient | None = None
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._last_start = -math.inf
        #: When the next sweep is due (the earliest of the waiting checks).
        self._due = math.inf
        #: Batches a page of the current sweep answered.
        self._answered: set[str] = set()
        #: Batches the walk of the current sweep still looks for.
        self._walking: set[str] = set()
        #: Requests sent, by kind ("list", "retrieve"): the bench and the tests read them.
        self.requests: dict[str, int] = {"list": 0, "retrieve": 0}
        self.sweeps = 0

    @property
    def waiting(self) -> int:
        """Batches registered (asked for recently by a trigger that has not left)."""
        return len(self._waits)

    async def retrieve(
        self,
        client: AsyncBatchClient,
        batch_id: str,
        interval: float,
        owner: Any = None,
        end_time: float | None = None,
    ) -> Batch:
        """The batch as the next sweep sees it (or a retrieve's error for it).

        :param client: The caller's client; the sweep uses the latest one passed.
        :param batch_id: The batch to check.
        :param interval: The caller's poll interval: sweeps start at most this often for it.
        :param owner: The trigger asking; the batch is unregistered when it is released.
        :param end_time: The caller's deadline (Unix time): within one interval of it, the check starts a
            sweep at once, so the last look at the deadline is not left waiting for the cadence.
        :raises OpenAIBatchError: what a retrieve of this batch raised.
        """
        api.validate_id(batch_id, "batch_id")  # a bad id fails here as a retrieve would, not in the sweep
        now = self._loop.time()
        self._client = client
        wait = self._waits.get(batch_id)
        if wait is None:
            wait = self._waits[batch_id] = _Wait(interval, now)
        wait.interval, wait.asked_at = interval, now
        if owner is not None:
            self._own(wait, batch_id, owner)
        seen = wait.seen
        if seen is not None:
            wait.seen = None  # handed out once
            if now - wait.seen_at <= fresh_for(interval):
                return seen
        future: asyncio.Future[Batch] = self._loop.create_future()
        self._pending.setdefault(batch_id, []).append(future)
        urgent = wait.failed or len(self._waits) <= 1 or (end_time is not None and end_time - time.time() < interval)
        due = now if urgent else self._last_start + interval
        if due < self._due:
            self._due = due
            self._wake.set()
        if self._task is None or self._task.done():
            self._task = self._loop.create_task(self._run())
        try:
            return await future
        finally:
            # Cancelled (the trigger was killed or timed out): the check is withdrawn. An answered one was
            # already taken off the list, so this does nothing then.
            self._withdraw(batch_id, future)

    def _own(self, wait: _Wait, batch_id: str, owner: Any) -> None:
        for ref in wait.owners:
            if ref() is owner:
                return
        this = weakref.ref(self)

        def released(ref: weakref.ref[Any]) -> None:
            # A weak reference's callback runs inside whatever the garbage collector interrupted, perhaps a
            # loop over these very dicts: the registration is dropped in a callback of its own.
            poller = this()
            if poller is not None and not poller._loop.is_closed():
                poller._loop.call_soon(poller._release, batch_id, ref)

        wait.owners.add(weakref.ref(owner, released))

    def _release(self, batch_id: str, ref: weakref.ref[Any]) -> None:
        wait = self._waits.get(batch_id)
        if wait is None:
            return
        wait.owners.discard(ref)
        if not wait.owners and batch_id not in self._pending:
            del self._waits[batch_id]

    def _withdraw(self, batch_id: str, future: asyncio.Future[Batch]) -> None:
        futures = self._pending.get(batch_id)
        if futures is None:
            return
        if future in futures:
            futures.remove(future)
        if not futures:
            del self._pending[batch_id]

    async def _run(self) -> None:
        """Start sweeps while checks wait; end when none does."""
        while self._pending:
            delay = self._due - self._loop.time()
            if delay > 0:
                self._wake.clear()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), delay)
                continue
            self._last_start = self._loop.time()
            self._due = math.inf
            wanted = list(self._pending)
            try:
                await self._sweep()
            except Exception as err:  # a defect here must not leave every wait hanging: each gets the error
                for batch_id in wanted:
                    self._resolve(batch_id, None, err)
            self._reschedule()

    def _reschedule(self) -> None:
        """After a sweep: when the checks that came meanwhile are due, and forget registrations gone idle."""
        now = self._loop.time()
        due = math.inf
        for batch_id in self._pending:
            wait = self._waits.get(batch_id)
            if wait is None:
                continue
            due = min(due, now if wait.failed else self._last_start + wait.interval)
        self._due = due
        idle = [
            batch_id
            for batch_id, wait in self._waits.items()
            if batch_id not in self._pending and now - wait.asked_at > IDLE_FORGET_INTERVALS * wait.interval + 60
        ]
        for batch_id in idle:
            del self._waits[batch_id]

    async def _sweep(self) -> None:
        client = self._client
        if client is None:
            return
        self.sweeps += 1
        self._answered = set()
        wanted = set(self._pending)
        if len(wanted) >= LIST_MIN:
            await self._pages(client, wanted)
        # A wait answered by a page may already have asked again (its interval had passed while it waited):
        # that check is for the next sweep, not a retrieve now.
        left = [batch_id for batch_id in wanted if batch_id in self._pending and batch_id not in self._answered]
        if left:
            limit = asyncio.Semaphore(RETRIEVE_CONCURRENCY)
            await asyncio.gather(*(self._retrieve_one(client, batch_id, limit) for batch_id in left))

    async def _pages(self, client: AsyncBatchClient, wanted: set[str]) -> None:
        """Answer what the list's pages hold: the first page and the known cursors at once, then the walk."""
        cursors: set[str | None] = {None}
        for batch_id in wanted:
            wait = self._waits.get(batch_id)
            if wait is not None and wait.placed:
                cursors.add(wait.cursor)
        limit = asyncio.Semaphore(min(PAGE_CONCURRENCY, max(2, math.ceil(len(cursors) / PAGES_PER_FETCHER))))
        pages = await asyncio.gather(*(self._page(client, cursor, limit) for cursor in cursors))
        first = pages[list(cursors).index(None)]
        for batch_id in wanted:  # not on its page any more (the first page moves on): find it again
            wait = self._waits.get(batch_id)
            if wait is not None and batch_id in self._pending and batch_id not in self._answered:
                wait.placed = False
        if first is None:  # the list fails: every wanted batch gets its own retrieve
            return
        unplaced = [
            b for b in wanted if b in self._pending and b not in self._answered and not self._placed_or_unlisted(b)
        ]
        after, more = first.last_id, first.has_more
        self._walking = set(unplaced)  # emptied by the pages that answer them (a count, not a scan a page)
        # Waits on recent batches are among the newest (waits + slack x 100 when they are all this loop's).
        # Past that the walk goes on only while each page still pays (answers LIST_MIN of its waits): another
        # triggerer's waits, or other runs', interleave with ours, so ours spread over more pages. Never more
        # pages than that rate allows.
        budget = math.ceil(len(self._waits) / PAGE_SIZE) + WALK_SLACK
        cap = max(budget, math.ceil(len(self._waits) / LIST_MIN))
        paid = sum(batch.id in wanted for batch in first.data) >= LIST_MIN
        walked = 0
        while more and after is not None and self._walking and walked < cap and (walked < budget or paid):
            before = len(self._walking)
            page = await self._page(client, after, None)
            if page is None:
                break
            walked += 1
            paid = before - len(self._walking) >= LIST_MIN
            after, more = page.last_id, page.has_more
        for batch_id in unplaced:  # beyond the walk's reach: retrieved for a while, unless a page meets it
            wait = self._waits.get(batch_id)
            if wait is not None and batch_id not in self._answered:
                wait.unlisted = self.sweeps

    def _placed_or_unlisted(self, batch_id: str) -> bool:
        wait = self._waits.get(batch_id)
        if wait is not None and wait.unlisted and self.sweeps - wait.unlisted >= UNLISTED_SWEEPS:
            wait.unlisted = 0  # look for it again: other waits may have ended, so the walk reaches further
        return wait is not None and (wait.placed or bool(wait.unlisted))

    async def _page(
        self, client: AsyncBatchClient, after: str | None, limit: asyncio.Semaphore | None
    ) -> BatchPage | None:
        """One list page; each batch it holds answers the checks waiting for it. ``None`` when it failed
        (its batches then get retrieves)."""
        try:
            self.requests["list"] += 1
            if limit is None:
                page = await client.request(api.list_batches(after=after, limit=PAGE_SIZE))
            else:
                async with limit:
                    page = await client.request(api.list_batches(after=after, limit=PAGE_SIZE))
        except Exception:  # the batches' own retrieves report what is wrong, one by one
            if after is not None:  # e.g. the cursor's batch is gone: place those waits afresh
                for wait in self._waits.values():
                    if wait.placed and wait.cursor == after:
                        wait.placed = False
            return None
        self._answer(page.data, after)
        return page

    def _answer(self, batches: Iterable[Batch], cursor: str | None) -> None:
        for batch in batches:
            wait = self._waits.get(batch.id)
            if wait is None:
                continue
            wait.cursor, wait.placed, wait.unlisted, wait.failed = cursor, True, 0, False
            self._answered.add(batch.id)
            self._walking.discard(batch.id)
            if batch.id in self._pending:
                wait.seen = None
                self._resolve(batch.id, batch, None)
            else:  # asked just after this page came in, or about to ask: kept briefly for that check
                wait.seen, wait.seen_at = batch, self._loop.time()

    async def _retrieve_one(self, client: AsyncBatchClient, batch_id: str, limit: asyncio.Semaphore) -> None:
        async with limit:
            if batch_id not in self._pending:  # answered meanwhile by a page, or withdrawn
                return
            self.requests["retrieve"] += 1
            try:
                batch = await client.retrieve_batch(batch_id)
            except Exception as err:  # handed to the waits that asked, as their own call would
                wait = self._waits.get(batch_id)
                if wait is not None:
                    wait.failed = True
                self._resolve(batch_id, None, err)
                return
            wait = self._waits.get(batch_id)
            if wait is not None:
                wait.failed = False
            self._resolve(batch_id, batch, None)

    def _resolve(self, batch_id: str, batch: Batch | None, error: BaseException | None) -> None:
        futures = self._pending.pop(batch_id, None)
        if not futures:
            return
        for future in futures:
            if future.done():
                continue
            if error is not None:
                future.set_exception(error)
            else:
                assert batch is not None
                future.set_result(batch)
        if batch is not None and batch.is_terminal:
            wait = self._waits.get(batch_id)
            if wait is not None and not wait.owners:
                del self._waits[batch_id]


_pollers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, BatchPoller]] = weakref.WeakKeyDictionary()


def shared_poller(conn_id: str) -> BatchPoller:
    """The running loop's poller for ``conn_id``, created on first use."""
    loop = asyncio.get_running_loop()
    pollers = _pollers.get(loop)
    if pollers is None:
        pollers = _pollers[loop] = {}
    poller = pollers.get(conn_id)
    if poller is None:
        poller = pollers[conn_id] = BatchPoller(conn_id)
    return poller
