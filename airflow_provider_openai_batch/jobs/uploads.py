"""Uploading a new job's shards while the rest of its input is still being cut, a few at a time.

A million requests are 20 shards: uploaded one after the other once the split ends, the job would wait for the
split and then for every upload. Each shard is handed over as soon as its file is written and checked
(:func:`~airflow_provider_openai_batch.split.split_input`'s ``on_shard``), and at most :data:`AT_ONCE` upload at
a time, each thread with a hook of its own (a ``requests`` session is not shared between threads), so the job
takes about as long as its uploads. Files are not billed; should the split still fail (a bad line further on, a
``custom_id`` used again in a later shard), every file uploaded for it is deleted before the error is raised, so
a refused input leaves nothing behind.

Import-light: loaded when a task runs.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from airflow_provider_openai_batch.hooks.batch import OpenAIBatchHook
    from airflow_provider_openai_batch.split import Shard

#: Uploads in flight at once: enough to keep a network busy while the split goes on, few enough not to
#: crowd the account's file endpoints.
AT_ONCE = 3


class ShardUploads:
    """The uploads of one split under way.

    :param hook: The task's hook; each upload thread gets its own with the same settings.
    :param expires_after: The Files API's ``expires_after`` (``input_expires_after``), or ``None``.
    """

    def __init__(self, hook: OpenAIBatchHook, expires_after: int | None) -> None:
        self.hook = hook
        self.expires_after = expires_after
        self.futures: dict[int, Future[str]] = {}
        self._pool = ThreadPoolExecutor(AT_ONCE, thread_name_prefix="openai-batch-upload")
        self._local = threading.local()
        self._hooks: list[OpenAIBatchHook] = []
        self._lock = threading.Lock()

    def submit(self, shard: Shard) -> None:
        """Start uploading ``shard``'s file (its file is complete and checked)."""
        self.futures[shard.index] = self._pool.submit(self._upload, shard.path)

    def file_ids(self) -> dict[int, str]:
        """Wait for every upload; the file id of each shard uploaded (an upload's error is raised)."""
        try:
            return {index: future.result() for index, future in self.futures.items()}
        finally:
            self.close()

    def discard(self) -> int:
        """The split failed: cancel what has not started, wait for the rest, and delete every file uploaded;
        returns how many were deleted."""
        for future in self.futures.values():
            future.cancel()
        deleted = 0
        for future in self.futures.values():
            if future.cancelled() or future.exception() is not None:
                continue
            try:
                self.hook.delete_file(future.result())
                deleted += 1
            except Exception as err:  # the refusal is what the user must see; a leftover file is only logged
                self.hook.log.warning("Could not delete the file uploaded for a refused input: %s", err)
        self.close()
        return deleted

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        for hook in self._hooks:
            hook.close()

    def _upload(self, path: str) -> str:
        return str(self._thread_hook().upload_file(path, purpose="batch", expires_after=self.expires_after).id)

    def _thread_hook(self) -> OpenAIBatchHook:
        hook: Any = getattr(self._local, "hook", None)
        if hook is None:
            from airflow_provider_openai_batch.hooks.batch import OpenAIBatchHook

            hook = OpenAIBatchHook(self.hook.conn_id)
            hook.settings = self.hook.settings  # read once, by the task's hook
            self._local.hook = hook
            with self._lock:
                self._hooks.append(hook)
        return hook  # type: ignore[no-any-return]
