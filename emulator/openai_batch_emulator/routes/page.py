"""``/batches/{id}``: what platform.openai.com/batches/{id} is to the real API, a page a browser can open from
a task's extra link (the ``/v1`` API needs a key a browser does not send). Every value is HTML-escaped."""

from __future__ import annotations

import html
import json
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from openai_batch_emulator.errors import ApiFailure
from openai_batch_emulator.routes import store_of

router = APIRouter()


@router.get("/batches/{batch_id}")
async def batch_page(batch_id: str, request: Request) -> Response:
    store = store_of(request)
    try:
        batch = store.get_batch(batch_id)
    except ApiFailure as failure:
        return Response(f"<h1>{html.escape(str(failure))}</h1>", failure.status, media_type="text/html")
    return Response(render(batch), media_type="text/html")


def render(batch: dict[str, Any]) -> str:
    """The batch as a small HTML page."""
    counts = batch.get("request_counts") or {}
    usage = batch.get("usage") or {}
    done, total, failed = (counts.get(k, 0) for k in ("completed", "total", "failed"))
    rows = [
        ("Status", batch["status"]),
        ("Endpoint", batch["endpoint"]),
        ("Requests", f"{done} of {total} done, {failed} failed"),
        ("Tokens", f"{usage.get('input_tokens', 0)} in, {usage.get('output_tokens', 0)} out" if usage else "-"),
        ("Input file", batch.get("input_file_id")),
        ("Output file", batch.get("output_file_id") or "-"),
        ("Error file", batch.get("error_file_id") or "-"),
        ("Metadata", json.dumps(batch.get("metadata") or {})),
    ]
    cells = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>" for k, v in rows)
    title = html.escape(f"Batch {batch['id']}")
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title></head>"
        f"<body style='font-family:sans-serif'><h1>{title}</h1><p>OpenAI Batch API emulator</p>"
        f"<table>{cells}</table></body></html>"
    )
