"""Plain-HTTP helpers for the emulator's tests: nothing here uses the provider's client code, so a test judges
the emulator's answers and not the client's."""

from __future__ import annotations

import json
import time
from http.client import HTTPConnection
from typing import Any
from urllib.parse import urlsplit

import requests

ENDPOINT = "/v1/chat/completions"
ENDED = ("completed", "failed", "expired", "cancelled")


def request_line(custom_id: str, url: str = ENDPOINT, body: Any = None, **extra: Any) -> dict[str, Any]:
    if body is None:
        body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"hi {custom_id}"}]}
    return {"custom_id": custom_id, "method": "POST", "url": url, "body": body, **extra}


def jsonl(items: list[Any]) -> bytes:
    return "".join((item if isinstance(item, str) else json.dumps(item)) + "\n" for item in items).encode()


class Http:
    """A ``requests`` session with a key, and the calls the tests repeat."""

    def __init__(self, base_url: str, api_key: str = "test-key") -> None:
        self.base = base_url
        self.root = base_url[: -len("/v1")]
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {api_key}"

    def upload(self, data: bytes, purpose: str = "batch", **fields: str) -> requests.Response:
        return self.session.post(
            f"{self.base}/files", files={"file": ("in.jsonl", data)}, data={"purpose": purpose, **fields}
        )

    def upload_id(self, items: list[Any] | bytes) -> str:
        response = self.upload(items if isinstance(items, bytes) else jsonl(items))
        assert response.status_code == 200, response.text
        return str(response.json()["id"])

    def create(self, body: dict[str, Any]) -> requests.Response:
        return self.session.post(f"{self.base}/batches", json=body)

    def create_for(self, file_id: str, endpoint: str = ENDPOINT, **extra: Any) -> requests.Response:
        return self.create({"input_file_id": file_id, "endpoint": endpoint, "completion_window": "24h", **extra})

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        return self.session.get(f"{self.base}{path}", **kwargs)

    def wait(self, batch_id: str, statuses: tuple[str, ...] = ENDED, bound: float = 30.0) -> dict[str, Any]:
        """Poll until the batch reaches one of ``statuses`` (a generous bound, not a fixed sleep)."""
        deadline = time.monotonic() + bound
        while True:
            response = self.get(f"/batches/{batch_id}")
            assert response.status_code == 200, response.text
            batch: dict[str, Any] = response.json()
            if batch["status"] in statuses or time.monotonic() > deadline:
                return batch
            time.sleep(0.02)


def raw_path(client: Http, method: str, path: str) -> requests.Response:
    """A request whose path goes out exactly as written (``requests`` and ``urllib3`` would turn ``%2E%2E``
    into ``..`` and then drop the segment), with the answer read back into a ``requests.Response``."""
    url = urlsplit(client.base)
    connection = HTTPConnection(url.hostname or "127.0.0.1", url.port, timeout=30)
    try:
        connection.request(method, url.path + path, headers={"Authorization": client.session.headers["Authorization"]})
        answer = connection.getresponse()
        response = requests.Response()
        response.status_code = answer.status
        response.headers.update(dict(answer.getheaders()))
        response._content = answer.read()
        return response
    finally:
        connection.close()


def openai_error(response: requests.Response, status: int) -> dict[str, Any]:
    """The ``error`` object of an OpenAI-shaped error answer, after checking its shape."""
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/json"), response.headers
    assert response.headers["x-request-id"].startswith("req_")
    body = response.json()
    assert set(body) == {"error"}, body
    error: dict[str, Any] = body["error"]
    assert set(error) == {"message", "type", "param", "code"} and isinstance(error["message"], str), error
    assert error["type"] == ("server_error" if status >= 500 else "invalid_request_error") or status == 429
    return error
