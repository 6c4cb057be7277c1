"""``/v1/files``: upload, list, retrieve, download, delete."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.datastructures import UploadFile

from openai_batch_emulator import contract
from openai_batch_emulator.contract import guide
from openai_batch_emulator.errors import ApiFailure, json_response
from openai_batch_emulator.routes import store_of
from openai_batch_emulator.routes.bodies import multipart_form

router = APIRouter()


@router.post("/v1/files")
async def upload_file(request: Request) -> Response:
    form = await multipart_form(request)
    # The contract judges the text fields; `file` counts only as a file part (text named "file" is no file).
    fields: dict[str, object] = {}
    for name, value in form.items():
        if isinstance(value, UploadFile):
            fields[name] = "<binary>"
        elif name != "file":
            fields[name] = value
    judged = contract.upload_form(fields)
    upload = form["file"]
    assert isinstance(upload, UploadFile)
    contract.upload_name(judged["purpose"], upload.filename)
    message = f"The file is larger than the {guide.MAX_UPLOAD_BYTES} bytes (512 MB) allowed."
    too_large = ApiFailure(400, message, param="file", code="file_too_large")
    if upload.size is not None and upload.size > guide.MAX_UPLOAD_BYTES:
        raise too_large
    data = await upload.read()
    if len(data) > guide.MAX_UPLOAD_BYTES:
        raise too_large
    expiry = judged.get("expires_after")
    obj = store_of(request).add_file(
        data, upload.filename or "upload.jsonl", judged["purpose"], expiry["seconds"] if expiry else None
    )
    return json_response(obj)


@router.get("/v1/files")
async def list_files(request: Request) -> Response:
    query = contract.list_files_query(request.query_params)
    purpose, limit, after = query.get("purpose"), query["limit"], query.get("after")
    items = [f for f in store_of(request).files.values() if purpose is None or f["purpose"] == purpose]
    items.sort(key=lambda f: (f["created_at"], f["id"]), reverse=query["order"] != "asc")
    if after is not None:
        ids = [f["id"] for f in items]
        items = items[ids.index(after) + 1 :] if after in ids else []
    page = items[:limit]
    return json_response(
        {
            "object": "list",
            "data": page,
            "first_id": page[0]["id"] if page else None,
            "last_id": page[-1]["id"] if page else None,
            "has_more": len(items) > limit,
        }
    )


@router.get("/v1/files/{file_id}")
async def retrieve_file(file_id: str, request: Request) -> Response:
    return json_response(store_of(request).get_file(contract.object_id(file_id, "file_id")))


@router.get("/v1/files/{file_id}/content")
async def file_content(file_id: str, request: Request) -> Response:
    store = store_of(request)
    store.get_file(contract.object_id(file_id, "file_id"))
    return Response(store.contents.get(file_id, b""), media_type="application/octet-stream")


@router.delete("/v1/files/{file_id}")
async def delete_file(file_id: str, request: Request) -> Response:
    return json_response(store_of(request).delete_file(contract.object_id(file_id, "file_id")))
