"""The gateway in front of the routes: what the real API's edge does before a request reaches the service.

In order: a request id on every answer; the key, when one is set, for the admin routes (``/_emulator``, all
but ``health``: they can switch the key off); then, under ``/v1`` only, request counting, latency, auth and
faults. It is plain ASGI (no ``BaseHTTPMiddleware``) because the ``slow`` fault needs to outlive its client's
connection: the request is buffered and processed late even if the client has hung up, as a buffering proxy
forwards a request whose client timed out.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import secrets
import uuid
from typing import Any
from urllib.parse import parse_qsl, urlencode

from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from openai_batch_emulator.errors import (
    AZURE_MISSING_VERSION,
    AZURE_NOT_FOUND,
    AZURE_WRONG_KEY,
    ApiFailure,
    AzureFailure,
    is_api_path,
    json_response,
    server_error,
)
from openai_batch_emulator.faults import FaultInjector, send_fault
from openai_batch_emulator.store import Store

log = logging.getLogger(__name__)

_NO_KEY = (
    "You didn't provide an API key. You need to provide your API key in an Authorization header using Bearer "
    "auth (i.e. Authorization: Bearer YOUR_KEY)."
)
_WRONG_KEY = "Incorrect API key provided. You can find your API key at https://platform.openai.com/account/api-keys."
_AZURE_NO_KEY = (
    "Access denied due to missing subscription key. Make sure to include subscription key when making requests to "
    "an API."
)
_ADMIN_NEEDS_KEY = (
    "The emulator's admin routes need its key (--api-key, or the api_key last set through /_emulator/config): "
    "send it as 'Authorization: Bearer <key>' or as an 'api-key' header"
)
#: Azure's dated API versions (GA ``2024-10-21``, previews ``2025-04-01-preview``).
_API_VERSION = re.compile(r"\d{4}-\d{2}-\d{2}(-preview)?")


class Gateway:
    """ASGI middleware: request ids, counting, latency, auth and fault injection.

    :param app: The routes.
    :param store: Its ``config`` (read per request, so changes apply at once) and ``stats``.
    :param faults: Decides each request's fault.
    """

    def __init__(self, app: ASGIApp, store: Store, faults: FaultInjector) -> None:
        self.app = app
        self.store = store
        self.faults = faults
        self._held: set[asyncio.Task[Any]] = set()  # slow requests in flight; a reference keeps each alive

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        cfg = self.store.config
        azure = cfg.flavor == "azure"
        send = _with_request_id(send, "req_" + secrets.token_hex(16), azure)
        if azure:
            scope, refusal = _azure_path(scope)
            if refusal is not None:
                await refusal.response()(scope, receive, send)
                return
        if not is_api_path(scope["path"]):
            if _is_guarded_admin_path(scope["path"]) and not _has_key(scope, cfg.api_key):
                await json_response({"error": {"message": _ADMIN_NEEDS_KEY}}, 401)(scope, receive, send)
                return
            await self.app(scope, receive, send)
            return
        route = f"{scope['method']} {_route_of(scope['path'])}"
        counts = self.store.stats["requests"]
        counts[route] = counts.get(route, 0) + 1
        if cfg.latency_ms:
            await asyncio.sleep(cfg.latency_ms / 1000)
        refusal = (
            _azure_auth_refusal(scope, cfg.api_key, self.store.stats) if azure else _auth_refusal(scope, cfg.api_key)
        )
        if refusal is not None:
            await refusal.response()(scope, receive, send)
            return
        # Faults come after auth, so an ambiguous POST (processed, then faulted) is always an authorised one.
        fault = self.faults.draw()
        if fault:
            faults = self.store.stats["faults"]
            faults[fault] = faults.get(fault, 0) + 1
        if fault == "slow":  # a correct answer, late: the client's timeout decides what it becomes
            await self._late(scope, receive, send, cfg.slow_seconds)
        elif fault:
            # A 429 comes from a rate limiter in front of the service: the real API never acted on it, and
            # clients rightly retry it as such. The other faults can follow processing (an ambiguous failure).
            if cfg.fault_after_processing and scope["method"] == "POST" and fault != "429":
                await self._serve(scope, receive, _discard)
            await send_fault(fault, cfg, scope, receive, send)
        else:
            await self._serve(scope, receive, send)

    async def _serve(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Run the routes; a bug in them still answers in the API's shape (a 500), never a bare text page."""
        started = False

        async def watch(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, watch)
        except ClientDisconnect:
            return  # the client left while sending its body: nobody to answer, nothing to process
        except Exception:
            log.exception("The emulator failed on %s %s", scope["method"], scope["path"])
            if not started:
                await server_error().response()(scope, receive, send)

    async def _late(self, scope: Scope, receive: Receive, send: Send, delay: float) -> None:
        """Hold a request ``delay`` seconds, then process it whether or not its client is still there."""
        body = await _read_body(receive)
        if body is None:
            return  # the client left before its request was even complete: there is nothing to forward
        task = asyncio.get_running_loop().create_task(self._process_late(scope, body, delay))
        self._held.add(task)
        task.add_done_callback(self._held.discard)
        # shield(): if the server cancels this connection's handler, the request is still carried out.
        for message in await asyncio.shield(task):
            await send(message)  # to a client that left, the server drops these

    async def _process_late(self, scope: Scope, body: bytes, delay: float) -> list[Message]:
        await asyncio.sleep(delay)
        answer: list[Message] = []

        async def keep(message: Message) -> None:
            answer.append(message)

        await self._serve(scope, _replay(body), keep)
        return answer


def _with_request_id(send: Send, request_id: str, azure: bool = False) -> Send:
    headers = [(b"x-request-id", request_id.encode())]
    if azure:  # Azure's gateway adds its own id, the one its support asks for
        headers.append((b"apim-request-id", str(uuid.uuid4()).encode()))

    async def send_with_id(message: Message) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", []), *headers]}
        await send(message)

    return send_with_id


def _azure_path(scope: Scope) -> tuple[Scope, ApiFailure | None]:
    """Azure's two path shapes, read into the routes' ``/v1/...``: ``/openai/v1/...`` as is, and the classic
    ``/openai/...`` only with an ``api-version`` query parameter (dropped on the way in). OpenAI's own
    ``/v1/...`` is not Azure's: it is refused as an unknown path. Other paths (admin, the page) pass."""
    path: str = scope["path"]
    raw: bytes = scope.get("raw_path") or path.encode()  # as sent: an id's %2F stays one segment
    if path == "/v1" or path.startswith("/v1/"):
        return scope, AzureFailure(404, AZURE_NOT_FOUND)
    if path.startswith("/openai/v1/"):
        return {**scope, "path": path[len("/openai") :], "raw_path": raw[len(b"/openai") :]}, None
    if not path.startswith("/openai/"):
        return scope, None
    query = parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
    versions = [value for name, value in query if name == "api-version"]
    if not versions or not versions[0]:
        return scope, AzureFailure(400, AZURE_MISSING_VERSION, code="MissingApiVersionParameter")
    if not _API_VERSION.fullmatch(versions[0]):
        message = f"Unsupported api-version '{versions[0][:40]}'. Use a dated version such as 2024-10-21."
        return scope, AzureFailure(400, message, code="UnsupportedApiVersion")
    rest = urlencode([(name, value) for name, value in query if name != "api-version"]).encode()
    inner = "/v1" + path[len("/openai") :]
    return {**scope, "path": inner, "raw_path": b"/v1" + raw[len(b"/openai") :], "query_string": rest}, None


def _azure_auth_refusal(scope: Scope, api_key: str | None, stats: dict[str, Any]) -> ApiFailure | None:
    """Azure: an ``api-key`` header, or an Entra ID ``Authorization: Bearer`` token; with ``api_key`` set,
    either must equal it. Counted by kind in ``stats["auth"]``; a bearer token is remembered only as a short
    SHA-256 digest (``stats["bearer_digests"]``, in order of first use) so a test can tell tokens apart."""
    headers = {k: v.decode("latin-1") for k, v in scope["headers"] if k in (b"api-key", b"authorization")}
    key = headers.get(b"api-key", "").strip()
    auth = headers.get(b"authorization", "")
    bearer = auth[7:].strip() if auth.lower().startswith("bearer ") else ""
    kind, value = ("api-key", key) if key else ("bearer", bearer)
    if not value:
        return AzureFailure(401, _AZURE_NO_KEY)
    counts = stats.setdefault("auth", {})
    counts[kind] = counts.get(kind, 0) + 1
    if kind == "bearer":
        digest = hashlib.sha256(value.encode()).hexdigest()[:16]
        seen = stats.setdefault("bearer_digests", [])
        if digest not in seen:
            seen.append(digest)
    if api_key is not None and not secrets.compare_digest(value.encode(), api_key.encode()):
        return AzureFailure(401, AZURE_WRONG_KEY)
    return None


def _auth_refusal(scope: Scope, api_key: str | None) -> ApiFailure | None:
    auth = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"authorization"), "")
    key = auth[7:].strip() if auth.lower().startswith("bearer ") else ""
    if not key:
        return ApiFailure(401, _NO_KEY, code="invalid_api_key")
    if api_key is not None and not secrets.compare_digest(key.encode(), api_key.encode()):
        return ApiFailure(401, _WRONG_KEY, code="invalid_api_key")
    return None


def _is_guarded_admin_path(path: str) -> bool:
    """Every admin route but ``health``, which only says the server is up (scripts wait on it)."""
    return (path == "/_emulator" or path.startswith("/_emulator/")) and path != "/_emulator/health"


def _has_key(scope: Scope, api_key: str | None) -> bool:
    """Whether the request carries ``api_key`` (``Authorization: Bearer`` or ``api-key``); true when none is set."""
    if api_key is None:
        return True
    headers = {k: v.decode("latin-1") for k, v in scope["headers"] if k in (b"api-key", b"authorization")}
    auth = headers.get(b"authorization", "")
    given = [auth[7:].strip() if auth.lower().startswith("bearer ") else "", headers.get(b"api-key", "").strip()]
    return any(value and secrets.compare_digest(value.encode(), api_key.encode()) for value in given)


def _route_of(path: str) -> str:
    parts = path.split("/")
    # /v1/batches/{id}[/cancel], /v1/files/{id}[/content]
    if len(parts) >= 4 and parts[3]:
        parts[3] = "{id}"
    return "/".join(parts)


async def _read_body(receive: Receive) -> bytes | None:
    """The whole request body, or ``None`` if the client disconnected before sending it all."""
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


def _replay(body: bytes) -> Receive:
    """A ``receive`` that hands over a buffered body, then never reports a disconnect: the gateway, not the
    client, is now the other end of the request."""
    delivered = False

    async def receive() -> Message:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.get_running_loop().create_future()  # never resolves
        raise AssertionError("unreachable")

    return receive


async def _discard(message: Message) -> None:
    """The answer of a request processed before its fault: nobody receives it."""
