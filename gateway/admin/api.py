"""The REST API: trino-gateway-compatible backend management plus the gateway's own endpoints.

Paths and JSON follow trino-gateway so existing scripts keep working (see shared contracts).
State changes go to the store first, then to this process's registry; other processes and
replicas pick them up from the store within ``store.syncInterval``.
"""
from __future__ import annotations

import json
import logging
import time
from typing import TYPE_CHECKING, Any, Awaitable, Callable

from tornado.httputil import HTTPHeaders, HTTPInputError
from tornado.web import RequestHandler

from gateway.admin import backend_ops
from gateway.admin.errors import ApiError
from gateway.admin.auth import Authenticator, is_loopback, parse_basic, sql_visible
from gateway.backends.state import Backend
from gateway.config import ConfigError, validate_name, validate_url
from gateway.limits import control_chars, loads_json, mask_credentials
from gateway.runtime.offload import Busy

if TYPE_CHECKING:
    from gateway.admin.parts import AdminParts, SqlFactsOf
    from gateway.routing.reload import RulesWatcher
    from gateway.routing.router import Router

log = logging.getLogger("gateway.api")
_BACKEND_FIELDS = {"name", "proxyTo", "externalUrl", "routingGroup", "active"}


class ApiHandler(RequestHandler):
    """Base: JSON in and out, errors as ``{"error": message}`` with the right status."""

    def initialize(self, parts: "AdminParts") -> None:
        self.parts = parts
        self.auth = Authenticator(parts.config.auth)
        self.roles: list[str] = []
        self.user: str | None = None

    def current_user_name(self) -> str:
        """Who made a change, for the log: the admin user, or the caller's address."""
        return self.user or f"a caller at {self.request.remote_ip}"

    def check_xsrf_cookie(self) -> None:
        return None  # API calls carry no cookie session; the admin pages check CSRF themselves

    def set_default_headers(self) -> None:
        self.set_header("Cache-Control", "no-store")   # answers carry SQL, users, backend URLs

    def compute_etag(self) -> None:  # type: ignore[override]
        return None

    def send_json(self, data: Any, status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(data, separators=(",", ":")))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        message = str(exc) if isinstance(exc, ApiError) else self._reason
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({"error": message}))

    async def authorize(self, write: bool) -> None:
        """Who may call: HTTP Basic, or a logged-in admin page session with its CSRF token.

        Writes need role admin/api (or, with no users configured, a loopback caller) and are
        refused when a browser says they come from another site (cached Basic credentials and
        the loopback rule would otherwise let any web page change the gateway). A cookie
        session must send ``X-CSRF-Token`` on every call other than GET/HEAD.
        """
        from gateway.admin.session import (
            CSRF_HEADER, SESSION_COOKIE, host_is_ours, own_hosts, tokens_equal,
        )
        from gateway.admin.auth import is_cross_site
        req = self.request
        if write and is_cross_site(req.headers, own_hosts(self.parts.config.server, req)):
            raise ApiError(403, "Cross-site request refused: state changes must come from the "
                                "gateway's own pages or from a script")
        if not write and req.path.startswith("/api/public/"):
            return   # backend state, public as in trino-gateway (load balancers and dashboards read it)
        sessions = self.parts.sessions
        header = req.headers.get("Authorization")
        creds = parse_basic(header)
        if creds is None and self.auth.enabled and not header:
            session = sessions.read(self.get_cookie(SESSION_COOKIE))
            if session is not None:
                if req.method not in ("GET", "HEAD") and \
                        not tokens_equal(req.headers.get(CSRF_HEADER), session.csrf):
                    raise ApiError(403, f"Missing or wrong {CSRF_HEADER} header: calls made with "
                                        "the admin session cookie must send the page's CSRF token")
                if write and not self.auth.allows(session.roles, "api"):
                    raise ApiError(403, "This call needs the admin or api role")
                self.roles = session.roles
                self.user = session.user
                return
        if not self.auth.enabled:
            if write and not is_loopback(req.remote_ip):
                raise ApiError(403, "No admin users are configured: state changes are accepted "
                                    "only from the gateway's own host (loopback)")
            if write and not host_is_ours(self.parts.config.server, req):
                raise ApiError(403, f"Host {req.host!r} is not a name of this gateway: with no admin "
                                    "users configured, state changes must name it by IP address, "
                                    "localhost, its host name or server.publicUrl")
            return
        roles = None
        ip = req.remote_ip or ""
        if creds:
            wait = sessions.limiter.retry_after(creds[0], ip)
            if wait > 0:
                self.set_header("Retry-After", str(max(1, int(wait + 0.999))))
                raise ApiError(429, "Too many failed logins; try again later")
            try:   # PBKDF2 on a thread: 40 wrong passwords cost the event loop ~4 s before
                roles = await self.parts.passwords.run(self.auth.check, *creds)
            except Busy:
                self.set_header("Retry-After", "1")
                raise ApiError(503, "Too many password checks at once; try again in a second") from None
            if roles is None:
                sessions.limiter.failed(creds[0], ip)
                log.warning("API authentication failed for %s from %s",
                            creds[0] if creds[0] in self.parts.config.auth.users else "an unknown user", ip)
        if roles is None:
            self.set_header("WWW-Authenticate", 'Basic realm="trino-gateway"')
            raise ApiError(401, "Authentication required")
        if write and not self.auth.allows(roles, "api"):
            raise ApiError(403, "This call needs the admin or api role")
        self.roles = roles
        self.user = creds[0] if creds else None

    async def run(self, write: bool, fn: Callable[[], Awaitable[Any]]) -> None:
        try:
            await self.authorize(write)
            await fn()
        except ApiError as exc:
            self.set_status(exc.code)
            self.set_header("Content-Type", "application/json")
            self.finish(json.dumps({"error": str(exc)}))

    def json_body(self) -> Any:
        try:
            return loads_json(self.request.body or b"null")
        except ValueError as exc:
            raise ApiError(400, f"Body is not valid JSON: {exc}") from None


def parse_backend(data: Any, default_group: str) -> Backend:
    """A backend from trino-gateway's JSON shape, with a clear 400 for every bad field."""
    if not isinstance(data, dict):
        raise ApiError(400, "Body must be a JSON object with name, proxyTo, externalUrl, routingGroup, active")
    unknown = sorted(set(data) - _BACKEND_FIELDS)
    if unknown:
        raise ApiError(400, f"Unknown field(s) {', '.join(unknown)}; a backend has "
                            f"{', '.join(sorted(_BACKEND_FIELDS))}")
    try:
        name = validate_name(data.get("name"), "name")
        if not isinstance(data.get("proxyTo"), str):
            raise ConfigError("proxyTo: required, an http(s) URL")
        proxy_to = validate_url(data["proxyTo"], "proxyTo")
        external = data.get("externalUrl")
        if external is not None:
            if not isinstance(external, str) or not external.startswith(("http://", "https://")) \
                    or control_chars(external):
                raise ConfigError(f"externalUrl: expected an http(s) URL, got {external!r}")
            external = external.rstrip("/")
        group = data.get("routingGroup") or default_group
        validate_name(group, "routingGroup")
        active = data.get("active", True)
        if not isinstance(active, bool):
            raise ConfigError(f"active: expected true or false, got {active!r}")
    except ConfigError as exc:
        raise ApiError(400, str(exc)) from None
    return Backend(name, proxy_to, external, group, active)


class BackendListHandler(ApiHandler):
    async def get(self, which: str) -> None:
        async def go() -> None:
            backends = sorted(self.parts.registry.all(), key=lambda b: b.name)
            if which == "active":
                backends = [b for b in backends if b.active]
            self.send_json([b.to_json() for b in backends])
        await self.run(False, go)


class BackendModifyHandler(ApiHandler):
    async def post(self, action: str) -> None:
        async def go() -> None:
            p = self.parts
            who = self.current_user_name()
            if action == "delete":
                name = _name_from_body(self.request.body)
                await backend_ops.delete_backend(p.store, p.registry, name, who)
                return self.send_json({"deleted": name})
            backend = parse_backend(self.json_body(), p.config.routing.defaultGroup)
            if action == "add":
                await backend_ops.add_backend(p.store, p.registry, backend, who)
            else:
                await backend_ops.update_backend(p.store, p.registry, backend, who, insert_missing=True)
            self.send_json(backend.to_json())
        await self.run(True, go)


def _name_from_body(body: bytes) -> str:
    text = (body or b"").decode("utf-8", "replace").strip()
    if text.startswith(("{", '"')):
        try:
            data = loads_json(text)
        except ValueError:
            raise ApiError(400, "Body must be the backend's name (text or JSON)") from None
        text = data.get("name") if isinstance(data, dict) else data
    if not isinstance(text, str) or not text:
        raise ApiError(400, "Body must be the backend's name")
    return text


class BackendActivateHandler(ApiHandler):
    async def post(self, action: str, name: str) -> None:
        async def go() -> None:
            p = self.parts
            b = await backend_ops.set_active(p.store, p.registry, name, action == "activate",
                                             self.current_user_name())
            self.send_json(b.to_json())
        await self.run(True, go)


class PublicBackendsHandler(ApiHandler):
    async def get(self, name: str | None = None, state: str | None = None) -> None:
        async def go() -> None:
            p = self.parts
            if name is None:
                return self.send_json([b.to_json() for b in sorted(p.registry.all(), key=lambda b: b.name)])
            backend = p.registry.get(name)
            if backend is None:
                raise ApiError(404, f"Backend {name!r} does not exist")
            if state is None:
                return self.send_json(backend.to_json())
            st = backend_state_json(backend, p.registry.state(name))
            # Beside the monitor's counts (null when it cannot count): the queries the gateway
            # routed here and has not seen finish, from the shared history (null: unknown).
            if p.store is not None and p.config.store.historyEnabled:
                await p.unfinished.refresh(p.store, force=True)
            st["unfinished"] = p.unfinished.of(name)
            self.send_json(st)
        await self.run(False, go)


def backend_state_json(backend: Backend, state: Any) -> dict[str, Any]:
    """Our state fields plus trino-gateway's names for them (``ClusterStats``), so scripts
    written for its ``/api/public/backends/{name}/state`` keep working."""
    doc = state.to_json()
    doc["name"] = backend.name
    # Counts the monitor cannot see (info-api, noop) stay null here too, never a made-up 0.
    doc.update({"clusterId": backend.name, "runningQueryCount": doc.get("running"),
                "queuedQueryCount": doc.get("queued"), "numWorkerNodes": state.workers,
                "trinoStatus": state.health.value, "proxyTo": mask_credentials(backend.proxyTo),
                "externalUrl": mask_credentials(backend.external_url),
                "routingGroup": backend.routingGroup})
    return doc


class HealthHandler(RequestHandler):
    def initialize(self, parts: "AdminParts") -> None:
        self.parts = parts

    def get(self, which: str) -> None:
        self.set_header("Content-Type", "text/plain")
        if which == "livez":
            return self.finish("ok\n")
        if self.parts.shutting_down():
            self.set_status(503)
            return self.finish("shutting down\n")
        if not self.parts.monitor.first_round_done:
            self.set_status(503)
            return self.finish("waiting for the first monitor round\n")
        self.finish("ready\n")


class RulesHandler(ApiHandler):
    async def get(self) -> None:
        async def go() -> None:
            self.send_json(rules_json(self.parts.rules))
        await self.run(False, go)


def rules_json(watcher: "RulesWatcher") -> dict[str, Any]:
    rs = watcher.current
    doc = rs.to_dict() if rs is not None else {"version": None, "loadedAt": None, "files": [], "rules": []}
    doc["error"] = watcher.last_error
    return doc


async def explain(router: "Router", sql_facts: "SqlFactsOf", data: Any, remote_ip: str) -> dict[str, Any]:
    """What routing would do for a described request, without sending anything: a dry run of
    ``router`` with the SQL facts ``sql_facts`` finds off the event loop."""
    if not isinstance(data, dict):
        raise ApiError(400, "Body must be a JSON object")
    known = {"user", "source", "clientTags", "catalog", "schema", "headers", "query", "clientInfo"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ApiError(400, f"Unknown field(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    headers = HTTPHeaders()
    extra = data.get("headers") or {}
    if not isinstance(extra, dict):
        raise ApiError(400, "headers must be an object of name to value")
    for k, v in extra.items():
        try:
            headers.add(str(k), str(v))
        except HTTPInputError as exc:   # a header name no HTTP request could carry
            raise ApiError(400, f"headers: {exc}") from None
    for key, header in (("user", "X-Trino-User"), ("source", "X-Trino-Source"),
                        ("catalog", "X-Trino-Catalog"), ("schema", "X-Trino-Schema"),
                        ("clientInfo", "X-Trino-Client-Info")):
        if data.get(key) is not None:
            headers[header] = str(data[key])
    tags = data.get("clientTags")
    if tags:
        if isinstance(tags, str):
            tags = [t for t in tags.split(",")]
        if not isinstance(tags, list):
            raise ApiError(400, "clientTags must be a list of strings")
        headers["X-Trino-Client-Tags"] = ",".join(str(t) for t in tags)
    query = data.get("query") or ""
    if not isinstance(query, str):
        raise ApiError(400, "query must be a string")
    t0 = time.perf_counter()
    body = query.encode("utf-8", "replace")   # lone surrogates from JSON escapes
    facts, note = await sql_facts(headers, body)   # off the event loop, within its budget
    # dry_run: what a real statement would get, without moving the live balancer on
    route = router.route(headers, body, remote_ip, dry_run=True, facts=facts, note=note)
    ctx = router.context(headers, body, remote_ip, analyze_sql=True, facts=facts)
    decision = router.decide(ctx, explain=True)
    return {
        "routingGroup": route.group,
        "rule": route.rule,
        "reject": route.reject,
        "backend": route.backends[0].name if route.backends else None,
        "reason": route.reason,
        "sqlFacts": note or "analysed",
        "queuePriority": route.queue_priority,
        "trace": list(decision.trace),
        "context": {k: (list(v) if isinstance(v, (tuple, frozenset, set)) else v)
                    for k, v in ctx.items() if k != "headers"},
        "decisionMicros": round((time.perf_counter() - t0) * 1e6, 1),
    }


class ExplainHandler(ApiHandler):
    async def post(self) -> None:
        async def go() -> None:
            p = self.parts
            self.send_json(await explain(p.router, p.sql_facts, self.json_body(),
                                         self.request.remote_ip or ""))
        await self.run(False, go)


class QueriesHandler(ApiHandler):
    async def get(self) -> None:
        async def go() -> None:
            args = {k: self.get_argument(k, None) for k in
                    ("user", "source", "group", "backend", "rule", "state", "text", "tag")}
            args["query_id"] = self.get_argument("queryId", None)
            try:
                limit = int(self.get_argument("limit", "100"))
            except ValueError:
                raise ApiError(400, "limit must be an integer") from None
            if not 1 <= limit <= 10000:
                raise ApiError(400, "limit must be between 1 and 10000")
            assert self.parts.store is not None
            auth = self.parts.config.auth
            if args["text"] and not sql_visible(None, self.user, self.roles, auth_enabled=self.auth.enabled,
                                                show_all=auth.showAllQueries):
                args["user"] = self.user or ""  # searching SQL text: only in SQL this caller may see
            store = await self.parts.search_store()
            rows = await store.call("query_history", limit=limit, **{k: v for k, v in args.items() if v})
            out = []
            for r in rows:
                doc = r.to_json()
                if not sql_visible(r.user, self.user, self.roles, auth_enabled=self.auth.enabled,
                                   show_all=auth.showAllQueries):
                    doc["sql"] = None  # role `user` sees only its own queries' SQL
                    doc["error"] = None  # error messages quote tables and SQL
                out.append(doc)
            self.send_json(out)
        await self.run(False, go)


class MetricsHandler(RequestHandler):
    def initialize(self, parts: "AdminParts") -> None:
        self.parts = parts

    def get(self) -> None:
        self.parts.refresh_gauges()
        body, ctype = self.parts.metrics.render()
        self.set_header("Content-Type", ctype)
        self.finish(body)


class RootRedirect(RequestHandler):
    def get(self) -> None:
        self.redirect("/trino-gateway/", permanent=False)


def routes(parts: "AdminParts") -> list[Any]:
    a = {"parts": parts}
    return [
        (r"/", RootRedirect),
        (r"/gateway/backend/(all|active)", BackendListHandler, a),
        (r"/gateway/backend/modify/(add|update|delete)", BackendModifyHandler, a),
        (r"/gateway/backend/(activate|deactivate)/([^/]+)", BackendActivateHandler, a),
        (r"/api/public/backends/?", PublicBackendsHandler, a),
        (r"/api/public/backends/([^/]+)", PublicBackendsHandler, a),
        (r"/api/public/backends/([^/]+)/(state)", PublicBackendsHandler, a),
        (r"/trino-gateway/(livez|readyz)", HealthHandler, a),
        (r"/api/rules", RulesHandler, a),
        (r"/api/routing/explain", ExplainHandler, a),
        (r"/api/queries", QueriesHandler, a),
        (r"/metrics", MetricsHandler, a),
    ]
