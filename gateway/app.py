"""Wires the parts into one running gateway: store, registry, rules, monitor, proxy, API.

``Gateway`` owns the in-memory state the request path reads (registry, sticky map, current
ruleset) and the background tasks that keep it fresh (monitor, rules watcher, backend sync,
history writer). Handlers get the ``Gateway`` and call its small methods.
"""
from __future__ import annotations

import asyncio
import logging
import os
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

import tornado.web
from tornado.httpclient import AsyncHTTPClient
from tornado.httputil import HTTPHeaders, HTTPServerRequest

from gateway import protocol as P
from gateway.backends import Backend, Health, Registry
from gateway.config import Config
from gateway.metrics import Metrics
from gateway.logs import text_lines
from gateway.proxy.client import BackendClient, BackendError, BufferSink
from gateway.routing.balancer import Balancer
from gateway.routing.context import build_context, sql_inputs
from gateway.routing.sql import SqlFacts
from gateway.offload import Offload, PasswordChecks
from gateway.limits import mask_credentials
from gateway.routing.decision import decide
from gateway.routing.reload import RulesWatcher
from gateway.routing.sticky import StickyMap
from gateway.store.base import DuplicateBackend, HistoryRow
from gateway.store.process import ProcessStore
from gateway.store.writer import AsyncStore, HistoryWriter, StoreCalls
from gateway.monitor import Monitor
from gateway.admission import Admission
from gateway.server import backend_ssl_context

log = logging.getLogger("gateway")
_MAX_STORE_WAITERS = 16  # sticky lookups that may wait for another process's flush at once
route_log = logging.getLogger("gateway.routing")


@dataclass
class Route:
    """What routing decided for one new statement."""
    group: str | None
    backends: list[Backend]
    reject: str | None = None
    rule: str | None = None
    reason: str = ""
    user: str | None = None
    context: dict[str, Any] = field(default_factory=dict)
    decision_seconds: float = 0.0
    queue_priority: int = 0
    note: str | None = None        # e.g. SQL facts unknown because analysis ran out of budget

    @property
    def history_rule(self) -> str | None:
        """The rule as history shows it: with the note when the decision was made without SQL facts."""
        return f"{self.rule or '-'} [{self.note}]" if self.note else self.rule


async def open_async_store(cfg: Config) -> StoreCalls:
    """The store as the gateway uses it: in a child process (``store.process``, the default) so
    its database work never holds the GIL the proxy needs, or on a thread of this process.
    An in-memory SQLite database lives where it was opened, so it always stays in process."""
    url = cfg.store.url
    if cfg.store.process and ":memory:" not in url:
        return await ProcessStore.open(url, pool_size=cfg.store.poolSize,
                                       log_config={"level": cfg.logging.level,
                                                   "format": cfg.logging.format})
    return await AsyncStore.open(url, pool_size=cfg.store.poolSize)


class Gateway:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.registry = Registry()
        self.sticky = StickyMap(ttl=config.routing.stickyTtl)
        self.metrics = Metrics()
        backend_tls = backend_ssl_context(config.server)  # once: loading CAs is slow
        self.client = BackendClient(connect_timeout=config.server.backendConnectTimeout,
                                    request_timeout=config.server.backendRequestTimeout,
                                    ssl_context=backend_tls)
        self.metrics.time_backend(self.client)
        self.balancer = Balancer(config.routing.policy)
        self.rules = RulesWatcher(
            config.routing.rules, missing_ok=not _rules_explicit(config),
            on_change=lambda rs: self.metrics.rule_reloads.labels("ok").inc(),
            on_error=lambda err: self.metrics.rule_reloads.labels("error").inc())
        self._monitor_http = None if backend_tls is None else AsyncHTTPClient(
            force_instance=True, max_clients=256, defaults={"ssl_options": backend_tls})
        self.monitor = Monitor(self.registry, config.monitor, self._monitor_http)
        self.admission = Admission(self)
        self.offload = Offload()              # SQL analysis and rules checks, with a time budget
        self.passwords = PasswordChecks()     # PBKDF2 off the event loop
        self.monitor.on_round(lambda *_: self.admission.monitor_round())
        self.store: StoreCalls | None = None
        self.writer: HistoryWriter | None = None
        self.no_forwarded: set[str] = set()  # backends that answered 406 to X-Forwarded-*
        self.shutting_down = False
        self.oauth_cookie_ttl = 600.0
        self.cookie_secret = config.routing.cookieSecret or secrets.token_hex(32)
        self._tasks: list[asyncio.Task[Any]] = []
        self._backends_stamp: str | None = None
        self.started_at = time.time()
        self.in_flight = 0
        self._store_waiters = 0
        self.strict_groups = frozenset(g for g, c in config.groups.items() if c.fallback == "none")
        self._seen: dict[str, int] = {}

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        cfg = self.config
        self.store = await open_async_store(cfg)
        self.offload.start()
        for b in cfg.backends:  # the seed list: inserted once, then the API owns them
            try:
                await self.store.call("add_backend", Backend(
                    b.name, b.proxyTo, b.externalUrl, b.routingGroup or cfg.routing.defaultGroup, b.active))
            except DuplicateBackend:
                pass
        await self.sync_backends()
        self.writer = HistoryWriter(
            self.store, flush_interval=cfg.store.historyFlushInterval,
            batch_size=cfg.store.historyBatchSize, max_pending=cfg.store.historyMaxPending,
            retention=cfg.store.historyRetention)
        self.writer.start()
        self.rules.start()
        self.monitor.start()
        self.admission.start()
        from gateway.admin import log_auth_mode
        log_auth_mode(self)
        self._tasks.append(asyncio.get_running_loop().create_task(self._sync_loop()))
        log.info("gateway started: %d backend(s) in group(s) %s, rules %s, store %s",
                 len(self.registry.all()), ", ".join(sorted(self.registry.groups())) or "-",
                 ", ".join(cfg.routing.rules), _redact_url(cfg.store.url))

    async def stop(self) -> None:
        self.shutting_down = True
        for t in self._tasks:
            t.cancel()
        await self.monitor.stop()
        await self.admission.stop()
        self.rules.stop()
        if self.writer is not None:
            await self.writer.stop()
        if self.store is not None:
            await self.store.close()
        self.client.close()
        await self.offload.close()
        self.passwords.close()
        if self._monitor_http is not None:
            self._monitor_http.close()

    def reload_config(self) -> None:
        """SIGHUP: reload what can change safely at run time (today: the rules files)."""
        log.info("SIGHUP: reloading rules")
        self.rules.trigger()

    async def sync_backends(self) -> None:
        """Reload backends from the store when they changed (API calls in any process)."""
        assert self.store is not None
        stamp = await self.store.call("backends_stamp")
        if stamp != self._backends_stamp:
            backends = await self.store.call("list_backends")
            self.registry.replace(backends)
            self._backends_stamp = stamp

    async def _sync_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.store.syncInterval)
            try:
                self.refresh_gauges()  # every process keeps its metrics current, not only the scraped one
            except Exception:  # noqa: BLE001 - metrics must never stop the sync loop
                log.exception("cannot refresh metrics")
            try:
                await self.sync_backends()
                self.sticky.expire()
            except Exception as exc:  # the store may be down; routing goes on with what we have
                log.warning("cannot reload backends from the store: %s", exc)

    # -- routing -----------------------------------------------------------------------------

    def base_url(self, request: HTTPServerRequest) -> str:
        """The URL clients use to reach the gateway, for URIs written into responses."""
        if self.config.server.publicUrl:
            return self.config.server.publicUrl
        host = request.host
        if self.config.server.trustForwardedHeaders:
            host = request.headers.get("X-Forwarded-Host", host).split(",")[0].strip()
        return f"{request.protocol}://{host}"

    def groups_with_backends(self) -> set[str]:
        return {b.routingGroup for b in self.registry.all() if b.active}

    async def sql_facts(self, headers: HTTPHeaders, body: bytes) -> tuple[SqlFacts, str | None]:
        """SQL facts of a statement, computed off the event loop within ``routing.analysisTimeout``;
        the note says why they are unknown when the budget ran out."""
        sql, catalog, schema, prepared = sql_inputs(headers, body, self.config.routing.maxSqlBytes)
        return await self.offload.sql_facts(sql, catalog, schema, prepared,
                                            budget=self.config.routing.analysisTimeout)

    async def route_statement(self, headers: HTTPHeaders, body: bytes, remote_ip: str) -> Route:
        """``route`` for a new statement, with its SQL facts (when the rules use them) from
        ``sql_facts``: the event loop never parses a large statement."""
        ruleset = self.rules.current
        if ruleset is None or not ruleset.uses_sql:
            return self.route(headers, body, remote_ip)
        t0 = time.perf_counter()
        facts, note = await self.sql_facts(headers, body)
        route = self.route(headers, body, remote_ip, facts=facts, note=note)
        route.decision_seconds = time.perf_counter() - t0
        return route

    def route(self, headers: HTTPHeaders, body: bytes, remote_ip: str, *,
              facts: SqlFacts | None = None, note: str | None = None) -> Route:
        route = self._route(headers, body, remote_ip, facts)
        if note:
            route.note = note
            route.reason = f"{route.reason}; {note}" if route.reason else note
        return route

    def _route(self, headers: HTTPHeaders, body: bytes, remote_ip: str, facts: SqlFacts | None) -> Route:
        t0 = time.perf_counter()
        cfg = self.config.routing
        ruleset = self.rules.current
        ctx = build_context(headers, body, remote_ip,
                            analyze_sql=bool(ruleset is not None and ruleset.uses_sql),
                            max_sql_bytes=cfg.maxSqlBytes, facts=facts)
        decision = decide(ruleset, ctx, groups_with_backends=self.groups_with_backends(),
                          default_group=cfg.defaultGroup, allow_group_header=cfg.allowGroupHeader,
                          no_fallback_groups=self.strict_groups)
        user = ctx.get("user")
        if decision.reject is not None:
            return Route(None, [], reject=decision.reject, rule=decision.rule, reason=decision.reason,
                         user=user, context=ctx)
        group = decision.routing_group or cfg.defaultGroup
        reason = decision.reason
        available = self.registry.available(group)
        if not available and group != cfg.defaultGroup:
            if self.config.group(group).fallback == "none":
                return Route(group, [], rule=decision.rule, user=user, context=ctx,
                             reason=f"No healthy backend in routing group '{group}' "
                                    f"(strict isolation: this group does not fall back)")
            reason = f"{reason}; no healthy backend in '{group}', fell back to default group"
            group = cfg.defaultGroup
            available = self.registry.available(group)
        if not available:
            total = len(self.registry.in_group(group))
            why = (f"No healthy backend in routing group '{group}' "
                   f"({total} configured, none active and HEALTHY)" if total else
                   f"No backend is configured for routing group '{group}'")
            return Route(group, [], rule=decision.rule, reason=why, user=user, context=ctx)
        first = self.balancer.pick(available, self.registry.states, user)
        assert first is not None
        candidates = [first] + [b for b in available if b is not first]
        return Route(group, candidates, rule=decision.rule, reason=reason, user=user, context=ctx,
                     decision_seconds=time.perf_counter() - t0,
                     queue_priority=getattr(decision, "queue_priority", 0))

    def any_backend(self) -> Backend | None:
        """For requests tied to no query (/v1/info, the Trino UI): a backend of the default group."""
        group = self.config.routing.defaultGroup
        avail = self.registry.available(group) or [
            b for b in self.registry.all() if b.active and self.registry.state(b.name).health is Health.HEALTHY]
        return avail[0] if avail else None

    def statement_routed(self, handler: Any, backend: Backend, route: Route, rewriter: P.UriRewriter | None) -> None:
        qid = rewriter.query_id if rewriter is not None else None
        if qid is None or handler.get_status() != 200:
            return
        self.metrics.overhead.observe(route.decision_seconds)
        self._started(route, backend, qid, submitted_at=time.time(), queued_ms=None)
        ctx = route.context
        if not route_log.isEnabledFor(logging.INFO):
            return
        line = (f"query {qid} user={route.user} source={ctx.get('source')} "
                f"group={backend.routingGroup} backend={backend.name} rule={route.rule or '-'} "
                f"decision={route.decision_seconds * 1000:.3f}ms ({route.reason})")
        if not text_lines.info(route_log, line):
            route_log.info("%s", line,
                           extra={"event": "statement_routed", "query_id": qid, "user": route.user,
                                  "source": ctx.get("source"), "group": backend.routingGroup,
                                  "backend": backend.name, "rule": route.rule,
                                  "decision_ms": round(route.decision_seconds * 1000, 3),
                                  "reason": route.reason})

    def statement_dispatched(self, held: Any, backend: Backend, qid: str) -> None:
        """A query held at the gateway went to ``backend`` as ``qid``: count and record it."""
        self._started(held.route, backend, qid, submitted_at=held.enqueued,
                      queued_ms=int(held.waited * 1000))

    def _started(self, route: Route, backend: Backend, qid: str, *, submitted_at: float,
                 queued_ms: int | None) -> None:
        """A query now exists on ``backend``: balancer counts, metrics and its history row."""
        ctx = route.context
        self.balancer.note_routed(backend.name, route.user, self.registry.states)
        self.metrics.routed.labels(backend.routingGroup, backend.name, route.rule or "").inc()
        self.metrics.queries.started(qid)
        if self.writer is not None and self.config.store.historyEnabled:
            self.writer.add(HistoryRow(
                query_id=qid, user=route.user, source=ctx.get("source"),
                client_tags=list(ctx.get("clientTags") or ()), sql=ctx.get("query"),
                routing_group=backend.routingGroup, backend=backend.name, rule=route.history_rule,
                submitted_at=submitted_at, queued_ms=queued_ms))

    def query_finished(self, query_id: str, state: str, error: str | None) -> None:
        self.admission.finished(query_id)
        self.metrics.queries.ended(query_id)
        if self.writer is not None and self.config.store.historyEnabled:
            self.writer.update_state(query_id, state, error)

    # -- sticky routing ----------------------------------------------------------------------

    def learn(self, kind: str, key: str, backend: str) -> None:
        if self.sticky.get(kind, key) == backend:
            return
        self.sticky.put(kind, key, backend)
        if self.writer is not None:
            self.writer.add_sticky(kind, key, backend, time.time() + self.sticky.ttl)

    def forget(self, kind: str, key: str) -> None:
        self.sticky.discard(kind, key)

    async def owner(self, kind: str, key: str, headers: HTTPHeaders) -> str | None:
        """The backend owning a query/transaction/segment/exchange: memory, then probe, then store."""
        if kind == P.QUERY:
            self.admission.touch(key)       # a follow-up keeps its admission lease
        name = self.sticky.get(kind, key)
        if name is not None and self.registry.get(name) is not None:
            if kind == P.QUERY:
                self.metrics.queries.seen(key)  # a follow-up: the query is still in flight
            return name
        if kind == P.QUERY:
            name = await self._probe_query(key, headers)
        if name is None:
            name = await self._store_lookup(kind, key)
        if name is not None:
            self.sticky.put(kind, key, name)
            if kind == P.QUERY:
                self.metrics.queries.seen(key)
        return name

    async def _probe_query(self, query_id: str, headers: HTTPHeaders) -> str | None:
        """Ask every backend at once whether it knows the query (another replica or a restarted
        gateway took the POST); the owner answers 200, the others 404/410."""
        backends = self.registry.all()
        if not backends:
            return None
        probe_headers = {k: v for k, v in (("X-Trino-User", headers.get("X-Trino-User")),
                                           ("Authorization", headers.get("Authorization")))
                         if v}

        async def ask(b: Backend) -> str | None:
            sink = BufferSink(limit=0)
            h = HTTPHeaders(probe_headers)
            try:
                code = await self.client.fetch(b.proxyTo, "GET", f"/v1/query/{query_id}", h, None, sink,
                                               request_timeout=self.config.monitor.timeout)
            except BackendError:
                return None
            return b.name if code == 200 else None

        for name in await asyncio.gather(*(ask(b) for b in backends)):
            if name is not None:
                return name
        return None

    async def _store_lookup(self, kind: str, key: str) -> str | None:
        if self.store is None:
            return None
        # A mapping learned by another process reaches the store within a flush interval, so
        # wait that long for it; but only a few lookups wait at once, so a flood of made-up ids
        # costs one store read each instead of tying up the store thread.
        waiting = kind != P.QUERY and self._store_waiters < _MAX_STORE_WAITERS
        deadline = time.monotonic() + (2 * self.config.store.historyFlushInterval + 0.5 if waiting else 0)
        if waiting:
            self._store_waiters += 1
        try:
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
                await asyncio.sleep(0.1)
        finally:
            if waiting:
                self._store_waiters -= 1

    def refresh_gauges(self) -> None:
        """Copy monitor state into the backend gauges (called when /metrics is scraped)."""
        m = self.metrics
        for b in self.registry.all():
            st = self.registry.state(b.name)
            m.backend_health.labels(b.name, b.routingGroup).set(1 if st.health is Health.HEALTHY else 0)
            m.backend_active.labels(b.name, b.routingGroup).set(1 if b.active else 0)
            m.backend_queued.labels(b.name).set(st.queued)
            m.backend_running.labels(b.name).set(st.running)
        rs = self.rules.current
        m.set_ruleset(rs.version if rs is not None else None)
        m.rules_error.set(1 if self.rules.last_error else 0)
        w = self.writer
        if w is not None:  # counters follow the writer's own tallies
            for counter, attr in ((m.history_dropped, "dropped_rows"), (m.store_failures, "write_failures")):
                seen = self._seen.get(attr, 0)
                # history rows only: sticky mappings and state updates dropped alongside are not rows
                now = getattr(w, attr) + (w.rejected_rows if attr == "dropped_rows" else 0)
                if now > seen:
                    counter.inc(now - seen)
                    self._seen[attr] = now

    def note_forward_failure(self, backend: Backend, exc: BackendError) -> None:
        """Passive health: a backend we cannot reach takes no new queries until a probe says so."""
        if not exc.sent or exc.timeout:
            if self.registry.state(backend.name).health is not Health.UNHEALTHY:
                log.warning("backend %s marked UNHEALTHY after a failed forward: %s", backend.name, exc)
            self.registry.mark_unhealthy(backend.name, str(exc))


def _rules_explicit(config: Config) -> bool:
    return config.routing.rules != ["rules/"]


def _redact_url(url: str) -> str:
    return mask_credentials(url)


def make_app(gw: Gateway) -> tornado.web.Application:
    from gateway.proxy.handler import proxy_route
    from gateway.admin import routes as admin_routes
    from gateway.admission_http import HELD_PATH, HeldQueryHandler
    proxy = proxy_route(gw)
    # Statement submissions and result pages first: they are most requests, and matching them
    # against every admin route before the catch-all cost more than routing them (no admin or
    # held-query path lies under these two).
    handlers: list[Any] = [(r"/v1/statement(?:/executing/.*)?", proxy)]
    handlers += admin_routes(gw)
    handlers.append((HELD_PATH, HeldQueryHandler, {"gateway": gw}))
    handlers.append((r".*", proxy))
    from gateway.resources import resource_dir
    templates = str(resource_dir("templates"))
    return tornado.web.Application(
        handlers, cookie_secret=gw.cookie_secret, xsrf_cookies=False, compress_response=False,
        template_path=templates, log_function=gw.metrics.log_request)
