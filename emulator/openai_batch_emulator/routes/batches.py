"""``/v1/batches``: create, list, retrieve, cancel."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from openai_batch_emulator import contract
from openai_batch_emulator.errors import ApiFailure, json_response
from openai_batch_emulator.routes import store_of
from openai_batch_emulator.routes.bodies import json_body

router = APIRouter()


@router.post("/v1/batches")
async def create_batch(request: Request) -> Response:
    store = store_of(request)
    body = contract.create_batch_body(await json_body(request), store.config.flavor)
    contract.object_id(body["input_file_id"], "input_file_id")
    source = store.files.get(body["input_file_id"])
    if source is not None and source["purpose"] != "batch":
        raise ApiFailure(
            400,
            f"File {source['id']} has purpose {source['purpose']!r}; batches need 'batch'.",
            param="input_file_id",
            code="invalid_file_purpose",
        )
    expiry = body.get("output_expires_after")
    batch = store.create_batch(
        body["input_file_id"],
        body["endpoint"],
        body["completion_window"],
        body.get("metadata"),
        expiry["seconds"] if expiry else None,
    )
    # Azure answers a create with 201 Created (its published CreateBatch example); OpenAI with 200.
    return json_response(batch, 201 if store.config.flavor == "azure" else 200)


@router.get("/v1/batches")
async def list_batches(request: Request) -> Response:
    query = contract.list_batches_query(request.query_params)
    return json_response(store_of(request).list_batches(query.get("after"), query["limit"]))


@router.get("/v1/batches/{batch_id}")
async def retrieve_batch(batch_id: str, request: Request) -> Response:
    return json_response(store_of(request).get_batch(contract.object_id(batch_id, "batch_id")))


@router.post("/v1/batches/{batch_id}/cancel")
async def cancel_batch(batch_id: str, request: Request) -> Response:
    return json_response(store_of(request).cancel_batch(contract.object_id(batch_id, "batch_id")))
