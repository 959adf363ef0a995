"""The idle backend pool is bounded by recent use (gateway/proxy/client.py ``IdleBound``), so a
burst of answers after a stall does not close connections the next polls need (issue 19)."""
from __future__ import annotations

import asyncio

from tornado.httputil import HTTPHeaders

from gateway.proxy.client import BackendClient, BufferSink, IdleBound


def test_bound_keeps_what_was_in_use_at_once_within_floor_and_ceiling():
    b = IdleBound(window=60, floor=8, ceiling=500)
    assert b.limit(0) == 8                     # nothing used yet: the floor
    for _ in range(300):
        b.acquire(1)
    assert b.limit(2) == 300
    for _ in range(300):
        b.release(3)
    assert b.limit(4) == 300                   # all back in the pool: still worth keeping
    for _ in range(700):
        b.acquire(5)
    assert b.limit(6) == 500                   # never above the ceiling


def test_bound_forgets_a_peak_after_two_quiet_windows():
    b = IdleBound(window=10, floor=2, ceiling=1000)
    for _ in range(50):
        b.acquire(0)
    for _ in range(50):
        b.release(1)
    b.acquire(11)                              # next window: the previous peak still counts
    b.release(11)
    assert b.limit(12) == 50
    b.acquire(22)                              # the window after: only recent use counts
    b.release(22)
    assert b.limit(23) == 2
    for _ in range(40):
        b.acquire(30)
    for _ in range(40):
        b.release(30)
    assert b.limit(31) == 40
    assert b.limit(100) == 2                   # no traffic for windows: back to the floor


def test_a_burst_of_answers_keeps_its_connections_for_the_next_polls():
    """300 long polls parked at once, answered at once, then 300 more: the second round reuses
    the first round's connections (a fixed bound of 64 closed 236 of them and connected again)."""
    async def main() -> tuple[int, int]:
        release = asyncio.Event()
        accepted = 0

        async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            nonlocal accepted
            accepted += 1
            try:
                while True:
                    await r.readuntil(b"\r\n\r\n")
                    await release.wait()
                    w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                    await w.drain()
            except (asyncio.IncompleteReadError, ConnectionError):
                pass
            finally:
                w.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0, backlog=1024)
        base = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        client = BackendClient()

        async def poll() -> int:
            return await client.fetch(base, "GET", "/v1/statement/executing/q/y/1", HTTPHeaders(), None,
                                      BufferSink())
        try:
            for _ in range(2):
                release.clear()
                polls = [asyncio.ensure_future(poll()) for _ in range(300)]
                while client._bound(("http", "127.0.0.1", int(base.rsplit(":", 1)[1]))).in_use < 300:
                    await asyncio.sleep(0.01)
                release.set()
                assert await asyncio.gather(*polls) == [200] * 300
            return accepted, client.connects
        finally:
            client.close()
            server.close()

    accepted, connects = asyncio.run(asyncio.wait_for(main(), 30))
    assert (accepted, connects) == (300, 300)
