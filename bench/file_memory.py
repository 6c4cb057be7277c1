"""Peak memory of OpenAIBatchHook.upload_file and download_file for large files (default 200 MB and 20 MB).

A stdlib HTTP server in a separate process discards uploads and streams downloads of the requested size.
Each transfer runs in a fresh interpreter; we report its peak RSS (ru_maxrss) and the growth over the RSS
it had just before the transfer. Peak RSS is sampled every 2 ms from /proc: ``ru_maxrss`` is inherited
across fork/exec on Linux and would report the parent's peak instead. Growth independent of size means
memory does not scale with the file.

    .venv/bin/python bench/file_memory.py --sizes-mb 20 200
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import socket
import subprocess
import sys
import tempfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

CHILD = r"""
import json, os, sys, threading, time
os.environ["AIRFLOW_CONN_OPENAI_DEFAULT"] = json.dumps({"conn_type": "openai_batch", "password": "bench-key",
    "host": "http://127.0.0.1:%(port)d/v1"})
from airflow_provider_openai_batch.hooks.batch import OpenAIBatchHook
hook = OpenAIBatchHook()
hook.settings
def rss():
    return int(open("/proc/self/status").read().split("VmRSS:")[1].split()[0]) / 1024
peak = [0.0]
def watch():
    while True:
        peak[0] = max(peak[0], rss())
        time.sleep(0.002)
threading.Thread(target=watch, daemon=True).start()
before = rss()
if "%(op)s" == "upload":
    hook.upload_file("%(path)s")
else:
    hook.download_file("file-%(size)d", "%(path)s.out")
print(json.dumps({"before": before, "peak": max(peak[0], rss())}))
"""


class Handler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        remaining = int(self.headers["Content-Length"])
        while remaining:
            remaining -= len(self.rfile.read(min(remaining, 1 << 20)))
        body = json.dumps({"id": "file-up", "object": "file", "purpose": "batch"}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        size = int(self.path.split("file-")[1].split("/")[0])
        self.send_response(200)
        self.send_header("Content-Length", str(size))
        self.end_headers()
        block = b'{"custom_id": "x", "response": null, "error": null}' + b" " * 972 + b"\n"  # 1 KiB
        sent = 0
        while sent < size:
            chunk = block * min(1024, (size - sent) // len(block) or 1)
            chunk = chunk[: size - sent]
            self.wfile.write(chunk)
            sent += len(chunk)

    def log_message(self, *args: object) -> None:
        pass


def serve(port: int) -> None:
    ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes-mb", type=int, nargs="+", default=[20, 200])
    args = parser.parse_args()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = multiprocessing.Process(target=serve, args=(port,), daemon=True)
    server.start()
    print("| transfer | size (MB) | RSS before (MB) | peak RSS (MB) | growth (MB) |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for size_mb in args.sizes_mb:
            size = size_mb * 1024 * 1024
            path = f"{tmp}/input-{size_mb}.jsonl"
            line = b'{"custom_id": "x", "method": "POST", "url": "/v1/chat/completions", "body": {}}\n'
            with open(path, "wb") as out:
                for _ in range(size // len(line) // 10_000):
                    out.write(line * 10_000)
            for op in ("upload", "download"):
                code = CHILD % {"port": port, "op": op, "path": path, "size": size}
                result = json.loads(
                    subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
                    .stdout.strip()
                    .splitlines()[-1]
                )
                print(
                    f"| {op} | {size_mb} | {result['before']:.0f} | {result['peak']:.0f} | "
                    f"{result['peak'] - result['before']:.1f} |"
                )
    server.terminate()
    return 0


if __name__ == "__main__":
    sys.exit(main())
