"""HTTP side of the simulated coordinator: the base handler and the statement protocol.

Handlers are thin wrappers around `Engine` and the cluster's state: read the request, ask,
write the `Reply`; protocol decisions live in engine.py / planner.py / protocol.py. The other
endpoints (health, UI, metrics, spooling, OAuth2, /_sim) are in endpoints.py, which
also builds the application. `external_base(...)` (pure) computes the base URI that every
returned URI starts with.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import os
from typing import TYPE_CHECKING, Any, Callable

import tornado.web

from . import protocol as proto
from .engine import Reply, text_reply
from .planner import HeaderError, parse_session

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
                    sent = self.send(text_reply(406, "Server configuration does not allow "
                                                     f"processing of the {name} header"))
                    # Like Trino's Jetty: the connection closes once the 406 is out, without
                    # "Connection: close" (found against a real coordinator).
                    stream = self.request.connection.stream  # type: ignore[union-attr]
                    sent.add_done_callback(lambda _: stream.close())
                    return
        if self.statement_protocol:
            await self.cluster.hold()
            if self.cluster.control.slow:
                await asyncio.sleep(self.cluster.control.slow)
            if self.request.connection.stream.closed():  # type: ignore[union-attr]
                # The client gave up while we held the request: do not create a ghost query.
                raise tornado.web.Finish()

    @property
    def engine(self) -> Any:
        return self.cluster.engine

    def base(self) -> str:
        return external_base(self.request.headers.get, self.request.protocol, self.request.host,
                             self.cluster.control.process_forwarded)

    def send(self, reply: Reply) -> "asyncio.Future[None]":
        self.set_status(reply.status)
        if reply.content_type:
            self.set_header("Content-Type", reply.content_type)
        else:
            self.clear_header("Content-Type")
        for name, value in reply.headers:
            self.add_header(name, value)
        if reply.body and self.request.method != "HEAD":
            self.write(reply.body)
        return self.finish()

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

    def ui_user(self, answer: bool = True) -> str | None:
        """The UI login's user, or None (after answering 401 as Trino does, when ``answer``)."""
        token = self.get_cookie(UI_COOKIE) or ""
        user, _, sig = token.rpartition(".")
        if user and hmac.compare_digest(sig, _sign(self.cluster.ui_secret, user)):
            return user
        if answer:
            self.send(Reply(401, b"Unauthorized", "text/plain; charset=utf-8",
                            [("WWW-Authenticate", "Trino-Form-Login")]))
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
