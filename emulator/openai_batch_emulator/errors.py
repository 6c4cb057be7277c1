"""Error answers in the real API's shape: ``{"error": {"message", "type", "param", "code"}}`` with a status."""

from __future__ import annotations

import json
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler, request_validation_exception_handler
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

JSON = "application/json"
SERVER_ERROR = "The server had an error while processing your request. Sorry about that!"


class ApiFailure(Exception):
    """An error answer in the OpenAI shape; raise it anywhere below a route to answer with it.

    :param status: HTTP status.
    :param message: Human-readable message.
    :param type: The error ``type`` (``invalid_request_error`` unless said otherwise).
    :param code: Machine-readable code, or ``None`` as the real API often sends.
    :param param: The parameter at fault, dotted for nested ones (``output_expires_after.seconds``).
    """

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.body = {"error": {"message": message, "type": type, "param": param, "code": code}}

    def response(self, headers: dict[str, str] | None = None) -> Response:
        return json_response(self.body, self.status, headers)


class AzureFailure(ApiFailure):
    """An error answer in Azure OpenAI's own shape, ``{"error": {"code", "message"}}``, as its gateway sends
    for a wrong key, an unknown path or a missing ``api-version``; the code is often the status as text.

    :param status: HTTP status.
    :param message: Human-readable message.
    :param code: Machine-readable code (default: the status, as Azure's gateway sends it).
    """

    def __init__(self, status: int, message: str, *, code: str | None = None) -> None:
        super().__init__(status, message)
        self.body = {"error": {"code": code or str(status), "message": message}}


AZURE_WRONG_KEY = (
    "Access denied due to invalid subscription key or wrong API endpoint. Make sure to provide a valid key for an "
    "active subscription and use a correct regional API endpoint for your resource."
)
AZURE_NOT_FOUND = "Resource not found"
AZURE_MISSING_VERSION = "The api-version query parameter (?api-version=) is required for all requests."
AZURE_RATE_LIMITED = (
    "Requests to the Batch operation under Azure OpenAI API have exceeded call rate limit of your current pricing "
    "tier. Please retry after 1 second."
)


def json_response(payload: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """Pre-serialized JSON (no response-model validation on the hot path)."""
    return Response(json.dumps(payload).encode(), status_code=status, media_type=JSON, headers=headers)


def invalid_url(method: str, path: str) -> ApiFailure:
    """What the real API answers for a path it does not serve, or a method a path does not take."""
    return ApiFailure(404, f"Invalid URL ({method} {path})")


def server_error(status: int = 500) -> ApiFailure:
    return ApiFailure(status, SERVER_ERROR, type="server_error")


def rate_limited() -> ApiFailure:
    """A 429 as the real API's rate limiter answers it."""
    return ApiFailure(
        429, "Rate limit reached for requests. Please try again later.", type="requests", code="rate_limit_exceeded"
    )


def is_api_path(path: str) -> bool:
    """Whether ``path`` is the emulated API's (``/v1``), whose every answer must be the real API's shape."""
    return path == "/v1" or path.startswith("/v1/")


def install_handlers(app: FastAPI) -> None:
    """Every error under ``/v1`` in the real API's shape: ours, the router's 404/405 (the real API answers
    both with ``Invalid URL``), a body the framework could not parse, and a parameter it refused."""

    async def api_failure(request: Request, failure: Exception) -> Response:
        assert isinstance(failure, ApiFailure)
        return failure.response()

    async def http_error(request: Request, error: Exception) -> Response:
        assert isinstance(error, StarletteHTTPException)
        if not is_api_path(request.url.path):
            return await http_exception_handler(request, error)
        if error.status_code in (404, 405):
            return invalid_url(request.method, request.url.path).response()
        return ApiFailure(error.status_code, str(error.detail)).response()

    async def refused_parameter(request: Request, error: Exception) -> Response:
        assert isinstance(error, RequestValidationError)
        if not is_api_path(request.url.path):
            return await request_validation_exception_handler(request, error)
        first = error.errors()[0] if error.errors() else {}
        param = ".".join(str(part) for part in first.get("loc", ())[1:]) or None
        return ApiFailure(400, f"Invalid '{param}': {first.get('msg', 'invalid value')}.", param=param).response()

    app.add_exception_handler(ApiFailure, api_failure)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, refused_parameter)
