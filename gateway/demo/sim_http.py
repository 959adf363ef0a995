"""Tornado handlers of the simulated coordinator: thin wrappers around `Engine` and the
cluster's state. Every handler reads the request, asks the engine or cluster, and writes
the answer; protocol decisions live in sim_engine / sim_sql / sim_protocol.

`make_app(cluster)` builds the application; `external_base(...)` (pure) computes the base
URI every returned URI starts with.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import html
import json
import os
import time
from typing import TYPE_CHECKING, Any, Callable
from urllib.parse import quote

import tornado.web

from . import sim_protocol as proto
from .sim_control import ControlError
from .sim_engine import Reply, text_reply
from .sim_sql import HeaderError, SqlError, parse_session

if TYPE_CHECKING:
    from .cluster import SimulatedCluster

VERSION = "476"
UI_COOKIE = "Trino-UI-Token"
# One "identity provider" for every simulated cluster: a token one issued, all accept.
_OAUTH_SECRET = b"simulated-identity-provider"


# ---------------------------------------------------------------- pure helpers

def _first(value: str | None) -> str | None:
    if value is None:
        return None
    value = value.split(",")[0].strip()
    return value or None


def _split_host(host: str) -> tuple[str, str | None]:
    if host.startswith("["):
        end = host.find("]")
        rest = host[end + 1:]
        return host[:end + 1], (rest[1:] if rest.startswith(":") else None)
    name, _, port = host.partition(":")
    return name, port or None


def _parse_forwarded(value: str) -> dict[str, str]:
    """The first element of an RFC 7239 `Forwarded` header as lower-case keys."""
    out: dict[str, str] = {}
    for pair in value.split(",")[0].split(";"):
        key, sep, val = pair.strip().partition("=")
        if sep:
            out[key.strip().lower()] = val.strip().strip('"')
    return out


def external_base(get: Callable[[str], str | None], scheme: str, host: str,
                  process_forwarded: bool) -> str:
    """The base URI of returned URIs: the request's scheme and Host, or with
    `process_forwarded` the X-Forwarded-Proto/Host/Port/Prefix (or `Forwarded`) values."""
    if not process_forwarded:
        return f"{scheme}://{host}"
    proto_ = _first(get("X-Forwarded-Proto"))
    fhost = _first(get("X-Forwarded-Host"))
    fport = _first(get("X-Forwarded-Port"))
    prefix = _first(get("X-Forwarded-Prefix")) or ""
    if not (proto_ or fhost or fport) and get("Forwarded"):
        fwd = _parse_forwarded(get("Forwarded") or "")
        proto_, fhost = fwd.get("proto"), fwd.get("host")
    proto_ = (proto_ or scheme).lower()
    name, port = _split_host(fhost or host)
    if fport:
        port = fport
    default = {"http": "80", "https": "443"}.get(proto_)
    hostport = name if not port or port == default else f"{name}:{port}"
    prefix = "/" + prefix.strip("/") if prefix.strip("/") else ""
    return f"{proto_}://{hostport}{prefix}"


def _sign(secret: bytes, value: str) -> str:
    return hmac.new(secret, value.encode(), hashlib.sha256).hexdigest()[:32]


def make_oauth_token() -> str:
    nonce = os.urandom(12).hex()
    return f"sim-oauth2.{nonce}.{_sign(_OAUTH_SECRET, nonce)}"


def oauth_token_ok(token: str) -> bool:
    parts = token.split(".")
    return (len(parts) == 3 and parts[0] == "sim-oauth2"
            and hmac.compare_digest(parts[2], _sign(_OAUTH_SECRET, parts[1])))


# ---------------------------------------------------------------- base handler

class SimHandler(tornado.web.RequestHandler):
    cluster: "SimulatedCluster"
    statement_protocol = False  # slow/hang controls apply

    def initialize(self, cluster: "SimulatedCluster") -> None:
        self.cluster = cluster

    def compute_etag(self) -> str | None:
        return None  # hashing large result pages for an ETag would be wasted work

    async def prepare(self) -> None:
        if not self.request.path.startswith("/_sim/") and not self.cluster.control.process_forwarded:
            for name, _ in self.request.headers.get_all():
                if name.lower().startswith("x-forwarded-"):
                    self.send(text_reply(406, "Server configuration does not allow processing "
                                              f"of the {name} header"))
                    return
        if self.statement_protocol:
            await self.cluster.hold()
            if self.cluster.control.slow:
                await asyncio.sleep(self.cluster.control.slow)

    @property
    def engine(self) -> Any:
        return self.cluster.engine

    def base(self) -> str:
        return external_base(self.request.headers.get, self.request.protocol, self.request.host,
                             self.cluster.control.process_forwarded)

    def send(self, reply: Reply) -> None:
        self.set_status(reply.status)
        if reply.content_type:
            self.set_header("Content-Type", reply.content_type)
        else:
            self.clear_header("Content-Type")
        for name, value in reply.headers:
            self.add_header(name, value)
        if reply.body and self.request.method != "HEAD":
            self.write(reply.body)
        self.finish()

    def send_json(self, doc: Any, status: int = 200) -> None:
        self.send(Reply(status, proto.dumps(doc)))

    def send_text(self, status: int, message: str) -> None:
        self.send(text_reply(status, message))

    def authenticate(self) -> str | None:
        """The user, or None after answering 401 (per the cluster's auth mode)."""
        mode = self.cluster.control.auth
        header_user = (self.request.headers.get("X-Trino-User") or "").strip() or None
        authz = self.request.headers.get("Authorization", "")
        if mode is None:
            if header_user is None:
                self.send_text(401, "Basic authentication or X-Trino-User must be sent")
                return None
            return header_user
        scheme, _, cred = authz.partition(" ")
        if mode == "basic" and scheme.lower() == "basic":
            try:
                user = base64.b64decode(cred).decode().partition(":")[0]
            except ValueError:
                user = ""
            if user:
                return header_user or user
        if mode == "jwt" and scheme.lower() == "bearer" and cred.strip():
            return header_user or "jwt-user"
        if mode == "oauth2" and scheme.lower() == "bearer" and oauth_token_ok(cred.strip()):
            return header_user or "oauth2-user"
        self.set_status(401)
        self.set_header("Content-Type", "text/plain; charset=utf-8")
        if mode == "basic":
            self.set_header("WWW-Authenticate", 'Basic realm="Trino"')
        elif mode == "jwt":
            self.set_header("WWW-Authenticate", 'Bearer realm="Trino", token_type="JWT"')
        else:
            self.set_header("WWW-Authenticate", self.cluster.oauth_challenge(self.base()))
        self.finish("Unauthorized")
        return None

    def ui_user(self) -> str | None:
        token = self.get_cookie(UI_COOKIE) or ""
        user, _, sig = token.rpartition(".")
        if user and hmac.compare_digest(sig, _sign(self.cluster.ui_secret, user)):
            return user
        self.send_text(401, "Unauthorized: log in at /ui/login first")
        return None

    def max_wait(self) -> float | None:
        raw = self.get_query_argument("maxWait", None)
        if raw is None:
            return 1.0
        try:
            return min(proto.parse_duration(raw), 1.0)
        except ValueError as e:
            self.send_text(400, f"Invalid maxWait: {e}")
            return None


# ---------------------------------------------------------------- statement protocol

class StatementHandler(SimHandler):
    statement_protocol = True

    async def post(self) -> None:
        cluster = self.cluster
        if cluster.control.fail:
            return self.send_text(500, f"Simulated failure of cluster {cluster.name}")
        headers = self.request.headers
        names = {n.lower() for n, _ in headers.get_all()}
        if any(n.startswith("x-presto-") for n in names) and any(n.startswith("x-trino-") for n in names):
            return self.send_text(400, "Both Trino and Presto headers detected")
        if cluster.control.auth is not None:
            user = self.authenticate()
            if user is None:
                return
        else:
            user = (headers.get("X-Trino-User") or "").strip()
        try:
            sql = self.request.body.decode("utf-8")
        except UnicodeDecodeError:
            return self.send_text(400, "SQL statement is not valid UTF-8")
        if not sql.strip():
            return self.send_text(400, "SQL statement is empty")
        if not user:
            return self.send_text(400, "User must be set")
        try:
            session = parse_session(headers.get_list, user)
        except HeaderError as e:
            return self.send_text(400, str(e))
        encoding = None
        if cluster.control.spooling:
            wanted = [e.strip() for line in headers.get_list("X-Trino-Query-Data-Encoding")
                      for e in line.split(",")]
            encoding = "json" if "json" in wanted else None
        q = self.engine.create(sql, session, list(headers.get_all()), encoding)
        self.send(self.engine.post_reply(q, self.base()))


class QueuedHandler(SimHandler):
    statement_protocol = True

    async def get(self, qid: str, slug: str, token: str) -> None:
        if self.max_wait() is None:
            return
        self.send(await self.engine.get_queued(qid, slug, int(token), self.base()))

    def head(self, qid: str, slug: str, token: str) -> None:
        self.send(self.engine.head(qid, slug, int(token), proto.QUEUED))

    def delete(self, qid: str, slug: str, token: str) -> None:
        self.send(self.engine.delete(qid, slug, int(token), proto.QUEUED))


class ExecutingHandler(SimHandler):
    statement_protocol = True

    async def get(self, qid: str, slug: str, token: str) -> None:
        wait = self.max_wait()
        if wait is None:
            return
        self.send(await self.engine.get_executing(qid, slug, int(token), self.base(), wait))

    def head(self, qid: str, slug: str, token: str) -> None:
        self.send(self.engine.head(qid, slug, int(token), proto.EXECUTING))

    def delete(self, qid: str, slug: str, token: str) -> None:
        self.send(self.engine.delete(qid, slug, int(token), proto.EXECUTING))


class PartialCancelHandler(SimHandler):
    statement_protocol = True

    def delete(self, qid: str, stage: str, slug: str, token: str) -> None:
        q = self.engine.lookup(qid, slug, proto.EXECUTING, int(token))
        self.send(Reply(204, content_type=None) if q else text_reply(404, "Query not found"))


# ---------------------------------------------------------------- health and stats

class InfoHandler(SimHandler):
    def get(self) -> None:
        self.send_json({"nodeVersion": {"version": VERSION}, "environment": "sim",
                        "coordinator": True, "starting": self.cluster.control.starting,
                        "uptime": proto.format_duration(time.time() - self.cluster.started_at)})


class InfoStateHandler(SimHandler):
    def get(self) -> None:
        self.send_json("ACTIVE")


class CoordinatorHandler(SimHandler):
    def get(self) -> None:
        self.send(Reply(200, content_type=None))


class StatusHandler(SimHandler):
    def get(self) -> None:
        c = self.cluster
        cpus = os.cpu_count() or 1
        self.send_json({
            "nodeId": f"{c.name}-coordinator", "nodeVersion": {"version": VERSION},
            "environment": "sim", "coordinator": True,
            "uptime": proto.format_duration(time.time() - c.started_at),
            "externalAddress": c.host, "internalAddress": c.host,
            "memoryInfo": {"availableProcessors": cpus,
                           "pool": {"maxBytes": 1 << 30, "reservedBytes": 0,
                                    "reservedRevocableBytes": 0}},
            "processors": cpus, "processCpuLoad": 0.0, "systemCpuLoad": 0.0,
            "heapUsed": 0, "heapAvailable": 1 << 30, "nonHeapUsed": 0})

    def head(self) -> None:
        self.send(Reply(200, content_type=None))


class QueryListHandler(SimHandler):
    def get(self) -> None:
        if self.authenticate() is None:
            return
        self.send_json(self.cluster.query_infos(self.base(), self.get_query_argument("state", None)))


class QueryInfoHandler(SimHandler):
    def get(self, qid: str) -> None:
        if self.authenticate() is None:
            return
        q = self.engine.queries.get(qid)
        if q is None:
            return self.send_text(410, f"Query not found: {qid}")
        self.send_json(self.engine.describe(q, self.base()))

    def delete(self, qid: str) -> None:
        if self.authenticate() is None:
            return
        q = self.engine.queries.get(qid)
        if q is None:
            return self.send_text(410, f"Query not found: {qid}")
        self.engine.cancel(q)
        self.send(Reply(204, content_type=None))


class QueryKilledHandler(SimHandler):
    def put(self, qid: str) -> None:
        if self.authenticate() is None:
            return
        q = self.engine.queries.get(qid)
        if q is None:
            return self.send_text(410, f"Query not found: {qid}")
        message = self.request.body.decode("utf-8", "replace").strip().strip('"') or None
        try:
            self.engine.kill(qid, message)
        except SqlError:
            return self.send_text(409, f"Query {qid} has already finished")
        self.send(Reply(202, content_type=None))


_METRICS = {
    "trino_execution_name_QueryManager_RunningQueries": lambda c: c.engine.counts()[1],
    "trino_execution_name_QueryManager_QueuedQueries": lambda c: c.engine.counts()[0],
    "trino_metadata_name_DiscoveryNodeManager_ActiveNodeCount": lambda c: c.control.workers,
}


class MetricsHandler(SimHandler):
    def get(self) -> None:
        if self.authenticate() is None:
            return
        wanted = set(self.get_query_arguments("name[]")) | set(self.get_query_arguments("name"))
        lines = []
        for name, value in _METRICS.items():
            if not wanted or name in wanted:
                lines += [f"# TYPE {name} gauge", f"{name} {float(value(self.cluster))}"]
        lines.append("# EOF")
        self.send(Reply(200, ("\n".join(lines) + "\n").encode(),
                        "application/openmetrics-text; version=1.0.0; charset=utf-8"))


class JmxHandler(SimHandler):
    def get(self, name: str) -> None:
        queued, running = self.engine.counts()
        attrs = {"trino.execution:name=QueryManager": {"RunningQueries": running,
                                                       "QueuedQueries": queued},
                 "trino.metadata:name=DiscoveryNodeManager": {
                     "ActiveNodeCount": self.cluster.control.workers}}.get(name)
        if attrs is None:
            return self.send_text(404, f"MBean not found: {name}")
        self.send_json({"objectName": name,
                        "attributes": [{"name": k, "value": v} for k, v in attrs.items()]})


# ---------------------------------------------------------------- web UI

class UiLoginHandler(SimHandler):
    def get(self) -> None:
        self.send(Reply(200, b"<html><body><form method='post' action='/ui/login'>"
                             b"<input name='username'><input name='password' type='password'>"
                             b"<input type='hidden' name='redirectPath' value='/ui/'>"
                             b"<button>Log in</button></form></body></html>",
                        "text/html; charset=utf-8"))

    def post(self) -> None:
        user = self.get_body_argument("username", "").strip()
        password = self.get_body_argument("password", "")
        redirect = self.get_body_argument("redirectPath", "") or "/ui/"
        if not user or (self.cluster.control.auth == "basic" and not password):
            self.set_status(303)
            self.set_header("Location", "/ui/login.html")
            return self.finish()
        token = f"{user}.{_sign(self.cluster.ui_secret, user)}"
        self.set_cookie(UI_COOKIE, token, path="/ui", httponly=True)
        self.set_status(303)
        self.set_header("Location", redirect if redirect.startswith("/") else "/ui/")
        self.finish()


class UiStatsHandler(SimHandler):
    def get(self) -> None:
        if self.ui_user() is None:
            return
        self.send_json(self.cluster.ui_stats())


class UiClusterHandler(SimHandler):
    def get(self) -> None:
        if self.ui_user() is None:
            return
        self.send_json({"nodeVersion": {"version": VERSION}, "environment": "sim",
                        "uptime": proto.format_duration(time.time() - self.cluster.started_at)})


class UiQueryListHandler(SimHandler):
    def get(self) -> None:
        if self.ui_user() is None:
            return
        self.send_json(self.cluster.query_infos(self.base(), self.get_query_argument("state", None),
                                                synthetic=True))


class UiQueryHandler(SimHandler):
    def get(self, qid: str) -> None:
        if self.ui_user() is None:
            return
        q = self.engine.queries.get(qid)
        if q is None:
            return self.send_text(410, f"Query not found: {qid}")
        self.send_json(self.engine.describe(q, self.base()))


class UiQueryPageHandler(SimHandler):
    def get(self) -> None:
        qid = self.request.query
        q = self.engine.queries.get(qid)
        name = html.escape(self.cluster.name)
        detail = (f"<p>State: {q.state}</p><p>User: {html.escape(q.session.user)}</p>"
                  f"<pre>{html.escape(q.sql)}</pre>" if q else "<p>Unknown query</p>")
        body = (f"<!DOCTYPE html><html><head><title>Query {html.escape(qid)} - {name}</title>"
                f"</head><body><h1>Query {html.escape(qid)}</h1><p>Cluster: {name}</p>"
                f"{detail}</body></html>")
        self.send(Reply(200, body.encode(), "text/html; charset=utf-8"))


# ---------------------------------------------------------------- spooling

class SpoolDownloadHandler(SimHandler):
    def get(self, sid: str) -> None:
        entry = self.engine.spool.get(sid)
        if entry is None:
            return self.send_text(404, f"Segment not found: {sid}")
        self.send(Reply(200, entry[0], "application/octet-stream"))


class SpoolAckHandler(SimHandler):
    def get(self, sid: str) -> None:
        if self.engine.spool.pop(sid, None) is None:
            return self.send_text(404, f"Segment not found: {sid}")
        self.send(Reply(200, content_type=None))


# ---------------------------------------------------------------- OAuth2

class OAuthInitiateHandler(SimHandler):
    def get(self, auth_hash: str) -> None:
        if auth_hash not in self.cluster.oauth_by_hash:
            return self.send_text(404, "Unknown OAuth2 authentication request")
        # Stands in for the identity provider: it sends the browser straight back.
        self.set_cookie("__Secure-Trino-Nonce", os.urandom(8).hex(), path="/oauth2")
        self.set_status(303)
        self.set_header("Location", f"{self.base()}/oauth2/callback?code={os.urandom(8).hex()}"
                                    f"&state={quote(auth_hash)}")
        self.finish()


class OAuthCallbackHandler(SimHandler):
    def get(self) -> None:
        state = self.get_query_argument("state", "")
        if not self.cluster.oauth_complete(state):
            return self.send_text(400, "Invalid OAuth2 state")
        self.send(Reply(200, b"<html><body>OAuth2 authentication succeeded. You may close "
                             b"this window.</body></html>", "text/html; charset=utf-8"))


class OAuthTokenHandler(SimHandler):
    async def get(self, auth_id: str) -> None:
        entry = self.cluster.oauth_pending.get(auth_id)
        if entry is None:
            return self.send_json({"error": f"Unknown authentication id: {auth_id}"}, 404)
        if entry["token"] is None:
            try:
                await asyncio.wait_for(entry["event"].wait(), self.cluster.oauth_poll_seconds)
            except asyncio.TimeoutError:
                pass
        if entry["token"] is None:
            return self.send_json({"nextUri": f"{self.base()}/oauth2/token/{auth_id}"})
        self.send_json({"token": entry["token"]})

    def delete(self, auth_id: str) -> None:
        self.cluster.oauth_forget(auth_id)
        self.send(Reply(204, content_type=None))


# ---------------------------------------------------------------- test control

class SimControlHandler(SimHandler):
    def get(self) -> None:
        self.send_json(self.cluster.control.as_dict())

    def post(self) -> None:
        try:
            changes = json.loads(self.request.body or b"{}")
            if not isinstance(changes, dict):
                raise ControlError("the body must be a JSON object")
            self.cluster.set_control(**changes)
        except (ValueError, ControlError) as e:
            return self.send_text(400, f"Bad control request: {e}")
        self.send_json(self.cluster.control.as_dict())


class SimQueriesHandler(SimHandler):
    def get(self) -> None:
        self.send_json(self.cluster.query_log())


class SimResetHandler(SimHandler):
    async def post(self) -> None:
        await self.cluster.reset()
        self.send_json(self.cluster.control.as_dict())


class NotFoundHandler(SimHandler):
    def prepare(self) -> None:  # type: ignore[override]
        self.send_text(404, f"Not found: {self.request.path}")


def make_app(cluster: "SimulatedCluster") -> tornado.web.Application:
    tok = r"([^/]+)/([^/]+)/(\d+)"
    routes: list[tuple[str, type[SimHandler]]] = [
        (r"/v1/statement", StatementHandler),
        (rf"/v1/statement/queued/{tok}", QueuedHandler),
        (rf"/v1/statement/executing/partialCancel/([^/]+)/([^/]+)/([^/]+)/(\d+)",
         PartialCancelHandler),
        (rf"/v1/statement/executing/{tok}", ExecutingHandler),
        (r"/v1/info", InfoHandler),
        (r"/v1/info/state", InfoStateHandler),
        (r"/v1/info/coordinator", CoordinatorHandler),
        (r"/v1/status", StatusHandler),
        (r"/v1/query", QueryListHandler),
        (r"/v1/query/([^/]+)", QueryInfoHandler),
        (r"/v1/query/([^/]+)/killed", QueryKilledHandler),
        (r"/v1/jmx/mbean/(.+)", JmxHandler),
        (r"/metrics", MetricsHandler),
        (r"/ui/login(?:\.html)?", UiLoginHandler),
        (r"/ui/api/stats", UiStatsHandler),
        (r"/ui/api/cluster", UiClusterHandler),
        (r"/ui/api/query", UiQueryListHandler),
        (r"/ui/api/query/([^/]+)", UiQueryHandler),
        (r"/ui/query\.html", UiQueryPageHandler),
        (r"/v1/spooled/download/([^/]+)", SpoolDownloadHandler),
        (r"/v1/spooled/ack/([^/]+)", SpoolAckHandler),
        (r"/oauth2/token/initiate/([^/]+)", OAuthInitiateHandler),
        (r"/oauth2/callback", OAuthCallbackHandler),
        (r"/oauth2/token/([^/]+)", OAuthTokenHandler),
        (r"/_sim/control", SimControlHandler),
        (r"/_sim/queries", SimQueriesHandler),
        (r"/_sim/reset", SimResetHandler),
    ]
    return tornado.web.Application(
        [(pattern, handler, {"cluster": cluster}) for pattern, handler in routes],
        default_handler_class=NotFoundHandler, default_handler_args={"cluster": cluster},
        compress_response=False)
