"""Any other request under ``/v1``, after every route of the API: an id that spans path segments (sent as
``a%2Fb``, which no route's ``{id}`` matches) is refused as the id it is not; anything else is an unknown URL,
as the real API answers it."""

from __future__ import annotations

from urllib.parse import unquote

from fastapi import APIRouter, Request
from fastapi.responses import Response

from openai_batch_emulator import contract
from openai_batch_emulator.errors import invalid_url

router = APIRouter()

#: The id each collection's third path segment holds: ``/v1/batches/{batch_id}``, ``/v1/files/{file_id}``.
_IDS = {"batches": "batch_id", "files": "file_id"}
_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]


@router.api_route("/v1/{rest:path}", methods=_METHODS, include_in_schema=False)
async def other(rest: str, request: Request) -> Response:
    raw = request.scope.get("raw_path") or request.url.path.encode()
    segments = raw.decode("latin-1").split("/")  # "", "v1", the collection, the id, ...
    if len(segments) > 3 and segments[2] in _IDS:
        contract.object_id(unquote(segments[3]), _IDS[segments[2]])
    raise invalid_url(request.method, request.url.path)
