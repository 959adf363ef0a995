"""The forwarding client: HTTP/1.1 to backends over a keep-alive connection pool.

Tornado's simple client opens a connection per request; a gateway that sits on every poll of
every query cannot afford that. This client keeps idle connections per backend, streams the
response to a delegate as it arrives (with back-pressure: the next chunk is read only after the
delegate has handled the last one), and tells the caller whether a failure happened before the
request could have reached the backend, which decides whether a POST may be retried elsewhere.
"""
from __future__ import annotations

import socket
import ssl
import time
from typing import Awaitable, Protocol
from urllib.parse import urlsplit

from tornado import gen
from tornado.http1connection import HTTP1Connection, HTTP1ConnectionParameters
from tornado.httputil import HTTPHeaders, RequestStartLine, ResponseStartLine, HTTPMessageDelegate
from tornado.iostream import IOStream, StreamClosedError
from tornado.tcpclient import TCPClient


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


class _Delegate(HTTPMessageDelegate):
    __slots__ = ("sink", "started", "code", "keep_alive", "finished", "pending")

    def __init__(self, sink: ResponseSink) -> None:
        self.sink = sink
        self.started = False
        self.code = 0
        self.keep_alive = False
        self.finished = False
        self.pending: Awaitable[None] | None = None

    def headers_received(self, start_line, headers):  # type: ignore[override]
        assert isinstance(start_line, ResponseStartLine)
        self.started = True
        self.code = start_line.code
        conn = (headers.get("Connection") or "").lower()
        self.keep_alive = start_line.version == "HTTP/1.1" and "close" not in conn
        return self.sink.on_headers(start_line.code, start_line.reason, headers)

    def data_received(self, chunk):  # type: ignore[override]
        return self.sink.on_chunk(chunk)

    def finish(self) -> None:
        self.finished = True
        # on_end may be a coroutine; the caller awaits it after read_response returns
        self.pending = self.sink.on_end()

    def on_connection_close(self) -> None:
        pass


class _Pool:
    __slots__ = ("idle",)

    def __init__(self) -> None:
        self.idle: list[tuple[IOStream, float]] = []


def _is_alive(stream: IOStream) -> bool:
    """An idle keep-alive connection the backend has closed reads as EOF; peek without blocking."""
    if stream.closed():
        return False
    sock = stream.socket
    if isinstance(sock, ssl.SSLSocket):
        return True  # cannot peek below TLS; a stale one fails fast and is retried
    try:
        sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except BlockingIOError:
        return True
    except OSError:
        return False
    return False  # EOF, or unsolicited bytes on an idle connection: unusable either way


class BackendClient:
    """Keep-alive HTTP/1.1 client for forwarding; one per process."""

    def __init__(self, *, connect_timeout: float = 5.0, request_timeout: float = 60.0,
                 max_idle_per_host: int = 64, idle_ttl: float = 15.0,
                 max_body_size: int = 1 << 40, ssl_context: ssl.SSLContext | None = None) -> None:
        self.connect_timeout = connect_timeout
        self.request_timeout = request_timeout
        self.max_idle_per_host = max_idle_per_host
        self.idle_ttl = idle_ttl
        self.ssl_context = ssl_context
        self._tcp = TCPClient()
        self._pools: dict[tuple[str, str, int], _Pool] = {}
        self._params = HTTP1ConnectionParameters(
            no_keep_alive=False, max_header_size=1 << 20, max_body_size=max_body_size,
            decompress=False, chunk_size=64 * 1024)
        self._addr: dict[str, tuple[str, str, int, str]] = {}

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

    async def _connect(self, scheme: str, host: str, port: int) -> tuple[IOStream, bool]:
        pool = self._pools.get((scheme, host, port))
        if pool is not None:
            now = time.monotonic()
            while pool.idle:
                stream, since = pool.idle.pop()
                if now - since < self.idle_ttl and _is_alive(stream):
                    return stream, True
                stream.close()
        try:
            ssl_options = None
            if scheme == "https":
                ssl_options = self.ssl_context or ssl.create_default_context()
            stream = await self._tcp.connect(host, port, ssl_options=ssl_options,
                                             timeout=self.connect_timeout)
        except gen.TimeoutError:
            raise BackendError(f"timed out connecting after {self.connect_timeout:g}s",
                               sent=False, timeout=True) from None
        except (OSError, StreamClosedError) as exc:
            reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
            if isinstance(exc, StreamClosedError) and exc.real_error is not None:
                reason = getattr(exc.real_error, "strerror", None) or str(exc.real_error)
            raise BackendError(f"cannot connect: {reason}", sent=False) from None
        stream.set_nodelay(True)
        return stream, False

    def _release(self, scheme: str, host: str, port: int, stream: IOStream) -> None:
        if stream.closed():
            return
        pool = self._pools.get((scheme, host, port))
        if pool is None:
            pool = self._pools[(scheme, host, port)] = _Pool()
        if len(pool.idle) >= self.max_idle_per_host:
            stream.close()
            return
        pool.idle.append((stream, time.monotonic()))

    async def fetch(self, base: str, method: str, target: str, headers: HTTPHeaders,
                    body: bytes | None, sink: ResponseSink, *,
                    request_timeout: float | None = None) -> int:
        """Send one request to ``base`` (scheme://host:port) and stream the answer into ``sink``.

        Returns the status code. Raises BackendError; its ``sent`` is False only when the
        backend cannot have seen the request (so a POST may go elsewhere).
        """
        scheme, host, port, hosthdr = self._target(base)
        headers["Host"] = hosthdr
        if body is not None or method in ("POST", "PUT", "PATCH"):
            headers["Content-Length"] = str(len(body or b""))
        for attempt in (0, 1):
            stream, reused = await self._connect(scheme, host, port)
            conn = HTTP1Connection(stream, True, self._params)
            delegate = _Delegate(sink)
            try:
                conn.write_headers(RequestStartLine(method, target, "HTTP/1.1"), headers)
                if body:
                    conn.write(body)
                conn.finish()
                timeout = request_timeout if request_timeout is not None else self.request_timeout
                reading = conn.read_response(delegate)
                if timeout:
                    await gen.with_timeout(stream.io_loop.time() + timeout, reading,
                                           quiet_exceptions=(StreamClosedError,))
                else:
                    await reading
            except gen.TimeoutError:
                stream.close()
                raise BackendError(f"no answer within {timeout:g}s", sent=True, timeout=True) from None
            except (StreamClosedError, OSError) as exc:
                stream.close()
                # A stale keep-alive connection: retry once on a fresh one, unless this is a POST
                # the backend may have read (a POST is never sent twice).
                if not delegate.started and reused and attempt == 0 and (
                        method != "POST" or not _maybe_read(exc)):
                    continue
                raise BackendError(f"connection lost: {exc}", sent=True) from None
            if not delegate.finished:
                stream.close()
                if not delegate.started and reused and attempt == 0 and method != "POST":
                    continue
                raise BackendError("backend closed the connection before answering"
                                   if not delegate.started else "backend closed the connection mid-response",
                                   sent=True)
            if delegate.pending is not None:
                await delegate.pending
            if delegate.keep_alive and not stream.closed():
                self._release(scheme, host, port, stream)
            else:
                stream.close()
            return delegate.code
        raise AssertionError("unreachable")

    def close(self) -> None:
        for pool in self._pools.values():
            for stream, _ in pool.idle:
                stream.close()
        self._pools.clear()


def _maybe_read(exc: BaseException) -> bool:
    """Whether a backend may have read a request that failed on a reused connection.

    A write that failed outright (broken pipe / reset while sending) on a connection the backend
    had already closed means the request was not read. Anything else: assume it was.
    """
    real = getattr(exc, "real_error", None) or exc
    return not isinstance(real, (BrokenPipeError, ConnectionResetError))


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
