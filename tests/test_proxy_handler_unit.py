"""The proxy handler's orchestration without sockets (issue 14, finding 7): a real ``Gateway``
and ``ProxyHandler`` on a fake client connection, backends answered by a scripted client."""
from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace
from typing import Any

from tornado.httputil import HTTPHeaders, HTTPServerRequest, RequestStartLine

from gateway import protocol as P
from gateway.app import Gateway
from gateway.backends.state import Backend, Health
from gateway.config import config_from_dict
from gateway.lifecycle import Started
from gateway.proxy.client import BackendError
from gateway.proxy.handler import ProxyHandler
from gateway.routing.rules import parse_ruleset

QID = "20240101_123456_00003_abcde"
RULES = b"""
name: no-secret
condition: query =~ "(?is).*secret_table.*"
reject: "secret_table is off limits"
---
name: tagged
condition: '"etl" in clientTags'
routingGroup: etl
"""


class FakeConnection:
    """What a handler writes to its client, kept in memory."""

    def __init__(self) -> None:
        self.context = SimpleNamespace(remote_ip="10.0.0.1", protocol="http")
        self.status = 0
        self.headers: HTTPHeaders | None = None
        self.body = b""
        self.finished = False

    def set_close_callback(self, cb: Any) -> None:
        pass

    def set_max_body_size(self, n: int) -> None:
        pass

    def _done(self) -> "asyncio.Future[None]":
        f = asyncio.get_running_loop().create_future()
        f.set_result(None)
        return f

    def write_headers(self, start: Any, headers: HTTPHeaders, chunk: bytes = b"") -> "asyncio.Future[None]":
        self.status, self.headers, self.body = start.code, headers, self.body + chunk
        return self._done()

    def write(self, chunk: bytes) -> "asyncio.Future[None]":
        self.body += chunk
        return self._done()

    def finish(self) -> None:
        self.finished = True

    def close(self) -> None:
        self.finished = True


class ScriptedClient:
    """Answers in order: (status, headers, body), or a BackendError to raise."""

    def __init__(self, answers: list[Any]) -> None:
        self.answers = answers
        self.sent: list[tuple[str, str, str]] = []

    async def fetch(self, base, method, target, headers, body, sink, **kw):
        self.sent.append((base, method, target))
        answer = self.answers.pop(0)
        if isinstance(answer, BackendError):
            raise answer
        code, head, payload = answer
        sink.on_headers(code, "", HTTPHeaders(head))
        if payload:
            sink.on_chunk(payload)
        sink.on_end()
        return code

    def close(self) -> None:
        pass


def _gateway(tmp_path: Any) -> Gateway:
    cfg = config_from_dict({"store": {"url": f"sqlite:///{tmp_path / 'g.db'}"},
                            "server": {"xForwardedFor": False},
                            "routing": {"tokenKey": "t" * 32, "cookieSecret": "c" * 32,
                                        "rules": [str(tmp_path)]},
                            "monitor": {"type": "noop"}}, "<test>")
    gw = Gateway(cfg)
    gw.rules.current = parse_ruleset([("r.yaml", RULES)])
    backends = [Backend("a1", "http://a1:8080", None, "adhoc", True),
                Backend("a2", "http://a2:8080", None, "adhoc", True),
                Backend("e1", "http://e1:8080", None, "etl", True)]
    gw.registry.replace(backends)
    for b in backends:
        gw.registry.state(b.name).health = Health.HEALTHY
    return gw


async def _run(gw: Gateway, method: str, uri: str, headers: dict[str, str], body: bytes = b"") -> FakeConnection:
    conn = FakeConnection()
    req = HTTPServerRequest(start_line=RequestStartLine(method, uri, "HTTP/1.1"),
                            headers=HTTPHeaders({"Host": "gw:8080", **headers}),
                            connection=conn)  # type: ignore[arg-type]
    h = ProxyHandler(req, cookie_secret=gw.cookie_secret, gateway=gw)
    h.prepare()
    if body:
        h.data_received(body)
    await h._execute()
    return conn


def _page(qid: str, backend: str, *, next_token: int | None) -> bytes:
    doc: dict[str, Any] = {"id": qid, "infoUri": f"http://{backend}:8080/ui/query.html?{qid}",
                           "stats": {"state": "RUNNING" if next_token is not None else "FINISHED"}}
    if next_token is not None:
        doc["nextUri"] = f"http://{backend}:8080/v1/statement/executing/{qid}/yslug/{next_token}"
    return json.dumps(doc).encode()


def test_statement_then_token_follow_ups_then_the_end(tmp_path):
    gw = _gateway(tmp_path)
    client = ScriptedClient([(200, [("Content-Type", "application/json")], _page(QID, "e1", next_token=1)),
                             (200, [("Content-Type", "application/json")], _page(QID, "e1", next_token=None))])
    gw.forwarder.client = client  # type: ignore[assignment]
    started: list[Started] = []
    finished: list[tuple[str, str, str | None]] = []
    gw.lifecycle.on_started(started.append)
    gw.lifecycle.on_finished(lambda *a: finished.append(a))

    async def go() -> None:
        first = await _run(gw, "POST", "/v1/statement", {"X-Trino-User": "alice", "X-Trino-Client-Tags": "etl"},
                           b"SELECT 1")
        assert first.status == 200
        doc = json.loads(first.body)
        assert doc["nextUri"].startswith("http://gw:8080/_r/")
        path = doc["nextUri"].split("://", 1)[1].split("/", 1)[1]
        # the follow-up is routed by its token alone: nothing was learned or looked up
        gw.sticky.discard(P.QUERY, QID)
        second = await _run(gw, "GET", "/" + path, {"X-Trino-User": "alice"})
        assert second.status == 200 and "nextUri" not in json.loads(second.body)
    asyncio.run(go())
    assert [(b, m, t) for b, m, t in client.sent] == [
        ("http://e1:8080", "POST", "/v1/statement"),
        ("http://e1:8080", "GET", f"/v1/statement/executing/{QID}/yslug/1")]   # prefix stripped
    assert [(e.query_id, e.backend.name, e.route.rule) for e in started] == [(QID, "e1", "tagged")]
    assert finished == [(QID, "FINISHED", None)]


def test_a_pinned_statement_meets_reject_rules_and_is_recorded_with_its_pinned_backend(tmp_path):
    gw = _gateway(tmp_path)
    gw.learn(P.TRANSACTION, "tx-1", "a2")
    client = ScriptedClient([(200, [("Content-Type", "application/json")], _page(QID, "a2", next_token=1))])
    gw.forwarder.client = client  # type: ignore[assignment]
    started: list[Started] = []
    gw.lifecycle.on_started(started.append)
    txn = {"X-Trino-User": "alice", "X-Trino-Transaction-Id": "tx-1", "X-Trino-Client-Tags": "etl"}

    async def go() -> None:
        rejected = await _run(gw, "POST", "/v1/statement", txn, b"SELECT * FROM secret_table")
        doc = json.loads(rejected.body)
        assert doc["error"]["errorName"] == "PERMISSION_DENIED"
        assert client.sent == []                                    # never forwarded
        ok = await _run(gw, "POST", "/v1/statement", txn, b"SELECT 1")
        assert ok.status == 200
    asyncio.run(go())
    # the rule says etl, but the transaction lives on a2: the backend stays pinned
    assert client.sent == [("http://a2:8080", "POST", "/v1/statement")]
    assert [(e.query_id, e.backend.name, e.route.rule, e.route.pinned) for e in started] == \
        [(QID, "a2", "tagged", True)]


def test_a_tampered_token_is_refused_without_any_backend_call(tmp_path):
    gw = _gateway(tmp_path)
    client = ScriptedClient([])
    gw.forwarder.client = client  # type: ignore[assignment]
    assert gw.tokens is not None
    tok = gw.tokens.encode("a1", P.QUERY, QID)
    bad = tok[:-1] + ("A" if tok[-1] != "A" else "B")

    async def go() -> FakeConnection:
        return await _run(gw, "GET", f"/_r/{bad}/v1/statement/executing/{QID}/y/1", {})
    conn = asyncio.run(go())
    assert conn.status == 400 and b"routing token" in conn.body
    assert client.sent == []


def test_an_overloaded_worker_sheds_new_statements_but_never_polls_or_kill_query(tmp_path):
    """gateway/runtime/overload.py: 429 + Retry-After + a Trino error document for a new statement;
    a token follow-up and a kill_query still go to their backend."""
    gw = _gateway(tmp_path)
    client = ScriptedClient([(200, [("Content-Type", "application/json")], _page(QID, "e1", next_token=1)),
                             (200, [("Content-Type", "application/json")], _page(QID, "e1", next_token=2)),
                             (200, [("Content-Type", "application/json")], _page(QID, "e1", next_token=None))])
    gw.forwarder.client = client  # type: ignore[assignment]
    gw.learn(P.QUERY, QID, "e1")

    async def go() -> None:
        gw.config.server.shedInFlight = 0
        first = await _run(gw, "POST", "/v1/statement", {"X-Trino-User": "alice", "X-Trino-Client-Tags": "etl"},
                           b"SELECT 1")
        path = json.loads(first.body)["nextUri"].split("://", 1)[1].split("/", 1)[1]
        gw.config.server.shedInFlight = 1   # the request being served is the one in flight
        shed = await _run(gw, "POST", "/v1/statement", {"X-Trino-User": "alice"}, b"SELECT 2")
        assert shed.status == 429 and shed.headers is not None and shed.headers["Retry-After"] == "2"
        doc = json.loads(shed.body)
        assert doc["error"]["errorName"] == "QUERY_QUEUE_FULL"
        assert doc["error"]["message"] == ("The gateway is overloaded: it proxies 1 requests (limit "
                                           "server.shedInFlight 1); retry in 2s")
        poll = await _run(gw, "GET", "/" + path, {"X-Trino-User": "alice"})
        assert poll.status == 200
        kill = await _run(gw, "POST", "/v1/statement", {"X-Trino-User": "alice"},
                          f"CALL system.runtime.kill_query(query_id => '{QID}')".encode())
        assert kill.status == 200
    asyncio.run(go())
    assert [m for _, m, _ in client.sent] == ["POST", "GET", "POST"]     # the shed one never left
    assert gw.metrics.shed.labels("in-flight")._value.get() == 1


def test_connects_that_time_out_are_tried_again_for_statements_and_polls_but_a_refused_one_fails(tmp_path):
    """Issue 19: a burst overflowed the only backend's accept queue; nothing was sent, so the
    statement (and the poll) goes to it again instead of failing with NO_NODES_AVAILABLE."""
    gw = _gateway(tmp_path)
    timed_out = BackendError("timed out connecting after 5s", sent=False, timeout=True)
    json_head = [("Content-Type", "application/json")]
    client = ScriptedClient([timed_out, timed_out, timed_out, (200, json_head, _page(QID, "e1", next_token=1)),
                             timed_out, timed_out, (200, json_head, _page(QID, "e1", next_token=None)),
                             BackendError("cannot connect: Connection refused", sent=False)])
    gw.forwarder.client = client  # type: ignore[assignment]
    etl = {"X-Trino-User": "alice", "X-Trino-Client-Tags": "etl"}   # one backend: e1

    async def go() -> None:
        first = await _run(gw, "POST", "/v1/statement", etl, b"SELECT 1")
        doc = json.loads(first.body)
        assert first.status == 200 and "error" not in doc, doc
        path = doc["nextUri"].split("://", 1)[1].split("/", 1)[1]
        poll = await _run(gw, "GET", "/" + path, {"X-Trino-User": "alice"})
        assert poll.status == 200 and json.loads(poll.body)["id"] == QID
        refused = await _run(gw, "POST", "/v1/statement", etl, b"SELECT 2")
        error = json.loads(refused.body)["error"]
        assert error["errorName"] == "NO_NODES_AVAILABLE" and "Connection refused" in error["message"]
    asyncio.run(go())
    assert [m for _, m, _ in client.sent] == ["POST"] * 4 + ["GET"] * 3 + ["POST"]   # refused: once
    assert gw.registry.state("e1").health is Health.HEALTHY   # the last backend of its group
