"""The forwarding client: HTTP/1.1 to backends over a keep-alive connection pool.

Each backend connection is an asyncio protocol that parses responses as bytes arrive and feeds
them straight to a sink (the proxy handler): no coroutine per chunk, one ``send`` per request
(head and body together), no probe syscall when a pooled connection is reused (the protocol
already knows when the backend closed it). Back-pressure: when the sink returns an awaitable
(the client is slow), reading from the backend pauses until it completes.

The caller learns whether a failure happened before the request could have reached the backend,
which decides whether a POST may be retried elsewhere (a statement is never sent twice).
"""
from __future__ import annotations

import asyncio
import collections
import contextvars
import logging
import math
import ssl
import time
from typing import Any, Awaitable, Protocol
from urllib.parse import urlsplit

from tornado.httputil import HTTPHeaders

from gateway.runtime.http1 import (ChunkedDecoder, HTTPParseError, RepeatedResponses, body_length,
                                   find_head_end, parse_response_head, serialize_head)


log = logging.getLogger("gateway.proxy")


class BackendError(Exception):
    """A forward failed. ``sent`` tells whether the backend may have received the request."""

    def __init__(self, message: str, *, sent: bool, timeout: bool = False) -> None:
        super().__init__(message)
        self.sent = sent
        self.timeout = timeout


class ResponseSink(Protocol):
    """What the client feeds a response into (the proxy handler implements it)."""

    def on_headers(self, code: int, reason: str, headers: HTTPHeaders) -> Awaitable[None] | None: ...
    def on_chunk(self, chunk: bytes) -> Awaitable[None] | None: ...
    def on_end(self) -> Awaitable[None] | None: ...


_MAX_HEAD = 1 << 20
_HEAD, _BODY, _DONE = range(3)


class _Lost(Exception):
    """The connection ended before the response did; ``exc`` is the socket error, if any."""

    def __init__(self, exc: BaseException | None) -> None:
        super().__init__(str(exc) if exc else "connection closed")
        self.exc = exc


class Direct:
    """The waiter of a direct exchange (``BackendClient.lease``): what a future would be told,
    passed to ``done(result, exc)`` at once, in the socket event that settled it.

    A token follow-up on a pooled connection needs no task, no coroutine chain and no future
    to wait on: the connection calls its sink as bytes arrive, and this object tells the sink
    the exchange is over (``_Conn`` uses only ``done``, ``set_result`` and ``set_exception``).
    An answer that arrives whole goes to ``whole`` instead."""

    __slots__ = ("_cb", "_done", "whole")

    def __init__(self, cb: Any, whole: Any) -> None:
        self._cb = cb
        self._done = False
        # ``whole(code, reason, headers, body, heads)``: takes an answer that arrived in one piece
        # (``_Conn._whole``) and does what the sink's three calls and ``cb`` would do.
        self.whole = whole

    def done(self) -> bool:
        return self._done

    def cancelled(self) -> bool:
        return False

    def set_result(self, result: Any) -> None:
        if not self._done:
            self._done = True
            self._cb(result, None)

    def set_exception(self, exc: BaseException) -> None:
        if not self._done:
            self._done = True
            self._cb(None, exc)


class _Conn(asyncio.Protocol):
    """One keep-alive connection to a backend; one exchange at a time."""

    def __init__(self, key: tuple[str, str, int], responses: RepeatedResponses | None = None) -> None:
        self.key = key
        # the backend's answer heads, parsed (shared by its pooled connections; used by _whole)
        self.responses = responses
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.closed = False
        self.idle_since = 0.0
        self.watched_at = 0.0   # when BackendClient._watch last took this connection's exchange
        self._reset()

    def _reset(self) -> None:
        self.sink: Any = None
        self.ctx: contextvars.Context | None = None
        self.waiter: asyncio.Future[Any] | None = None
        self.state = _HEAD
        self.head_only = False
        self.code = 0
        self.keep_alive = False
        self.started = False
        self.remaining = 0
        self.decoder: ChunkedDecoder | None = None
        self.until_close = False
        self.paused = False
        self.activity = 0.0
        self._end_after_resume = False

    # -- asyncio.Protocol --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.waiter is None:
            self.close()   # bytes on an idle connection: it cannot carry another request
            return
        self.activity = time.monotonic()
        if self.state == _HEAD and not self.buf and type(self.waiter) is Direct \
                and self._whole(data, self.waiter):
            return   # the usual poll's answer: head and body in one read, taken in one call
        if self.state == _BODY and not self.buf and not self.paused and not self.waiter.done():
            self._body(data)   # the common case on a big page: straight to the sink, no copy
            return
        self.buf += data
        self._advance()

    def eof_received(self) -> bool | None:
        if self.waiter is not None and self.until_close and self.state == _BODY:
            self._end()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.waiter is not None and not self.waiter.done():
            if self.until_close and self.state == _BODY and exc is None:
                self._end()
            else:
                self.waiter.set_exception(_Lost(exc))

    # -- one exchange ----------------------------------------------------------------------

    def start(self, data: bytes, sink: Any, head_only: bool, waiter: Any = None) -> Any:
        """Send ``data`` and feed the answer to ``sink``; the waiter that settles when it ends.

        The waiter is a new future, or ``waiter`` (a ``Direct``: the exchange of a token
        follow-up, settled by a callback, no task involved)."""
        self._reset()
        self.sink = sink
        if waiter is None:
            # Sink callbacks run from socket events; give them the caller's context (the
            # metrics of the request being answered live in a context variable). A direct
            # exchange's sink carries its own record and needs none.
            self.ctx = contextvars.copy_context()
            waiter = asyncio.get_running_loop().create_future()
        self.head_only = head_only
        self.activity = time.monotonic()
        self.waiter = waiter
        assert self.transport is not None
        self.transport.write(data)
        return waiter

    def finish_exchange(self) -> None:
        self.sink = None
        self.waiter = None

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def _fail(self, exc: BaseException) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(exc)
        self.close()

    def _advance(self) -> None:
        while not self.paused and self.waiter is not None and not self.waiter.done():
            if self.state == _HEAD:
                if not self._read_head():
                    return
            elif self.state == _BODY:
                if not self._read_body():
                    return
            else:
                return

    def _read_head(self) -> bool:
        end = find_head_end(self.buf)
        if end < 0:
            if len(self.buf) > _MAX_HEAD:
                self._fail(HTTPParseError("response head too large"))
            return False
        head = bytes(self.buf[:end])
        del self.buf[:end]
        try:
            rh = parse_response_head(head)
            length = body_length(rh.headers)
        except HTTPParseError as exc:
            self._fail(exc)
            return False
        if 100 <= rh.code < 200:
            return True   # an interim response (103 Early Hints): the real one follows
        self.started = True
        self.code = rh.code
        self.keep_alive = _keeps_alive(rh)
        if self.head_only or rh.code in (204, 304):
            self.remaining = 0
        elif length == -1:
            self.decoder = ChunkedDecoder()
        elif length is not None:
            self.remaining = length
        else:
            self.until_close = True
            self.keep_alive = False
        self.state = _BODY
        if not self._deliver(self.sink.on_headers, rh.code, rh.reason, rh.headers):
            return False
        if self.remaining == 0 and self.decoder is None and not self.until_close:
            self._end()
            return False
        return True

    def _whole(self, data: bytes, waiter: Direct) -> bool:
        """``data``, the first bytes of the answer, is all of it: a head and exactly the body
        its ``Content-Length`` gives (a poll's page usually arrives so). Hand it to
        ``waiter.whole`` at once, the exchange over; False (nothing done) for anything else,
        which the general path reads: a head not complete or not valid, an interim or bodiless
        status, chunked or close-delimited framing, bytes past the body, a status after which
        the backend may close (a 406 for ``X-Forwarded-*`` among them)."""
        end = find_head_end(data)
        if end < 0:
            return False
        head = data[:end]
        memo = self.responses
        try:
            if memo is None:
                rh = parse_response_head(head)
                length, same = body_length(rh.headers), False
            else:
                rh, length, same = memo.parse(head)
        except HTTPParseError:
            return False   # the general path fails the exchange, saying why
        code = rh.code
        if length is None or length != len(data) - end or code < 200 or code in _NO_WHOLE \
                or self.head_only or waiter._done:
            return False
        if memo is not None and not same and not memo.keep(head, rh):
            memo = None   # lines that change from answer to answer: nothing to reuse
        self.started = True
        self.code = code
        self.keep_alive = _keeps_alive(rh)
        self.state = _DONE
        waiter._done = True
        try:
            waiter.whole(code, rh.reason, rh.headers, data[end:], memo)
        except BaseException:  # noqa: BLE001 - ``whole`` answers its own failures; a bug must not reach the loop
            log.exception("direct exchange: the answer's handler failed")
            self.close()
        return True

    def _read_body(self) -> bool:
        if not self.buf:
            return False
        data = bytes(self.buf)
        self.buf.clear()
        return self._body(data)

    def _body(self, data: bytes) -> bool:
        """Hand body bytes to the sink; bytes past the body stay in ``buf``. True: go on."""
        if self.decoder is not None:
            try:
                pieces, rest = self.decoder.feed(data)
            except HTTPParseError as exc:
                self._fail(exc)
                return False
            if rest:
                self.buf += rest
            data = pieces[0] if len(pieces) == 1 else b"".join(pieces)
            done = self.decoder.done
        elif self.until_close:
            done = False
        else:
            if len(data) > self.remaining:
                self.buf += data[self.remaining:]
                data = data[:self.remaining]
            self.remaining -= len(data)
            done = self.remaining == 0
        if data and not self._deliver(self.sink.on_chunk, data):
            if done:
                self._end_after_resume = True
            return False
        if done:
            self._end()
            return False
        return bool(self.buf)

    def _deliver(self, fn: Any, *args: Any) -> bool:
        """Call the sink; True to go on now, False when paused (or failed)."""
        try:
            result = fn(*args) if self.ctx is None else self.ctx.run(fn, *args)
        except BaseException as exc:  # noqa: BLE001 - the sink's error ends the exchange
            self._fail(exc)
            return False
        if result is None:
            return True
        if isinstance(result, asyncio.Future) and result.done() and not result.cancelled() \
                and result.exception() is None:
            return True   # a flush the client already took: no need to pause
        self.paused = True
        if self.transport is not None:
            self.transport.pause_reading()
        fut = asyncio.ensure_future(result)
        fut.add_done_callback(self._resumed)
        return False

    def _resumed(self, fut: "asyncio.Future[Any]") -> None:
        self.paused = False
        if fut.cancelled():
            self._fail(asyncio.CancelledError())
            return
        exc = fut.exception()
        if exc is not None:
            self._fail(exc)
            return
        if self.waiter is None or self.waiter.done():
            return
        self.activity = time.monotonic()
        if self.transport is not None and not self.closed:
            self.transport.resume_reading()
        if self._end_after_resume:
            self._end_after_resume = False
            self._end()
            return
        if self.state == _BODY and self.remaining == 0 and self.decoder is None and not self.until_close:
            self._end()
            return
        self._advance()

    def _end(self) -> None:
        self.state = _DONE
        try:
            pending = self.sink.on_end() if self.ctx is None else self.ctx.run(self.sink.on_end)
        except BaseException as exc:  # noqa: BLE001
            self._fail(exc)
            return
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(pending)


class IdleBound:
    """How many idle connections to one backend are worth keeping: as many as were in use at
    once recently (this window or the previous one), at least ``floor``, at most ``ceiling``.

    A fixed small bound churned after a stall (issue 19): a garbage-collector pause or a burst
    let many long polls answer at once, all but 64 of the freed connections were closed, and the
    next polls connected again by the thousand (17,030 connects for 10,000 queries), overflowing
    the backend's accept queue. Bounded by recent use instead, the pool keeps what the load just
    needed, and shrinks again within two windows once it needs less."""

    __slots__ = ("window", "floor", "ceiling", "in_use", "_peak", "_previous", "_since")

    def __init__(self, window: float = 60.0, floor: int = 8, ceiling: int = 65536) -> None:
        self.window = window
        self.floor = floor
        self.ceiling = ceiling
        self.in_use = 0
        self._peak = 0          # most in use at once in the current window
        self._previous = 0      # ... in the window before
        self._since = 0.0

    def _roll(self, now: float) -> None:
        """A new window starts (its callers check that the last one has passed: they run for
        every request, and a call is most of what this check costs)."""
        # a window with no traffic at all leaves nothing to remember from before it
        self._previous = self._peak if now - self._since < 2 * self.window else 0
        self._peak = self.in_use
        self._since = now

    def acquire(self, now: float) -> None:
        if now - self._since >= self.window:
            self._roll(now)
        self.in_use += 1
        if self.in_use > self._peak:
            self._peak = self.in_use

    def release(self, now: float) -> None:
        if now - self._since >= self.window:
            self._roll(now)
        if self.in_use > 0:
            self.in_use -= 1

    def limit(self, now: float) -> int:
        """Idle connections to keep now."""
        if now - self._since >= self.window:
            self._roll(now)
        return min(self.ceiling, max(self.floor, self._peak, self._previous))


class BackendClient:
    """Keep-alive HTTP/1.1 client for forwarding; one per process.

    Idle connections per backend are bounded by recent use (``IdleBound``; ``max_idle_per_host``
    is the ceiling) and closed once idle for ``idle_ttl``. ``on_connect`` is called for every
    new connection (the ``trino_gateway_backend_connects_total`` metric)."""

    def __init__(self, *, connect_timeout: float = 5.0, request_timeout: float = 60.0,
                 max_idle_per_host: int = 65536, min_idle_per_host: int = 8, idle_ttl: float = 15.0,
                 max_body_size: int = 1 << 40, ssl_context: ssl.SSLContext | None = None,
                 on_connect: Any = None) -> None:
        self.connect_timeout = connect_timeout
        self.request_timeout = request_timeout
        self.max_idle_per_host = max_idle_per_host
        self.min_idle_per_host = min_idle_per_host
        self.idle_ttl = idle_ttl
        self.ssl_context = ssl_context
        self.on_connect = on_connect
        self.connects = 0
        self._pools: dict[tuple[str, str, int], collections.deque[_Conn]] = {}
        self._bounds: dict[tuple[str, str, int], IdleBound] = {}
        self._addr: dict[str, tuple[str, str, int, str]] = {}
        self._responses: dict[tuple[str, str, int], RepeatedResponses] = {}   # per backend
        # Exchanges waiting on a backend, checked for silence by one timer (_sweep) rather than
        # a timer per request: a long poll parked on a backend then holds no timer handle, no
        # context copy and no argument tuple for the garbage collector to walk (issue 19).
        # Its entries are in the order they were watched (``_watch`` re-inserts), so the sweep
        # stops at the first one watched less than the shortest timeout ago (``_floor``): none
        # after it can have timed out. Long polls far shorter than their timeout then cost the
        # sweep nothing, where it used to visit every one each second (2-3 % of a worker's CPU
        # at 1,000 in flight).
        self._waiting: dict[_Conn, float] = {}
        self._sweeper: asyncio.TimerHandle | None = None
        self._tick = 1.0
        self._floor = math.inf   # the shortest timeout watched since _waiting was last empty

    def _bound(self, key: tuple[str, str, int]) -> IdleBound:
        b = self._bounds.get(key)
        if b is None:
            b = self._bounds[key] = IdleBound(window=max(1.0, 4 * self.idle_ttl), floor=self.min_idle_per_host,
                                              ceiling=self.max_idle_per_host)
        return b

    def _target(self, base: str) -> tuple[str, str, int, str]:
        t = self._addr.get(base)
        if t is None:
            parts = urlsplit(base)
            scheme = parts.scheme
            host = parts.hostname or "localhost"
            port = parts.port or (443 if scheme == "https" else 80)
            default = (scheme == "https" and port == 443) or (scheme == "http" and port == 80)
            hosthdr = parts.netloc if not default else host
            t = self._addr[base] = (scheme, host, port, hosthdr)
        return t

    async def _connect(self, key: tuple[str, str, int]) -> tuple[_Conn, bool]:
        idle = self._pools.get(key)
        if idle:
            now = time.monotonic()
            while idle:
                conn = idle.pop()
                if not conn.closed and now - conn.idle_since < self.idle_ttl:
                    return conn, True
                conn.close()
        scheme, host, port = key
        responses = self._responses.get(key)
        if responses is None:
            responses = self._responses[key] = RepeatedResponses()
        ctx = None
        if scheme == "https":
            ctx = self.ssl_context or ssl.create_default_context()
        loop = asyncio.get_running_loop()
        self.connects += 1
        if self.on_connect is not None:
            self.on_connect()
        # Awaited here, not in a task of its own: a task cost a statement two more loop turns
        # before it reached a backend it had to connect to (its first step, then the wake-up of
        # the request awaiting it), each as long as a busy turn (benchmarks/loop_turns.py: 9
        # turns to the backend, 7 now; 3 on a pooled connection). The connection's transport
        # keeps a copy of this request's context; nothing reads it (the sink's callbacks run in
        # the context of the exchange they serve, ``_Conn.start``) and a request's metrics
        # record is marked done when the request ends (gateway/metrics.py ``_mine``).
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, conn = await loop.create_connection(lambda: _Conn(key, responses), host, port, ssl=ctx)
        except TimeoutError:
            raise BackendError(f"timed out connecting after {self.connect_timeout:g}s",
                               sent=False, timeout=True) from None
        except (OSError, ssl.SSLError) as exc:
            reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
            raise BackendError(f"cannot connect: {reason}", sent=False) from None
        return conn, False

    def _release(self, conn: _Conn, now: float | None = None, bound: IdleBound | None = None) -> None:
        conn.finish_exchange()
        if conn.closed or conn.buf:
            conn.close()
            return
        idle = self._pools.get(conn.key)
        if idle is None:
            idle = self._pools[conn.key] = collections.deque()
        if now is None:
            now = time.monotonic()
        # Oldest first: drop what expired or was closed by the backend, then what the bound
        # no longer covers; the connection just used is the one to keep.
        while idle and (idle[0].closed or now - idle[0].idle_since >= self.idle_ttl):
            idle.popleft().close()
        limit = (bound if bound is not None else self._bound(conn.key)).limit(now)
        while idle and len(idle) >= limit:
            idle.popleft().close()
        if limit < 1:
            conn.close()
            return
        conn.idle_since = now
        idle.append(conn)

    def _request_bytes(self, base: str, method: str, target: str,
                       headers: HTTPHeaders | list[tuple[str, str]], body: bytes | None) -> bytes:
        """The whole request to ``base``: head (with Host, and Content-Length where a body is
        sent or expected) and body."""
        hosthdr = self._target(base)[3]
        with_length = body is not None or method in ("POST", "PUT", "PATCH")
        if isinstance(headers, HTTPHeaders):
            headers["Host"] = hosthdr
            if with_length:
                headers["Content-Length"] = str(len(body or b""))
        else:   # name/value pairs (the proxy's forwarded headers), without Host or length
            headers = [*headers, ("Host", hosthdr)]
            if with_length:
                headers.append(("Content-Length", str(len(body or b""))))
        data = serialize_head(f"{method} {target} HTTP/1.1", headers)
        return data + body if body else data

    async def fetch(self, base: str, method: str, target: str,
                    headers: HTTPHeaders | list[tuple[str, str]],
                    body: bytes | None, sink: ResponseSink, *,
                    request_timeout: float | None = None) -> int:
        """Send one request to ``base`` (scheme://host:port) and stream the answer into ``sink``.

        ``headers`` is an ``HTTPHeaders`` (Host and Content-Length are set in it) or a list of
        name/value pairs without them. Returns the status code. Raises BackendError; its ``sent`` is False only when the
        backend cannot have seen the request (so a POST may go elsewhere). An exception raised
        by the sink ends the exchange and propagates unchanged.
        """
        scheme, host, port, _ = self._target(base)
        data = self._request_bytes(base, method, target, headers, body)
        del headers   # serialized: not kept in this frame while the backend holds a long poll
        timeout = request_timeout if request_timeout is not None else self.request_timeout
        loop = asyncio.get_running_loop()
        key = (scheme, host, port)
        bound = self._bound(key)
        attempt = -1
        while attempt < 1:   # one retry on a fresh connection (a while: no iterator held while waiting)
            attempt += 1
            conn, reused = await self._connect(key)
            bound.acquire(time.monotonic())   # in use until this attempt ends (IdleBound)
            try:
                waiter = conn.start(data, sink, method == "HEAD")
                if timeout:
                    self._watch(conn, timeout, loop)
                try:
                    pending = await waiter
                except _Lost as lost:
                    conn.close()
                    # A stale keep-alive connection: retry once on a fresh one, unless this is a POST
                    # the backend may have read (a POST is never sent twice).
                    if stale(lost, conn) and reused and attempt == 0 and (
                            method != "POST" or not _maybe_read(lost.exc)):
                        continue
                    raise backend_error(lost, conn, timeout) from None
                except (_Timeout, HTTPParseError) as exc:
                    conn.close()
                    raise backend_error(exc, conn, timeout) from None
                except BaseException:
                    conn.close()
                    raise
                finally:
                    self._waiting.pop(conn, None)
                if pending is not None:
                    try:
                        await pending
                    except BaseException:
                        conn.close()
                        raise
                if conn.keep_alive and not conn.closed:
                    self._release(conn)
                else:
                    conn.close()
                return conn.code
            finally:
                bound.release(time.monotonic())
        raise AssertionError("unreachable")

    # -- direct exchanges (token follow-ups on a pooled connection) ---------------------------

    def lease(self, base: str) -> _Conn | None:
        """An idle pooled connection to ``base`` for a direct exchange (``exchange``), or None
        when one would have to be opened (the caller then uses ``fetch``, which connects). A
        leased connection counts as in use (``IdleBound``) until ``settle``."""
        target = self._addr.get(base)   # (_target's cache, read without the call)
        key = (target if target is not None else self._target(base))[:3]
        idle = self._pools.get(key)   # type: ignore[call-overload]
        if not idle:
            return None
        now = time.monotonic()
        while idle:
            conn = idle.pop()
            if not conn.closed and now - conn.idle_since < self.idle_ttl:
                bound = self._bounds.get(key)
                (bound if bound is not None else self._bound(key)).acquire(now)
                return conn
            conn.close()
        return None

    def header_block(self, base: str, headers: list[tuple[str, str]]) -> bytes:
        """The lines after a GET's request line to ``base``, as ``fetch`` writes them for the
        name/value pairs ``headers`` (Host added), and the blank line: a client's follow-ups
        repeat the same lines, so ``exchange`` takes them ready made."""
        # (serialize_head with an empty start line: its line end is the first two bytes)
        return serialize_head("", [*headers, ("Host", self._target(base)[3])])[2:]

    def exchange(self, conn: _Conn, target: str, block: bytes, sink: Any, waiter: Direct,
                 request_timeout: float | None = None) -> None:
        """Send ``GET target`` on a leased ``conn`` with the header lines ``block``
        (``header_block``: the head ``fetch`` writes); the answer goes to ``sink`` and its end,
        or the failure (``_Lost``, ``_Timeout``, ``HTTPParseError``, the sink's own exception),
        to ``waiter``. The backend's silence is watched as in ``fetch``."""
        if "\n" in target or "\r" in target:
            raise ValueError("illegal line break in a request target")
        conn.start(b"GET %s HTTP/1.1\r\n%s" % (target.encode("latin-1"), block), sink, False, waiter)
        timeout = request_timeout if request_timeout is not None else self.request_timeout
        if timeout:
            self._watch(conn, timeout, None)

    def settle(self, conn: _Conn, ok: bool) -> None:
        """A direct exchange on ``conn`` is over: back to the pool when it ended well and the
        connection may carry another request, else closed."""
        self._waiting.pop(conn, None)
        now = time.monotonic()
        bound = self._bounds.get(conn.key)
        if bound is None:
            bound = self._bound(conn.key)
        bound.release(now)
        if ok and conn.keep_alive and not conn.closed:
            self._release(conn, now, bound)
        else:
            conn.finish_exchange()
            conn.close()

    def _watch(self, conn: _Conn, timeout: float, loop: asyncio.AbstractEventLoop | None) -> None:
        """Fail ``conn``'s exchange once the backend is silent for ``timeout`` seconds (checked
        every ``min(1 s, timeout / 4)``, so it fires up to that much later)."""
        waiting = self._waiting
        if conn in waiting:
            del waiting[conn]   # (to the end: the sweep relies on the order entries were watched)
        waiting[conn] = timeout
        conn.watched_at = conn.activity   # (start() has just set it)
        if timeout >= self._floor and self._sweeper is not None:
            return   # the sweeper already runs often enough for this timeout
        if timeout < self._floor:
            self._floor = timeout
        tick = min(1.0, max(0.01, timeout / 4))
        if self._sweeper is not None and tick >= self._tick:
            return
        if self._sweeper is not None:
            self._sweeper.cancel()
        self._tick = tick
        # (the loop asked for only here: get_running_loop costs a getpid system call)
        self._sweeper = (loop or asyncio.get_running_loop()).call_later(tick, self._sweep)

    def _sweep(self) -> None:
        self._sweeper = None
        now = time.monotonic()
        floor = self._floor
        ended: list[_Conn] = []
        late: list[_Conn] = []
        for conn, timeout in self._waiting.items():
            if now - conn.watched_at < floor:
                break   # watched too recently to have timed out, and so is every later entry
            waiter = conn.waiter
            if waiter is None or waiter.done():
                ended.append(conn)
            elif conn.paused:
                conn.activity = now   # time paused for a slow client is not the backend's silence
            elif now - conn.activity >= timeout:
                late.append(conn)
        for conn in ended:
            self._waiting.pop(conn, None)
        for conn in late:
            # (popped before failing it: a waiter's callback may watch the connection again)
            if self._waiting.pop(conn, None) is not None and conn.waiter is not None \
                    and not conn.waiter.done():
                conn.waiter.set_exception(_Timeout())
        if self._waiting:
            self._sweeper = asyncio.get_running_loop().call_later(self._tick, self._sweep)
        else:
            self._floor = math.inf
            self._tick = 1.0

    def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for idle in self._pools.values():
            for conn in idle:
                conn.close()
        self._pools.clear()


def _keeps_alive(rh: Any) -> bool:
    """Whether the connection may carry another request after the response ``rh``."""
    if rh.version != "HTTP/1.1" or rh.code in CLOSES_AFTER:
        return False
    lists = getattr(rh.headers, "_as_list", None)   # (the parsers' headers: no call per lookup)
    values = lists.get("Connection") if lists is not None else rh.headers.get_list("Connection")
    return not values or "close" not in [t.strip().lower() for v in values for t in v.split(",")]


# Statuses after which a server may close the connection without saying "Connection: close".
# Trino's Jetty does so after rejecting a request it could not accept (406 for X-Forwarded-*
# headers, 400/413/414/431 for malformed or oversized requests): a request sent on such a
# connection meets a closed socket. Never reuse one.
CLOSES_AFTER = frozenset({400, 406, 408, 413, 414, 431})


# Not taken whole (``_Conn._whole``): no body, or the backend may close after them.
_NO_WHOLE = frozenset({204, 304}) | CLOSES_AFTER


class _Timeout(Exception):
    pass


def backend_error(exc: BaseException, conn: _Conn, timeout: float) -> BaseException:
    """What a failed exchange on ``conn`` raises: a ``BackendError`` for the connection's own
    failures (lost, silent for ``timeout`` seconds, malformed answer), else ``exc`` itself (the
    sink's exception, e.g. the client went away)."""
    if isinstance(exc, _Lost):
        if not conn.started:
            return BackendError("backend closed the connection before answering"
                                if exc.exc is None else f"connection lost: {exc.exc}", sent=True)
        return BackendError("backend closed the connection mid-response"
                            if exc.exc is None else f"connection lost: {exc.exc}", sent=True)
    if isinstance(exc, _Timeout):
        return BackendError(f"no answer within {timeout:g}s", sent=True, timeout=True)
    if isinstance(exc, HTTPParseError):
        return BackendError(f"malformed response: {exc}", sent=True)
    return exc


def stale(exc: BaseException, conn: _Conn) -> bool:
    """Whether a pooled connection failed before the backend answered anything (it had closed
    it while idle): a GET is sent again on a fresh connection, as ``fetch`` does."""
    return isinstance(exc, _Lost) and not conn.started


def _maybe_read(exc: BaseException | None) -> bool:
    """Whether a backend may have read a request that failed on a reused connection.

    A write that failed outright (broken pipe / reset while sending) on a connection the backend
    had already closed means the request was not read. Anything else: assume it was.
    """
    return not isinstance(exc, (BrokenPipeError, ConnectionResetError))


class BufferSink:
    """Collects a small response in memory (probes and control calls, not result pages)."""

    def __init__(self, limit: int = 1 << 20) -> None:
        self.code = 0
        self.headers: HTTPHeaders | None = None
        self.body = bytearray()
        self.limit = limit

    def on_headers(self, code: int, reason: str, headers: HTTPHeaders) -> None:
        self.code = code
        self.headers = headers

    def on_chunk(self, chunk: bytes) -> None:
        if len(self.body) < self.limit:
            self.body += chunk[: self.limit - len(self.body)]

    def on_end(self) -> None:
        return None
