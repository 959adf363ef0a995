"""Admission control: caps per routing group, and a gateway queue that looks like Trino.

For a group with ``maxRunningQueries`` (per backend) or ``maxQueriesPerUser``, every new
statement takes a *lease* in the store before it is sent: the store counts live leases per
backend across all processes and replicas, so a cap holds fleet-wide, and a lease expires
unless the query is still being polled, so a crashed gateway cannot leak capacity. The count
of a backend is also never below what the monitor last saw there, so queries started around
the gateway count too.

When every healthy backend of the group is full, the statement is *held*: the client gets a
QUEUED result with a gateway query id and a ``nextUri`` on the gateway, and polls it like a
coordinator's queue. Held queries leave in priority order, users taking turns, as soon as a
slot frees (a query finished, a probe saw less load, another process released a lease); the
poll that follows gets the cluster's own first answer, whose query id is the cluster's.
"""
from __future__ import annotations

import asyncio
import base64
import json
import logging
import secrets
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tornado.httputil import HTTPHeaders

from gateway.admission import shared as S
from gateway import protocol as P
from gateway.admission.fair_queue import FairQueue
from gateway.backends.state import Backend
from gateway.lifecycle import Started
from gateway.proxy import exchange as X
from gateway.limits import queue_refusal
from gateway.proxy.client import BackendError, BufferSink
from gateway.store import HeldRow

if TYPE_CHECKING:
    from gateway.admission.parts import AdmissionParts
    from gateway.routing.router import Route
    from gateway.store.writer import StoreCalls

log = logging.getLogger("gateway.admission")

LEASE_TTL = 60.0          # a lease lives this long without a poll of its query
RENEW_EVERY = 10.0
TICK = 1.0                # re-check held queries (leases freed elsewhere, waits, abandonment)
# Held queries get ids whose coordinator part has '0' and '1', which Trino's coordinator-id
# alphabet leaves out, so they can never collide with a cluster's query id.
HELD_ID_SUFFIX = "_gtw01"
_MAX_WAIT = 1.0           # a poll of a held query is answered within this (like a coordinator)


@dataclass(eq=False)
class Held:
    """One statement waiting at the gateway."""
    id: str
    group: str
    user: str | None
    priority: int
    body: bytes
    headers: list[tuple[str, str]]
    remote_ip: str
    route: "Route"
    enqueued: float
    base: str
    slug: str = field(default_factory=lambda: "y" + secrets.token_hex(20))
    token: int = 1
    last_poll: float = 0.0
    state: str = "QUEUED"                  # QUEUED | DISPATCHING | DISPATCHED | FAILED | CANCELED
    backend: Backend | None = None
    response: tuple[int, str, HTTPHeaders, bytes] | None = None
    failure: tuple[str, str] | None = None  # (message, error name)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    finished_at: float | None = None
    cancel_requested: bool = False
    shared_at: float | None = None          # when its row was in the store (admission_shared.py)

    @property
    def transaction(self) -> str | None:
        return P.transaction_id(next((v for n, v in self.headers
                                      if n.lower() == "x-trino-transaction-id"), None))

    @property
    def waited(self) -> float:
        return (self.finished_at or time.time()) - self.enqueued


class _HeldSink(BufferSink):
    """The first answer to a held query; ``gone`` once its client canceled it, so the
    forwarder does not try a timed-out connect again for it (gateway/proxy/forward.py)."""

    def __init__(self, h: Held) -> None:
        super().__init__(limit=16 << 20)
        self.held = h

    @property
    def gone(self) -> bool:
        return self.held.cancel_requested


class Admission:
    def __init__(self, parts: "AdmissionParts") -> None:
        """``parts``: what admission uses of the gateway (``gateway/admission/parts.py``)."""
        self.parts = parts
        self.config = parts.config
        self.registry = parts.registry
        self.metrics = parts.metrics
        self.queues: dict[str, FairQueue[Held]] = {}
        self.held: dict[str, Held] = {}
        self._lease_of: dict[str, str] = {}     # query id -> lease id (this process's admissions)
        self._group_of: dict[str, str] = {}     # query id -> group
        self._polled: set[str] = set()
        self._released: set[str] = set()
        self._task: asyncio.Task[Any] | None = None
        self._dispatching: set[str] = set()
        self._last_renew = 0.0
        self.dropped = 0        # held queries abandoned by their clients
        self.rejected = 0       # refused: queue full or waited too long
        self.dispatched = 0
        self._enabled = any(g.maxRunningQueries is not None or g.maxQueriesPerUser is not None
                            for g in parts.config.groups.values())
        # Held queries are shared through the store with every other process
        # (gateway/admission/shared.py): this process's name there, and forgotten rows.
        self.instance = uuid.uuid4().hex
        self.shared = S.SharedHeld(self, store=parts.store, tokens=parts.tokens)
        self._forgotten: list[str] = []

    @property
    def store(self) -> "StoreCalls | None":
        """The gateway's store (None before it started)."""
        return self.parts.store()

    # -- configuration -------------------------------------------------------------------

    def capped(self, group: str | None) -> bool:
        if group is None:
            return False
        g = self.config.groups.get(group)
        return g is not None and (g.maxRunningQueries is not None or g.maxQueriesPerUser is not None)

    @property
    def enabled(self) -> bool:
        return self._enabled

    def start(self) -> None:
        if self.enabled and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None
        await self._flush_leases()

    # -- the statement path ----------------------------------------------------------------

    async def try_admit(self, route: "Route") -> tuple[Backend | None, str | None]:
        """A backend with a free slot (and the lease taken for it), or (None, None)."""
        group = route.group
        assert group is not None
        if self.queues.get(group):
            return None, None  # others are waiting: no jumping the queue
        return await self._acquire(group, route.user, route.backends)

    async def _acquire(self, group: str, user: str | None,
                       backends: list[Backend]) -> tuple[Backend | None, str | None]:
        cfg = self.config.group(group)
        states = self.registry
        candidates = [(b.name, states.state(b.name).running + states.state(b.name).queued) for b in backends]
        lease_id = uuid.uuid4().hex
        assert self.store is not None
        try:
            name = await self.store.call("acquire_lease", lease_id, group, user, candidates,
                                         cfg.maxRunningQueries, cfg.maxQueriesPerUser,
                                         time.time(), LEASE_TTL)
        except Exception as exc:
            # Without the store there is no fleet-wide count: admit rather than fail queries,
            # and say so (caps resume with the store).
            log.warning("cannot take an admission lease (store unavailable: %s); admitting "
                        "without a cap", exc)
            return (backends[0] if backends else None), None
        if name is None:
            return None, None
        return self.registry.get(name), lease_id

    def admitted(self, lease_id: str | None, query_id: str | None, group: str) -> None:
        """The POST went through (or not): bind the lease to the cluster's query id."""
        if lease_id is None:
            return
        if query_id is None:
            self._release_soon(lease_id)
            return
        self._lease_of[query_id] = lease_id
        self._group_of[query_id] = group
        assert self.store is not None
        asyncio.get_running_loop().create_task(self._call("bind_lease", lease_id, query_id))

    def touch(self, query_id: str) -> None:
        """A poll of a running query keeps its lease alive (any process may renew it)."""
        if self._enabled:
            self._polled.add(query_id)

    def finished(self, query_id: str) -> None:
        """A query ended: free its slot and let a held query go."""
        if not self._enabled:
            return
        self._released.add(query_id)
        self._lease_of.pop(query_id, None)
        group = self._group_of.pop(query_id, None)
        if self.queues:
            asyncio.get_running_loop().create_task(self._after_release(group))

    def _release_soon(self, lease_id: str) -> None:
        self._released.add(lease_id)

    async def _after_release(self, group: str | None) -> None:
        await self._flush_leases()
        for g in ([group] if group in self.queues else list(self.queues)):
            await self.dispatch(g)

    # -- holding ----------------------------------------------------------------------------

    async def hold(self, route: "Route", body: bytes, headers: HTTPHeaders, remote_ip: str,
                   base: str) -> bytes:
        """Queue a statement; the QUEUED (or, past maxQueued, FAILED) document for the client.
        Its row is in the store before the client sees its nextUri, so any process answers."""
        group = route.group
        assert group is not None
        cfg = self.config.group(group)
        queue = self.queues.setdefault(group, FairQueue())
        refusal = queue_refusal(queue, route.user, remote_ip, group, cfg)   # per user / address
        if refusal is not None:
            self.rejected += 1
            self.metrics.admission_rejected.labels(group, refusal[0]).inc()
            return P.failed_query(refusal[1], gateway_base=base, error_name="QUERY_QUEUE_FULL")
        if len(queue) >= cfg.maxQueued:
            self.rejected += 1
            self.metrics.admission_rejected.labels(group, "maxQueued").inc()
            message = (f"Routing group '{group}' is at capacity and its gateway queue is full "
                       f"(maxQueued {cfg.maxQueued}); try again later")
            qid = P.new_query_id()
            self.parts.statement_refused(route, qid, "REJECTED", message)
            return P.failed_query(message, gateway_base=base, error_name="QUERY_QUEUE_FULL",
                                  query_id=qid)
        now = time.time()
        qid = P.new_query_id(now).rsplit("_", 1)[0] + HELD_ID_SUFFIX
        h = Held(qid, group, route.user, route.queue_priority, body, list(headers.get_all()), remote_ip,
                 route, now, base, last_poll=now)
        h.slug = self.shared.slug(qid) or h.slug
        self._enqueue(h)
        await self._put_row(h, now)
        log.info("query %s of user %s held at the gateway: routing group %s is at capacity "
                 "(position %d)", h.id, h.user, group, queue.position(h) or 0)
        return self.document(h, base)

    async def _put_row(self, h: Held, now: float) -> None:
        assert self.store is not None
        try:
            await self.store.call("put_held", HeldRow(h.id, h.slug, self.instance, now, h.group, now, now,
                                                      "QUEUED", False, S.statement_json(h)))
            h.shared_at = time.time()
        except Exception as exc:   # it still works within this process
            log.warning("cannot share held query %s through the store: %s", h.id, exc)

    def _enqueue(self, h: Held) -> None:
        queue = self.queues.setdefault(h.group, FairQueue())
        queue.push(h, priority=h.priority, user=h.user or "")
        self.held[h.id] = h
        self.metrics.admission_queued.labels(h.group).set(len(queue))

    async def adopt(self, row: HeldRow, token: int) -> Held | None:
        """Hold a query whose holder stopped (its heartbeat is stale): route its statement
        again and queue it here. None if another process adopted it first."""
        now = time.time()
        assert self.store is not None
        try:
            if not await self.store.call("adopt_held", row.query_id, self.instance,
                                         now - S.HEARTBEAT_STALE, now):
                return None
        except Exception as exc:
            log.warning("cannot adopt held query %s: %s", row.query_id, exc)
            return None
        st = json.loads(row.statement)
        headers = HTTPHeaders()
        for name, value in st["headers"]:
            headers.add(name, value)
        body = base64.b64decode(st["body"])
        route = await self.parts.route_statement(headers, body, st["remoteIp"])
        h = Held(row.query_id, route.group or row.routing_group, route.user, route.queue_priority, body,
                 list(headers.get_all()), st["remoteIp"], route, row.enqueued_at, st["base"],
                 slug=row.slug, token=token, last_poll=now, shared_at=now)
        self.held[h.id] = h
        if route.reject is not None or not route.backends or not self.capped(route.group):
            # the rules changed meanwhile: nothing to wait for here
            h.failure = (route.reject or route.reason or "No backend for the adopted query",
                         "PERMISSION_DENIED" if route.reject else "NO_NODES_AVAILABLE")
            h.state, h.finished_at = "FAILED", now
            await self._publish_end(h)
            return h
        self._enqueue(h)
        log.warning("held query %s adopted: the gateway process that held it stopped", h.id)
        return h

    def document(self, h: Held, base: str) -> bytes:
        """The QUEUED result of a held query, with its place in line in the stats."""
        queue = self.queues.get(h.group)
        return S.queued_document(h.id, h.slug, h.token, h.group, h.waited, base,
                                 (queue.position(h) if queue else None) or 0)

    async def _publish_end(self, h: Held) -> None:
        await self._call("answer_held", h.id, "ENDED", S.ended_json(*S.end_of(h)))

    def cancel(self, h: Held) -> None:
        if h.state in ("QUEUED",):
            queue = self.queues.get(h.group)
            if queue is not None:
                queue.remove(h)
                self.metrics.admission_queued.labels(h.group).set(len(queue))
            h.state = "CANCELED"
            h.finished_at = time.time()
            h.changed.set()
            asyncio.get_running_loop().create_task(self._publish_end(h))
            log.info("held query %s canceled by its client after %.1fs", h.id, h.waited)
            self.parts.statement_refused(h.route, h.id, "CANCELED", "Canceled by the client while "
                                         "held at the gateway", submitted_at=h.enqueued)
        elif h.state == "DISPATCHING":
            h.cancel_requested = True  # _send cancels it on the cluster once it exists
        elif h.state == "DISPATCHED" and h.response is not None:
            # The cluster's query exists but the client never saw it: cancel it there.
            asyncio.get_running_loop().create_task(self._cancel_dispatched(h))
            h.state = "CANCELED"
            asyncio.get_running_loop().create_task(self._publish_end(h))

    async def _cancel_dispatched(self, h: Held) -> None:
        assert h.backend is not None and h.response is not None
        try:
            next_uri = json.loads(h.response[3]).get("nextUri")
        except ValueError:
            return
        if next_uri:
            path = "/" + next_uri.split("://", 1)[1].split("/", 1)[1]
            try:
                await self.parts.client.fetch(h.backend.proxyTo, "DELETE", path, HTTPHeaders(), None,
                                              BufferSink(limit=0))
            except BackendError:
                pass

    # -- dispatching ------------------------------------------------------------------------

    async def dispatch(self, group: str) -> None:
        """Send held queries of ``group`` while slots are free, in queue order."""
        if group in self._dispatching:
            return
        self._dispatching.add(group)
        try:
            queue = self.queues.get(group)
            while queue:
                h = queue.peek()
                assert h is not None
                available = self.registry.available(group)
                if not available:
                    return
                first = self.parts.balancer.pick(available, self.registry.states, h.user)
                ordered = [first] + [b for b in available if b is not first] if first else available
                backend, lease_id = await self._acquire(group, h.user, ordered)
                if backend is None:
                    return
                queue.pop()
                self.metrics.admission_queued.labels(group).set(len(queue))
                h.state = "DISPATCHING"
                if not await self._claim(h):
                    # another process adopted it (this one was taken for stopped): it sends it
                    if lease_id:
                        self._release_soon(lease_id)
                    del self.held[h.id]
                    continue
                asyncio.get_running_loop().create_task(self._send(h, backend, lease_id))
        finally:
            self._dispatching.discard(group)

    async def _send(self, h: Held, backend: Backend, lease_id: str | None) -> None:
        p = self.parts
        sink = _HeldSink(h)
        try:
            # The same forwarding path as the proxy handler's (406 retry, failure notes).
            code = await p.forwarder.send(backend, "POST", "/v1/statement", h.headers, h.body, sink,
                                          base=h.base, remote_ip=h.remote_ip)
        except BackendError as exc:
            if lease_id:
                self._release_soon(lease_id)
            if not exc.sent and h.state == "DISPATCHING":
                # nothing was created: back to the front of the line
                h.state = "QUEUED"
                self.queues.setdefault(h.group, FairQueue()).push_front(h, priority=h.priority,
                                                                        user=h.user or "")
                if h.cancel_requested:   # canceled while it was being sent: nothing to send now
                    self.cancel(h)
                return
            h.failure = (f"Backend {backend.name} failed while accepting the held query: {exc}",
                         "GENERIC_INTERNAL_ERROR")
            h.state = "FAILED"
            h.changed.set()
            await self._publish_end(h)
            return
        assert sink.headers is not None
        body = bytes(sink.body)
        qid = None
        if code == 200:
            rw = P.UriRewriter("http://x")
            rw.feed(body[:4096])
            qid = rw.query_id
        h.backend = backend
        h.response = (code, "", sink.headers, body)
        h.state = "DISPATCHED"
        h.finished_at = time.time()
        self.dispatched += 1
        self.metrics.admission_dispatched.labels(h.group).inc()
        self.metrics.admission_wait.labels(h.group).observe(h.waited)
        self.admitted(lease_id, qid, h.group)
        # What the answer teaches (a transaction started, an OAuth2 exchange), as for any response.
        taught = X.translate_response_headers(
            sink.headers.get_all(), backend_base=backend.proxyTo, gateway_base=h.base,
            request_transaction=h.transaction, route=None)
        p.taught(taught, backend.name)
        if qid:
            p.learn(P.QUERY, qid, backend.name)
            p.lifecycle.started(Started(qid, backend, h.route, h.enqueued, int(h.waited * 1000)))
        log.info("held query %s dispatched to %s as %s after %.1fs", h.id, backend.name, qid, h.waited)
        if h.cancel_requested:
            self.cancel(h)
        h.changed.set()
        if h.state == "DISPATCHED":     # the first answer, for a poll that reaches another process
            await self._call("answer_held", h.id, "DISPATCHED", S.dispatched_json(
                backend.name, code, list(sink.headers.get_all()), body, h.transaction))

    # -- background ------------------------------------------------------------------------

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(TICK)
            try:
                await self.tick()
            except Exception:
                log.exception("admission tick failed")

    async def _claim(self, h: Held) -> bool:
        if self.store is None:
            return True
        try:
            return bool(await self.store.call("claim_held", h.id, self.instance))
        except Exception as exc:   # store unavailable: only this process can know the query
            log.warning("cannot claim held query %s in the store (%s); sending it", h.id, exc)
            return True

    async def _heartbeat(self, now: float) -> None:
        """Tell other processes this holder lives; learn the polls and cancels they saw."""
        if self.store is None or not any(h.state in ("QUEUED", "DISPATCHING") for h in self.held.values()):
            return
        asked = time.time()
        try:
            rows = await self.store.call("sync_held", self.instance, now)
        except Exception as exc:
            log.warning("held-query heartbeat failed: %s", exc)
            return
        mine = {r[0] for r in rows}
        for h in list(self.held.values()):
            if (h.state == "QUEUED" and h.shared_at is not None and h.shared_at < asked
                    and h.id not in mine):
                # Adopted by another process, which took this one for stopped (it was too slow
                # to beat): that process holds and sends it now.
                queue = self.queues.get(h.group)
                if queue is not None:
                    queue.remove(h)
                del self.held[h.id]
                log.warning("held query %s was adopted by another gateway process", h.id)
        for query_id, last_poll, cancel in rows:
            h = self.held.get(query_id)
            if h is None:
                continue
            h.last_poll = max(h.last_poll, last_poll)
            if cancel and h.state in ("QUEUED", "DISPATCHING", "DISPATCHED"):
                self.cancel(h)

    async def tick(self, now: float | None = None) -> None:
        now = time.time() if now is None else now
        timeout = self.config.query.clientTimeout
        await self._heartbeat(now)
        for h in list(self.held.values()):
            if h.state == "QUEUED":
                wait_cap = self.config.group(h.group).maxQueueWait
                if now - h.last_poll > timeout:
                    # recorded before cancel(), whose own row would say "canceled by the client"
                    self.parts.statement_refused(h.route, h.id, "CANCELED", "Held at the gateway; its "
                                                 "client stopped polling", submitted_at=h.enqueued)
                    self.cancel(h)
                    h.state = "ABANDONED"
                    self.dropped += 1
                    self.metrics.admission_dropped.labels(h.group).inc()
                    log.warning("held query %s dropped: its client stopped polling %.0fs ago",
                                h.id, now - h.last_poll)
                elif now - h.enqueued > wait_cap:
                    queue = self.queues.get(h.group)
                    if queue is not None:
                        queue.remove(h)
                    h.state = "FAILED"
                    h.finished_at = now
                    h.failure = (f"Query waited {now - h.enqueued:.0f}s at the gateway for capacity in "
                                 f"routing group '{h.group}', more than maxQueueWait "
                                 f"{wait_cap:.0f}s", "EXCEEDED_TIME_LIMIT")
                    self.rejected += 1
                    self.metrics.admission_rejected.labels(h.group, "maxQueueWait").inc()
                    self.parts.statement_refused(h.route, h.id, "QUEUED_TIMEOUT", h.failure[0],
                                                 submitted_at=h.enqueued)
                    h.changed.set()
                    await self._publish_end(h)
            elif h.finished_at is not None and now - max(h.finished_at, h.last_poll) > 60:
                del self.held[h.id]  # delivered or ended a minute ago: forget it
                self._forgotten.append(h.id)
        for group, queue in list(self.queues.items()):
            self.metrics.admission_queued.labels(group).set(len(queue))
            if queue:
                await self.dispatch(group)
        if now - self._last_renew >= RENEW_EVERY:
            self._last_renew = now
            forgotten, self._forgotten = self._forgotten, []
            await self._call("delete_held", forgotten, now - S.ROW_TTL)
            polled, self._polled = self._polled, set()
            live = polled | set(self._lease_of)
            if live:
                await self._call("renew_leases", sorted(live), now + LEASE_TTL)
        await self._flush_leases()

    async def _flush_leases(self) -> None:
        if self._released:
            ids, self._released = self._released, set()
            await self._call("release_leases", sorted(ids))

    async def _call(self, method: str, *args: Any) -> None:
        if self.store is None:
            return
        try:
            await self.store.call(method, *args)
        except Exception as exc:
            log.warning("admission store call %s failed: %s", method, exc)

    def monitor_round(self) -> None:
        """Fresh counts from the monitor may have freed capacity."""
        for group, queue in list(self.queues.items()):
            if queue:
                asyncio.get_running_loop().create_task(self.dispatch(group))
