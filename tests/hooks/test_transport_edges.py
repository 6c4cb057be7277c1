"""Answers the emulator does not give, over a real socket: compressed downloads, bodies cut short, and the
Test button against a failing server. A tiny raw HTTP server replays scripted answers byte for byte."""

from __future__ import annotations

import gzip
import json
import random
import socket
import socketserver
import threading
from collections.abc import Iterator

import pytest

from airflow_provider_openai_batch.exceptions import APIConnectionError
from airflow_provider_openai_batch.hooks.batch import OpenAIBatchHook


class ScriptedServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), ScriptedHandler)
        self.answers: list[bytes] = []  # one raw answer per request; the last one repeats
        self.requests: list[bytes] = []

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"


class ScriptedHandler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        server: ScriptedServer = self.server  # type: ignore[assignment]
        head = b""
        while b"\r\n\r\n" not in head:
            data = self.request.recv(65536)
            if not data:
                return
            head += data
        server.requests.append(head)
        answer = server.answers[min(len(server.requests), len(server.answers)) - 1]
        self.request.sendall(answer)
        self.request.shutdown(socket.SHUT_WR)


def answer(status: str, body: bytes, *headers: str, length: int | None = None) -> bytes:
    lines = [f"HTTP/1.1 {status}", f"Content-Length: {len(body) if length is None else length}", *headers]
    return ("\r\n".join([*lines, "Connection: close"]) + "\r\n\r\n").encode() + body


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[ScriptedServer]:
    srv = ScriptedServer()
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    conn = {"conn_type": "openai_batch", "host": srv.base_url, "password": "k", "extra": {"max_retries": 1}}
    monkeypatch.setenv("AIRFLOW_CONN_OPENAI_DEFAULT", json.dumps(conn))
    yield srv
    srv.shutdown()
    srv.server_close()


def test_a_gzip_compressed_download_is_not_mistaken_for_a_truncated_one(server, tmp_path, sleeps):
    content = b"".join(json.dumps({"custom_id": f"r{i}", "response": None}).encode() + b"\n" for i in range(200))
    packed = gzip.compress(content)
    server.answers = [answer("200 OK", packed, "Content-Encoding: gzip", "Content-Type: application/octet-stream")]
    downloaded = OpenAIBatchHook().download_file("file-1", tmp_path / "out.jsonl")
    assert (tmp_path / "out.jsonl").read_bytes() == content and downloaded.bytes == len(content)
    assert len(server.requests) == 1


def test_a_gzip_download_cut_short_is_still_caught(server, tmp_path, sleeps):
    packed = gzip.compress(random.Random(1).randbytes(5000))  # incompressible: 5 KB on the wire
    server.answers = [answer("200 OK", packed[:1000], "Content-Encoding: gzip", length=len(packed))]
    with pytest.raises(APIConnectionError, match="file-1"):
        OpenAIBatchHook().download_file("file-1", tmp_path / "out.jsonl")
    assert list(tmp_path.iterdir()) == [] and len(server.requests) == 2  # retried once, then given up


def test_a_json_answer_cut_short_is_a_retried_connection_error(server, sleeps):
    batch = json.dumps({"id": "batch_1", "object": "batch", "status": "completed"}).encode()
    server.answers = [
        answer("200 OK", batch[:10], "Content-Type: application/json", length=len(batch)),
        answer("200 OK", batch, "Content-Type: application/json"),
    ]
    assert OpenAIBatchHook().retrieve_batch("batch_1").status == "completed"
    assert len(server.requests) == 2
    server.requests.clear()
    server.answers = [answer("200 OK", batch[:10], "Content-Type: application/json", length=len(batch))]
    with pytest.raises(APIConnectionError, match=r"GET /batches/batch_1: the answer .* broke off"):
        OpenAIBatchHook().retrieve_batch("batch_1")


def test_the_test_button_asks_once_and_does_not_retry(server, sleeps):
    server.answers = [answer("503 Service Unavailable", b'{"error": {"message": "down"}}')]
    ok, message = OpenAIBatchHook().test_connection()
    assert not ok and "down" in message and "HTTP 503" in message
    assert len(server.requests) == 1 and sleeps == []
