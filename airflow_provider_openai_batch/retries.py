"""The retry policy both transports share: which failures are transient, and how long to wait between tries.

The sync hook passes :func:`retry_policy` to ``tenacity.Retrying``, the async client to
``tenacity.AsyncRetrying``; only the way they sleep differs.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import tenacity

from airflow_provider_openai_batch.exceptions import APIConnectionError, APIError, QuotaExceededError

if TYPE_CHECKING:
    from airflow_provider_openai_batch.api import ApiCall

log = logging.getLogger(__name__)

#: Transient answers, as the official OpenAI SDK reads them: 408 (request timeout), 409 (lock conflict),
#: 429 (rate limit) and 5xx.
RETRYABLE_STATUS: frozenset[int] = frozenset({408, 409, 429, 500, 502, 503, 504})
#: Never sleep longer than this for one retry, whatever ``Retry-After`` says.
MAX_RETRY_WAIT = 60.0


def is_retryable(exc: BaseException, *, idempotent: bool = True, retry_conflict: bool = True) -> bool:
    """Whether a failed attempt may be repeated.

    408, 409, 429, 500, 502, 503, 504, connection errors and timeouts are transient; any other 4xx never is.
    A non-idempotent call is only repeated when the server cannot have acted on it.

    :param retry_conflict: ``False`` for calls whose 409 is a final verdict on the object's state (cancelling a
        batch that already ended), not a passing lock conflict.
    """
    if isinstance(exc, QuotaExceededError):  # an empty quota does not refill within a retry's wait
        return False
    if isinstance(exc, APIError):
        transient = exc.status_code in RETRYABLE_STATUS and (retry_conflict or exc.status_code != 409)
    elif isinstance(exc, APIConnectionError):
        transient = exc.transient
    else:
        return False
    return transient and (idempotent or not getattr(exc, "maybe_processed", True))


class wait_retry_after_or_backoff(tenacity.wait.wait_base):
    """Honour the server's ``Retry-After``; otherwise exponential backoff with full jitter."""

    def __init__(self, initial: float = 0.5, maximum: float = 30.0) -> None:
        self._backoff = tenacity.wait_random_exponential(multiplier=initial, max=maximum)

    def __call__(self, retry_state: tenacity.RetryCallState) -> float:
        exc = retry_state.outcome.exception() if retry_state.outcome else None
        retry_after = getattr(exc, "retry_after", None)
        if retry_after is not None:
            return float(min(retry_after, MAX_RETRY_WAIT))
        return float(self._backoff(retry_state))


def _log_retry(retry_state: tenacity.RetryCallState) -> None:
    exc = retry_state.outcome.exception() if retry_state.outcome else None
    delay = retry_state.next_action.sleep if retry_state.next_action else 0.0
    log.warning("OpenAI API call failed (attempt %d): %s; retrying in %.1fs", retry_state.attempt_number, exc, delay)


def retry_policy(
    max_retries: int,
    *,
    idempotent: bool = True,
    retry_conflict: bool = True,
    wait: tenacity.wait.wait_base | None = None,
) -> dict[str, Any]:
    """Keyword arguments for ``tenacity.Retrying`` and ``tenacity.AsyncRetrying`` alike."""
    return {
        "stop": tenacity.stop_after_attempt(max(0, max_retries) + 1),
        "wait": wait or wait_retry_after_or_backoff(),
        "retry": tenacity.retry_if_exception(
            lambda e: is_retryable(e, idempotent=idempotent, retry_conflict=retry_conflict)
        ),
        "before_sleep": _log_retry,
        "reraise": True,
    }


def policy_for(call: ApiCall[Any], max_retries: int) -> dict[str, Any]:
    """The policy for one described call, from what the call says about itself."""
    return retry_policy(max_retries, idempotent=call.idempotent, retry_conflict=call.retry_conflict)
