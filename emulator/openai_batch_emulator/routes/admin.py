"""``/_emulator``: the controls tests and demos use (settings, statistics, reset, forcing a status, health).

Not part of the emulated API, so its errors are plain ``{"error": {"message"}}``. When the emulator has a key
(``--api-key``, or ``api_key`` set here), every route but ``health`` needs it too, or anyone could switch the
key off: the gateway (:mod:`openai_batch_emulator.gateway`) checks it before a request gets here.
"""

from __future__ import annotations

import json

from fastapi import APIRouter, Request
from fastapi.responses import Response

from openai_batch_emulator.errors import json_response
from openai_batch_emulator.faults import FaultInjector
from openai_batch_emulator.routes import store_of

router = APIRouter(prefix="/_emulator")


def _refused(message: str) -> Response:
    return json_response({"error": {"message": message}}, 400)


@router.get("/config")
async def get_config(request: Request) -> Response:
    return json_response(store_of(request).config.public())


@router.patch("/config")
async def patch_config(request: Request) -> Response:
    """Change settings; all or nothing. Setting ``seed`` re-seeds the fault draw (even to the same value)."""
    try:
        changes = json.loads(await request.body())
    except ValueError:
        return _refused("the body must be a JSON object of settings")
    if not isinstance(changes, dict):
        return _refused("the body must be a JSON object of settings")
    config = store_of(request).config
    try:
        config.apply(changes)
    except ValueError as err:
        return _refused(str(err))
    if "seed" in changes:
        faults: FaultInjector = request.app.state.faults
        faults.reseed()
    return json_response(config.public())


@router.get("/stats")
async def get_stats(request: Request) -> Response:
    store = store_of(request)
    return json_response({**store.stats, "batches": len(store.batches), "files": len(store.files)})


@router.post("/reset")
async def reset(request: Request) -> Response:
    store_of(request).reset()
    return json_response({"reset": True})


@router.post("/batches/{batch_id}/status")
async def force_status(batch_id: str, request: Request) -> Response:
    status = (await request.json()).get("status")
    return json_response(store_of(request).force_status(batch_id, str(status)))


@router.get("/health")
async def health() -> Response:
    return json_response({"ok": True})
