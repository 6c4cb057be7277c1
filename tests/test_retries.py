"""Which failures the shared retry policy repeats, for idempotent calls, creates and cancels."""

from __future__ import annotations

from airflow_provider_openai_batch import api
from airflow_provider_openai_batch.exceptions import APIConnectionError
from airflow_provider_openai_batch.retries import is_retryable, policy_for


def server(status: int) -> Exception:
    return api.error_from_response(status, {}, b"{}")


def test_retry_decisions():
    # As the official SDK: 408 (request timeout), 409 (lock conflict), 429 and 5xx are transient.
    for status in (408, 409, 429, 500, 502, 503, 504):
        assert is_retryable(server(status))
    for status in (400, 401, 403, 404, 422, 501):
        assert not is_retryable(server(status))
    assert is_retryable(APIConnectionError("reset"))
    assert not is_retryable(ValueError("x"))
    # A create the server may have acted on is not repeated blindly; a 429 or a refused connection is.
    assert not is_retryable(server(500), idempotent=False)
    assert not is_retryable(server(408), idempotent=False)  # a gateway's 408 may follow a forwarded request
    assert not is_retryable(APIConnectionError("reset", maybe_processed=True), idempotent=False)
    assert is_retryable(server(429), idempotent=False)
    assert is_retryable(APIConnectionError("refused", maybe_processed=False), idempotent=False)


def test_a_cancel_conflict_is_final_but_a_read_conflict_is_retried():
    cancel = policy_for(api.cancel_batch("batch_1"), 5)["retry"]
    retrieve = policy_for(api.retrieve_batch("batch_1"), 5)["retry"]

    class Outcome:
        failed = True

        def __init__(self, exc: BaseException) -> None:
            self._exc = exc

        def exception(self) -> BaseException:
            return self._exc

    class State:
        def __init__(self, exc: BaseException) -> None:
            self.outcome = Outcome(exc)

    assert not cancel(State(server(409)))  # the batch already ended: asking again cannot change that
    assert cancel(State(server(503)))
    assert retrieve(State(server(409)))
