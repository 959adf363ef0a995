"""The floor for a Python proxy: an asyncio HTTP/1.1 relay with no features at all.

    python3 benchmarks/floor_proxy.py --port 0 --upstream 127.0.0.1:8081   # prints READY <port>

It exists only to be measured next to nginx and the gateway (``inflight.py --targets
nginx,pyfloor,gateway1``): how much CPU per request any pure-Python proxy on this interpreter
spends just to move a keep-alive request to a pooled backend connection and the answer back
(what nginx does for a long poll), so the gateway's figure can be read against a floor and not
only against nginx. No routing, no header handling beyond the framing, no URI rewriting, no
metrics, no logging: requests and answers must carry ``Content-Length`` (the long-poll backend's
do), the Host header passes through unchanged (as nginx's ``proxy_set_header Host $http_host``),
one request at a time per client connection, the backend pool is unbounded. Not a product.
It runs on the event loop a gateway worker would choose (uvloop by default; ``TRINO_GATEWAY_LOOP``
as for the gateway), so that floor and gateway differ in their code only.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import resource
import sys
from typing import Any

# ``--features``: the gateway's own decision code for what a poll cannot do without (imported
# once here, not per request: only the work of a poll is measured).
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from gateway import protocol as P  # noqa: E402
from gateway.proxy import exchange as X  # noqa: E402
from gateway.routing.tokens import TokenKeys  # noqa: E402
from gateway.runtime import http1  # noqa: E402

FEATURES = False


def _length(head: bytes) -> int:
    i = head.lower().find(b"\r\ncontent-length:")
    if i < 0:
        return 0
    j = head.find(b"\r\n", i + 2)
    return int(head[i + 17:j].strip())


class Upstream(asyncio.Protocol):
    """One pooled backend connection; relays one answer to ``client`` at a time."""

    def __init__(self, proxy: "Proxy") -> None:
        self.proxy = proxy
        self.transport: Any = None
        self.client: Client | None = None
        self.buf = b""
        self.need = -1

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        client = self.client
        if client is None:
            self.transport.close()
            return
        if self.need < 0:
            self.buf += data
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            self.need = end + 4 + _length(self.buf[:end + 2])
            data, self.buf = self.buf, b""
        self.need -= len(data)
        if FEATURES:   # whole answer first (small pages), then rewrite and frame it
            self.buf += data
            if self.need > 0:
                return
            data, self.buf = _respond(self.buf, client), b""
        client.transport.write(data)
        if self.need <= 0:
            self.need = -1
            self.client = None
            self.proxy.idle.append(self)
            client.answered()

    def connection_lost(self, exc: Exception | None) -> None:
        if self in self.proxy.idle:
            self.proxy.idle.remove(self)
        if self.client is not None:
            self.client.transport.close()


class Client(asyncio.Protocol):
    def __init__(self, proxy: "Proxy") -> None:
        self.proxy = proxy
        self.transport: Any = None
        self.buf = b""
        self.busy = False
        self.backend = ""

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buf += data
        self._next()

    def _next(self) -> None:
        if self.busy:
            return
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            return
        total = end + 4 + _length(self.buf[:end + 2])
        if len(self.buf) < total:
            return
        request, self.buf = self.buf[:total], self.buf[total:]
        self.busy = True
        if FEATURES:
            request = _forward(request, self)
        idle = self.proxy.idle
        if idle:
            up = idle.pop()
            up.client = self
            up.transport.write(request)
        else:
            asyncio.ensure_future(self.proxy.connect(self, request))

    def answered(self) -> None:
        self.busy = False
        if self.buf:
            self._next()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None


def _forward(request: bytes, client: Client) -> bytes:
    """What the gateway must do to a poll at least: parse and check the head, verify the
    routing token, build the backend's header lines (hop-by-hop ones dropped, Via added)."""
    end = request.find(b"\r\n\r\n") + 4
    head = http1.parse_request_head(request[:end])
    path, _, query = head.target.partition("?")
    route = X.resolve_token(KEYS, head.method, path, query)
    client.backend = route.backend if route is not None else "b1"
    pairs = P.forward_header_pairs(head.headers.get_all(), remote_ip="127.0.0.1", base=BASE,
                                   forwarded=False, trust_forwarded=False)
    pairs.append(("Host", head.headers.get("Host", "")))
    if len(request) > end or head.method == "POST":
        pairs.append(("Content-Length", str(len(request) - end)))
    COUNTS[0] += 1
    target = route.uri if route is not None else head.target
    return http1.serialize_head(f"{head.method} {target} HTTP/1.1", pairs) + request[end:]


def _respond(answer: bytes, client: Client) -> bytes:
    """... and to its answer: parse the head, translate the header lines, rewrite every URI
    of the page with a routing token for its backend, frame it with its new length."""
    end = answer.find(b"\r\n\r\n") + 4
    head = http1.parse_response_head(answer[:end])
    minter = X.TokenMinter(KEYS, client.backend)
    out = X.translate_response_headers(head.headers.get_all(), backend_base=UPSTREAM, gateway_base=BASE,
                                       request_transaction=None, route=minter)
    rw = P.UriRewriter(BASE, minter)
    body = rw.page(answer[end:])   # the whole answer is here: one pass
    lines = [(n, v) for n, v in out.headers if n.lower() != "content-length"]
    lines.append(("Content-Length", str(len(body))))
    COUNTS[1] += 1
    return http1.serialize_head(f"HTTP/1.1 {head.code} {head.reason}", lines) + body


COUNTS = [0, 0]
KEYS: Any = None
BASE = UPSTREAM = ""


class Proxy:
    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.idle: list[Upstream] = []

    async def connect(self, client: Client, request: bytes) -> None:
        loop = asyncio.get_running_loop()
        try:
            _, up = await loop.create_connection(lambda: Upstream(self), self.host, self.port)
        except OSError:
            if client.transport is not None:
                client.transport.write(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
            client.answered()
            return
        up.client = client
        up.transport.write(request)


async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--upstream", required=True, help="host:port")
    p.add_argument("--features", action="store_true",
                   help="also do what the gateway cannot skip for a poll (head parsing, routing "
                        "token, header lines, URI rewriting with tokens), with its own code")
    args = p.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    host, _, port = args.upstream.rpartition(":")
    proxy = Proxy(host, int(port))
    server = await asyncio.get_running_loop().create_server(lambda: Client(proxy), "127.0.0.1",
                                                            args.port, backlog=4096)
    listen = server.sockets[0].getsockname()[1]
    if args.features:
        global FEATURES, KEYS, BASE, UPSTREAM
        FEATURES, KEYS = True, TokenKeys(os.urandom(32))
        BASE, UPSTREAM = f"http://127.0.0.1:{listen}", f"http://{args.upstream}"
    print(f"READY {listen}", flush=True)
    await server.serve_forever()


if __name__ == "__main__":
    # On the event loop the gateway would run on here (uvloop by default, TRINO_GATEWAY_LOOP
    # chooses): a floor measured on asyncio next to a gateway on uvloop compares loops, not code.
    from gateway.runtime import loop as gateway_loop  # noqa: E402
    gateway_loop.run(main())
