"""The provider's exceptions: one small hierarchy shared by the hook, the trigger and the operators.

``OpenAIBatchError`` is the root, so ``except OpenAIBatchError`` catches everything this package raises on
purpose. Nothing here ever formats request headers, so the API key cannot leak through an error message.
"""

from __future__ import annotations

from typing import Any


class OpenAIBatchError(Exception):
    """Base class of every error raised by this provider."""


class APIError(OpenAIBatchError):
    """The API answered with an HTTP error status.

    :param message: The human-readable message from the error body (or a summary of a non-JSON body).
    :param status_code: The HTTP status code.
    :param type: The error ``type`` from the body, e.g. ``invalid_request_error``.
    :param code: The machine-readable error ``code``, if any.
    :param param: The request parameter the error refers to, if any.
    :param request_id: The request id response header (Azure's ``apim-request-id``, else ``x-request-id``);
        quote it to support.
    :param retry_after: Seconds the server asked us to wait (``Retry-After``), if it said.
    :param body: The decoded JSON body, when there was one.
    """

    def __init__(
        self,
        message: str,
        *,
        status_code: int,
        type: str | None = None,
        code: str | None = None,
        param: str | None = None,
        request_id: str | None = None,
        retry_after: float | None = None,
        body: Any = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status_code = status_code
        self.type = type
        self.code = code
        self.param = param
        self.request_id = request_id
        self.retry_after = retry_after
        self.body = body

    @property
    def maybe_processed(self) -> bool:
        """Whether the server may have acted on the request before failing (decides retries of POSTs): a 5xx
        or a gateway's 408 may come after the request was carried out; any other 4xx was refused."""
        return self.status_code >= 500 or self.status_code == 408

    def __str__(self) -> str:
        details = [f"HTTP {self.status_code}"]
        details += [f"{k}={v}" for k, v in (("type", self.type), ("code", self.code), ("param", self.param)) if v]
        if self.request_id:
            details.append(f"request_id={self.request_id}")
        return f"{self.message} ({', '.join(details)})"

    def __reduce__(self) -> tuple[Any, ...]:
        # Keyword-only arguments do not survive the default pickling used by multiprocessing and Airflow.
        return (_rebuild, (type(self), self.message, self.__dict__))


def _rebuild(cls: type[APIError], message: str, state: dict[str, Any]) -> APIError:
    err = cls.__new__(cls)
    Exception.__init__(err, message)
    err.__dict__.update(state)
    return err


class InvalidRequestError(APIError):
    """400 or 422: the request was malformed or refers to something unusable. Never retried."""


class ConflictError(InvalidRequestError):
    """409: the request conflicts with the object's state (e.g. cancelling a finished batch)."""


class AuthenticationError(APIError):
    """401 or 403: the API key is missing, wrong, or lacks access to the organization or project."""


class NotFoundError(APIError):
    """404: no such batch or file (or it belongs to another organization or project)."""


class RateLimitError(APIError):
    """429: too many requests or tokens; retried after ``Retry-After`` when the server gives one."""


class QuotaExceededError(RateLimitError):
    """The account (OpenAI: ``insufficient_quota``; Azure: its quota codes) has no quota left: waiting a
    few seconds does not help, so it is never retried; raise the quota or wait for it to reset."""


class ServerError(APIError):
    """5xx: the server failed; the request may or may not have been acted on."""


class APIConnectionError(OpenAIBatchError):
    """The request did not get an HTTP answer (connection refused, reset, DNS, TLS, ...).

    :param message: What went wrong, without any header or credential.
    :param maybe_processed: ``True`` when the request may have reached the server (the connection broke
        after it was sent), so a non-idempotent call must not be blindly repeated.
    :param transient: ``False`` when repeating cannot help (a URL or header value the HTTP stack refuses to
        send): the call fails at once instead of being retried.
    """

    def __init__(self, message: str, *, maybe_processed: bool = True, transient: bool = True) -> None:
        super().__init__(message)
        self.maybe_processed = maybe_processed
        self.transient = transient


class APITimeoutError(APIConnectionError):
    """The server did not answer within the configured timeout."""


class BatchValidationError(OpenAIBatchError, ValueError):
    """A batch input file (JSONL) breaks the Batch API's rules; ``problems`` lists them by line number.

    :param message: What is wrong and how to fix it.
    :param problems: Every problem found, each naming its file and line.
    :param source: The input the problems are in, as :meth:`of_input` names it.
    """

    #: What a refused input costs when nothing of it reached the API.
    NOTHING_SENT = "nothing was uploaded or billed"

    def __init__(self, message: str, problems: list[str] | None = None, source: str | None = None) -> None:
        super().__init__(message)
        self.problems = problems or []
        self.source = source

    @classmethod
    def of_input(cls, source: str, problems: list[Any], outcome: str = NOTHING_SENT) -> BatchValidationError:
        """The refusal of a whole input: how many problems, what became of the input, the first 20 problems."""
        listed = "\n".join(f"  - {p}" for p in problems[:20])
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        return cls(
            f"The batch input ({source}) has {len(problems)} problem(s); {outcome}:\n{listed}{more}",
            [str(p) for p in problems],
            source,
        )


class ResultsParseError(OpenAIBatchError):
    """An output or error file could not be read as JSONL (e.g. a truncated download)."""


class BatchNotSuccessfulError(OpenAIBatchError):
    """A batch ended ``failed``, ``expired`` or ``cancelled``, or broke the failed-requests policy.

    :param message: A summary including the batch's own error messages.
    :param batch: The final batch as a JSON dict, for callers that want the details.
    """

    def __init__(self, message: str, batch: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.batch = batch or {}


class BatchTimeoutError(OpenAIBatchError):
    """The batch was still running when the task's deadline passed."""
