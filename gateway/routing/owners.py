"""Who owns a query, transaction, spooled segment or OAuth2 exchange, when the request does not say.

Follow-ups the gateway wrote a URI for carry a routing token and never come here
(``gateway.routing.tokens``). What remains are ids clients bring on their own: a
``kill_query`` statement, ``/v1/query/<id>``, ``/ui/query.html?<id>`` and ``/ui/api/query/<id>``
from a browser, a transaction id, and URIs written before a restart into a gateway without
tokens. Those are answered, in order, from

1. **memory**: what this process learned (or resolved before);
2. **probe** (queries only): every backend is asked ``GET /v1/query/<id>`` at once, with the
   client's user and credentials, else the monitor's, else a gateway user; the owner answers
   200 (or 403: it knows the query, the user may not see it);
3. **store**: mappings every process writes in batches; a lookup waits up to two flush intervals
   for one another process has just learned. Concurrent lookups of one key share one wait.

Every answer is counted by how it was found (``trino_gateway_owner_lookups_total{source}``):
in steady state follow-ups are all ``token``.
"""
from __future__ import annotations

import asyncio
import base64
import logging
import time
from typing import Any, Awaitable, Callable

from tornado.httputil import HTTPHeaders

from gateway import protocol as P
from gateway.backends.state import Backend, Registry
from gateway.proxy.client import BackendClient, BackendError, BufferSink
from gateway.routing.sticky import StickyMap

__all__ = ["OwnerLookup", "BackendProbe", "SOURCES"]

log = logging.getLogger("gateway.routing")

SOURCES = ("token", "memory", "probe", "store", "none", "refused")  # refused: a bad token
_MAX_WAITING_KEYS = 256   # distinct keys that may wait for the store at once (shared waits)
_PROBE_USER = "trino-gateway"
# A probe's answer when every backend said plainly that it does not know the query (404/410):
# then the store is read once, not waited on. Waiting two flush intervals for each made-up id
# would let a client tie up a lookup slot per request for seconds (pipelined unknown ids).
NOWHERE = "\0nowhere"


class BackendProbe:
    """Asks every backend whether it knows a query id."""

    def __init__(self, client: BackendClient, registry: Registry, *, timeout: float,
                 username: str | None = None, password: str | None = None) -> None:
        self.client = client
        self.registry = registry
        self.timeout = timeout
        self.username = username
        self.password = password

    def headers(self, client_headers: HTTPHeaders) -> HTTPHeaders:
        """Credentials that work: the client's if it sent any, else the monitor's, else a user
        name (enough for a coordinator without authentication). A browser opening the Trino UI
        sends neither ``X-Trino-User`` nor ``Authorization``."""
        user = client_headers.get("X-Trino-User") or self.username or _PROBE_USER
        out = HTTPHeaders({"X-Trino-User": user})
        auth = client_headers.get("Authorization")
        if not auth and self.username and self.password is not None:
            auth = "Basic " + base64.b64encode(f"{self.username}:{self.password}".encode()).decode()
        if auth:
            out["Authorization"] = auth
        return out

    async def __call__(self, query_id: str, client_headers: HTTPHeaders) -> str | None:
        backends = self.registry.all()
        if not backends:
            return None
        headers = self.headers(client_headers)

        async def ask(b: Backend) -> str | None:
            try:
                code = await self.client.fetch(b.proxyTo, "GET", f"/v1/query/{query_id}",
                                               HTTPHeaders(headers), None, BufferSink(limit=0),
                                               request_timeout=self.timeout)
            except BackendError:
                return None
            # 403: the backend knows the query, the probing user may not see it
            return b.name if code in (200, 403) else NOWHERE if code in (404, 410) else None

        answers = await asyncio.gather(*(ask(b) for b in backends))
        for name in answers:
            if name is not None and name != NOWHERE:
                return name
        return NOWHERE if all(a == NOWHERE for a in answers) else None


class OwnerLookup:
    """Memory → probe → store, with a metric of how each lookup was answered."""

    def __init__(self, sticky: StickyMap, registry: Registry, *,
                 probe: Callable[[str, HTTPHeaders], Awaitable[str | None]],
                 count: Callable[[str], None], flush_interval: float) -> None:
        self.sticky = sticky
        self.registry = registry
        self.probe = probe
        self.count = count
        self.flush_interval = flush_interval
        self.store: Any = None    # StoreCalls, once the gateway opened it
        self.writer: Any = None   # HistoryWriter, once started
        self._waits: dict[tuple[str, str], asyncio.Future[str | None]] = {}

    # -- what responses teach --------------------------------------------------------------

    def learn(self, kind: str, key: str, backend: str) -> None:
        if self.sticky.get(kind, key) == backend:
            return
        self.sticky.put(kind, key, backend)
        if self.writer is not None:
            self.writer.add_sticky(kind, key, backend, time.time() + self.sticky.ttl)

    def forget(self, kind: str, key: str) -> None:
        self.sticky.discard(kind, key)

    # -- lookups ---------------------------------------------------------------------------

    async def owner(self, kind: str, key: str, headers: HTTPHeaders) -> str | None:
        name = self.sticky.get(kind, key)
        if name is not None and self.registry.get(name) is not None:
            self.count("memory")
            return name
        source = "probe"
        name = await self.probe(key, headers) if kind == P.QUERY else None
        if name is None or name == NOWHERE:
            source = "store"
            name = await self._store_lookup(kind, key, patient=name is None)
        self.count(source if name is not None else "none")
        if name is not None:
            self.sticky.put(kind, key, name)
        return name

    async def _store_lookup(self, kind: str, key: str, patient: bool = True) -> str | None:
        if self.store is None:
            return None
        if not patient:
            return await self._poll_store(kind, key, 0.0)
        scope = (kind, key)
        shared = self._waits.get(scope)
        if shared is not None:
            return await asyncio.shield(shared)
        wait = len(self._waits) < _MAX_WAITING_KEYS
        fut: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
        if wait:
            self._waits[scope] = fut
        name: str | None = None
        try:
            name = await self._poll_store(kind, key, 2 * self.flush_interval + 0.5 if wait else 0.0)
            return name
        finally:   # also when this lookup is cancelled: the others sharing it get "unknown"
            fut.set_result(name)
            if wait:
                del self._waits[scope]

    async def _poll_store(self, kind: str, key: str, patience: float) -> str | None:
        # A mapping learned by another process reaches the store within a flush interval.
        deadline = time.monotonic() + patience
        while True:
            try:
                name = await self.store.call("get_sticky", kind, key, time.time())
            except Exception as exc:
                log.warning("store lookup of %s %s failed: %s", kind, key, exc)
                return None
            if name is not None and self.registry.get(name) is not None:
                return name
            if time.monotonic() >= deadline:
                return None
            await asyncio.sleep(min(0.1, max(0.01, self.flush_interval / 2)))
