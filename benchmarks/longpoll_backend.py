"""A cheap fake coordinator for in-flight load: queries that last for seconds of long polls.

    python3 benchmarks/longpoll_backend.py --port 0 [--query-seconds 20-30] [--poll-seconds 1-5]

Prints ``READY <port>``. ``POST /v1/statement`` creates a query whose length is drawn from
``--query-seconds``; each ``GET`` of its ``nextUri`` is held for a poll drawn from
``--poll-seconds`` (never past the query's end), like a coordinator's long poll, then answers the
next document; the last one is FINISHED with ``data: [[1]]``. The statement ``select 1`` (any
case) finishes on its first poll: the probe query of the benchmark. ``GET /v1/info`` answers as a
started coordinator. URIs are built from ``X-Forwarded-Proto/Host`` when present, else from
``Host``, so they point back through whatever proxy is in front.

It is an asyncio protocol with no framework, so that at 10,000 queries in flight the backend is
not what saturates (one core does ~20,000 polls/s).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import random
import resource
import sys
import time

INFO_TIMES: list[float] = []   # unix times of the /v1/info requests (monitor probes)
INFO = b'{"nodeVersion":{"version":"476"},"environment":"bench","coordinator":true,"starting":false,"uptime":"1.00m"}'


def _range(text: str) -> tuple[float, float]:
    lo, _, hi = text.partition("-")
    return float(lo), float(hi or lo)


class Queries:
    def __init__(self, query_seconds: tuple[float, float], poll_seconds: tuple[float, float]) -> None:
        self.query_seconds, self.poll_seconds = query_seconds, poll_seconds
        self.ends: dict[str, float] = {}
        self.counter = 0
        self.created = 0

    def new(self, sql: str) -> str:
        self.counter += 1
        self.created += 1
        qid = time.strftime("%Y%m%d_%H%M%S", time.gmtime()) + f"_{self.counter % 100000:05d}_bench"
        quick = sql.strip().lower() == "select 1"
        self.ends[qid] = time.monotonic() + (0.0 if quick else random.uniform(*self.query_seconds))
        return qid


def document(base: str, qid: str, token: int, state: str) -> bytes:
    doc: dict = {"id": qid, "infoUri": f"{base}/ui/query.html?{qid}",
                 "stats": {"state": state, "queued": False, "scheduled": True, "nodes": 1}}
    if state == "FINISHED":
        doc["columns"] = [{"name": "_col0", "type": "integer", "typeSignature": {"rawType": "integer", "arguments": []}}]
        doc["data"] = [[1]]
    else:
        doc["nextUri"] = f"{base}/v1/statement/executing/{qid}/y{token}/{token}"
    return json.dumps(doc, separators=(",", ":")).encode()


class Conn(asyncio.Protocol):
    def __init__(self, queries: Queries) -> None:
        self.q = queries
        self.buf = b""
        self.transport: asyncio.Transport | None = None
        self.busy = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if not self.busy:
            self._next()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None

    def _next(self) -> None:
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            return
        head = self.buf[:end].decode("latin-1").split("\r\n")
        headers = {}
        for line in head[1:]:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
        length = int(headers.get("content-length", "0"))
        if len(self.buf) < end + 4 + length:
            return
        body = self.buf[end + 4:end + 4 + length]
        self.buf = self.buf[end + 4 + length:]
        method, path, _ = head[0].split(" ", 2)
        proto = headers.get("x-forwarded-proto", "http")
        host = headers.get("x-forwarded-host") or headers.get("host", "127.0.0.1")
        port = headers.get("x-forwarded-port")
        if port and ":" not in host:
            host = f"{host}:{port}"
        base = f"{proto}://{host}"
        self.busy = True
        asyncio.ensure_future(self._answer(method, path, body, base))

    async def _answer(self, method: str, path: str, body: bytes, base: str) -> None:
        if method == "POST" and path.startswith("/v1/statement"):
            qid = self.q.new(body.decode(errors="replace"))
            self._send(200, document(base, qid, 1, "QUEUED"))
        elif method == "GET" and path.startswith("/v1/statement/executing/"):
            parts = path.split("/")
            qid, token = parts[4], int(parts[6].split("?")[0])
            end = self.q.ends.get(qid)
            if end is None:
                self._send(404, b"unknown query")
            else:
                now = time.monotonic()
                if token > 1:      # the first poll answers at once (the client sees RUNNING)
                    await asyncio.sleep(max(0.0, min(random.uniform(*self.q.poll_seconds), end - now)))
                if time.monotonic() >= end:
                    self.q.ends.pop(qid, None)
                    self._send(200, document(base, qid, token + 1, "FINISHED"))
                else:
                    self._send(200, document(base, qid, token + 1, "RUNNING"))
        elif method == "DELETE":
            self._send(204, b"")
        elif path.startswith("/v1/info"):
            INFO_TIMES.append(time.time())
            self._send(200, INFO)
        elif path == "/_probes":   # when /v1/info was asked (the benchmark checks probe cadence)
            self._send(200, json.dumps(INFO_TIMES).encode())
        else:
            self._send(404, b"not found")
        self.busy = False
        if self.buf:
            self._next()

    def _send(self, code: int, body: bytes) -> None:
        if self.transport is None:
            return
        reason = {200: "OK", 204: "No Content", 404: "Not Found"}[code]
        ctype = b"Content-Type: application/json\r\n" if code == 200 else b""
        self.transport.write(f"HTTP/1.1 {code} {reason}\r\n".encode() + ctype
                             + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)


async def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--query-seconds", default="20-30")
    p.add_argument("--poll-seconds", default="1-5")
    args = p.parse_args(argv)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    queries = Queries(_range(args.query_seconds), _range(args.poll_seconds))
    server = await asyncio.get_running_loop().create_server(lambda: Conn(queries), "127.0.0.1", args.port,
                                                            backlog=4096)
    print(f"READY {server.sockets[0].getsockname()[1]}", flush=True)
    await server.serve_forever()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        sys.exit(0)
