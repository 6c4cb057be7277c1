"""Creating a batch exactly once: each batch is billed, and a create can be ambiguous.

A create POST that times out, breaks off or answers 5xx may still have been carried out, now or later (a
gateway that buffers requests forwards one whose client already hung up). So every create the provider makes
carries an idempotency key in the batch's metadata (``airflow_idempotency_key``), and:

- **create** (:func:`create_once`): before repeating an ambiguous attempt, look for a batch carrying the key
  among those created since the first attempt, and take it instead of posting again; after any ambiguous
  attempt, watch for ``reconcile_seconds`` for late twins carrying the key and cancel them while they are
  still ``validating``, when cancelling bills nothing. A twin carried out later than that is not caught
  (docs/reliability.md).
- **claim** (:func:`claim`): a create a kill cut off ("creating since T" in the job record, no batch id) is
  found by its key among the batches created since T; several live ones are settled to the oldest.
- **find** (:func:`batches_with_keys`): one pass over the batch list, newest first, down to a creation time,
  for any number of keys at once (a retry that lost its record finds a whole job's batches this way).

The hook only moves bytes; these functions decide with it. Import-light: loaded when a task runs.
"""

from __future__ import annotations

import time
from collections.abc import Collection
from typing import TYPE_CHECKING

import tenacity

from airflow_provider_openai_batch import api
from airflow_provider_openai_batch.exceptions import OpenAIBatchError
from airflow_provider_openai_batch.retries import retry_policy
from airflow_provider_openai_batch.statuses import NOT_REATTACHABLE

if TYPE_CHECKING:
    from airflow_provider_openai_batch.hooks.batch import OpenAIBatchHook
    from airflow_provider_openai_batch.models import Batch

#: When an ambiguous create is repeated, batches created this long before the first attempt are still searched
#: for the key (clock skew between us and the API).
CREATE_LOOKUP_SLACK_SECONDS = 300
#: How often a late twin is looked for after an ambiguous create.
RECONCILE_POLL_SECONDS = 2.0


def create_once(hook: OpenAIBatchHook, call: api.ApiCall[Batch], key: str) -> Batch:
    """Send the create ``call`` (its metadata carries ``key``) so that exactly one live batch carries the key.

    Every retryable failure may be repeated: the look-up before each repeat makes it safe.
    """
    started = time.time()
    since = started - CREATE_LOOKUP_SLACK_SECONDS
    ambiguous = False

    def attempt() -> Batch:
        nonlocal ambiguous
        if ambiguous:
            # One pass over the batches created since the first attempt, without retries of its own: a failed
            # look-up fails this attempt and the policy decides on another, so one create makes at most
            # (max_retries + 1) look-ups, not (max_retries + 1) squared.
            usable = [b for b in batches_with_key(hook, key, since, retry=False) if b.status not in NOT_REATTACHABLE]
            if usable:
                hook.log.info("Found batch %s from an earlier attempt; not creating another", usable[0].id)
                return usable[0]
        try:
            return hook._send(call)
        except OpenAIBatchError as err:
            ambiguous = ambiguous or bool(getattr(err, "maybe_processed", False))
            raise

    try:
        batch: Batch = tenacity.Retrying(**retry_policy(hook.settings.max_retries, idempotent=True))(attempt)
    except OpenAIBatchError:
        if not ambiguous:
            raise
        # Every attempt failed, but the ambiguous ones may still be carried out late: the create succeeded if one
        # of them lands within the watch, and the others are cancelled.
        late = _settle(hook, key, None, since)
        if late is None:
            raise
        hook.log.warning("Every create attempt failed, but the API carried one out late: batch %s", late.id)
        return late
    if ambiguous:
        _settle(hook, key, batch, since)
    return batch


def claim(hook: OpenAIBatchHook, key: str, created_after: float) -> Batch | None:
    """The batch to go on with among those carrying ``key`` created since ``created_after``: the oldest live one
    (every other live one is cancelled); with none live, the newest; ``None`` when there is none."""
    found = batches_with_key(hook, key, created_after)
    return keep_one(hook, found, None) or (found[0] if found else None)


def batches_with_key(
    hook: OpenAIBatchHook, key: str, created_after: float | None, *, max_pages: int | None = None, retry: bool = True
) -> list[Batch]:
    """Batches carrying ``key``, newest first, among those created since ``created_after``."""
    return batches_with_keys(hook, {key}, created_after, max_pages=max_pages, retry=retry).get(key, [])


def batches_with_keys(
    hook: OpenAIBatchHook,
    keys: Collection[str],
    created_after: float | None,
    *,
    max_pages: int | None = None,
    retry: bool = True,
) -> dict[str, list[Batch]]:
    """The batches carrying each of ``keys``, newest first, in one pass over the batch list (100 a page, newest
    first) down to ``created_after`` (a Unix time): complete for that window, at one list call per 100 batches
    created since. Without ``created_after`` it stops after ``max_pages`` pages.

    :param retry: Retry each page's transient failures (``False`` inside a create's own retries).
    """
    found: dict[str, list[Batch]] = {}
    cursor: str | None = None
    pages = 0
    while max_pages is None or pages < max_pages:
        call = api.list_batches(after=cursor, limit=100)
        page = hook._request(call) if retry else hook._send(call)
        pages += 1
        for batch in page.data:
            if created_after is not None and batch.created_at is not None and batch.created_at < created_after:
                return found
            key = (batch.metadata or {}).get(api.IDEMPOTENCY_METADATA_KEY)
            if key is not None and key in keys:
                found.setdefault(key, []).append(batch)
        if not page.has_more or not page.data:
            break
        cursor = page.last_id or page.data[-1].id
    return found


def keep_one(
    hook: OpenAIBatchHook, found: list[Batch], keep: Batch | None, cancelled: set[str] | None = None
) -> Batch | None:
    """Cancel every live batch in ``found`` but ``keep`` (by default the oldest live one); return the one kept.

    :param cancelled: Ids cancelled so far, added to; a batch may still read as live right after its cancel.
    """
    live = [b for b in found if b.status not in NOT_REATTACHABLE]
    if keep is None and live:
        keep = live[-1]  # the list is newest first, ordered finer than created_at's whole seconds
    for twin in live:
        if keep is None or twin.id == keep.id:
            continue
        hook.log.warning(
            "Batch %s carries the same idempotency key as batch %s: a create that timed out was carried out late. "
            "Cancelling it so it is not billed (status %s).",
            twin.id,
            keep.id,
            twin.status,
        )
        try:
            hook.cancel_batch(twin.id)
        except OpenAIBatchError as err:
            hook.log.warning("Could not cancel the duplicate batch %s: %s", twin.id, err)
        if cancelled is not None:
            cancelled.add(twin.id)
    return keep


def _settle(hook: OpenAIBatchHook, key: str, keep: Batch | None, since: float) -> Batch | None:
    """After an ambiguous create, watch for batches carrying ``key`` for ``hook.reconcile_seconds`` and leave
    exactly one live: ``keep`` (or, with none, the oldest live one). Returns the batch kept, or ``None``."""
    # Counted in polls, not read off a clock: a slow machine then only makes this slower, never shorter.
    polls = 1 + int(hook.reconcile_seconds // RECONCILE_POLL_SECONDS)
    cancelled: set[str] = set()
    for poll in range(polls):
        if poll:
            time.sleep(RECONCILE_POLL_SECONDS)
        try:
            found = batches_with_key(hook, key, since)
        except OpenAIBatchError as err:
            hook.log.warning("Could not check for batches carrying this create's key: %s", err)
            return keep
        keep = keep_one(hook, [b for b in found if b.id not in cancelled], keep, cancelled)
    return keep
