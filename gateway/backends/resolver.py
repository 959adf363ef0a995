"""Final states for queries whose client went away: ask the cluster that ran them.

The gateway records a query's final state when it relays the last result page (or a cancel).
A client that disconnects before that leaves its history row "not finished" for good, and such
rows would hold a drain open (``gateway.backends.unfinished``). Every ``store.resolveAfter / 2`` seconds
this looks at rows without a final state routed more than ``store.resolveAfter`` ago and asks
their backend (``GET /v1/query/{id}``):

* a final state there (FINISHED, FAILED; FAILED with USER_CANCELED is CANCELED) is recorded,
  with the cluster's error message;
* still running there: left alone (a long query whose client still polls);
* the cluster no longer knows the query (404/410: it finished and expired there): UNKNOWN;
* the backend was removed from the gateway: UNKNOWN; unreachable: tried again next round.

The request carries the query's user as ``X-Trino-User``, or ``monitor.username`` (with
``monitor.password`` as Basic credentials) when configured, so secured clusters answer too.
Each worker process runs it; writing the same final state twice is harmless. ``decide`` is the
pure part.
"""
from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
from typing import TYPE_CHECKING

from tornado.httputil import HTTPHeaders

from gateway.runtime.periodic import Periodic
from gateway.proxy.client import BackendError, BufferSink
from gateway.store.base import HistoryRow

if TYPE_CHECKING:
    from gateway.backends.state import Registry
    from gateway.config import MonitorConfig
    from gateway.proxy.client import BackendClient
    from gateway.store.writer import HistoryWriter, StoreCalls

log = logging.getLogger("gateway")

__all__ = ["Resolver", "decide"]

BATCH = 50
_FINAL = ("FINISHED", "FAILED")


def decide(backend: str, code: int, body: bytes) -> tuple[str, str | None] | None:
    """(state, error) to record for a cluster's answer about a query, or None to wait."""
    went_away = "its client went away before the gateway saw the end"
    if code in (404, 410):
        return "UNKNOWN", (f"{backend} no longer knows the query (it ended there and expired); "
                           f"{went_away}")
    if code != 200:
        return None
    try:
        info = json.loads(body)
    except ValueError:
        return None
    state = info.get("state") if isinstance(info, dict) else None
    if state not in _FINAL:
        return None
    code_name = (info.get("errorCode") or {}).get("name") if isinstance(info.get("errorCode"), dict) else None
    if state == "FAILED" and code_name == "USER_CANCELED":
        state = "CANCELED"
    message = None
    failure = info.get("failureInfo")
    if isinstance(failure, dict) and failure.get("message"):
        message = str(failure["message"])
    elif code_name:
        message = code_name
    note = f"final state from {backend}; {went_away}"
    return state, f"{message} ({note})" if message else note


class Resolver(Periodic):
    what = "resolving unfinished queries"

    def __init__(self, after: float, *, store: "StoreCalls", writer: "HistoryWriter",
                 registry: "Registry", client: "BackendClient", monitor: "MonitorConfig") -> None:
        """Reads unresolved rows from ``store``, asks their backend (from ``registry``) with
        ``client`` as ``monitor`` says (credentials, timeout), records through ``writer``."""
        self.store = store
        self.writer = writer
        self.registry = registry
        self.client = client
        self.monitor = monitor
        self.after = after
        self.every = max(1.0, after / 2) if after > 0 else 0.0
        self.resolved = 0
        # Where the next round starts: long queries still running (asked again every pass)
        # must not keep the rounds from reaching abandoned ones behind them.
        self._cursor: tuple[float, str] | None = None

    async def resolve_once(self, now: float | None = None) -> int:
        """One round; the number of rows given a final state."""
        now = time.time() if now is None else now
        rows: list[HistoryRow] = await self.store.call("unresolved_history", now - self.after, BATCH,
                                                       after=self._cursor)
        self._cursor = (rows[-1].submitted_at, rows[-1].query_id) if len(rows) == BATCH else None
        results = await asyncio.gather(*(self._ask(r) for r in rows))
        n = 0
        for row, result in zip(rows, results):
            if result is None:
                continue
            state, error = result
            self.writer.update_state(row.query_id, state, error, time.time())
            n += 1
        if n:
            log.info("resolved %d unfinished quer%s by asking their clusters", n, "y" if n == 1 else "ies")
            await self.writer.flush()
        self.resolved += n
        return n

    async def _ask(self, row: HistoryRow) -> tuple[str, str | None] | None:
        backend = self.registry.get(row.backend) if row.backend else None
        if backend is None:
            return ("UNKNOWN", f"backend {row.backend} was removed from the gateway before the "
                               "query's end was seen") if row.backend else None
        mon = self.monitor
        headers = HTTPHeaders()
        user = mon.username or row.user or "trino-gateway"
        headers["X-Trino-User"] = user
        if mon.username and mon.password:
            token = base64.b64encode(f"{mon.username}:{mon.password}".encode()).decode()
            headers["Authorization"] = f"Basic {token}"
        sink = BufferSink()
        try:
            code = await self.client.fetch(backend.proxyTo, "GET", f"/v1/query/{row.query_id}",
                                           headers, None, sink, request_timeout=mon.timeout)
        except BackendError:
            return None
        return decide(backend.name, code, bytes(sink.body))

    async def tick(self) -> int:
        return await self.resolve_once()
