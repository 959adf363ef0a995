"""A lean request handler for the proxy path: the part of Tornado's RequestHandler it uses.

Tornado's ``RequestHandler`` runs every request through a chain of futures (``prepare``, the
streamed body, ``_execute``), sets default headers it then throws away, and validates each
header it is given with regular expressions. On the proxy path, which only moves a request to a
backend and the answer back, that machinery cost about as much as the rest of the gateway
together (docs/benchmarks.md). ``LeanHandler`` keeps the same method names and behaviour for
what the proxy needs (status, headers, write/flush/finish, signed cookies, ``prepare``,
``data_received``, ``on_connection_close``, the application's log function) and nothing else.

It plugs into a Tornado application as a ``Router`` (``HandlerRoute``), so it receives Tornado's
own ``HTTPServerRequest`` and works on Tornado's HTTP server as well as on
``gateway.runtime.http_server``.
"""
from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any, Awaitable, Callable

import tornado
from tornado import httputil
from tornado.httputil import HTTPHeaders, HTTPMessageDelegate, HTTPServerRequest, ResponseStartLine
from tornado.iostream import StreamClosedError
from tornado.routing import Router
from tornado.web import RequestHandler, create_signed_value, decode_signed_value

from gateway.runtime.http1 import has_control_chars

app_log = logging.getLogger("tornado.application")
_SERVER = f"TornadoServer/{tornado.version}"


class LeanHandler:
    """Subclass, override ``prepare``/``data_received``/``get``/``post``/..., like a RequestHandler."""

    SUPPORTED_METHODS: tuple[str, ...] = ("GET", "HEAD", "POST", "DELETE", "PATCH", "PUT", "OPTIONS")

    def __init__(self, request: HTTPServerRequest, *, cookie_secret: str | bytes | None = None,
                 log_function: Callable[[Any], None] | None = None, **kwargs: Any) -> None:
        self.request = request
        self._cookie_secret = cookie_secret
        self._log_function = log_function
        self._finished = False
        self._headers_written = False
        self._auto_finish = True
        self._write_buffer: list[bytes] = []
        self._status_code = 200
        self._reason = "OK"
        # Tornado's default headers are added at flush time, and only if the response still
        # uses this header object (the proxy replaces it with the backend's headers).
        self._headers = self._initial_headers = HTTPHeaders()
        assert request.connection is not None
        request.connection.set_close_callback(self.on_connection_close)
        self.initialize(**kwargs)

    # -- hooks (RequestHandler names) ---------------------------------------------------------

    def initialize(self, **kwargs: Any) -> None:
        pass

    def prepare(self) -> Awaitable[None] | None:
        return None

    def data_received(self, chunk: bytes) -> Awaitable[None] | None:
        return None

    def on_connection_close(self) -> None:
        pass

    def on_finish(self) -> None:
        pass

    # -- response ------------------------------------------------------------------------------

    def set_status(self, status_code: int, reason: str | None = None) -> None:
        self._status_code = status_code
        self._reason = reason if reason is not None else httputil.responses.get(status_code, "Unknown")

    def get_status(self) -> int:
        return self._status_code

    def clear(self) -> None:
        """Back to an empty 200 response with Tornado's default headers."""
        self._headers = self._initial_headers = HTTPHeaders()
        self._write_buffer = []
        self.set_status(200)

    def set_header(self, name: str, value: Any) -> None:
        self._headers[name] = _header_value(value)

    def add_header(self, name: str, value: Any) -> None:
        self._headers.add(name, _header_value(value))

    def clear_header(self, name: str) -> None:
        if name in self._headers:
            del self._headers[name]

    def write(self, chunk: bytes | str | dict[str, Any]) -> None:
        if self._finished:
            raise RuntimeError("Cannot write() after finish()")
        if isinstance(chunk, dict):
            chunk = json.dumps(chunk).replace("</", "<\\/")
            self.set_header("Content-Type", "application/json; charset=UTF-8")
        if isinstance(chunk, str):
            chunk = chunk.encode("utf-8")
        self._write_buffer.append(chunk)

    def flush(self) -> "Awaitable[None]":
        """Send what was written; the result completes when the client has taken it."""
        assert self.request.connection is not None
        chunk = b"".join(self._write_buffer) if len(self._write_buffer) != 1 else self._write_buffer[0]
        self._write_buffer = []
        if not self._headers_written:
            self._headers_written = True
            self._add_pending_headers()
            if self.request.method == "HEAD":
                chunk = b""
            return self.request.connection.write_headers(
                ResponseStartLine("", self._status_code, self._reason), self._headers, chunk)
        if self.request.method == "HEAD" or not chunk:
            f = asyncio.get_running_loop().create_future()
            f.set_result(None)
            return f
        return self.request.connection.write(chunk)

    def finish(self, chunk: bytes | str | dict[str, Any] | None = None) -> "Awaitable[None]":
        if self._finished:
            raise RuntimeError("finish() called twice")
        if chunk is not None:
            self.write(chunk)
        if not self._headers_written:
            code = self._status_code
            if code in (204, 304) or 100 <= code < 200:
                self._write_buffer = []
            elif "Content-Length" not in self._headers:
                self._headers["Content-Length"] = str(sum(len(p) for p in self._write_buffer))
        future = self.flush()
        assert self.request.connection is not None
        self.request.connection.set_close_callback(None)  # type: ignore[attr-defined]
        self.request.connection.finish()
        self._finished = True
        if self._log_function is not None:
            self._log_function(self)
        self.on_finish()
        return future

    def send_error(self, status_code: int = 500, reason: str | None = None) -> None:
        if self._headers_written:
            app_log.error("cannot send error response after headers were written")
            if not self._finished:
                self._close_connection()
            return
        self.clear()
        self.set_status(status_code, reason)
        self.set_header("Content-Type", "text/plain; charset=utf-8")
        self.finish(f"{self._status_code}: {self._reason}\n")

    def _close_connection(self) -> None:
        conn = self.request.connection
        if conn is not None and hasattr(conn, "close"):
            conn.close()  # type: ignore[attr-defined]
        self._finished = True

    def _add_pending_headers(self) -> None:
        h = self._headers
        if h is self._initial_headers:
            if "Server" not in h:
                h["Server"] = _SERVER
            if "Content-Type" not in h:
                h["Content-Type"] = "text/html; charset=UTF-8"
            if "Date" not in h:
                h["Date"] = httputil.format_timestamp(time.time())
        cookies = getattr(self, "_new_cookie", None)
        if cookies:
            for morsel in cookies.values():
                h.add("Set-Cookie", morsel.OutputString(None))

    # -- cookies -------------------------------------------------------------------------------

    set_cookie = RequestHandler.set_cookie   # builds Morsels in self._new_cookie; same checks

    def get_cookie(self, name: str, default: str | None = None) -> str | None:
        cookies = self.request.cookies
        return cookies[name].value if name in cookies else default

    def set_signed_cookie(self, name: str, value: str | bytes, expires_days: float | None = 30,
                          **kwargs: Any) -> None:
        assert self._cookie_secret is not None, "a cookie secret is needed for signed cookies"
        self.set_cookie(name, create_signed_value(self._cookie_secret, name, value),  # type: ignore[arg-type]
                        expires_days=expires_days, **kwargs)

    def get_signed_cookie(self, name: str, value: str | None = None, max_age_days: float = 31) -> bytes | None:
        if self._cookie_secret is None:
            return None
        if value is None:
            value = self.get_cookie(name)
        return decode_signed_value(self._cookie_secret, name, value, max_age_days=max_age_days)

    # -- running -------------------------------------------------------------------------------

    async def _execute(self) -> None:
        try:
            result = getattr(self, (self.request.method or "GET").lower())()
            if result is not None:
                await result
            if self._auto_finish and not self._finished:
                self.finish()
        except StreamClosedError:
            self._finished = True   # the client went away; nothing left to tell it
        except Exception:
            app_log.exception("Uncaught exception %s %s", self.request.method, self.request.path)
            if not self._finished:
                self.send_error(500)


def _header_value(value: Any) -> str:
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    elif isinstance(value, int):
        return str(value)
    elif not isinstance(value, str):
        value = httputil.format_timestamp(value) if hasattr(value, "timetuple") else str(value)
    if has_control_chars(value):
        raise ValueError(f"Unsafe header value {value!r}")
    return value


class _Delegate(HTTPMessageDelegate):
    """Feeds one request into a LeanHandler: prepare at the head, body as it streams, then run."""

    __slots__ = ("handler",)

    def __init__(self, handler: LeanHandler) -> None:
        self.handler = handler

    def headers_received(self, start_line: Any, headers: HTTPHeaders) -> Awaitable[None] | None:
        h = self.handler
        if h.request.method not in h.SUPPORTED_METHODS:
            h.send_error(405)
            return None
        try:
            return h.prepare()
        except Exception:
            app_log.exception("Uncaught exception in prepare %s %s", h.request.method, h.request.path)
            if not h._finished:
                h.send_error(500)
            return None

    def data_received(self, chunk: bytes) -> Awaitable[None] | None:
        if self.handler._finished:
            return None
        return self.handler.data_received(chunk)

    def finish(self) -> None:
        if not self.handler._finished:
            asyncio.ensure_future(self.handler._execute())

    def on_connection_close(self) -> None:
        self.handler.on_connection_close()


class HandlerRoute(Router):
    """A Tornado routing target running ``handler_class`` (a LeanHandler) for each request."""

    def __init__(self, handler_class: type[LeanHandler], **kwargs: Any) -> None:
        self.handler_class = handler_class
        self.kwargs = kwargs

    def find_handler(self, request: HTTPServerRequest, **_: Any) -> HTTPMessageDelegate:
        return _Delegate(self.handler_class(request, **self.kwargs))
