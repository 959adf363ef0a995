"""A held statement's dispatch, without sockets: a real ``Gateway`` and ``Admission`` with a
scripted backend client. The gateway queue uses the one forwarder (406 retry) and publishes the
same lifecycle event as the proxy handler, and what the answer teaches is learned (issue 14,
findings 5 and 7)."""
from __future__ import annotations

import asyncio
import json
import time

from tornado.httputil import HTTPHeaders

from gateway import protocol as P
from gateway.admission.control import Held
from gateway.app import Gateway
from gateway.backends.state import Backend
from gateway.config import config_from_dict
from gateway.lifecycle import Started
from gateway.routing.router import Route

QID = "20240101_123456_00007_abcde"


class ScriptedClient:
    def __init__(self, answers: list[tuple[int, list[tuple[str, str]], bytes]]) -> None:
        self.answers = answers
        self.sent: list[list[tuple[str, str]]] = []

    async def fetch(self, base, method, target, headers, body, sink, **kw):
        self.sent.append(list(headers))
        code, head, payload = self.answers.pop(0)
        sink.on_headers(code, "", HTTPHeaders(head))
        sink.on_chunk(payload)
        sink.on_end()
        return code

    def close(self) -> None:
        pass


def test_a_held_statement_goes_through_the_forwarder_and_publishes_started(tmp_path):
    cfg = config_from_dict({"store": {"url": f"sqlite:///{tmp_path / 'g.db'}"},
                            "routing": {"tokenKey": "k" * 32, "rules": [str(tmp_path)]},
                            "groups": {"etl": {"maxRunningQueries": 1}},
                            "monitor": {"type": "noop"}}, "<test>")
    gw = Gateway(cfg)
    backend = Backend("etl-1", "http://etl-1:8080", None, "etl", True)
    gw.registry.replace([backend])
    page = json.dumps({"id": QID, "nextUri": f"http://etl-1:8080/v1/statement/queued/{QID}/y/1",
                       "infoUri": f"http://etl-1:8080/ui/query.html?{QID}", "stats": {"state": "QUEUED"}})
    client = ScriptedClient([
        (406, [("Content-Type", "text/plain")], b"Server configuration does not allow X-Forwarded-For"),
        (200, [("Content-Type", "application/json"), ("X-Trino-Started-Transaction-Id", "tx-9")],
         page.encode())])
    gw.forwarder.client = client  # type: ignore[assignment]
    events: list[Started] = []
    gw.lifecycle.on_started(events.append)
    route = Route("etl", [backend], rule="etl-rule", user="alice", context={"query": "SELECT 1"})
    now = time.time()
    held = Held("20240101_123456_00001_gtw01", "etl", "alice", 0, b"SELECT 1",
                [("X-Trino-User", "alice")], "10.0.0.1", route, now - 2, "http://gw:8080")

    async def go() -> None:
        held.changed = asyncio.Event()
        held.state = "DISPATCHING"
        await gw.admission._send(held, backend, None)
    asyncio.run(go())

    assert held.state == "DISPATCHED" and held.response is not None and held.response[0] == 200
    # the 406 was answered by the forwarder: sent again without X-Forwarded-*, and remembered
    assert [any(n == "X-Forwarded-Host" for n, _ in h) for h in client.sent] == [True, False]
    assert gw.no_forwarded == {"etl-1"}
    # one lifecycle event, with the route (rule) and the time held
    assert len(events) == 1
    ev = events[0]
    assert (ev.query_id, ev.backend.name, ev.route.rule) == (QID, "etl-1", "etl-rule")
    assert ev.queued_ms is not None and ev.queued_ms >= 2000
    # what the answer taught: the query id, and the transaction it started
    assert gw.sticky.get(P.QUERY, QID) == "etl-1"
    assert gw.sticky.get(P.TRANSACTION, "tx-9") == "etl-1"
