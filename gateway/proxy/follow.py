"""Token follow-ups straight from the parsed head: the proxy's fast path for result-page polls.

A poll (``GET`` of a ``nextUri`` the gateway wrote, routing token included) is the gateway's
most frequent request. On the general path it costs a Tornado ``HTTPServerRequest``, a handler
object with its header objects, three coroutines before the forwarder and the handler's output
machinery; about half of a poll's CPU time (docs/benchmarks.md, "A floor for a Python proxy").
Here the HTTP server (``gateway.runtime.http_server``) hands such a request over as soon as its
head is parsed, and one ``FollowUp`` object carries it: it is the forwarder's sink, writes the
answer to the client connection as name/value lines, and ends with the same bookkeeping as the
handler (metrics and access log, the query's lifecycle, in-flight count).

Nothing is decided here that the handler decides differently: which backend (the token,
``exchange.resolve_token``), the response's header lines and URI rewriting
(``exchange.relay_response``, which the handler calls too), when the query ended
(``exchange.query_end``), what a failed backend means (``exchange.follow_up_failure``), and
the forwarding itself (``Forwarder``). Whatever is unusual goes the general way: a token that
does not verify, a removed backend, a request with a body, an OAuth2 exchange, a Host header
Tornado would refuse.

A client polls on one keep-alive connection with the same header lines every time (its
session's user, source, catalog, time zone, capabilities...); only the request line changes.
The HTTP server hands such a repeat the header object it parsed before
(``gateway.runtime.http1.RepeatedHeads``), and what the follow-ups derived from it is kept
beside it on the connection (``Derived``): that its Host line passed, the gateway's URL for it,
and the serialized lines its backend gets (for that backend's URL and its use of
``X-Forwarded-*``, which a 406 can change). So a poll's header lines are parsed, checked,
filtered and serialized once per client connection, not once per poll.

The exchange with the backend has two forms. When the backend's pool holds an idle connection
(the steady state of polling), the request is written to it in the same callback that read
the client's head, and the connection's events drive the rest (a *direct* exchange: no task,
no coroutine chain, no future; ``BackendClient.lease``/``exchange``/``settle``). Its end goes
through the forwarder's own parts: the header lines (``headers_for``), timing and passive
health (``attempt_started``, ``failed``), the 406 for ``X-Forwarded-*`` (caught in
``on_headers``, then ``refused_by`` and sent again), a pooled connection found closed (sent
again on a fresh one, as ``fetch`` does). Everything else (a connect, its retries while the
backend is healthy, the repeat after a 406) is ``Forwarder.send``, awaited in a task as before.

A poll's answer usually arrives in one read: its head and exactly the body its
``Content-Length`` gives. The backend connection then hands it over whole (``_Conn._whole``)
and ``FollowUp.whole`` relays it in one call: the connection back to the pool, the header
lines translated and the page rewritten (the same ``relay_response`` and ``UriRewriter.page``),
the response written and finished at once (``_Request.write_whole``), its metrics in one call
(``Metrics.follow_up_done``), the query's end checked. Anything else about an answer (a head
or body in pieces, chunked, a 406, bytes past the body) takes the connection's general path and
the sink's three calls. ``benchmarks/poll_calls.py`` counts what a poll costs in calls.
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Awaitable, Callable

from tornado.httputil import HTTPHeaders, format_timestamp, responses
from tornado.httputil import _ABNF  # the Host check Tornado's request applies
from tornado.iostream import StreamClosedError

from gateway import protocol as P
from gateway.backends.state import Backend
from gateway.proxy import exchange as X
from gateway.proxy.client import BackendError, Direct, backend_error, stale
from gateway.routing.tokens import PREFIX, TokenError, TokenKeys
from gateway.runtime.http1 import RepeatedResponses, header_pairs

log = logging.getLogger("gateway.proxy")
app_log = logging.getLogger("tornado.application")

_FLUSH_AT = 256 * 1024   # as the handler: bytes buffered for the client before waiting for it
_KINDS = frozenset({P.QUERY, P.SPOOL})   # what the fast path carries (OAuth2 exchanges: cookies)
_NO_BODY = frozenset({204, 304})
_HOST = _ABNF.host


class FollowUps:
    """The HTTP server's hook (``follow_ups`` of the application): ``take`` a request or not.

    Holds the parts a follow-up uses (built once in ``Gateway.__init__``): the routing-token
    keys (``tokens()``: they exist once the gateway started), the registry, metrics, the
    query lifecycle, the forwarder, the count of requests proxied now (``active``), the
    gateway's URL for a request (``base_for(scheme, headers)``) and what a response taught
    about owners (``taught(translated, backend)``)."""

    __slots__ = ("tokens", "registry", "metrics", "lifecycle", "forwarder", "active", "base_for",
                 "taught", "minters")

    prefix = PREFIX   # every target ``take`` takes starts with it

    def __init__(self, *, tokens: Callable[[], TokenKeys | None], registry: Any, metrics: Any,
                 lifecycle: Any, forwarder: Any, active: Any,
                 base_for: Callable[[str, HTTPHeaders], str],
                 taught: Callable[[X.ResponseHeaders, str], None]) -> None:
        self.tokens = tokens
        self.registry = registry
        self.metrics = metrics
        self.lifecycle = lifecycle
        self.forwarder = forwarder
        self.active = active
        self.base_for = base_for
        self.taught = taught
        # Each backend's token minter, kept across follow-ups (it keeps a prefix per query)
        self.minters: dict[str, X.TokenMinter] = {}

    def minter(self, keys: TokenKeys, backend: str) -> X.TokenMinter:
        m = self.minters.get(backend)
        if m is None or m.keys is not keys:
            m = self.minters[backend] = X.TokenMinter(keys, backend)
        return m

    def take(self, req: Any, target: str, headers: HTTPHeaders) -> bool:
        """Take a GET without a body whose target carries a routing token that verifies and
        names a configured backend; set ``req.delegate``. False: the general path serves it
        (and answers whatever is wrong with it)."""
        if not target.startswith(PREFIX):
            return False
        keys = self.tokens()
        if keys is None:
            return False
        memo = req.conn.follow_memo
        if memo is None or memo.headers is not headers:
            host = headers.get("Host")
            if host is None or "," in host or not _HOST.fullmatch(host):
                return False   # Tornado's request refuses it with a 400: let it
            memo = None
        path, _, query = target.partition("?")
        try:
            route = X.resolve_token(keys, "GET", path, query)
        except TokenError:
            return False
        if route is None or route.kind.kind not in _KINDS:
            return False
        backend = self.registry.get(route.backend)
        if backend is None:
            return False
        if memo is None:
            memo = req.conn.follow_memo = Derived(headers)
        follow = req.delegate = FollowUp(self, keys, req, headers, route, backend, path, memo)
        req.close_callback = follow.client_left
        return True


class Derived:
    """What the follow-ups of one client connection derived from its header lines, kept while
    the connection hands over the same header object (a polling client repeats its lines:
    ``gateway.runtime.http1.RepeatedHeads``): that the Host line passed, the gateway's URL for
    the client (``base``), and the lines its backend gets (``block``, for ``key``: the
    backend's URL and whether it gets ``X-Forwarded-*``). The remote address and scheme that
    these depend on come from the connection and, behind a trusted proxy, these same lines."""

    __slots__ = ("headers", "base", "key", "block")

    def __init__(self, headers: HTTPHeaders) -> None:
        self.headers = headers
        self.base: str | None = None
        self.key: tuple[str, bool] | None = None
        self.block = b""


class FollowUp:
    """One token follow-up: the forwarder's sink, and what the client connection is told.

    It also stands in for the handler where metrics read one (``request``, ``get_status``):
    the access log and the request counters see a poll the same way on both paths."""

    __slots__ = ("parts", "keys", "conn", "headers", "route", "backend", "path", "base", "status",
                 "reason", "rewriter", "out", "length", "pending", "pending_len", "streaming",
                 "gone", "done", "started", "_gateway_metrics", "counted", "lease", "t0",
                 "stalled", "memo", "forwarded", "refused")

    method = "GET"

    def __init__(self, parts: FollowUps, keys: TokenKeys, conn: Any, headers: HTTPHeaders,
                 route: X.TokenRoute, backend: Backend, path: str, memo: Derived) -> None:
        self.parts = parts
        self.memo = memo            # what this connection's header lines gave before
        self.keys = keys
        self.conn = conn            # gateway.runtime.http_server._Request: the client exchange
        self.headers = headers
        self.route = route
        self.backend = backend
        self.path = path            # as the client sent it (token included)
        self.base = ""
        self.status = 200
        self.reason = "OK"
        self.rewriter: P.UriRewriter | None = None
        self.out: list[tuple[str, str]] = []
        self.length: int | None = None   # the backend's Content-Length, kept when not rewriting
        self.pending: list[bytes] = []
        self.pending_len = 0
        self.streaming = False      # the head went out: the rest is streamed
        self.gone = False           # the client went away (the forwarder stops retrying for it)
        self.done = False
        self.started = time.perf_counter()
        self._gateway_metrics: Any = None
        self.counted = False        # in the active count and the in-flight gauge
        self.lease: Any = None      # the pooled connection of a direct exchange
        self.forwarded = False      # ... which sent X-Forwarded-* lines
        self.refused = False        # ... and got the 406 for them (nothing reaches the client)
        self.t0 = self.stalled = 0.0

    # -- what the metrics read (the handler's names) --------------------------------------------

    @property
    def request(self) -> "FollowUp":
        return self

    @property
    def remote_ip(self) -> str:
        return self.conn.remote_ip

    def request_time(self) -> float:
        return time.perf_counter() - self.started

    def get_status(self) -> int:
        return self.status

    # -- the HTTP server's delegate -----------------------------------------------------------

    def finish(self) -> None:
        """The request (no body) is complete: forward it, directly on a pooled backend
        connection when there is one, else (a connect is needed) through ``Forwarder.send``."""
        try:
            self._opened()
            if self._direct():
                return
        except Exception as exc:  # noqa: BLE001 - answered as the handler would (500)
            self._crashed(exc)
            self._closed()
            return
        asyncio.ensure_future(self._general())

    def on_connection_close(self) -> None:
        self.client_left()

    def client_left(self) -> None:
        self.gone = True

    # -- the exchange -------------------------------------------------------------------------

    def _opened(self) -> None:
        parts = self.parts
        kind = self.route.kind
        self._gateway_metrics = parts.metrics.follow_up_started(kind.kind, "token")
        parts.active.n += 1
        self.counted = True
        if kind.kind == P.QUERY:
            parts.lifecycle.seen(kind.key or "")
        memo = self.memo
        base = memo.base
        if base is None:
            base = memo.base = parts.base_for(self.conn.protocol, self.headers)
        self.base = base

    def _closed(self) -> None:
        if self.counted:
            self.counted = False
            self.parts.active.n -= 1
            self.parts.metrics.request_done(self.route.kind.kind, self.status,
                                            time.perf_counter() - self.started, self._gateway_metrics)

    def _direct(self) -> bool:
        """Send the request on an idle pooled connection, the answer handled by ``_direct_done``
        when it ends; False when there is none (nothing was done)."""
        fw = self.parts.forwarder
        backend = self.backend
        conn = fw.client.lease(backend.proxyTo)
        if conn is None:
            return False
        memo = self.memo
        forwarded = fw.forwards(backend)
        key = (backend.proxyTo, forwarded)
        if memo.key != key:
            pairs, forwarded = fw.headers_for(backend, header_pairs(self.headers), base=self.base,
                                              remote_ip=self.conn.remote_ip)
            memo.block = fw.client.header_block(backend.proxyTo, pairs)
            memo.key = key
        self.begin(backend)
        self.lease = conn
        # The 406 for X-Forwarded-* is caught here (on_headers), not by Forwarder.guarded's
        # wrapper: one object and three calls less per poll.
        self.forwarded = forwarded
        # Forwarder.attempt_started without its three calls: what the metrics' backend_start
        # records for a follow-up (its record is at hand), the start, the loop's stall so far
        # (tests/test_follow_fast_path.py counts both paths the same).
        rec = self._gateway_metrics
        if fw.timing is not None and rec is not None:
            rec.forwarded = True
        lag = fw.lag
        self.t0, self.stalled = time.perf_counter(), (lag.stalled() if lag is not None else 0.0)
        fw.client.exchange(conn, self.route.uri, memo.block, self, Direct(self._direct_done, self.whole))
        return True

    def whole(self, code: int, reason: str, headers: HTTPHeaders, body: bytes,
              heads: RepeatedResponses | None = None) -> None:
        """The direct exchange's answer arrived in one piece, its body as long as its
        ``Content-Length`` says (``_Conn._whole``; never a 406 or a bodiless status): what
        ``on_headers``, ``on_chunk``, ``on_end`` and ``_direct_done`` do, in one call. Runs
        inside the connection's socket event: nothing may escape it.

        ``heads``: the backend's kept answer head, when this answer's lines are its lines (but
        for ``Date`` and ``Content-Length``, which the client does not get from the backend):
        what it was translated to is then reused (``heads.derived``), or kept for next time."""
        parts = self.parts
        conn, self.lease = self.lease, None
        backend_seconds = time.perf_counter() - self.t0
        try:
            parts.forwarder.client.settle(conn, True)   # the backend's part is over, whatever the client does
            if self.gone:
                raise StreamClosedError()   # as on_chunk: nobody will receive the page
            derived = heads.derived if heads is not None else None
            if derived is not None:   # the same lines as the last answer: translated the same
                self.status, self.reason, self.out, json, block = derived
                # (the page's query id is not looked for: the follow-up knows its query)
                if json:
                    minter = parts.minters.get(self.backend.name)   # (parts.minter, without the call)
                    if minter is None or minter.keys is not self.keys:
                        minter = parts.minter(self.keys, self.backend.name)
                    self.rewriter = P.UriRewriter(self.base, minter, find_id=False)
                else:
                    self.rewriter = None
            else:
                block = None
                relay = self._relay(code, reason, headers)
                if heads is not None and X.repeatable(relay, headers):
                    block = self.conn.head_block(self.status, self.reason, self.out)
                    heads.derived = (self.status, self.reason, self.out, relay.rewriter is not None, block)
            rw = self.rewriter
            if rw is not None:
                body = rw.page(body)
            self.conn.write_whole(self.status, self.reason, self.out, body, block)
            self.done = True
        except Exception as exc:  # noqa: BLE001 - answered as the handler would
            parts.forwarder.timed(self, self.t0, None)
            try:
                self._crashed(exc)
            except Exception:  # noqa: BLE001 - the client connection is beyond answering
                app_log.exception("Uncaught exception GET %s", self.path)
                self.conn.close()
            self._closed()
            return
        # What the forwarder's timing, _end's access log and _closed record, in one call (the
        # answer was the backend's: nothing to log).
        self.counted = False
        parts.active.n -= 1
        parts.metrics.follow_up_done(self._gateway_metrics, self.status, time.perf_counter() - self.started,
                                     backend_seconds)
        try:
            self._ended()
        except Exception as exc:  # noqa: BLE001 - a bug; the client has its answer
            app_log.error("Uncaught exception GET %s", self.path, exc_info=exc)

    def _direct_done(self, _result: Any, exc: BaseException | None) -> None:
        """The direct exchange ended: as ``Forwarder.send`` and ``BackendClient.fetch`` would
        have gone on (the same decisions, called from here). Runs inside the connection's
        socket event: nothing may escape it."""
        fw = self.parts.forwarder
        conn, self.lease = self.lease, None
        again = False   # sent again through Forwarder.send, which then ends the request
        try:
            fw.client.settle(conn, exc is None)
            if exc is None:
                fw.timed(self, self.t0, None)
                if self.refused:   # the 406 for X-Forwarded-*: sent again without them
                    fw.refused_by(self.backend)
                    again = True
                else:
                    self._ended()
            elif stale(exc, conn):   # the pooled connection was closed: a fresh one, as fetch does
                again = True
            else:
                err = backend_error(exc, conn, fw.client.request_timeout)
                if isinstance(err, BackendError):
                    fw.failed(self.backend, err, self, self.t0, self.stalled)
                    self._backend_failed(err)
                else:
                    self._crashed(err)
        except Exception as crash:  # noqa: BLE001
            again = False
            try:
                self._crashed(crash)
            except Exception:  # noqa: BLE001 - the client connection is beyond answering
                app_log.exception("Uncaught exception GET %s", self.path)
                self.conn.close()
        if again:
            asyncio.ensure_future(self._general())
        else:
            self._closed()

    async def _general(self) -> None:
        """The exchange through ``Forwarder.send`` (connects, retries, the 406 repeat)."""
        try:
            try:
                await self.parts.forwarder.send(self.backend, "GET", self.route.uri, header_pairs(self.headers),
                                                None, self, base=self.base, remote_ip=self.conn.remote_ip)
            except BackendError as exc:
                self._backend_failed(exc)
                return
            self._ended()
        except Exception as exc:  # noqa: BLE001
            self._crashed(exc)
        finally:
            self._closed()

    def _ended(self) -> None:
        """The backend answered in full: did the query end with this answer?"""
        rw = self.rewriter
        if rw is None or rw.saw_next_uri:
            return   # (what query_end says of a GET's answer without a final state to read)
        kind = self.route.kind
        ended = X.query_end(kind, "GET", self.route.path, self.status, rw.final_state())
        if ended is not None:
            self.parts.lifecycle.finished(kind.key or "", *ended)

    def _backend_failed(self, exc: BackendError) -> None:
        """The backend failed: what the client is told (``exchange.follow_up_failure``)."""
        backend = self.backend
        kind = self.route.kind
        if self.streaming:
            log.warning("backend %s failed mid-response to GET %s: %s", backend.name, self.path, exc)
            self._close()
            return
        failure = X.follow_up_failure(kind, "GET", self.route.path, backend.name, backend.routingGroup,
                                      str(exc), sent=exc.sent, timeout=exc.timeout)
        if failure.lost:
            self.parts.lifecycle.finished(kind.key or "", "FAILED", failure.message)
            doc = P.failed_query(failure.message, gateway_base=self.base,
                                 error_name="GENERIC_INTERNAL_ERROR", query_id=kind.key)
            self._answer(200, "OK", "application/json", doc)
        else:
            self._answer(failure.status, None, "text/plain; charset=utf-8", failure.message.encode())

    def _crashed(self, exc: BaseException) -> None:
        """Anything else went wrong (the client went away, or a bug): as the handler does."""
        if isinstance(exc, StreamClosedError):
            if not self.gone:
                app_log.error("Uncaught exception GET %s", self.path, exc_info=exc)
            self.done = True
            return
        app_log.error("Uncaught exception GET %s", self.path, exc_info=exc)
        if not self.done:
            if self.streaming:
                self._close()
            else:
                self._answer(500, "Internal Server Error", "text/plain; charset=utf-8",
                             b"500: Internal Server Error\n")

    # -- the forwarder's sink -----------------------------------------------------------------

    def begin(self, backend: Backend) -> None:
        """Before each attempt: a fresh response state."""
        self.backend = backend
        self.forwarded = self.refused = False   # Forwarder.send guards its attempts itself
        self.rewriter = None
        self.pending = []
        self.pending_len = 0
        self.length = None

    def on_headers(self, code: int, reason: str, headers: HTTPHeaders) -> None:
        if code == 406 and self.forwarded:
            self.refused = True   # see _direct: this answer is not the client's
            return
        self._relay(code, reason, headers)

    def _relay(self, code: int, reason: str, headers: HTTPHeaders) -> X.Relay:
        """The answer's status and header lines, as the client gets them (``relay_response``)."""
        backend = self.backend
        self.status = code
        self.reason = reason or _reason(code)
        relay = X.relay_response(
            headers, method="GET", keys=self.keys, backend=backend.name, backend_base=backend.proxyTo,
            gateway_base=self.base,
            request_transaction=P.transaction_id(self.headers.get("X-Trino-Transaction-Id")))
        self.rewriter = relay.rewriter
        self.length = None
        if relay.length is not None:
            try:
                self.length = int(relay.length)
            except ValueError:   # e.g. "5, 5": repeated, valid for framing, not an int
                self.length = None
        self.out = relay.headers.headers
        if relay.headers.learn or relay.headers.forget:   # a poll's answer usually teaches nothing
            self.parts.taught(relay.headers, backend.name)
        return relay

    def on_chunk(self, chunk: bytes) -> Awaitable[None] | None:
        if self.refused:
            return None
        if self.gone:
            raise StreamClosedError()   # stop reading a page nobody will receive
        # The backend's bytes are kept as they came until the page ends (the usual poll: one
        # chunk, rewritten in one pass by ``UriRewriter.page``) or passes _FLUSH_AT; then
        # they stream through ``feed``. (The handler counts rewritten bytes against the same
        # bound: a page near it may be chunked on one path and sized on the other.)
        self.pending.append(chunk)
        self.pending_len += len(chunk)
        if self.pending_len >= _FLUSH_AT:
            return self._flush()
        return None

    def on_end(self) -> None:
        if self.refused:
            return
        rw = self.rewriter
        data = self.pending[0] if len(self.pending) == 1 else b"".join(self.pending)
        self.pending = []
        if self.streaming:
            if rw is not None:
                data = rw.feed(data) + rw.finish()
            if data:
                self.conn.write(data)
        else:
            # The usual page: head and body leave in one send, with the body's length.
            if self.status in _NO_BODY:
                body, length = b"", None
            else:
                body = rw.page(data) if rw is not None else data
                length = len(body)
                if rw is None and self.length is not None:
                    length = self.length   # as the handler: the backend's length, checked on finish
            self.conn.write_pairs(self.status, self.reason, self.out, length, body)
        self._end()

    def _flush(self) -> "asyncio.Future[None]":
        data = self.pending[0] if len(self.pending) == 1 else b"".join(self.pending)
        self.pending = []
        self.pending_len = 0
        if self.rewriter is not None:
            data = self.rewriter.feed(data)
        if not self.streaming:
            self.streaming = True
            length = self.length if self.rewriter is None else None
            return self.conn.write_pairs(self.status, self.reason, self.out, length, data)
        return self.conn.write(data)

    # -- ending -------------------------------------------------------------------------------

    def _answer(self, code: int, reason: str | None, content_type: str, body: bytes) -> None:
        """An answer the gateway makes itself (the backend failed before answering)."""
        self.status = code
        self.reason = reason or _reason(code)
        # (the lines the handler's own answers carry: Tornado's Date, our Content-Type)
        pairs = [("Content-Type", content_type), ("Date", format_timestamp(time.time()))]
        self.conn.write_pairs(code, self.reason, pairs, len(body), body)
        self._end()

    def _end(self) -> None:
        self.done = True
        try:
            self.conn.finish()
        finally:
            self.parts.metrics.log_request(self)

    def _close(self) -> None:
        """The backend failed mid-response: the client has a partial answer; close so it knows."""
        self.done = True
        self.conn.close()


def _reason(code: int) -> str:
    return responses.get(code, "Unknown")
