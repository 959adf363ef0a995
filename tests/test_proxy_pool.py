"""The idle backend pool is bounded by recent use (gateway/proxy/client.py ``IdleBound``), so a
burst of answers after a stall does not close connections the next polls need (issue 19)."""
from __future__ import annotations

import asyncio

from tornado.httputil import HTTPHeaders

from gateway.proxy.client import BackendClient, BufferSink, IdleBound, SpareWant


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


async def _parking_backend() -> tuple[asyncio.AbstractServer, str, asyncio.Event, dict[str, int]]:
    """A backend that parks every request until ``release`` is set (a long poll)."""
    release = asyncio.Event()
    seen = {"accepted": 0, "requests": 0}

    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        seen["accepted"] += 1
        try:
            while True:
                await r.readuntil(b"\r\n\r\n")
                seen["requests"] += 1
                await release.wait()
                w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                await w.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            w.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, backlog=1024)
    return server, f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}", release, seen


def _poll(client: BackendClient, base: str) -> "asyncio.Future[int]":
    return asyncio.ensure_future(client.fetch(base, "GET", "/v1/statement/executing/q/y/1", HTTPHeaders(),
                                              None, BufferSink()))


async def _until(cond, timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not cond():
        assert loop.time() < end, "condition not reached"
        await asyncio.sleep(0.005)


def _burst_twice(spares) -> tuple[int, int, int]:
    """300 long polls parked at once, answered at once, then 300 more: (backend connections
    accepted, connects after the first round, connects after the second)."""
    async def main() -> tuple[int, int, int]:
        server, base, release, seen = await _parking_backend()
        client = BackendClient(spares=spares)
        key = ("http", "127.0.0.1", int(base.rsplit(":", 1)[1]))
        after = []
        try:
            for _ in range(2):
                release.clear()
                polls = [_poll(client, base) for _ in range(300)]
                await _until(lambda: client._bound(key).in_use == 300)
                release.set()
                assert await asyncio.gather(*polls) == [200] * 300
                await _until(lambda: not client._opening.get(key))
                after.append(client.connects)
            return seen["accepted"], after[0], after[1]
        finally:
            client.close()
            server.close()

    return asyncio.run(asyncio.wait_for(main(), 30))


def test_a_burst_of_answers_keeps_its_connections_for_the_next_polls():
    """The second round reuses the first round's connections (a fixed bound of 64 closed 236 of
    them and connected again)."""
    assert _burst_twice(None) == (300, 300, 300)


def test_spares_add_at_most_their_cap_per_round_to_a_burst():
    """With spares on, a burst also opens spares (at most ``cap`` per round), and the second
    round still reuses the first round's connections instead of connecting again."""
    accepted, first, second = _burst_twice(SpareWant)
    cap = SpareWant().cap
    assert 300 < first <= 300 + cap
    assert second - first <= cap
    assert accepted == second


def test_spare_want_counts_recent_misses_from_a_threshold_up_to_a_cap():
    w = SpareWant(window=1.0, after=4, cap=10)
    assert w.want(0.0) == 0
    for t in (0.0, 0.1, 0.2):
        w.miss(t)
    assert w.want(0.3) == 0                    # three misses: a quiet gateway opens no spares
    w.miss(0.4)
    assert w.want(0.5) == 4
    for i in range(20):
        w.miss(0.5 + i * 0.01)
    assert w.want(0.7) == 10                   # never above the cap
    assert w.want(1.45) == 10                  # the first four have left the window, twenty remain
    assert w.want(1.75) == 0                   # the window passed: the misses are forgotten


def test_spare_want_pauses_for_a_window_after_a_failed_spare():
    w = SpareWant(window=1.0, after=1, cap=10)
    for _ in range(5):
        w.miss(0.0)
    w.failed(0.1)
    assert w.want(0.2) == 0
    w.miss(1.05)
    assert w.want(1.15) == 1                   # the pause is over; only recent misses count


def test_while_requests_keep_connecting_spares_take_the_connect_off_their_path():
    """Long polls started one after another (queries ramping up): each needs a connection of its
    own. Without spares every one connects on its own path; with them, only the first few do."""
    async def ramp(spares) -> tuple[int, int]:
        server, base, release, seen = await _parking_backend()
        client = BackendClient(spares=spares)
        key = ("http", "127.0.0.1", int(base.rsplit(":", 1)[1]))
        polls = []
        try:
            for i in range(40):
                polls.append(_poll(client, base))
                await _until(lambda: seen["requests"] == i + 1 and not client._opening.get(key))
            release.set()
            assert await asyncio.gather(*polls) == [200] * 40
            return client.connects - client.spares_opened, client.spares_opened
        finally:
            client.close()
            server.close()

    def run(spares) -> tuple[int, int]:
        return asyncio.run(asyncio.wait_for(ramp(spares), 30))

    assert run(None) == (40, 0)
    on_path, opened = run(lambda: SpareWant(window=60.0, after=4, cap=8))
    assert on_path == 4                        # the misses before the threshold
    assert 36 <= opened <= 36 + 8              # the rest were spares, at most a cap ahead


def test_a_refusing_backend_gets_no_storm_of_spare_connects():
    """Spares that cannot connect pause spares for a window: requests to a backend that refuses
    connections do not multiply into ``cap`` connects each."""
    async def main() -> tuple[int, int]:
        import socket
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()                              # nothing listens: connects are refused
        client = BackendClient(spares=lambda: SpareWant(window=60.0, after=1, cap=8))
        key = ("http", "127.0.0.1", port)
        try:
            for _ in range(20):
                try:
                    await client.fetch(f"http://127.0.0.1:{port}", "GET", "/v1/info", HTTPHeaders(), None,
                                       BufferSink())
                except Exception:
                    pass
                await _until(lambda: not client._opening.get(key))
            return client.connects, client.spares_opened
        finally:
            client.close()

    connects, opened = asyncio.run(asyncio.wait_for(main(), 30))
    assert opened == 1                         # one spare failed; the pause held for the rest
    assert connects == 21
