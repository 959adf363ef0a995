"""The forwarding client (gateway/proxy/client.py) against scripted backends speaking raw bytes."""
from __future__ import annotations

import asyncio
from typing import Any, Awaitable, Callable

import pytest
from tornado.httputil import HTTPHeaders

from gateway.proxy.client import BackendClient, BackendError, BufferSink

Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def read_request(r: asyncio.StreamReader) -> bytes:
    head = await r.readuntil(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            head += await r.readexactly(int(line.split(b":")[1]))
    return head


def run(script: Script, test: Callable[[str, dict[str, int]], Awaitable[Any]]) -> Any:
    """Start a backend running ``script`` per connection; ``stats['connections']`` counts them."""
    async def main() -> Any:
        stats = {"connections": 0}

        async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            stats["connections"] += 1
            try:
                await script(r, w)
            except (asyncio.IncompleteReadError, ConnectionError):
                pass
            finally:
                w.close()
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            return await asyncio.wait_for(test(f"http://127.0.0.1:{port}", stats), 10)
        finally:
            server.close()
    return asyncio.run(main())


def answers(*responses: bytes, close: bool = False) -> Script:
    """Answer requests with ``responses`` in turn; then close (``close``) or wait for the client to."""
    async def script(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        for resp in responses:
            await read_request(r)
            w.write(resp)
            await w.drain()
        if not close:
            await r.read()
    return script


async def get(client: BackendClient, base: str, method: str = "GET", body: bytes | None = None,
              **kw: Any) -> BufferSink:
    sink = BufferSink()
    sink.code = await client.fetch(base, method, "/v1/x", HTTPHeaders({"X-A": "1"}), body, sink, **kw)
    return sink


def test_fixed_chunked_and_close_delimited_bodies():
    async def t(base: str, stats: dict[str, int]) -> None:
        c = BackendClient()
        s = await get(c, base)
        assert (s.code, bytes(s.body)) == (200, b"hello")
        s = await get(c, base)
        assert (s.code, bytes(s.body)) == (201, b"abcdef")
        s = await get(c, base)
        assert (s.code, bytes(s.body)) == (202, b"until close")
        assert stats["connections"] == 1   # keep-alive until the close-delimited answer
    run(answers(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
                b"HTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\n"
                b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n3\r\ndef\r\n0\r\n\r\n",
                b"HTTP/1.0 202 Accepted\r\n\r\nuntil close", close=True), t)


def test_head_and_204_have_no_body_and_keep_the_connection():
    async def t(base: str, stats: dict[str, int]) -> None:
        c = BackendClient()
        assert (await get(c, base, "HEAD")).code == 200
        assert (await get(c, base, "DELETE")).code == 204
        assert (await get(c, base)).body == b"ok"
        assert stats["connections"] == 1
    run(answers(b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n",
                b"HTTP/1.1 204 No Content\r\n\r\n",
                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"), t)


def test_request_head_and_body_go_out_together_with_host_and_length():
    seen: list[bytes] = []

    async def script(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        seen.append(await read_request(r))
        w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        await w.drain()

    async def t(base: str, stats: dict[str, int]) -> None:
        await get(BackendClient(), base, "POST", b"SELECT 1")
    run(script, t)
    assert seen[0].startswith(b"POST /v1/x HTTP/1.1\r\n")
    assert b"\r\nHost: 127.0.0.1:" in seen[0] and b"\r\nContent-Length: 8\r\n" in seen[0]
    assert seen[0].endswith(b"\r\n\r\nSELECT 1")


def test_connection_close_is_not_reused():
    async def t(base: str, stats: dict[str, int]) -> None:
        c = BackendClient()
        await get(c, base)
        await get(c, base)
        assert stats["connections"] == 2
    run(answers(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"), t)


def test_a_rejected_request_never_reuses_its_connection():
    """Trino's Jetty answers 406 (X-Forwarded-*) and closes, without "Connection: close".

    Found against a real coordinator: the POST retried without the headers went out on the
    closed connection and failed as "closed before answering".
    """
    async def jetty_reject(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await read_request(r)
        w.write(b"HTTP/1.1 406 Not Acceptable\r\nContent-Length: 2\r\n\r\nno")
        await w.drain()
        await asyncio.sleep(0.05)   # the close reaches the client after the response

    async def t(base: str, stats: dict[str, int]) -> None:
        c = BackendClient()
        assert (await get(c, base, "POST", b"SELECT 1")).code == 406
        # at once, as the gateway retries without the headers: the close is still on its way
        assert (await get(c, base, "POST", b"SELECT 1")).code == 406
        assert stats["connections"] == 2
    run(jetty_reject, t)


def test_an_idle_connection_the_backend_closed_is_replaced_even_for_a_post():
    async def idle_close(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await read_request(r)
        w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        await w.drain()
        await asyncio.sleep(0.05)   # then the backend's idle timeout closes it

    async def t(base: str, stats: dict[str, int]) -> None:
        c = BackendClient()
        await get(c, base)
        await asyncio.sleep(0.2)
        assert (await get(c, base, "POST", b"x")).code == 200
        assert stats["connections"] == 2
    run(idle_close, t)


def test_refused_connection_is_not_sent_and_silence_is_a_timeout():
    async def hang(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await read_request(r)
        await asyncio.sleep(5)

    async def t(base: str, stats: dict[str, int]) -> None:
        with pytest.raises(BackendError) as exc:
            await get(BackendClient(), "http://127.0.0.1:1")
        assert not exc.value.sent
        with pytest.raises(BackendError) as exc:
            await get(BackendClient(), base, request_timeout=0.3)
        assert exc.value.sent and exc.value.timeout
    run(hang, t)


def test_a_connect_the_backend_never_completes_times_out_unsent_and_leaves_nothing_running():
    """A listener whose accept queue is full drops further SYNs: the connect hangs until
    ``connect_timeout``, which must end it as a timeout the backend cannot have seen, with the
    connect cancelled rather than left behind."""
    import socket

    async def main() -> None:
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)                     # never accepted: queue of one, then SYNs dropped
        port = listener.getsockname()[1]
        fillers = []
        try:
            for _ in range(3):                 # fill the accept queue (backlog 0 holds one or two)
                f = socket.socket()
                f.setblocking(False)
                f.connect_ex(("127.0.0.1", port))
                fillers.append(f)
            client = BackendClient(connect_timeout=0.3)
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            tasks = asyncio.all_tasks()
            with pytest.raises(BackendError) as exc:
                await get(client, f"http://127.0.0.1:{port}")
            assert not exc.value.sent and exc.value.timeout
            assert "timed out connecting after 0.3s" in str(exc.value)
            assert 0.3 <= loop.time() - t0 < 3
            await asyncio.sleep(0)
            assert asyncio.all_tasks() == tasks   # no connect left running
            assert client.connects == 1 and not client._pools.get(("http", "127.0.0.1", port))
        finally:
            for f in fillers:
                f.close()
            listener.close()
    asyncio.run(asyncio.wait_for(main(), 10))


def test_backend_closing_mid_response_is_an_error_that_may_have_been_sent():
    async def t(base: str, stats: dict[str, int]) -> None:
        with pytest.raises(BackendError, match="mid-response") as exc:
            await get(BackendClient(), base)
        assert exc.value.sent
    run(answers(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", close=True), t)


class SlowSink(BufferSink):
    """Returns a pending future for each chunk: reading must wait until it completes."""

    def __init__(self) -> None:
        super().__init__()
        self.pending: asyncio.Future[None] | None = None
        self.chunks = 0

    def on_chunk(self, chunk: bytes) -> Any:
        super().on_chunk(chunk)
        self.chunks += 1
        self.pending = asyncio.get_running_loop().create_future()
        return self.pending


def test_a_slow_sink_pauses_reading_until_it_is_ready():
    big = b"x" * 300_000

    async def t(base: str, stats: dict[str, int]) -> None:
        sink = SlowSink()
        task = asyncio.ensure_future(BackendClient().fetch(base, "GET", "/", HTTPHeaders(), None, sink))
        while sink.pending is None:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.1)
        assert sink.chunks == 1 and not task.done()   # paused on the first chunk
        while not task.done():
            if sink.pending is not None and not sink.pending.done():
                sink.pending.set_result(None)
            await asyncio.sleep(0.005)
        assert await task == 200 and bytes(sink.body) == big
    run(answers(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%b" % (len(big), big)), t)


def test_an_error_in_the_sink_ends_the_exchange_and_propagates():
    class Boom(BufferSink):
        def on_chunk(self, chunk: bytes) -> None:
            raise RuntimeError("client gone")

    async def t(base: str, stats: dict[str, int]) -> None:
        with pytest.raises(RuntimeError, match="client gone"):
            await BackendClient().fetch(base, "GET", "/", HTTPHeaders(), None, Boom())
    run(answers(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc"), t)


# -- the silence sweep (BackendClient._sweep) ---------------------------------------------------

class _Watched:
    """What the sweep reads of a connection waiting on its backend."""

    def __init__(self, silent_for: float, *, visited: bool = True) -> None:
        import time
        self.activity = time.monotonic() - silent_for
        self.paused = False
        self._waiter = asyncio.get_running_loop().create_future()
        self._may_visit = visited

    @property
    def waiter(self) -> Any:
        return self._waiter

    @property
    def watched_at(self) -> float:
        if not self._may_visit:
            raise AssertionError("the sweep visited an exchange behind one too recent to time out")
        return self._watched_at

    @watched_at.setter
    def watched_at(self, value: float) -> None:
        self._watched_at = value


def _timed_out(w: _Watched) -> bool:
    from gateway.proxy.client import _Timeout
    return w._waiter.done() and isinstance(w._waiter.exception(), _Timeout)


def _sweeping(body: Callable[[BackendClient], None]) -> None:
    """Run ``body`` with a client on a running loop (the watched exchanges' waiters need one)."""
    async def main() -> None:
        client = BackendClient()
        try:
            body(client)
        finally:
            client.close()
    asyncio.run(main())


def test_the_sweep_times_out_silent_exchanges_and_stops_at_the_first_one_too_recent_to():
    def body(client: BackendClient) -> None:
        import time
        old = _Watched(90)                  # silent beyond its 60 s timeout
        quiet = _Watched(61)                # watched 61 s ago, but heard from since
        recent = _Watched(2)                # every later entry was watched after it: not visited
        after = _Watched(1, visited=False)
        for w in (old, quiet, recent, after):
            client._watch(w, 60.0, None)    # type: ignore[arg-type]
        quiet.activity = time.monotonic() - 5
        client._sweep()
        assert _timed_out(old) and not quiet._waiter.done() and not recent._waiter.done()
        assert list(client._waiting) == [quiet, recent, after]
    _sweeping(body)


def test_a_connection_watched_again_moves_behind_the_others():
    def body(client: BackendClient) -> None:
        import time
        a, b = _Watched(120), _Watched(90)
        client._watch(a, 60.0, None)        # type: ignore[arg-type]
        client._watch(b, 60.0, None)        # type: ignore[arg-type]
        a.activity = time.monotonic()       # a's next exchange starts now
        client._watch(a, 60.0, None)        # type: ignore[arg-type]
        assert list(client._waiting) == [b, a]
        client._sweep()                     # b is reached (a stopped nothing before it)
        assert _timed_out(b) and not a._waiter.done()
    _sweeping(body)


def test_a_short_timeout_behind_long_ones_is_still_reached_and_the_floor_resets_when_empty():
    def body(client: BackendClient) -> None:
        long_, short = _Watched(3), _Watched(2)
        client._watch(long_, 60.0, None)    # type: ignore[arg-type]
        client._watch(short, 1.0, None)     # type: ignore[arg-type]
        client._sweep()
        assert _timed_out(short) and not long_._waiter.done()
        long_._waiter.set_result(None)      # its exchange ended: dropped at the next sweep
        client._sweep()
        assert not client._waiting and client._floor == float("inf") and client._sweeper is None
    _sweeping(body)
