"""The emulator's HTTP surface: the Batch and Files endpoints under ``/v1`` and an admin API under ``/_emulator``.

Answers are pre-serialized JSON bytes (no response-model validation on the hot path) so one process serves
thousands of status requests per second.
"""

from __future__ import annotations

import asyncio
import html
import json
import random
import secrets
from dataclasses import fields
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import Response

from airflow_provider_openai_batch import api
from airflow_provider_openai_batch.emulator.store import ApiFailure, EmulatorConfig, Store

JSON = "application/json"


def _json(payload: Any, status: int = 200) -> Response:
    return Response(json.dumps(payload).encode(), status_code=status, media_type=JSON)


def create_app(config: EmulatorConfig | None = None, data_dir: str | None = None, seed: int | None = None) -> FastAPI:
    """Build the emulator app. ``app.state.store`` holds the state, ``app.state.store.config`` the settings."""
    store = Store(config or EmulatorConfig(), data_dir)
    rng = random.Random(seed)
    app = FastAPI(title="OpenAI Batch API emulator", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.store = store

    @app.middleware("http")
    async def gateway(request: Request, call_next: Any) -> Response:
        """Request id, auth, latency and fault injection, in the order a real gateway applies them."""
        request_id = "req_" + secrets.token_hex(16)
        path = request.url.path
        if not path.startswith("/v1/"):
            response = await call_next(request)
            response.headers["x-request-id"] = request_id
            return response
        cfg = store.config
        route = f"{request.method} {_route_of(path)}"
        store.stats["requests"][route] = store.stats["requests"].get(route, 0) + 1
        if cfg.latency_ms:
            await asyncio.sleep(cfg.latency_ms / 1000)
        auth = request.headers.get("authorization", "")
        key = auth[7:].strip() if auth.lower().startswith("bearer ") else ""
        if not key or (cfg.api_key is not None and not secrets.compare_digest(key, cfg.api_key)):
            message = (
                "You didn't provide an API key. You need to provide your API key in an Authorization header "
                "using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
                if not key
                else "Incorrect API key provided. You can find your API key at https://platform.openai.com/account/api-keys."
            )
            response = _json(ApiFailure(401, message, code="invalid_api_key").body, 401)
            response.headers["x-request-id"] = request_id
            return response
        # Faults come after auth, so an ambiguous POST (processed, then faulted) is always an authorised one.
        fault = rng.choice(cfg.fault_kinds) if cfg.fault_kinds and rng.random() < cfg.fault_rate else None
        if fault:
            store.stats["faults"][fault] = store.stats["faults"].get(fault, 0) + 1
        if fault == "slow":  # a correct answer, late: the client's timeout decides what it becomes
            await asyncio.sleep(cfg.slow_seconds)
        elif fault:
            if cfg.fault_after_processing and request.method == "POST":
                await call_next(request)
            return await _fault(request, fault, cfg, request_id)
        try:
            response = await call_next(request)
        except ApiFailure as failure:
            response = _json(failure.body, failure.status)
        response.headers["x-request-id"] = request_id
        return response

    @app.exception_handler(ApiFailure)
    async def api_failure(request: Request, failure: ApiFailure) -> Response:
        return _json(failure.body, failure.status)

    # ------------------------------------------------------------------------------------------ files

    @app.post("/v1/files")
    async def upload_file(request: Request) -> Response:
        form = await request.form()
        upload = form.get("file")
        purpose = form.get("purpose")
        if upload is None or isinstance(upload, str):
            raise ApiFailure(
                400, "Missing required parameter: 'file'.", param="file", code="missing_required_parameter"
            )
        if not isinstance(purpose, str) or not purpose:
            raise ApiFailure(
                400, "Missing required parameter: 'purpose'.", param="purpose", code="missing_required_parameter"
            )
        if purpose not in {"assistants", "batch", "fine-tune", "vision", "user_data", "evals"}:
            raise ApiFailure(400, f"Invalid value for 'purpose': {purpose!r}.", param="purpose", code="invalid_value")
        data = await upload.read()
        if len(data) > 512 * 1024 * 1024:
            raise ApiFailure(400, "File is larger than the 512 MB limit.", param="file", code="file_too_large")
        return _json(store.add_file(data, upload.filename or "upload.jsonl", purpose))

    @app.get("/v1/files")
    async def list_files(
        purpose: str | None = None, limit: int = 10000, after: str | None = None, order: str = "desc"
    ) -> Response:
        items = [f for f in store.files.values() if purpose is None or f["purpose"] == purpose]
        items.sort(key=lambda f: (f["created_at"], f["id"]), reverse=order != "asc")
        if after is not None:
            ids = [f["id"] for f in items]
            items = items[ids.index(after) + 1 :] if after in ids else []
        page = items[:limit]
        return _json(
            {
                "object": "list",
                "data": page,
                "first_id": page[0]["id"] if page else None,
                "last_id": page[-1]["id"] if page else None,
                "has_more": len(items) > limit,
            }
        )

    @app.get("/v1/files/{file_id}")
    async def retrieve_file(file_id: str) -> Response:
        return _json(store.get_file(file_id))

    @app.get("/v1/files/{file_id}/content")
    async def file_content(file_id: str) -> Response:
        store.get_file(file_id)
        return Response(store.contents.get(file_id, b""), media_type="application/octet-stream")

    @app.delete("/v1/files/{file_id}")
    async def delete_file(file_id: str) -> Response:
        return _json(store.delete_file(file_id))

    # ---------------------------------------------------------------------------------------- batches

    @app.post("/v1/batches")
    async def create_batch(request: Request) -> Response:
        try:
            body = await request.json()
        except ValueError:
            raise ApiFailure(400, "We could not parse the JSON body of your request.") from None
        if not isinstance(body, dict):
            raise ApiFailure(400, "The request body must be a JSON object.")
        for name in ("input_file_id", "endpoint", "completion_window"):
            if not body.get(name):
                raise ApiFailure(
                    400, f"Missing required parameter: '{name}'.", param=name, code="missing_required_parameter"
                )
        # The same rules the client checks, from the one definition in api.py.
        checks = (
            ("endpoint", lambda: api.validate_endpoint(body["endpoint"])),
            ("completion_window", lambda: api.validate_completion_window(body["completion_window"])),
            ("metadata", lambda: api.validate_metadata(body.get("metadata"))),
            ("output_expires_after", lambda: api.validate_output_expires_after(body.get("output_expires_after"))),
        )
        for param, check in checks:
            try:
                check()
            except ValueError as err:
                raise ApiFailure(400, f"Invalid '{param}': {err}", param=param, code="invalid_value") from None
        source = store.files.get(body["input_file_id"])
        if source is not None and source["purpose"] != "batch":
            raise ApiFailure(
                400,
                f"File {source['id']} has purpose {source['purpose']!r}; batches need 'batch'.",
                param="input_file_id",
                code="invalid_file_purpose",
            )
        return _json(
            store.create_batch(body["input_file_id"], body["endpoint"], body["completion_window"], body.get("metadata"))
        )

    @app.get("/v1/batches")
    async def list_batches(request: Request) -> Response:
        params = request.query_params
        try:
            limit = int(params.get("limit", "20"))
        except ValueError:
            limit = 0
        if not 1 <= limit <= 100:
            raise ApiFailure(400, "Invalid 'limit': must be between 1 and 100.", param="limit", code="invalid_value")
        return _json(store.list_batches(params.get("after"), limit))

    @app.get("/v1/batches/{batch_id}")
    async def retrieve_batch(batch_id: str) -> Response:
        return _json(store.get_batch(batch_id))

    @app.post("/v1/batches/{batch_id}/cancel")
    async def cancel_batch(batch_id: str) -> Response:
        return _json(store.cancel_batch(batch_id))

    # ------------------------------------------------------------------------------- the batch's page

    @app.get("/batches/{batch_id}")
    async def batch_page(batch_id: str) -> Response:
        """What platform.openai.com/batches/{id} is to the real API: a page a browser can open from the
        task's extra link (the /v1 API needs a key a browser does not send)."""
        try:
            batch = store.get_batch(batch_id)
        except ApiFailure as failure:
            return Response(f"<h1>{html.escape(str(failure))}</h1>", failure.status, media_type="text/html")
        return Response(_batch_page(batch), media_type="text/html")

    # ------------------------------------------------------------------------------------------ admin

    @app.get("/_emulator/config")
    async def get_config() -> Response:
        return _json(store.config.public())

    @app.patch("/_emulator/config")
    async def patch_config(request: Request) -> Response:
        changes = await request.json()
        known = {f.name for f in fields(EmulatorConfig)}
        unknown = set(changes) - known
        if unknown:
            return _json({"error": {"message": f"unknown settings: {sorted(unknown)}"}}, 400)
        for name, value in changes.items():
            setattr(store.config, name, value)
        return _json(store.config.public())

    @app.get("/_emulator/stats")
    async def get_stats() -> Response:
        return _json({**store.stats, "batches": len(store.batches), "files": len(store.files)})

    @app.post("/_emulator/reset")
    async def reset() -> Response:
        store.reset()
        return _json({"reset": True})

    @app.post("/_emulator/batches/{batch_id}/status")
    async def force_status(batch_id: str, request: Request) -> Response:
        status = (await request.json()).get("status")
        return _json(store.force_status(batch_id, str(status)))

    @app.get("/_emulator/health")
    async def health() -> Response:
        return _json({"ok": True})

    return app


def _batch_page(batch: dict[str, Any]) -> str:
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


def _route_of(path: str) -> str:
    parts = path.split("/")
    # /v1/batches/{id}[/cancel], /v1/files/{id}[/content]
    if len(parts) >= 4 and parts[3]:
        parts[3] = "{id}"
    return "/".join(parts)


async def _fault(request: Request, kind: str, cfg: EmulatorConfig, request_id: str) -> Response:
    headers = {"x-request-id": request_id}
    if kind == "drop":
        transport = request.scope.get("state", {}).get("transport")
        if transport is not None:
            transport.abort()
        # Nothing reaches the client after abort(); the answer below only satisfies the framework.
        return Response(b"", status_code=500, headers=headers)
    if kind == "429":
        headers["retry-after"] = f"{cfg.retry_after:g}"
        body = ApiFailure(
            429, "Rate limit reached for requests. Please try again later.", type="requests", code="rate_limit_exceeded"
        ).body
        return Response(json.dumps(body).encode(), 429, headers=headers, media_type=JSON)
    if kind == "502":
        html = b"<html><head><title>502 Bad Gateway</title></head><body><h1>502 Bad Gateway</h1></body></html>"
        return Response(html, 502, headers=headers, media_type="text/html")
    status = int(kind)
    message = "The server had an error while processing your request. Sorry about that!"
    body = ApiFailure(status, message, type="server_error").body
    return Response(json.dumps(body).encode(), status, headers=headers, media_type=JSON)
