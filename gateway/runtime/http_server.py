"""The gateway's HTTP/1.1 server: an asyncio protocol carrying the Tornado application.

A drop-in replacement for ``tornado.httpserver.HTTPServer`` (same constructor options the
gateway uses, same ``add_sockets`` / ``stop`` / ``close_all_connections``). The Tornado
application, its handlers and the proxy handler run unchanged on top: each request gets a
``_Request`` implementing Tornado's ``HTTPConnection`` interface. What changes is the layer
below: heads are parsed in one pass (``gateway.runtime.http1``) instead of through Tornado's
per-line regular expressions and coroutine chain, a response small enough to be finished at
once leaves in one ``send``, and idle connections cost no timer each. That layer was about half
of the gateway's time per request (docs/benchmarks.md).

Semantics follow Tornado's ``HTTP1Connection``: keep-alive rules, ``Expect: 100-continue``,
``Connection: close`` on the last response, chunked output when no length is known, 400 for a
malformed request, the idle timeout while waiting for a request head, the body timeout and size
limit, ``xheaders`` (remote address and scheme from a trusted load balancer).
"""
from __future__ import annotations

import array
import asyncio
import fcntl
import gc
import logging
import socket
import ssl
import termios
import time
from typing import Any, Awaitable, Callable

from tornado import netutil
from tornado.httputil import (HTTPHeaders, HTTPInputError, HTTPOutputError, HTTPServerConnectionDelegate,
                              HTTPMessageDelegate, HTTPServerRequest, RequestStartLine, ResponseStartLine)
from tornado.iostream import StreamClosedError

from gateway.limits import ConnectionLimits, trim_memory
from gateway.runtime.accept import Acceptor
from gateway.runtime.http1 import (LAST_CHUNK, ChunkedDecoder, HTTPParseError, RepeatedHeads, body_length,
                                   find_head_end, format_chunk, parse_request_head, serialize_head)

log = logging.getLogger("gateway.server")
app_log = logging.getLogger("tornado.application")

# Connection phases
_HEAD, _WAIT, _BODY, _RESPONDING, _CLOSED = range(5)
_READ_PAUSE_AT = 1 << 20        # pipelined bytes buffered while a response is pending
_WRITE_HIGH, _WRITE_LOW = 512 * 1024, 128 * 1024
_SWEEP_EVERY = 1.0
_NO_BODY_CODES = frozenset({204, 304})
_TRIM_AFTER = 1 << 20          # request bodies this large are worth a malloc_trim once dropped


class _Context:
    """What Tornado's ``HTTPServerRequest`` reads from ``connection.context``."""

    __slots__ = ("address", "remote_ip", "protocol", "trusted_downstream")

    def __init__(self, address: Any, protocol: str, trusted: set[str]) -> None:
        self.address = address
        self.remote_ip = address[0] if isinstance(address, tuple) and address else "0.0.0.0"
        self.protocol = protocol
        self.trusted_downstream = trusted

    def apply_xheaders(self, headers: HTTPHeaders) -> None:
        """Tornado's ``_HTTPRequestContext._apply_xheaders``: the client behind a load balancer,
        as the nearest hop saw it (the last ``X-Forwarded-For`` entry). Unlike Tornado,
        ``X-Real-IP`` is ignored: a client could send it through a load balancer that appends
        to ``X-Forwarded-For`` and so pass for loopback (hardening finding 6)."""
        ip = headers.get("X-Forwarded-For", self.remote_ip)
        for cand in reversed(ip.split(",")):
            ip = cand.strip()
            if ip not in self.trusted_downstream:
                break
        if netutil.is_valid_ip(ip):
            self.remote_ip = ip
        proto = headers.get("X-Scheme", headers.get("X-Forwarded-Proto", self.protocol))
        if proto:
            proto = proto.split(",")[-1].strip()
        if proto in ("http", "https"):
            self.protocol = proto

    def __str__(self) -> str:
        if isinstance(self.address, tuple) and self.address:
            return str(self.address[0])
        return str(self.address)


def _done_future(exc: BaseException | None = None) -> "asyncio.Future[None]":
    f = asyncio.get_running_loop().create_future()
    if exc is None:
        f.set_result(None)
    else:
        f.set_exception(exc)
        f.exception()   # retrieved: a write to a closed client is not worth a log line
    return f


class _Request(_Context):
    """One request/response exchange: Tornado's ``HTTPConnection`` for the application, and
    its own ``context`` (one object less per request in flight for the garbage collector)."""

    __slots__ = ("conn", "method", "version", "headers", "delegate", "max_body_size",
                 "body_timeout", "remaining", "chunked", "decoder", "received", "read_finished",
                 "write_finished", "headers_written", "chunking", "expected", "keep_alive",
                 "close_callback", "body_started", "last_progress", "__weakref__")

    def __init__(self, conn: "_Connection", method: str, version: str, headers: HTTPHeaders,
                 length: int | None) -> None:
        # _Context.__init__, without the call (one per request)
        address = self.address = conn.address
        self.remote_ip = address[0] if type(address) is tuple and address else "0.0.0.0"
        self.protocol = conn.protocol_name
        self.trusted_downstream = conn.server.trusted_downstream
        self.conn = conn
        self.method = method
        self.version = version
        self.headers = headers
        self.delegate: HTTPMessageDelegate | None = None
        self.max_body_size = conn.server.max_body_size
        self.body_timeout = conn.server.body_timeout
        self.chunked = length == -1
        self.remaining = 0 if length is None or length < 0 else length
        self.decoder: Any = None
        self.received = 0
        self.read_finished = False
        self.write_finished = False
        self.headers_written = False
        self.chunking = False
        self.expected: int | None = None
        self.keep_alive = _can_keep_alive(version, method, headers, length)
        self.close_callback: Callable[[], None] | None = None
        self.body_started = 0.0
        self.last_progress = 0.0

    @property
    def context(self) -> _Context:
        return self

    # -- tornado.httputil.HTTPConnection ------------------------------------------------------

    def set_close_callback(self, callback: Callable[[], None] | None) -> None:
        self.close_callback = callback

    def set_max_body_size(self, max_body_size: int) -> None:
        self.max_body_size = max_body_size

    def set_body_timeout(self, timeout: float) -> None:
        self.body_timeout = timeout

    def write_headers(self, start_line: ResponseStartLine | RequestStartLine, headers: HTTPHeaders,
                      chunk: bytes | None = None) -> "asyncio.Future[None]":
        assert isinstance(start_line, ResponseStartLine)
        if headers.get("Server", "").startswith("TornadoServer"):
            del headers["Server"]   # Tornado's default names its version: nothing a client needs
        length = headers.get("Content-Length")
        framing = self._framing(start_line.code, length, "Transfer-Encoding" in headers)
        for name, value in framing:
            headers[name] = value
        data = serialize_head(f"HTTP/1.1 {start_line.code} {start_line.reason}", headers)
        self.headers_written = True
        if chunk:
            data += self._frame(chunk)
        return self.conn.send(data)

    def write_pairs(self, code: int, reason: str, pairs: list[tuple[str, str]], length: int | None,
                    chunk: bytes | None = None) -> "asyncio.Future[None]":
        """``write_headers`` for header lines as name/value pairs (the proxy's fast path for
        token follow-ups: no header object per response). ``pairs`` hold no framing lines
        (Content-Length, Transfer-Encoding, Connection: ``gateway.protocol.RESPONSE_DROP``);
        ``length`` is the body's length, or None to stream it (chunked)."""
        size = None if length is None else str(length)
        framing = self._framing(code, size, False)
        lines = pairs + [("Content-Length", size)] + framing if size is not None else pairs + framing
        data = serialize_head(f"HTTP/1.1 {code} {reason}", lines)
        self.headers_written = True
        if chunk:
            data += self._frame(chunk)
        return self.conn.send(data)

    def _framing(self, code: int, length: str | None, has_te: bool) -> list[tuple[str, str]]:
        """Decide how the response body is framed (``chunking``, ``expected``, ``keep_alive``)
        and return the framing header lines to set."""
        no_body = self.method == "HEAD" or code in (204, 304) or 100 <= code < 200
        has_length = length is not None
        self.chunking = (self.version == "HTTP/1.1" and not no_body and not has_length and not has_te)
        if not no_body and not has_length and not self.chunking:
            self.keep_alive = False   # the body ends when the connection does
        out: list[tuple[str, str]] = []
        if self.version == "HTTP/1.1":
            if not self.keep_alive:
                out.append(("Connection", "close"))
        elif self.keep_alive:
            out.append(("Connection", "Keep-Alive"))
        if self.chunking:
            out.append(("Transfer-Encoding", "chunked"))
        if self.method == "HEAD" or code == 304:
            self.expected = 0
        elif has_length:
            try:
                self.expected = int(length)  # type: ignore[arg-type]
            except ValueError:
                self.expected = None
        else:
            self.expected = None
        return out

    @staticmethod
    def head_block(code: int, reason: str, pairs: list[tuple[str, str]]) -> bytes:
        """The status line and ``pairs`` as ``write_whole`` writes them before its framing
        lines: for a caller that answers with the same lines again (``write_whole``'s ``head``)."""
        return serialize_head(f"HTTP/1.1 {code} {reason}", pairs)[:-2]

    def write_whole(self, code: int, reason: str, pairs: list[tuple[str, str]], body: bytes,
                    head: bytes | None = None) -> None:
        """The whole response at once, with ``body``'s length, and finished: ``write_pairs``
        then ``finish``, in fewer calls (a poll's usual answer). ``head``: ``head_block`` of
        ``code``, ``reason`` and ``pairs``, made before. Nothing is written to a client
        connection that is closing (as ``send``, whose failed future the caller would drop)."""
        conn = self.conn
        if self.keep_alive and self.version == "HTTP/1.1" and self.method != "HEAD" and code >= 200 \
                and code not in _NO_BODY_CODES:
            # _framing's decision for this common case: no framing line but the length
            self.chunking = False
            if head is None:
                head = self.head_block(code, reason, pairs)
            data = b"%sContent-Length: %d\r\n\r\n%s" % (head, len(body), body)
            self.expected = 0   # (_frame's count: the whole body goes out now)
        else:
            size = str(len(body))
            framing = self._framing(code, size, False)
            data = serialize_head(f"HTTP/1.1 {code} {reason}", pairs + [("Content-Length", size)] + framing)
            if self.expected:
                self.expected = 0
                data += body
        self.headers_written = True
        if not (conn.closing or conn.transport is None or conn.transport.is_closing()):
            conn.transport.write(data)
        self.write_finished = True
        self.close_callback = None
        conn.response_finished(self)

    def write(self, chunk: bytes) -> "asyncio.Future[None]":
        return self.conn.send(self._frame(chunk))

    def finish(self) -> None:
        if self.expected and not self.conn.closing:
            self.conn.abort()
            raise HTTPOutputError(f"Tried to write {self.expected} bytes less than Content-Length")
        if self.chunking:
            self.conn.send(LAST_CHUNK)
        self.write_finished = True
        self.close_callback = None
        self.conn.response_finished(self)

    # -- used by the gateway -----------------------------------------------------------------

    def close(self) -> None:
        """Close the client connection (a response that cannot be completed)."""
        self.conn.abort()

    def _frame(self, chunk: bytes) -> bytes:
        if self.expected is not None:
            self.expected -= len(chunk)
            if self.expected < 0:
                self.conn.abort()
                raise HTTPOutputError("Tried to write more data than Content-Length")
        if self.chunking:
            return format_chunk(chunk)
        return chunk


def _unread(conn: "_Connection") -> bool:
    """Whether bytes wait unread in ``conn``'s socket (its event loop stalled: not the client's
    fault). Asked only before closing a connection for ``headerTimeout``."""
    sock = conn.transport.get_extra_info("socket") if conn.transport is not None else None
    if sock is None:
        return False
    try:
        waiting = array.array("i", [0])
        fcntl.ioctl(sock.fileno(), termios.FIONREAD, waiting, True)
    except (OSError, ValueError):
        return False
    return waiting[0] > 0


def _can_keep_alive(version: str, method: str, headers: HTTPHeaders, length: int | None) -> bool:
    lists = getattr(headers, "_as_list", None)   # (the parsers' headers: no call per lookup)
    if lists is not None:
        values = lists.get("Connection")
        conn = (values[0] if len(values) == 1 else ",".join(values)).lower() if values else None
    else:
        conn = headers.get("Connection")
        conn = conn.lower() if conn is not None else None
    if version == "HTTP/1.1":
        return conn != "close"
    if length is not None or method in ("HEAD", "GET"):
        return conn == "keep-alive"
    return False


class _Connection(asyncio.Protocol):
    """One client connection: parses requests, feeds the application, writes responses."""

    def __init__(self, server: "HTTPServer") -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.phase = _HEAD
        self.req: _Request | None = None
        self.closing = False
        self.read_paused = False
        self.write_paused = False
        self.drain: list[asyncio.Future[None]] = []
        self.idle_since = time.monotonic()
        self.head_started: float | None = None   # a request head is arriving since then
        self.counted = False                      # by the server's ConnectionLimits
        self.refused = False                      # by them (counted as closing until closed)
        self.address: Any = None
        self.protocol_name = "http"
        # The header lines of this client's last token follow-up, parsed (a polling client
        # repeats them): made at the first one the follow-ups took.
        self.heads: RepeatedHeads | None = None
        self.follow_memo: Any = None              # what the follow-ups derived from them

    # -- asyncio.Protocol ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.address = transport.get_extra_info("peername") or ("0.0.0.0", 0)
        self.head_started = time.monotonic()   # the first request head is due within headerTimeout
        if not self.server.admit(self):
            return
        if transport.get_extra_info("sslcontext") is not None:
            self.protocol_name = "https"
        transport.set_write_buffer_limits(_WRITE_HIGH, _WRITE_LOW)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        if self.heads is not None and self.phase == _HEAD and not self.buf \
                and self._whole_poll(data):
            return   # the usual poll: its head alone in one read, its header lines the last ones
        if self.head_started is None and self.phase == _HEAD:
            self.head_started = time.monotonic()
        self.buf += data
        if self.phase == _RESPONDING and len(self.buf) > _READ_PAUSE_AT:
            self._pause_reading()
        self.advance()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        self.server.release(self)
        phase, req = self.phase, self.req
        self.phase = _CLOSED
        for f in self.drain:
            if not f.done():
                f.set_exception(StreamClosedError())
                f.exception()
        self.drain.clear()
        if req is not None and not req.write_finished and req.delegate is not None:
            if phase in (_BODY, _WAIT) and not req.read_finished:
                self._call(req.delegate.on_connection_close)
            elif req.close_callback is not None:
                cb, req.close_callback = req.close_callback, None
                self._call(cb)
        if req is not None:
            req.delegate = None   # see response_finished
            self.server.note_body(req.received + len(self.buf))
        self.buf = bytearray()
        self.req = None
        try:
            self.server.delegate.on_close(self)
        except Exception:  # noqa: BLE001
            app_log.exception("error in on_close")

    def _whole_poll(self, data: bytes) -> bool:
        """A request head that arrived alone in one read, for a token follow-up, with the
        header lines of this connection's last follow-up (``RepeatedHeads``): what ``advance``,
        ``_read_head`` and ``_read_body`` do for it, in one call. False, with nothing done,
        for anything else: the general path then reads it (and answers what is wrong)."""
        server = self.server
        follow = server.follow_ups
        if follow is None or len(data) > server.max_header_size:
            return False
        heads = self.heads
        rh = heads.reuse(data)   # type: ignore[union-attr]
        # The kept lines end the head (they did when kept, and the request line has no line
        # break in it), so ``data`` is this one head and nothing after it.
        if rh is None or heads.length or rh.method != "GET" \
                or not rh.target.startswith(server.follow_prefix):   # type: ignore[union-attr]
            return False
        req = self.req = _Request(self, "GET", rh.version, rh.headers, heads.length)  # type: ignore[union-attr]
        if server.xheaders:
            req.context.apply_xheaders(rh.headers)
        self.head_started = None
        self.phase = _BODY
        try:
            took = follow.take(req, rh.target, rh.headers)
        except Exception:  # noqa: BLE001 - the general path takes it again and deals with it
            took = False
        if not took:
            self.req = None
            self.phase = _HEAD
            return False
        # (no body: the body's timers are never read for a request whose body is read)
        req.read_finished = True
        self.phase = _RESPONDING
        self._call(req.delegate.finish)  # type: ignore[union-attr]
        return True

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        waiters, self.drain = self.drain, []
        for f in waiters:
            if not f.done():
                f.set_result(None)

    # -- writing -------------------------------------------------------------------------------

    def send(self, data: bytes) -> "asyncio.Future[None]":
        if self.closing or self.transport is None or self.transport.is_closing():
            return _done_future(StreamClosedError())
        if data:
            self.transport.write(data)
        if not self.write_paused:
            return self.server.sent()
        f = asyncio.get_running_loop().create_future()
        self.drain.append(f)
        return f

    def abort(self) -> None:
        if not self.closing and self.transport is not None:
            self.closing = True
            self.transport.close()

    def response_finished(self, req: _Request) -> None:
        if req is not self.req:
            return
        # The application (handler, request, body) refers back to this exchange: without the
        # cycle it is freed now, not when the cyclic collector next looks (hardening finding 5:
        # 20-60 MB bodies stayed resident for minutes).
        req.delegate = None
        if req.received:
            self.server.note_body(req.received)
        body_left = req.remaining > 0 or (req.chunked and not req.decoder.done)
        if body_left or not req.keep_alive or self.server.stopping_connections:
            self.closing = True
            self.phase = _CLOSED
            if self.transport is not None:
                self.transport.close()   # after the buffered response has gone out
            return
        req.read_finished = True   # an empty body the application answered before "reading"
        self.req = None
        self.phase = _HEAD
        self.idle_since = time.monotonic()
        self.head_started = self.idle_since if self.buf else None
        if self.read_paused:
            self._resume_reading()
        if self.buf:
            asyncio.get_running_loop().call_soon(self.advance)   # a pipelined request

    # -- reading -------------------------------------------------------------------------------

    def _pause_reading(self) -> None:
        if not self.read_paused and self.transport is not None and not self.closing:
            self.read_paused = True
            self.transport.pause_reading()

    def _resume_reading(self) -> None:
        if self.read_paused and self.transport is not None and not self.closing:
            self.read_paused = False
            self.transport.resume_reading()

    def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Call into the application; an exception is logged and closes the connection."""
        try:
            return fn(*args)
        except HTTPInputError as exc:
            # Tornado's own checks of the request (e.g. two Host headers): the client's fault,
            # answered like any malformed request, not logged as a gateway error.
            log.info("malformed HTTP request from %s: %s", self.address[0] if self.address else "?", exc)
            if self.req is not None and self.req.headers_written:
                self.abort()
            else:
                self._reject(400, "Bad Request")
            return None
        except Exception:
            app_log.exception("Uncaught exception in %s", getattr(fn, "__qualname__", fn))
            self.abort()
            return None

    def _wait(self, aw: Awaitable[Any], then: int) -> None:
        """Stop reading until the application is done with what it was given."""
        self.phase = _WAIT
        self._pause_reading()
        fut = asyncio.ensure_future(aw)

        def resume(f: "asyncio.Future[Any]") -> None:
            if f.cancelled() or f.exception() is not None:
                if not f.cancelled():
                    app_log.error("Uncaught exception", exc_info=f.exception())
                self.abort()
                return
            if self.phase != _WAIT:
                return
            self.phase = then
            if then == _BODY and self.req is not None:
                self._after_headers(self.req)
            self._resume_reading()
            self.advance()
        fut.add_done_callback(resume)

    def advance(self) -> None:
        while not self.closing:
            phase = self.phase
            if phase == _HEAD:
                if not self._read_head():
                    return
            elif phase == _BODY:
                if not self._read_body():
                    return
            else:
                return

    def _read_head(self) -> bool:
        buf = self.buf
        end = find_head_end(buf)
        if end < 0:
            if len(buf) > self.server.max_header_size:
                self._reject(431, "Request Header Fields Too Large")
            elif buf and buf.strip(b"\r\n") == b"":
                del buf[:]
            return False
        head = bytes(buf[:end])
        del buf[:end]
        self.head_started = None
        if end > self.server.max_header_size:
            self._reject(431, "Request Header Fields Too Large")
            return False
        heads = self.heads
        try:
            if heads is None:
                rh = parse_request_head(head)
                length = body_length(rh.headers)
                kept = False
            else:
                rh, length, kept = heads.parse(head)
        except HTTPParseError as exc:
            log.info("malformed HTTP request from %s: %s", self.address[0] if self.address else "?", exc)
            self._reject(400, "Bad Request")
            return False
        req = self.req = _Request(self, rh.method, rh.version, rh.headers, length)
        if self.server.xheaders:
            req.context.apply_xheaders(rh.headers)
        fast = self.server.fast_route
        self.phase = _BODY
        req.body_started = req.last_progress = time.monotonic()
        if req.chunked:
            req.decoder = ChunkedDecoder()
        follow = self.server.follow_ups
        took = follow is not None and not length and rh.method == "GET" \
            and self._call(follow.take, req, rh.target, rh.headers)
        if self.closing:
            return False
        if took:
            # The follow-up does not change the headers: the next head with the same lines
            # may have them as they are.
            if not kept:
                if heads is None:
                    heads = self.heads = RepeatedHeads()
                heads.keep(head, rh, length)
            result = None   # req.delegate is the follow-up; it starts once the (empty) body is read
        else:
            if kept:
                heads.drop()   # type: ignore[union-attr]  # others may change them: parsed anew next time
            start_line = RequestStartLine(rh.method, rh.target, rh.version)
            if fast is not None and fast.takes(rh.target):
                result = self._call(fast.headers_received, self, req, start_line, rh.headers)
            else:
                delegate = req.delegate = self.server.delegate.start_request(self, req)
                result = self._call(delegate.headers_received, start_line, rh.headers)
        if self.closing:
            return False
        if result is not None:
            self._wait(result, _BODY)
            return False
        if req.remaining or req.chunked:   # (nothing to check for a request without a body)
            self._after_headers(req)
        return True

    def _after_headers(self, req: _Request) -> None:
        if (req.version == "HTTP/1.1" and not req.write_finished
                and (req.remaining or req.chunked)
                and req.headers.get("Expect", "").lower() == "100-continue"):
            self.send(b"HTTP/1.1 100 (Continue)\r\n\r\n")
        if not req.chunked and req.remaining > req.max_body_size:
            self._body_too_large(req)

    def _read_body(self) -> bool:
        req = self.req
        assert req is not None
        buf = self.buf
        if req.chunked:
            if not buf and not req.decoder.done:
                return False
            try:
                pieces, rest = req.decoder.feed(bytes(buf))
            except HTTPParseError as exc:
                log.info("malformed chunked body from %s: %s", self.address[0] if self.address else "?", exc)
                self._reject(400, "Bad Request")
                return False
            del buf[:]
            if rest:
                buf += rest
            data = b"".join(pieces)
            done = req.decoder.done
        else:
            if req.remaining:
                if not buf:
                    return False
                take = min(req.remaining, len(buf))
                data = bytes(buf[:take])
                del buf[:take]
                req.remaining -= take
            else:
                data = b""
            done = req.remaining == 0
        if data:
            req.last_progress = time.monotonic()
            req.received += len(data)
            if req.received > req.max_body_size:
                self._body_too_large(req)
                return False
            if not req.write_finished:
                result = self._call(req.delegate.data_received, data)  # type: ignore[union-attr]
                if self.closing:
                    return False
                if result is not None:
                    self._wait(result, _BODY)
                    return False
        if not done:
            return bool(buf)
        req.read_finished = True
        self.phase = _RESPONDING
        if req.write_finished:
            self.response_finished(req)
            return True
        self._call(req.delegate.finish)  # type: ignore[union-attr]
        return not self.closing and self.phase != _RESPONDING

    def _body_too_large(self, req: _Request) -> None:
        if req.write_finished or req.headers_written:
            self.abort()
        else:
            self._reject(400, "Bad Request")

    def _reject(self, code: int, reason: str, text: str = "") -> None:
        if self.transport is not None and not self.closing:
            body = text.encode()
            kind = "Content-Type: text/plain; charset=utf-8\r\n" if body else ""
            self.transport.write(f"HTTP/1.1 {code} {reason}\r\nConnection: close\r\n{kind}"
                                 f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        self.abort()


def _freeze_startup_objects() -> None:
    """Keep the cyclic garbage collector off what start-up built (modules, sqlglot, the
    application): a full collection walking all of it stalled requests for milliseconds, the
    gateway's p99 latency (docs/benchmarks.md). Collections still run for new objects."""
    gc.collect()
    gc.freeze()


class FastRoute:
    """Requests whose path ``takes`` accepts go straight to ``router`` (a Tornado ``Router``,
    e.g. the proxy's ``HandlerRoute``), skipping the application's rule list and Tornado's
    routing delegate: the same ``HTTPServerRequest`` and handler, a few objects and regular
    expressions less per request. For the application's first rules (result pages and new
    statements, the most frequent requests); ``takes`` must agree with those rules, so that
    the application would have picked the same target.

    An application offers one as its ``fast_route`` attribute (``gateway.app.make_app``)."""

    __slots__ = ("takes", "router")

    def __init__(self, takes: Callable[[str], bool], router: Any) -> None:
        self.takes = takes          # (request target, query included) -> bool
        self.router = router

    def headers_received(self, conn: "_Connection", req: _Request, start_line: RequestStartLine,
                         headers: HTTPHeaders) -> Awaitable[None] | None:
        # What tornado.routing._RoutingDelegate.headers_received does, for one known target.
        request = HTTPServerRequest(connection=req, server_connection=conn, start_line=start_line,
                                    headers=headers)
        delegate = req.delegate = self.router.find_handler(request)
        return delegate.headers_received(start_line, headers)


class HTTPServer:
    """Serves a Tornado application (any ``HTTPServerConnectionDelegate``) over asyncio."""

    def __init__(self, delegate: HTTPServerConnectionDelegate, *, ssl_options: Any = None,
                 xheaders: bool = False, idle_connection_timeout: float | None = None,
                 max_body_size: int | None = None, body_timeout: float | None = None,
                 max_header_size: int | None = None, trusted_downstream: list[str] | None = None,
                 header_timeout: float | None = None, body_progress_timeout: float | None = None,
                 limits: ConnectionLimits | None = None, workers: int = 1, **_unused: Any) -> None:
        self.delegate = delegate
        self.fast_route: FastRoute | None = getattr(delegate, "fast_route", None)
        # GETs with a routing token and no body (result-page polls, the most frequent request;
        # some clients send ``Content-Length: 0``) go from the parsed head straight to the
        # forwarder (``gateway.proxy.follow``): no Tornado request, handler or routing.
        # ``take(request, target, headers)`` says whether it took one.
        self.follow_ups: Any = getattr(delegate, "follow_ups", None)
        # what the targets it may take start with (_Connection._whole_poll's first check)
        self.follow_prefix: str = getattr(self.follow_ups, "prefix", "/")
        self.ssl_context: ssl.SSLContext | None = None
        if ssl_options is not None:
            self.ssl_context = netutil.ssl_options_to_context(ssl_options, server_side=True)
        self.xheaders = xheaders
        self.idle_timeout = idle_connection_timeout or 3600.0
        self.header_timeout = min(header_timeout or self.idle_timeout, self.idle_timeout)
        self.body_progress_timeout = body_progress_timeout
        self.limits = limits
        self.max_body_size = max_body_size if max_body_size is not None else 100 * 1024 * 1024
        self.body_timeout = body_timeout
        self.max_header_size = max_header_size or 65536
        self.trusted_downstream = set(trusted_downstream or [])
        self.connections: set[_Connection] = set()
        self.stopping_connections = False
        self.workers = workers                  # processes sharing the listening sockets
        self._acceptors: list[Acceptor] = []
        self._sweeper: asyncio.TimerHandle | None = None
        self._trim = False
        self._sent: asyncio.Future[None] | None = None

    def sent(self) -> "asyncio.Future[None]":
        """What a write the transport took at once returns: one completed future, shared (a new
        one per response was an allocation on every request; a completed future cannot change,
        and awaiting it or adding a callback to it leaves it as it is)."""
        f = self._sent
        if f is None or f.get_loop() is not asyncio.get_running_loop():
            f = self._sent = _done_future()
        return f

    def add_sockets(self, sockets: list[socket.socket]) -> None:
        """Start accepting on already-bound, listening sockets (as Tornado's ``add_sockets``).
        Each wake-up accepts this worker's share of the waiting connections, at most as many as
        ``limits`` have room for (``gateway.runtime.accept``); the kernel's queue is 1024 long."""
        for sock in sockets:
            sock.listen(1024)
            self._acceptors.append(Acceptor(sock, lambda: _Connection(self), ssl_context=self.ssl_context,
                                            workers=self.workers, limits=self.limits))
        _freeze_startup_objects()

    def stop(self) -> None:
        """Stop accepting new connections; open ones stay."""
        for a in self._acceptors:
            a.close()
        self._acceptors.clear()

    async def close_all_connections(self) -> None:
        """Close every connection: idle ones now, busy ones after their current response."""
        self.stopping_connections = True
        for conn in list(self.connections):
            if conn.phase == _HEAD and not conn.buf:
                conn.abort()
        deadline = time.monotonic() + 5
        while self.connections and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        for conn in list(self.connections):
            conn.abort()

    def ensure_sweeper(self) -> None:
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().call_later(_SWEEP_EVERY, self._sweep)

    def admit(self, conn: _Connection) -> bool:
        """Count a new connection, or answer 503 and close it (``gateway.limits``)."""
        refusal = self.limits.admit(conn.address[0]) if self.limits is not None else None
        if refusal is not None:
            log.warning("connection from %s refused: %s", conn.address[0], refusal)
            conn.counted = False
            conn.refused = True
            conn._reject(503, "Service Unavailable", f"The gateway refused the connection: {refusal}\n")
            return False
        conn.counted = True
        self.connections.add(conn)
        self.ensure_sweeper()
        return True

    def release(self, conn: _Connection) -> None:
        if conn in self.connections:
            self.connections.discard(conn)
            if self.limits is not None and conn.counted:
                self.limits.release(conn.address[0])
        elif self.limits is not None and conn.refused:
            self.limits.refused_closed()

    def note_body(self, size: int) -> None:
        """A request body of ``size`` bytes was dropped: large ones get the heap trimmed."""
        if size >= _TRIM_AFTER:
            self._trim = True
            self.ensure_sweeper()

    def _sweep(self) -> None:
        """Close connections idle (or stalled sending a body) beyond their timeout."""
        self._sweeper = None
        if self._trim:
            self._trim = False
            trim_memory()
        now = time.monotonic()
        for conn in list(self.connections):
            if conn.phase == _HEAD and conn.head_started is not None \
                    and now - conn.head_started > self.header_timeout and not _unread(conn):
                # (bytes waiting unread: the client sent them; this worker did not get to them)
                log.info("%s took over %.0fs to send a request head; closed", conn.address[0],
                         self.header_timeout)
                conn.abort()
            elif conn.phase == _HEAD and now - conn.idle_since > self.idle_timeout:
                conn.abort()
            elif conn.phase == _BODY and self.body_progress_timeout and conn.req is not None \
                    and not conn.read_paused and not conn.req.read_finished \
                    and now - conn.req.last_progress > self.body_progress_timeout:
                log.info("no request body bytes from %s for %.0fs; closed", conn.address[0],
                         self.body_progress_timeout)
                conn.abort()
            elif conn.phase in (_BODY, _WAIT) and conn.req is not None and conn.req.body_timeout \
                    and not conn.req.read_finished and now - conn.req.body_started > conn.req.body_timeout:
                log.info("timeout reading a request body from %s", conn.req.context)
                conn.abort()
        if self.connections:
            self.ensure_sweeper()
