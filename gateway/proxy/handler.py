"""The proxy handler: every Trino client request enters here.

A new statement is routed (context → rules → group → balancer → backend) and forwarded; every
other request is forwarded to the backend that owns its query, transaction, spooled segment or
OAuth2 exchange. The handler only wires pure decisions (``gateway.protocol``,
``gateway.routing``) to sockets; bytes stream through with back-pressure.
"""
from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any, Awaitable

from tornado.httputil import HTTPHeaders
from tornado.iostream import StreamClosedError

from gateway import protocol as P
from gateway.backends import Backend
from gateway.limits import utf8
from gateway.proxy.client import BackendError
from gateway.proxy.lean import HandlerRoute, LeanHandler

if TYPE_CHECKING:
    from gateway.app import Gateway

log = logging.getLogger("gateway.proxy")

_OAUTH_COOKIE = "trino-gateway-oauth"
_FLUSH_AT = 256 * 1024  # bytes buffered for the client before we wait for it to drain
_STATEMENT_PATH = "/v1/statement/"


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
        self._sent_forwarded = False
        self._client_gone = False

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

    async def get(self) -> None: await self._dispatch()
    async def head(self) -> None: await self._dispatch()
    async def post(self) -> None: await self._dispatch()
    async def put(self) -> None: await self._dispatch()
    async def delete(self) -> None: await self._dispatch()
    async def patch(self) -> None: await self._dispatch()
    async def options(self) -> None: await self._dispatch()

    async def _dispatch(self) -> None:
        if self._finished:
            return
        if self._too_large:
            limit = self.gw.config.server.maxBodySize
            return self._plain(413, f"Request body exceeds the gateway limit of {limit} bytes\n")
        req = self.request
        kind = self._kind = P.classify(req.method or "GET", req.path, req.query)
        self.gw.metrics.request_started(kind.kind)
        self.gw.in_flight += 1
        try:
            if kind.kind == P.STATEMENT:
                await self._statement()
            else:
                await self._follow_up(kind)
        except StreamClosedError:
            if not self._client_gone:
                raise
            self._finished = True   # on_chunk stopped a page the client left: nothing to answer
        finally:
            self.gw.in_flight -= 1
            self.gw.metrics.request_done(kind.kind, self.get_status(), time.perf_counter() - self._started)

    # -- new statements ----------------------------------------------------------------------

    async def _statement(self) -> None:
        gw = self.gw
        base = gw.base_url(self.request)
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
        # statement inside a transaction.
        pinned: str | None = None
        sql_head = body[:4096].decode("utf-8", "replace")
        target = P.kill_query_target(sql_head)
        if target:
            pinned = await gw.owner(P.QUERY, target, headers)
        txn = P.transaction_id(headers.get("X-Trino-Transaction-Id"))
        if pinned is None and txn:
            pinned = await gw.owner("transaction", txn, headers)
        if pinned is not None:
            backend = gw.registry.get(pinned)
            if backend is None:
                return self._failed(f"Backend {pinned} that owns this query or transaction was removed",
                                    base, "NO_NODES_AVAILABLE")
            await self._send_statement([backend], body, base, route=None)
            return

        route = await gw.route_statement(headers, body, self.request.remote_ip or "")
        if route.reject is not None:
            gw.metrics.rejected(route.rule)
            return self._failed(route.reject, base, "PERMISSION_DENIED")
        if not route.backends:
            gw.metrics.statement_failed("no-backend")
            return self._failed(route.reason, base, "NO_NODES_AVAILABLE")
        if gw.admission.capped(route.group):
            # Admission control (gateway/admission.py): a slot on a backend, or wait in line.
            backend, lease = await gw.admission.try_admit(route)
            if backend is None:
                self.set_header("Content-Type", "application/json")
                return self.finish(gw.admission.hold(route, body, headers, self.request.remote_ip or "", base))
            await self._send_statement([backend], body, base, route=route)
            rw = self._rewriter
            gw.admission.admitted(lease, rw.query_id if rw is not None and self.get_status() == 200 else None,
                                  route.group or "")
            return
        await self._send_statement(route.backends, body, base, route=route)

    def _failed(self, message: str, base: str, error_name: str, query_id: str | None = None) -> None:
        self.clear()
        self.set_status(200)
        self.set_header("Content-Type", "application/json")
        self.finish(P.failed_query(message, gateway_base=base, error_name=error_name, query_id=query_id))

    def _query_lost(self, kind: P.RequestKind, exc: BackendError) -> bool:
        """A result-page poll whose backend refuses connections (not a timeout, which may pass)."""
        req = self.request
        return (kind.kind == P.QUERY and req.method == "GET" and req.path.startswith(_STATEMENT_PATH)
                and not exc.sent and not exc.timeout)

    async def _send_statement(self, candidates: list[Backend], body: bytes, base: str, route: Any) -> None:
        """Forward a POST; on a connection that never opened, try the next candidate."""
        gw = self.gw
        tried: list[str] = []
        for backend in candidates:
            for _ in (0, 1):  # second pass only after a 406 for X-Forwarded-* headers
                headers = self._forward_headers(backend, base)
                self._begin(backend, base)
                try:
                    await gw.client.fetch(backend.proxyTo, "POST", self.request.uri or "/v1/statement",
                                          headers, body, self)
                except BackendError as exc:
                    if exc.sent and self._headers_written:
                        self._abort(exc)
                        return
                    if exc.sent:
                        # It may have created the query: never send it again (§7.3).
                        gw.note_forward_failure(backend, exc)
                        gw.metrics.statement_failed("backend-lost")
                        return self._failed(
                            f"Backend {backend.name} (group {backend.routingGroup}) failed while "
                            f"accepting the query: {exc}. The query may or may not have started.",
                            base, "GENERIC_INTERNAL_ERROR")
                    gw.note_forward_failure(backend, exc)
                    tried.append(f"{backend.name}: {exc}")
                    break
                if self._retry_without_forwarded:
                    continue
                if route is not None:
                    gw.statement_routed(self, backend, route, self._rewriter)
                return
        group = route.group if route is not None else candidates[0].routingGroup
        gw.metrics.statement_failed("unreachable")
        self._failed(f"No backend of routing group '{group}' could be reached ({'; '.join(tried)})",
                     base, "NO_NODES_AVAILABLE")

    # -- follow-ups --------------------------------------------------------------------------

    async def _follow_up(self, kind: P.RequestKind) -> None:
        gw = self.gw
        req = self.request
        base = gw.base_url(req)
        backend: Backend | None = None
        if kind.kind == P.OTHER:
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
        for _ in (0, 1):
            headers = self._forward_headers(backend, base)
            self._begin(backend, base)
            body = bytes(self._body) if self._body or req.method in ("POST", "PUT", "PATCH") else None
            try:
                await gw.client.fetch(backend.proxyTo, req.method or "GET", req.uri or "/", headers, body, self)
            except BackendError as exc:
                gw.note_forward_failure(backend, exc)
                if self._headers_written:
                    return self._abort(exc)
                if self._query_lost(kind, exc):
                    # The coordinator refuses connections: it is down and its queries died with
                    # it. A FAILED document ends the query with a message every client shows;
                    # a 502 would be retried and then shown as a bare "bad gateway".
                    message = (f"Backend {backend.name} (group {backend.routingGroup}) that ran query "
                               f"{kind.key} cannot be reached ({exc}); the query is lost, submit it again")
                    gw.query_finished(kind.key or "", "FAILED", message)
                    return self._failed(message, base, "GENERIC_INTERNAL_ERROR", query_id=kind.key)
                code = 504 if exc.timeout else 502
                return self._plain(code, f"Backend {backend.name} did not answer: {exc}\n")
            if not self._retry_without_forwarded:
                break
        if kind.kind == P.OAUTH_INITIATE:
            pass  # cookie set in on_headers
        self._after_follow_up(kind, backend)

    def _after_follow_up(self, kind: P.RequestKind, backend: Backend) -> None:
        req = self.request
        if kind.kind != P.QUERY or not req.path.startswith(_STATEMENT_PATH):
            return
        code = self.get_status()
        if req.method == "DELETE" and code == 204 and "/partialCancel/" not in req.path:
            self.gw.query_finished(kind.key or "", "FAILED", "Query was canceled by the client")
        elif req.method == "GET" and code == 200 and self._rewriter is not None:
            state, error = self._rewriter.final_state()
            if state is not None:
                self.gw.query_finished(kind.key or "", state, error)

    # -- forwarding plumbing -----------------------------------------------------------------

    def _forward_headers(self, backend: Backend, base: str) -> list[tuple[str, str]]:
        forwarded = self.gw.config.server.xForwardedFor and backend.name not in self.gw.no_forwarded
        self._sent_forwarded = forwarded
        return P.forward_header_pairs(self.request.headers.get_all(), remote_ip=self.request.remote_ip or "",
                                 base=base, forwarded=forwarded,
                                 trust_forwarded=self.gw.config.server.trustForwardedHeaders)

    def _begin(self, backend: Backend, base: str) -> None:
        self._backend = backend
        self._base = base
        self._rewriter = None
        self._retry_without_forwarded = False
        self._skip_body = False
        self._buffered = 0

    # ResponseSink: the backend's answer streams through these three methods.

    def on_headers(self, code: int, reason: str, headers: HTTPHeaders) -> None:
        backend = self._backend
        assert backend is not None
        if code == 406 and self._sent_forwarded:
            # The coordinator does not process forwarded headers (§0): remember that, send the
            # request again without them (a 406 means nothing was created) and rewrite URIs.
            self.gw.no_forwarded.add(backend.name)
            log.warning("backend %s refuses X-Forwarded-* headers (406); sending without them "
                        "and rewriting URIs instead", backend.name)
            self._retry_without_forwarded = True
            self._skip_body = True
            return
        self.set_status(code, reason or None)
        out = self._headers = HTTPHeaders()
        drop = P.RESPONSE_DROP
        conn = headers.get_list("Connection")
        if conn:
            drop = drop | P.connection_tokens(conn)
        ctype = headers.get("Content-Type", "")
        if "json" in ctype and self.request.method != "HEAD":
            self._rewriter = P.UriRewriter(self._base)
        elif self.request.method != "HEAD" and "Content-Length" in headers:
            self.set_header("Content-Length", headers["Content-Length"])
        gw = self.gw
        for name, value in headers.get_all():
            lname = name.lower()
            if lname in drop:
                continue
            if lname == "location":
                value = P.rewrite_location(value, backend.proxyTo, self._base)
            elif lname == "www-authenticate":
                value, ids = P.rewrite_www_authenticate(value, self._base)
                for auth_id in ids:
                    gw.learn(P.OAUTH_TOKEN, auth_id, backend.name)
                    gw.learn(P.OAUTH_INITIATE, P.auth_initiate_key(auth_id), backend.name)
            elif lname in ("x-trino-started-transaction-id", "x-presto-started-transaction-id"):
                gw.learn("transaction", value.strip(), backend.name)
            elif lname in ("x-trino-clear-transaction-id", "x-presto-clear-transaction-id"):
                txn = P.transaction_id(self.request.headers.get("X-Trino-Transaction-Id"))
                if txn:
                    gw.forget("transaction", txn)
            P.put_header(out, name, value)
        if self._kind is not None and self._kind.kind == P.OAUTH_INITIATE:
            self.set_signed_cookie(_OAUTH_COOKIE, backend.name, expires_days=None,
                                   path="/oauth2", httponly=True, samesite="Lax",
                                   max_age=int(gw.oauth_cookie_ttl))

    def on_chunk(self, chunk: bytes) -> Awaitable[None] | None:
        # Synchronous on purpose: the backend client calls it for every chunk and only waits
        # when we hand back the flush of a full buffer (back-pressure from a slow client).
        if self._skip_body:
            return None
        if self._client_gone:
            raise StreamClosedError()   # stop reading a page nobody will receive
        rw = self._rewriter
        if rw is not None:
            had_id = rw.query_id
            chunk = rw.feed(chunk)
            if had_id is None and rw.query_id is not None and self._kind is not None \
                    and self._kind.kind == P.STATEMENT and self._backend is not None:
                # Pin before the client can see the id and poll (§7.2).
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
        if self._skip_body:
            return
        if self._rewriter is not None:
            tail = self._rewriter.finish()
            if self._rewriter.query_id and self._kind is not None and self._kind.kind == P.STATEMENT \
                    and self._backend is not None:
                self.gw.learn(P.QUERY, self._rewriter.query_id, self._backend.name)
            if tail:
                self.write(tail)
            for sid in self._rewriter.spool_ids:
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
