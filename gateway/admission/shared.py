"""Held queries shared across workers and replicas (docs/admission.md, "Any process answers").

A statement held in the gateway queue lives in one process, its *holder*. Its client's next
poll may reach any worker (a new connection per request lands anywhere with SO_REUSEPORT) or
any replica behind a load balancer. So the holder keeps a row per held query in the store
(``held_queries``), written before the client sees the ``nextUri``:

- any other process answers a poll from the row: still queued (a QUEUED page after up to a
  second, like a coordinator, and the poll is recorded so the holder does not drop the query as
  abandoned), dispatched (the cluster's first answer, which the holder wrote there, pointed at
  this gateway with routing tokens; from then on every URI routes by token), or ended (why);
- a cancel (DELETE) is recorded for the holder, which acts on it within a second;
- the holder sends a heartbeat every second; if it stops (the process died), the first process
  polled for the query *adopts* it: routes the stored statement again and holds it itself, so
  no held query is lost. Before sending a held query the holder claims it in the store, so an
  adopted query is never sent twice.

Pure encoding here, plus ``SharedHeld``, which the held-query handler calls for a query that
is not in this process's memory.
"""
from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
from typing import TYPE_CHECKING, Any, Callable

from tornado.httputil import HTTPHeaders

from gateway import protocol as P
from gateway.routing.tokens import TokenError
from gateway.store import HeldRow

if TYPE_CHECKING:
    from gateway.admission.control import Admission, Held
    from gateway.routing.tokens import TokenKeys
    from gateway.store.writer import StoreCalls

log = logging.getLogger("gateway.admission")

HEARTBEAT_STALE = 5.0      # a holder silent this long (it beats every second) has stopped
ROW_TTL = 3600.0           # rows of a holder silent this long are deleted
SLUG_KIND = "held"         # what a held query's slug is a token for (gateway/routing/tokens.py)


def statement_json(h: "Held") -> str:
    """What another process needs to hold the statement again (adoption)."""
    return json.dumps({"body": base64.b64encode(h.body).decode(), "headers": h.headers,
                       "remoteIp": h.remote_ip, "base": h.base})


def dispatched_json(backend: str, code: int, headers: list[tuple[str, str]], body: bytes,
                    transaction: str | None) -> str:
    return json.dumps({"backend": backend, "code": code, "headers": headers,
                       "body": base64.b64encode(body).decode(), "transaction": transaction})


def ended_json(message: str, error_name: str) -> str:
    return json.dumps({"failure": [message, error_name]})


def end_of(h: "Held") -> tuple[str, str]:
    """Why a held query ended, as its client is told (message, Trino error name)."""
    if h.failure is not None:
        return h.failure
    if h.state == "ABANDONED":
        return "Query was abandoned: its client stopped polling", "ABANDONED_QUERY"
    return "Query was canceled", "USER_CANCELED"


def queued_document(query_id: str, slug: str, token: int, group: str, waited: float, base: str,
                    position: int | None) -> bytes:
    """The QUEUED result of a held query, with its place in line when this process knows it."""
    waited_ms = int(waited * 1000)
    stats: dict[str, Any] = {
        "state": "QUEUED", "queued": True, "scheduled": False, "nodes": 0, "totalSplits": 0,
        "queuedSplits": 0, "runningSplits": 0, "completedSplits": 0, "cpuTimeMillis": 0,
        "wallTimeMillis": 0, "queuedTimeMillis": waited_ms, "elapsedTimeMillis": waited_ms,
        "processedRows": 0, "processedBytes": 0, "physicalInputBytes": 0, "peakMemoryBytes": 0,
        "spilledBytes": 0, "gatewayRoutingGroup": group,
    }
    if position is not None:
        stats["gatewayQueuePosition"] = position
    doc = {"id": query_id, "infoUri": f"{base}/ui/query.html?{query_id}",
           "nextUri": f"{base}/v1/statement/queued/{query_id}/{slug}/{token}",
           "stats": stats, "warnings": []}
    return json.dumps(doc, separators=(",", ":")).encode()


class SharedHeld:
    """Answers for held queries this process does not hold, from the store."""

    def __init__(self, admission: "Admission", *, store: Callable[[], StoreCalls | None],
                 tokens: Callable[[], TokenKeys | None]) -> None:
        """``admission`` adopts a held query whose holder stopped; ``store`` and ``tokens``
        give the gateway's store and routing-token keys (None until it has started)."""
        self.admission = admission
        self.store = store
        self.tokens = tokens

    def slug(self, query_id: str) -> str | None:
        """The secret part of a held query's nextUri, signed with the routing-token key, so
        that another process refuses a made-up one without asking the store (None: no key,
        a random slug then)."""
        tokens = self.tokens()
        return None if tokens is None else "y" + tokens.encode("", SLUG_KIND, query_id)

    def _genuine(self, query_id: str, slug: str) -> bool:
        tokens = self.tokens()
        if tokens is None or not slug.startswith("y"):
            return tokens is None
        try:
            tokens.verify(slug[1:], SLUG_KIND, query_id)
            return True
        except TokenError:
            return False

    async def _poll(self, query_id: str, slug: str, *, cancel: bool = False) -> HeldRow | None:
        store = self.store()
        if store is None or not self._genuine(query_id, slug):
            return None
        try:
            row: HeldRow | None = await store.call("poll_held", query_id, slug, time.time(), cancel=cancel)
            return row
        except Exception as exc:
            log.warning("cannot read held query %s from the store: %s", query_id, exc)
            return None

    async def cancel(self, query_id: str, slug: str) -> bool:
        """Record a client's cancel for the holder; False if no such held query."""
        return await self._poll(query_id, slug, cancel=True) is not None

    async def exists(self, query_id: str, slug: str) -> bool:
        return await self._poll(query_id, slug) is not None

    async def answer(self, query_id: str, slug: str, token: int, wait: float) -> HeldRow | "Held" | None:
        """The row to answer a GET from, after waiting up to ``wait`` for news of a queued
        query; or the ``Held`` this process adopted (answer it as a local one); None: unknown."""
        row = await self._poll(query_id, slug)
        if row is None:
            return None
        if row.state in ("QUEUED", "DISPATCHING"):
            if row.state == "QUEUED" and row.holder_seen < time.time() - HEARTBEAT_STALE:
                adopted = await self.admission.adopt(row, token)
                if adopted is not None:
                    return adopted
            await asyncio.sleep(wait)      # a coordinator's queued poll waits up to a second too
            row = await self._poll(query_id, slug) or row
        return row


def dispatched_answer(row: HeldRow) -> dict[str, Any]:
    answer: dict[str, Any] = json.loads(row.answer or "{}")
    answer["body"] = base64.b64decode(answer.get("body", ""))
    headers = HTTPHeaders()
    for name, value in answer.get("headers", []):
        headers.add(name, value)
    answer["headers"] = headers
    return answer


def lost_document(row: HeldRow, base: str) -> bytes:
    """A held query whose holder stopped while sending it: it may or may not run on a cluster,
    so it is not sent again; the client is told (Trino-shaped) instead of polling forever."""
    return P.failed_query("The gateway process holding this query stopped while sending it to a "
                          "cluster; it may have started there. Check and resubmit it",
                          gateway_base=base, error_name="GENERIC_INTERNAL_ERROR", query_id=row.query_id)
