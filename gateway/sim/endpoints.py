"""Endpoints of the simulated coordinator besides the statement protocol, and `make_app`.

Health and stats (/v1/info, /v1/status, /v1/query, /metrics, /v1/jmx), the web UI
(/ui/login, /ui/api/*, /ui/query.html), spooled segments (/v1/spooled/*), the OAuth2 token
exchange (/oauth2/*) and the test control (/_sim/*). Shapes follow section 4 and 6 of
shared/trino-protocol.md.
"""

from __future__ import annotations

import asyncio
import html
import json
import os
import time
from typing import TYPE_CHECKING
from urllib.parse import quote

import tornado.web

from . import protocol as proto
from .controls import ControlError
from .engine import Reply
from .handlers import (UI_COOKIE, VERSION, ExecutingHandler, PartialCancelHandler, QueuedHandler,
                       SimHandler, StatementHandler, _sign)
from .planner import SqlError

if TYPE_CHECKING:
    from .cluster import SimulatedCluster


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
    """As Trino's form login without authentication: the page takes the path to return to from
    its own query string (``/ui/login.html?/ui/query.html?<id>``); the answer to the form is a
    303 to an absolute URI (checked against Trino 476)."""

    def get(self) -> None:
        back = self.request.query if self.request.query.startswith("/ui/") else "/ui/"
        self.send(Reply(200, b"<html><body><form method='post' action='/ui/login'>"
                             b"<input name='username'><input name='password' type='password'>"
                             b"<input type='hidden' name='redirectPath' value='"
                             + html.escape(back, quote=True).encode() + b"'>"
                             b"<button>Log in</button></form></body></html>",
                        "text/html; charset=utf-8"))

    def post(self) -> None:
        user = self.get_body_argument("username", "").strip()
        password = self.get_body_argument("password", "")
        redirect = self.get_body_argument("redirectPath", "") or "/ui/"
        if not user or (self.cluster.control.auth == "basic" and not password):
            self.set_status(303)
            self.set_header("Location", f"{self.base()}/ui/login.html")
            return self.finish()
        token = f"{user}.{_sign(self.cluster.ui_secret, user)}"
        self.set_cookie(UI_COOKIE, token, path="/ui", httponly=True)
        self.set_status(303)
        self.set_header("Location", self.base() + (redirect if redirect.startswith("/") else "/ui/"))
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
        if self.ui_user(answer=False) is None:
            # Like Trino: the page itself needs the UI login; back here after it.
            self.set_status(303)
            self.set_header("Location", f"{self.base()}/ui/login.html?/ui/query.html?{qid}")
            return self.finish()
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
