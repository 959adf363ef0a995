"""A held statement's dispatch, without sockets: a real ``Gateway`` and ``Admission`` with a
scripted backend client. The gateway queue uses the one forwarder (406 retry) and publishes the
same lifecycle event as the proxy handler, and what the answer teaches is learned (issue 14,
findings 5 and 7)."""
from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from tornado.httputil import HTTPHeaders

from gateway import protocol as P
from gateway.admission.control import Held
from gateway.app import Gateway
from gateway.backends.state import Backend, Health
from gateway.config import config_from_dict
from gateway.lifecycle import Started
from gateway.proxy.client import BackendError
from gateway.routing.router import Route

QID = "20240101_123456_00007_abcde"


class ScriptedClient:
    def __init__(self, answers: list[Any]) -> None:
        self.answers = answers
        self.sent: list[list[tuple[str, str]]] = []

    async def fetch(self, base, method, target, headers, body, sink, **kw):
        self.sent.append(list(headers))
        answer = self.answers.pop(0)
        if isinstance(answer, BackendError):
            raise answer
        code, head, payload = answer
        sink.on_headers(code, "", HTTPHeaders(head))
        sink.on_chunk(payload)
        sink.on_end()
        return code

    def close(self) -> None:
        pass


def _gateway(tmp_path) -> tuple[Gateway, Backend]:
    cfg = config_from_dict({"store": {"url": f"sqlite:///{tmp_path / 'g.db'}"},
                            "routing": {"tokenKey": "k" * 32, "rules": [str(tmp_path)]},
                            "groups": {"etl": {"maxRunningQueries": 1}},
                            "monitor": {"type": "noop"}}, "<test>")
    gw = Gateway(cfg)
    backend = Backend("etl-1", "http://etl-1:8080", None, "etl", True)
    gw.registry.replace([backend])
    return gw, backend


def _held(backend: Backend, now: float) -> Held:
    route = Route("etl", [backend], rule="etl-rule", user="alice", context={"query": "SELECT 1"})
    return Held("20240101_123456_00001_gtw01", "etl", "alice", 0, b"SELECT 1",
                [("X-Trino-User", "alice")], "10.0.0.1", route, now - 2, "http://gw:8080")


PAGE = json.dumps({"id": QID, "nextUri": f"http://etl-1:8080/v1/statement/queued/{QID}/y/1",
                   "infoUri": f"http://etl-1:8080/ui/query.html?{QID}", "stats": {"state": "QUEUED"}})


def test_a_held_statement_goes_through_the_forwarder_and_publishes_started(tmp_path):
    gw, backend = _gateway(tmp_path)
    page = PAGE
    client = ScriptedClient([
        (406, [("Content-Type", "text/plain")], b"Server configuration does not allow X-Forwarded-For"),
        (200, [("Content-Type", "application/json"), ("X-Trino-Started-Transaction-Id", "tx-9")],
         page.encode())])
    gw.forwarder.client = client  # type: ignore[assignment]
    events: list[Started] = []
    gw.lifecycle.on_started(events.append)
    held = _held(backend, time.time())

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


def test_a_held_statement_whose_connect_timed_out_is_sent_again_unless_it_was_canceled(tmp_path):
    """The one forwarding path tries a timed-out connect again for the gateway queue too (issue
    19); a held query its client canceled meanwhile is not sent again, and ends CANCELED."""
    gw, backend = _gateway(tmp_path)
    gw.registry.state("etl-1").health = Health.HEALTHY
    timed_out = BackendError("timed out connecting after 5s", sent=False, timeout=True)
    client = ScriptedClient([timed_out, timed_out, timed_out,
                             (200, [("Content-Type", "application/json")], PAGE.encode())])
    gw.forwarder.client = client  # type: ignore[assignment]
    held = _held(backend, time.time())

    async def go(h: Held) -> None:
        h.changed = asyncio.Event()
        h.state = "DISPATCHING"
        await gw.admission._send(h, backend, None)
    asyncio.run(go(held))
    assert held.state == "DISPATCHED" and len(client.sent) == 4

    client = ScriptedClient([timed_out, timed_out, timed_out])
    gw.forwarder.client = client  # type: ignore[assignment]
    canceled = _held(backend, time.time())
    canceled.cancel_requested = True
    asyncio.run(go(canceled))
    assert canceled.state == "CANCELED" and len(client.sent) == 2   # the stall excuse once, no more
