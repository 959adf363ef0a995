"""A static-response Trino backend in pure Python (asyncio), for machines without nginx.

Answers exactly what the nginx static backend answers (see ``benchmarks/services.py``):
``POST /v1/statement`` → a QUEUED document with a fresh query id, ``GET
/v1/statement/executing/...`` → a RUNNING page, ``GET /v1/query/<id>`` and ``GET /v1/info`` →
small documents, and the result pages of ``--pages DIR`` under their query ids.

    python3 benchmarks/static_backend.py --port 0 [--pages DIR]     # prints READY <port>

It is much slower than nginx, so ratios measured against it are recorded separately.
"""
from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import payloads  # noqa: E402

_counter = itertools.count(1)


class _Http(asyncio.Protocol):
    def __init__(self, docs: dict[str, bytes], pages: dict[str, bytes]) -> None:
        self.docs = docs
        self.pages = pages
        self.buf = b""
        self.need = 0   # body bytes still to skip
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            if self.need:
                take = min(self.need, len(self.buf))
                self.buf = self.buf[take:]
                self.need -= take
                if self.need:
                    return
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head, self.buf = self.buf[:end], self.buf[end + 4:]
            lines = head.split(b"\r\n")
            method, path, _ = lines[0].split(b" ", 2)
            for line in lines[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    self.need = int(value)
            self.respond(method, path.decode())

    def respond(self, method: bytes, path: str) -> None:
        assert self.transport is not None
        if method == b"POST" and path == "/v1/statement":
            n = next(_counter)
            qid = f"20240101_000000_{n // 100000 % 100000:05d}_{n % 100000:05d}"
            body = self.docs["statement"].replace(b"{QID}", qid.encode())
        elif path.startswith("/v1/statement/executing/"):
            qid = path.split("/")[4]
            body = self.pages.get(qid) or self.docs["executing"]
        elif path.startswith("/v1/query/"):
            body = self.docs["query"]
        elif path == "/v1/info":
            body = self.docs["info"]
        else:
            self.transport.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
            return
        self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                             b"Content-Length: %d\r\n\r\n" % len(body))
        self.transport.write(body)


async def serve(port: int, pages_dir: str | None) -> None:
    loop = asyncio.get_running_loop()
    base_holder: list[str] = []
    docs: dict[str, bytes] = {}
    pages: dict[str, bytes] = {}
    server = await loop.create_server(lambda: _Http(docs, pages), "127.0.0.1", port, backlog=1024)
    real = server.sockets[0].getsockname()[1]
    base_holder.append(f"http://127.0.0.1:{real}")
    base = base_holder[0].encode()
    docs["statement"] = payloads.statement_response().encode().replace(b"{BASE}", base)
    docs["executing"] = payloads.executing_page().encode().replace(b"{BASE}", base)
    docs["query"] = payloads.query_info_response().encode()
    docs["info"] = payloads.info_response().encode()
    if pages_dir:
        for mb, qid in payloads.PAGE_QID.items():
            path = os.path.join(pages_dir, f"page-{mb}mb.json")
            if os.path.exists(path):
                with open(path, "rb") as f:
                    pages[qid] = f.read()
    print(f"READY {real}", flush=True)
    await asyncio.Event().wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--pages", default=None, help="folder with page-1mb.json / page-16mb.json")
    args = ap.parse_args()
    try:
        asyncio.run(serve(args.port, args.pages))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
