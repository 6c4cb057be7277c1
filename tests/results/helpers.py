"""Helpers for the export tests: batches submitted to the emulator through the hook, and reading exports."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from airflow_provider_openai_batch.exceptions import NotFoundError
from airflow_provider_openai_batch.hooks.batch import OpenAIBatchHook
from airflow_provider_openai_batch.models import Batch

CHAT = "/v1/chat/completions"


def chat(custom_id: str, text: str = "hello", model: str = "gpt-4o-mini", **body: Any) -> dict[str, Any]:
    return {"custom_id": custom_id, "body": {"model": model, "messages": [{"role": "user", "content": text}], **body}}


#: What makes one request of a batch fail on its own, as the API answers it: a temperature above 2.
FAILS = {"temperature": 3}


def submit(hook: OpenAIBatchHook, requests: list[dict[str, Any]], endpoint: str = CHAT, wait: bool = True) -> Batch:
    """Upload ``requests`` and create a batch; with ``wait``, return it once it ended (generous timeout: it only
    stops a hung test)."""
    data = "".join(json.dumps({"method": "POST", "url": endpoint, **r}) + "\n" for r in requests).encode()
    batch = hook.create_batch(hook.upload_file(data).id, endpoint)
    return hook.wait_for_batch(batch.id, poll_interval=0.05, timeout=120) if wait else batch


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines()]


def lines_file(path: Path, lines: list[bytes]) -> Path:
    """``lines`` written to ``path``, one a line: a file as the join reads it (``path`` may be a directory: the
    file is then a new one in it)."""
    if path.is_dir():
        path = path / f"lines-{len(list(path.iterdir()))}.jsonl"
    path.write_bytes(b"".join(line if line.endswith(b"\n") else line + b"\n" for line in lines))
    return path


def file_lines(hook: OpenAIBatchHook, file_id: str, tmp: Path) -> list[dict[str, Any]]:
    local = tmp / f"{file_id}.jsonl"
    hook.download_file(file_id, local)
    return read_jsonl(local)


class FakeOutletEvents(dict):
    """``context["outlet_events"]``: an accessor per asset, created on first access, with a settable ``extra``."""

    def __missing__(self, asset):
        self[asset] = SimpleNamespace(extra={})
        return self[asset]


class FakeHook:
    """Just what the export calls: batches by id and file contents by id."""

    log = logging.getLogger("tests.results.fake_hook")

    def __init__(self, batches: list[dict], files: dict[str, bytes]) -> None:
        self.batches = {b["id"]: Batch.model_validate(b) for b in batches}
        self.files = files

    def retrieve_batch(self, batch_id: str) -> Batch:
        return self.batches[batch_id]

    def download_file(self, file_id: str, destination: Path) -> None:
        if file_id not in self.files:
            raise NotFoundError(f"no file {file_id}", status_code=404)
        Path(destination).write_bytes(self.files[file_id])


def jsonl_bytes(*items: dict) -> bytes:
    return b"".join(json.dumps(i).encode() + b"\n" for i in items)
