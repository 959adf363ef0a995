"""The proxy handler: every Trino client request enters here.

A new statement is routed (``gateway.routing.router``: context → rules → group → balancer) and
forwarded; a follow-up that carries a routing token goes to the backend the token names (no
lookup); any other request naming a query, transaction, segment or OAuth2 exchange goes to its
owner (``gateway.routing.owners``). Forwarding is ``gateway.proxy.forward``; what a response
means (headers, URIs, what it teaches, whether the query ended) is ``gateway.proxy.exchange``;
the handler wires them to sockets, and bytes stream through with back-pressure.
"""
from __future__ import annotations

import logging
import math
import time
from typing import TYPE_CHECKING, Any, Awaitable

from tornado.httputil import HTTPHeaders
from tornado.iostream import StreamClosedError

from gateway import protocol as P
from gateway.backends.state import Backend
from gateway.lifecycle import Started
from gateway.proxy import exchange as X
from gateway.limits import utf8
from gateway.proxy.client import BackendError
from gateway.proxy.forward import NoBackendReached, StatementLost
from gateway.proxy.lean import HandlerRoute, LeanHandler
from gateway.routing.router import Route
from gateway.routing.tokens import TokenError
from gateway.runtime.http1 import header_pairs

if TYPE_CHECKING:
    from gateway.app import Gateway

log = logging.getLogger("gateway.proxy")

_OAUTH_COOKIE = "trino-gateway-oauth"
_FLUSH_AT = 256 * 1024  # bytes buffered for the client before we wait for it to drain


class ProxyHandler(LeanHandler):
    """Runs for every request no admin route takes (see ``proxy_route``); the body streams in
    through ``data_received``, the backend's answer streams out through ``on_headers`` /
    ``on_chunk`` / ``on_end``."""

    SUPPORTED_METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS")  # type: ignore[assignment]

    def initialize(self, gateway: "Gateway") -> None:
        self.gw = gateway
        self._body = bytearray()
        self._too_large = False
        self._rewriter: P.UriRewriter | None = None
        self._backend: Backend | None = None
        self._buffered = 0
        self._kind: P.RequestKind | None = None
        self._started = 0.0
        self._client_gone = False
        self._path = self.request.path       # without a routing-token prefix
        self._uri = self.request.uri or "/"
        self._base = ""

    # -- request body -----------------------------------------------------------------------

    def prepare(self) -> None:
        self._started = time.perf_counter()
        limit = self.gw.config.server.maxBodySize
        self.request.connection.set_max_body_size(limit + 1)  # type: ignore[union-attr]
        cl = self.request.headers.get("Content-Length")
        if cl is not None:
            try:
                n = int(cl)
            except ValueError:
                return self._plain(400, "Invalid Content-Length header\n")
            if n > limit:
                self._too_large = True
                return self._plain(413, f"Request body of {n} bytes exceeds the gateway limit of {limit} bytes\n")
        elif "chunked" in self.request.headers.get("Transfer-Encoding", "").lower():
            # Tornado refuses a chunk that crosses its limit with a bare 400 before the body
            # reaches us; let chunks through so data_received answers 413 at our limit.
            self.request.connection.set_max_body_size(1 << 62)  # type: ignore[union-attr]

    def data_received(self, chunk: bytes) -> None:
        if self._too_large:
            return
        limit = self.gw.config.server.maxBodySize
        if len(self._body) + len(chunk) > limit:
            self._too_large = True
            self._body = bytearray()
            # Answer now (the connection closes after it): reading the rest would be wasted.
            self._plain(413, f"Request body exceeds the gateway limit of {limit} bytes\n")
            return
        self._body += chunk

    def _plain(self, code: int, text: str) -> None:
        self.clear()
        self.set_status(code)
        self.set_header("Content-Type", "text/plain; charset=utf-8")
        self.finish(text)

    # -- dispatch --------------------------------------------------------------------------

    # Plain methods returning the dispatch coroutine: one coroutine less per request in flight
    # for the garbage collector to walk (issue 19).
    def get(self) -> Awaitable[None]: return self._dispatch()
    def head(self) -> Awaitable[None]: return self._dispatch()
    def post(self) -> Awaitable[None]: return self._dispatch()
    def put(self) -> Awaitable[None]: return self._dispatch()
    def delete(self) -> Awaitable[None]: return self._dispatch()
    def patch(self) -> Awaitable[None]: return self._dispatch()
    def options(self) -> Awaitable[None]: return self._dispatch()

    async def _dispatch(self) -> None:
        if self._finished:
            return
        if self._too_large:
            limit = self.gw.config.server.maxBodySize
            return self._plain(413, f"Request body exceeds the gateway limit of {limit} bytes\n")
        req = self.request
        method = req.method or "GET"
        token_route: X.TokenRoute | None = None
        try:
            if self.gw.tokens is not None:
                token_route = X.resolve_token(self.gw.tokens, method, req.path, req.query)
        except TokenError as exc:
            self.gw.metrics.request_started(P.OTHER)
            self.gw.metrics.owner_lookup("refused")
            self._plain(400, f"{exc}; the URI was changed or does not come from this gateway\n")
            self.gw.metrics.request_done(P.OTHER, 400, time.perf_counter() - self._started)
            return
        if token_route is not None:
            kind = token_route.kind
            self._path, self._uri = token_route.path, token_route.uri
        else:
            kind = P.classify(method, req.path, req.query, req.headers.get("Referer"))
        self._kind = kind
        self.gw.metrics.request_started(kind.kind)
        self.gw.active.n += 1
        try:
            if kind.kind == P.STATEMENT:
                await self._statement()
            else:
                await self._follow_up(kind, token_route)
        except StreamClosedError:
            if not self._client_gone:
                raise
            self._finished = True   # on_chunk stopped a page the client left: nothing to answer
        finally:
            self.gw.active.n -= 1
            self.gw.metrics.request_done(kind.kind, self.get_status(), time.perf_counter() - self._started)

    # -- new statements ----------------------------------------------------------------------

    async def _statement(self) -> None:
        gw = self.gw
        base = self._base = gw.base_url(self.request)
        if gw.shutting_down:
            gw.metrics.statement_failed("shutting-down")
            return self._failed("The gateway is shutting down; submit the query again",
                                base, "SERVER_SHUTTING_DOWN")
        body = bytes(self._body)
        headers = self.request.headers
        if not utf8(body):   # no cluster can run it; say so the Trino way (not a 400/500)
            gw.metrics.statement_failed("not-utf8")
            return self._failed("The SQL text is not valid UTF-8", base, "SYNTAX_ERROR")
        # Statements that belong to a backend already: kill_query of a known query, and any
        # statement inside a transaction. They still meet the rules (a reject still rejects)
        # and are recorded like any other; only the backend is given.
        pinned: str | None = None
        target = P.kill_query_target(body[:4096].decode("utf-8", "replace"))
        # An overloaded worker refuses new statements first; a kill_query is not shed (it
        # frees a cluster's resources and is what an operator sends when things go wrong).
        shed = None if target else gw.shed()
        if shed is not None:
            return self._shed(shed, base)
        if target:
            pinned = await gw.owner(P.QUERY, target, headers)
        txn_lines = headers.get_list("X-Trino-Transaction-Id")   # usually none: no KeyError raised
        txn = P.transaction_id(",".join(txn_lines)) if txn_lines else None
        if pinned is None and txn:
            pinned = await gw.owner(P.TRANSACTION, txn, headers)
        pinned_backend = gw.registry.get(pinned) if pinned is not None else None
        route = await gw.route_statement(headers, body, self.request.remote_ip or "", pinned=pinned_backend)
        if route.reject is not None:
            gw.metrics.rejected(route.rule)
            return self._failed(route.reject, base, "PERMISSION_DENIED", route=route)
        if pinned is not None and pinned_backend is None:
            gw.metrics.statement_failed("no-backend")
            return self._failed(f"Backend {pinned} that owns this query or transaction was removed",
                                base, "NO_NODES_AVAILABLE", route=route)
        if not route.backends:
            gw.metrics.statement_failed("no-backend")
            return self._failed(route.reason, base, "NO_NODES_AVAILABLE", route=route)
        if not route.pinned and gw.admission.capped(route.group):
            # Admission control (gateway/admission/control.py): a slot on a backend, or wait in line.
            backend, lease = await gw.admission.try_admit(route)
            if backend is None:
                self.set_header("Content-Type", "application/json")
                held = await gw.admission.hold(route, body, headers, self.request.remote_ip or "", base)
                return self.finish(held)
            await self._send_statement([backend], body, base, route)
            rw = self._rewriter
            gw.admission.admitted(lease, rw.query_id if rw is not None and self.get_status() == 200 else None,
                                  route.group or "")
            return
        await self._send_statement(route.backends, body, base, route)

    def _failed(self, message: str, base: str, error_name: str, query_id: str | None = None,
                route: Any = None) -> None:
        self.clear()
        self.set_status(200)
        self.set_header("Content-Type", "application/json")
        query_id = query_id or P.new_query_id()
        if route is not None:   # a statement the gateway refused: recorded as REJECTED
            self.gw.statement_refused(route, query_id, "REJECTED", message)
        self.finish(P.failed_query(message, gateway_base=base, error_name=error_name, query_id=query_id))

    def _shed(self, reason: str, base: str) -> None:
        """This worker is overloaded (gateway/runtime/overload.py): refuse the new statement before any
        work, with 429 + Retry-After and a Trino error document. The Python client retries a 429
        after Retry-After seconds (a 503 only after 0.1-0.2 s, and then hides the message);
        JDBC and the CLI show the status with the message. Polls are never shed."""
        gw = self.gw
        s = gw.config.server
        retry = int(math.ceil(s.shedRetryAfter))
        if reason == "loop-lag":
            why = f"its event loop ran {gw.loop_lag.recent():.2f}s late (limit server.shedLoopLag {s.shedLoopLag:g}s)"
        else:
            why = f"it proxies {gw.in_flight} requests (limit server.shedInFlight {s.shedInFlight})"
        message = f"The gateway is overloaded: {why}; retry in {retry}s"
        gw.metrics.shed_statement(reason, message)
        query_id = P.new_query_id()
        gw.statement_refused(None, query_id, "REJECTED", message)
        self.clear()
        self.set_status(429)
        self.set_header("Retry-After", str(retry))
        self.set_header("Content-Type", "application/json")
        self.finish(P.failed_query(message, gateway_base=base, error_name="QUERY_QUEUE_FULL",
                                   query_id=query_id))

    async def _send_statement(self, candidates: list[Backend], body: bytes, base: str, route: Route) -> None:
        """Forward a POST; on a connection that never opened, the next candidate (forward.py)."""
        gw = self.gw
        try:
            backend = await gw.forwarder.submit(candidates, self._uri or "/v1/statement",
                                                header_pairs(self.request.headers), body, self,
                                                base=base, remote_ip=self.request.remote_ip or "")
        except StatementLost as lost:
            if self._headers_written:
                return self._abort(lost.exc)
            b = lost.backend
            gw.metrics.statement_failed("backend-lost")
            return self._failed(
                f"Backend {b.name} (group {b.routingGroup}) failed while accepting the query: "
                f"{lost.exc}. The query may or may not have started.", base, "GENERIC_INTERNAL_ERROR")
        except NoBackendReached as none:
            gw.metrics.statement_failed("unreachable")
            return self._failed(f"No backend of routing group '{route.group}' could be reached "
                                f"({'; '.join(none.tried)})", base, "NO_NODES_AVAILABLE", route=route)
        rw = self._rewriter
        if rw is not None and rw.query_id is not None and self.get_status() == 200:
            gw.lifecycle.started(Started(rw.query_id, backend, route, time.time(), None))

    # -- follow-ups --------------------------------------------------------------------------

    async def _follow_up(self, kind: P.RequestKind, token_route: X.TokenRoute | None) -> None:
        gw = self.gw
        req = self.request
        base = self._base = gw.base_url(req)
        backend: Backend | None = None
        if token_route is not None:
            gw.metrics.owner_lookup("token")
            backend = gw.registry.get(token_route.backend)
            if kind.kind == P.QUERY:
                gw.lifecycle.seen(kind.key or "")
            if backend is None:
                return self._owner_removed(kind, token_route.backend, base)
        elif kind.kind == P.OTHER:
            backend = gw.any_backend()
            if backend is None:
                return self._plain(503, "No healthy backend is available\n")
        elif kind.kind == P.OAUTH_CALLBACK:
            name = self.get_signed_cookie(_OAUTH_COOKIE, max_age_days=gw.oauth_cookie_ttl / 86400)
            backend = gw.registry.get(name.decode()) if name else None
            if backend is None:
                return self._plain(400, "OAuth2 callback without a valid gateway routing cookie; "
                                        "start the login again\n")
        else:
            owner = await gw.owner(kind.kind, kind.key or "", req.headers)
            backend = gw.registry.get(owner) if owner else None
            if backend is None:
                what = "Query" if kind.kind == P.QUERY else "Resource"
                return self._plain(404, f"{what} {kind.key} is not known to the gateway or any backend\n")
        body = bytes(self._body) if self._body or req.method in ("POST", "PUT", "PATCH") else None
        try:
            # A connect that timed out is tried again until backendRequestTimeout (forward.py):
            # the query still runs on its backend; a burst that overflowed the backend's accept
            # queue, or a stalled event loop, must not lose it to a 504 the gateway made.
            await gw.forwarder.send(backend, req.method or "GET", self._uri, header_pairs(req.headers),
                                    body, self, base=base, remote_ip=req.remote_ip or "")
        except BackendError as exc:
            if self._headers_written:
                return self._abort(exc)
            failure = X.follow_up_failure(kind, req.method or "GET", self._path, backend.name,
                                          backend.routingGroup, str(exc), sent=exc.sent, timeout=exc.timeout)
            if failure.lost:
                gw.query_finished(kind.key or "", "FAILED", failure.message)
                return self._failed(failure.message, base, "GENERIC_INTERNAL_ERROR", query_id=kind.key)
            return self._plain(failure.status, failure.message)
        rw = self._rewriter
        ended = X.query_end(kind, req.method or "GET", self._path, self.get_status(),
                            rw.final_state() if rw is not None else (None, None))
        if ended is not None:
            gw.query_finished(kind.key or "", *ended)

    def _owner_removed(self, kind: P.RequestKind, name: str, base: str) -> None:
        """A routing token names a backend that is no longer configured."""
        message = f"Backend {name} that owns this {kind.kind} was removed from the gateway"
        if kind.kind == P.QUERY and self.request.method == "GET" and self._path.startswith(X.STATEMENT_PATH):
            self.gw.query_finished(kind.key or "", "FAILED", message)
            return self._failed(message + "; submit the query again", base, "NO_NODES_AVAILABLE",
                                query_id=kind.key)
        return self._plain(404, message + "\n")

    # -- forwarding plumbing -----------------------------------------------------------------

    @property
    def gone(self) -> bool:
        """The client went away: the forwarder does not try a failed connect again for it."""
        return self._client_gone

    def begin(self, backend: Backend) -> None:
        """Before each attempt of the forwarder: a fresh response state for ``backend``."""
        self._backend = backend
        self._rewriter = None
        self._buffered = 0

    # ResponseSink: the backend's answer streams through these three methods.

    def on_headers(self, code: int, reason: str, headers: HTTPHeaders) -> None:
        backend = self._backend
        assert backend is not None
        gw = self.gw
        self.set_status(code, reason or None)
        out = self._headers = HTTPHeaders()
        relay = X.relay_response(
            headers, method=self.request.method or "GET", keys=gw.tokens, backend=backend.name,
            backend_base=backend.proxyTo, gateway_base=self._base,
            request_transaction=P.transaction_id(self.request.headers.get("X-Trino-Transaction-Id")))
        self._rewriter = relay.rewriter
        if relay.length is not None:
            self.set_header("Content-Length", relay.length)
        for name, value in relay.headers.headers:
            P.put_header(out, name, value)
        gw.taught(relay.headers, backend.name)
        if self._kind is not None and self._kind.kind == P.OAUTH_INITIATE:
            self.set_signed_cookie(_OAUTH_COOKIE, backend.name, expires_days=None,
                                   path="/oauth2", httponly=True, samesite="Lax",
                                   max_age=int(gw.oauth_cookie_ttl))

    def on_chunk(self, chunk: bytes) -> Awaitable[None] | None:
        # Synchronous on purpose: the backend client calls it for every chunk and only waits
        # when we hand back the flush of a full buffer (back-pressure from a slow client).
        if self._client_gone:
            raise StreamClosedError()   # stop reading a page nobody will receive
        rw = self._rewriter
        if rw is not None:
            had_id = rw.query_id
            chunk = rw.feed(chunk)
            if had_id is None and rw.query_id is not None and self._kind is not None \
                    and self._kind.kind == P.STATEMENT and self._backend is not None:
                # Remember the id before the client can see it, for what clients bring by id
                # alone (kill_query, /v1/query/<id>, the web UI); follow-ups carry a token.
                self.gw.learn(P.QUERY, rw.query_id, self._backend.name)
            if not chunk:
                return None
        self.write(chunk)
        self._buffered += len(chunk)
        if self._buffered >= _FLUSH_AT:
            self._buffered = 0
            return self.flush()
        return None

    def on_end(self) -> None:
        rw = self._rewriter
        if rw is not None:
            tail = rw.finish()
            if rw.query_id and self._kind is not None and self._kind.kind == P.STATEMENT \
                    and self._backend is not None:
                self.gw.learn(P.QUERY, rw.query_id, self._backend.name)
            if tail:
                self.write(tail)
            if self.gw.tokens is None:   # without tokens, segments are found by id
                for sid in rw.spool_ids:
                    assert self._backend is not None
                    self.gw.learn(P.SPOOL, sid, self._backend.name)
        self.finish()

    def _abort(self, exc: BackendError) -> None:
        """The backend failed mid-response: the client has a partial answer; close so it knows."""
        log.warning("backend %s failed mid-response to %s %s: %s",
                    self._backend.name if self._backend else "?", self.request.method,
                    self.request.path, exc)
        if self.request.connection is not None:
            self.request.connection.close()  # type: ignore[attr-defined]
        self._finished = True

    def on_connection_close(self) -> None:
        # Client went away: the backend's query is cancelled by Trino when the client stops
        # polling, exactly as without a gateway. The base class must still run: it ends a
        # request whose body was still streaming in, which would otherwise wait (and hold its
        # buffered body) forever.
        self._client_gone = True
        self._body = bytearray()   # a body cut short is never used: free it now
        super().on_connection_close()


def proxy_route(gw: "Gateway") -> HandlerRoute:
    """The routing target of the proxy (the application's catch-all rule)."""
    return HandlerRoute(ProxyHandler, cookie_secret=gw.cookie_secret,
                        log_function=gw.metrics.log_request, gateway=gw)
