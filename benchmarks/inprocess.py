"""A gateway and a coordinator on the running event loop, in one process, for counting scripts.

``benchmarks/loop_turns.py`` (event-loop turns per request) and ``benchmarks/poll_calls.py``
(Python calls per poll) count rather than time: they need the gateway, a minimal coordinator
and their own client on one loop. This is that set-up, in one place: the coordinator is an
``asyncio.Protocol`` class of the script's, the gateway has one backend (``b1``) in front of it,
its state in a temporary directory, and the monitor's first round done (the backend HEALTHY).
"""
from __future__ import annotations

import asyncio
import contextlib
import sys
import tempfile
from pathlib import Path
from typing import Any, AsyncIterator, Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tornado.netutil import bind_sockets  # noqa: E402

from gateway.app import Gateway, make_app  # noqa: E402
from gateway.config import config_from_dict  # noqa: E402
from gateway.runtime.http_server import HTTPServer  # noqa: E402
from gateway.runtime.serve import server_options  # noqa: E402


class MinimalCoordinator(asyncio.Protocol):
    """Reads requests (``Content-Length`` bodies) and writes what ``answer`` returns for each."""

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.buf = b""

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while b"\r\n\r\n" in self.buf:
            head, _, rest = self.buf.partition(b"\r\n\r\n")
            lines = head.split(b"\r\n")
            method, target, _ = lines[0].decode().split(" ")
            length = sum(int(h.split(b":", 1)[1]) for h in lines[1:] if h.lower().startswith(b"content-length:"))
            if len(rest) < length:
                return
            self.buf = rest[length:]
            self.transport.write(self.answer(method, target, "http://127.0.0.1:%d" % self.transport.get_extra_info("sockname")[1]))

    def answer(self, method: str, target: str, base: str) -> bytes:
        """The whole answer (head and body) to ``method target``; ``base``: this coordinator's URL."""
        raise NotImplementedError


@contextlib.asynccontextmanager
async def gateway_before(coordinator: Callable[[], asyncio.Protocol], name: str) -> AsyncIterator[tuple[Gateway, int]]:
    """(the gateway, its port), serving on this loop in front of ``coordinator`` (a protocol
    factory served on this loop too); everything stopped on exit."""
    backend = await asyncio.get_running_loop().create_server(coordinator, "127.0.0.1", 0)
    with tempfile.TemporaryDirectory(prefix=f"tgw-{name}-") as state:
        cfg = config_from_dict({
            "server": {"host": "127.0.0.1", "port": 0},
            "store": {"url": f"sqlite:///{state}/gw.db"},
            "routing": {"defaultGroup": "adhoc"},
            "monitor": {"type": "info-api", "interval": "60s", "timeout": "2s"},
            "backends": [{"name": "b1", "routingGroup": "adhoc",
                          "proxyTo": f"http://127.0.0.1:{backend.sockets[0].getsockname()[1]}"}],
        }, f"<{name}>")
        gw = Gateway(cfg)
        await gw.start()
        server: Any = None
        try:
            for _ in range(500):   # the first probe round: the backend is HEALTHY
                if gw.monitor.first_round_done:
                    break
                await asyncio.sleep(0.01)
            socks = bind_sockets(0, "127.0.0.1")
            server = HTTPServer(make_app(gw), **server_options(cfg))
            server.add_sockets(socks)
            yield gw, socks[0].getsockname()[1]
        finally:
            if server is not None:
                server.stop()
                await server.close_all_connections()
            await gw.stop()
            backend.close()
