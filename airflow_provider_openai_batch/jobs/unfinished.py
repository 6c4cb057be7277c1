"""The lines of an attempt that did not finish, for the next round of ``resubmit_unfinished``.

When a batch ends ``expired``, or ``completed`` with requests that failed for transient reasons, the
requests that did not finish are written, as their original input lines, to the input file of the shard's
next attempt. A request that succeeded is never sent again, and neither is one that failed for a reason a
repeat cannot cure (a 400-class answer): only what a repeat may fix is billed again, once it succeeds.

Import-light: loaded when a task runs.
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from airflow_provider_openai_batch.hooks.batch import OpenAIBatchHook
    from airflow_provider_openai_batch.models import ResultRecord

#: Error codes of result lines that a repeat may cure.
TRANSIENT_CODES = frozenset({"batch_expired", "batch_cancelled", "rate_limit_exceeded", "server_error"})


def is_transient(record: ResultRecord) -> bool:
    """Whether a result line failed for a reason another attempt may cure: the batch's window ran out, a rate
    limit, or a server error (408, 409, 429, 5xx); never a 400-class refusal of the request itself."""
    if record.ok:
        return False
    if record.error is not None:
        return record.error.code in TRANSIENT_CODES
    from airflow_provider_openai_batch.retries import RETRYABLE_STATUS

    status = record.response.status_code if record.response else None
    # The statuses the client's own retry policy calls transient, and every other 5xx.
    return status is not None and (status in RETRYABLE_STATUS or status >= 500)


def write_unfinished_input(hook: OpenAIBatchHook, batch: dict[str, Any], path: str) -> tuple[int, int]:
    """Write the input lines of ``batch`` whose request did not finish to ``path``; return (written, total).

    A request is finished when its result line succeeded or failed for good; a request with a transient
    failure, or with no result line at all (the batch expired or was cancelled first), is unfinished. The
    input is streamed: memory holds only the set of finished ``custom_id`` values.
    """
    finished = {record.custom_id for record in hook.iter_results(str(batch["id"])) if not is_transient(record)}
    written = total = 0
    with tempfile.TemporaryDirectory(prefix="openai-batch-round-") as tmp:
        original = os.path.join(tmp, "input.jsonl")
        hook.download_file(str(batch["input_file_id"]), original)
        with open(original, "rb") as source, open(path, "wb") as out:
            for line in source:
                if not line.strip():
                    continue
                total += 1
                if json.loads(line).get("custom_id") in finished:
                    continue
                out.write(line if line.endswith(b"\n") else line + b"\n")
                written += 1
    return written, total
