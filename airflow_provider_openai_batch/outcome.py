"""How a batch is described in a log line and how a finished one is judged, in one place for the sensor, the
create operator, the hook and the trigger. Works on the batch as a JSON dict (what XCom and trigger events
carry), and imports nothing heavy so operator modules stay cheap to import at DAG-parse time.
"""

from __future__ import annotations

from typing import Any, NoReturn

from airflow_provider_openai_batch.statuses import COMPLETED, UNSUCCESSFUL


def describe(batch: dict[str, Any]) -> str:
    """One scannable line: id, status, request counts and token usage."""
    counts = batch.get("request_counts") or {}
    text = (
        f"batch {batch.get('id')} {batch.get('status')}: "
        f"{counts.get('completed') or 0}/{counts.get('total') or 0} requests done, {counts.get('failed') or 0} failed"
    )
    usage = batch.get("usage") or {}
    if usage:
        text += (
            f"; tokens in {usage.get('input_tokens') or 0}, out {usage.get('output_tokens') or 0}, "
            f"total {usage.get('total_tokens') or 0}"
        )
    return text


def judge(batch: dict[str, Any], max_failed_fraction: float) -> None:
    """Raise :class:`BatchNotSuccessfulError` unless the batch completed within the failed-requests policy.

    :param batch: A terminal batch as a JSON dict.
    :param max_failed_fraction: The largest share of failed requests a ``completed`` batch may have and still
        count as a success (0.0 = any failed request fails the task; 1.0 = never fail on request errors).
    """
    from airflow_provider_openai_batch.exceptions import BatchNotSuccessfulError

    status = batch.get("status")
    if status in UNSUCCESSFUL:
        errors = [
            (f"line {e.get('line')}: " if e.get("line") is not None else "") + f"[{e.get('code')}] {e.get('message')}"
            for e in ((batch.get("errors") or {}).get("data") or [])
        ]
        detail = "; ".join(errors[:10]) or "the API gave no error details"
        raise BatchNotSuccessfulError(f"OpenAI {describe(batch)}. Errors: {detail}", batch)
    if status != COMPLETED:
        raise BatchNotSuccessfulError(f"OpenAI {describe(batch)}: not finished", batch)
    counts = batch.get("request_counts") or {}
    total, failed = counts.get("total") or 0, counts.get("failed") or 0
    if total and failed / total > max_failed_fraction:
        raise BatchNotSuccessfulError(
            f"OpenAI {describe(batch)}: {failed / total:.1%} of requests failed, more than max_failed_fraction="
            f"{max_failed_fraction:g} allows; see error file {batch.get('error_file_id')}",
            batch,
        )


def fail_for_good(err: Exception, why: str) -> NoReturn:
    """Fail the task without its retries: a retry would meet the same final verdict (a retried wait would only
    re-attach to the same batches)."""
    from airflow.sdk.exceptions import AirflowFailException

    raise AirflowFailException(f"{err} (not retried: {why})") from err
