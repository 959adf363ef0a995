"""Wires the parts into one running gateway: store, registry, rules, monitor, proxy, API.

``Gateway`` owns the in-memory state the request path reads (registry, sticky map, current
ruleset) and the background tasks that keep it fresh (monitor, rules watcher, backend sync,
history writer). Only this module, the proxy handler and the runners (``runtime/serve.py``,
``sim/demo.py``) see the ``Gateway``: every other module gets the parts it uses (admission an
``AdmissionParts``; ``make_app`` hands the admin surface an ``AdminParts`` and the held-query
handler its four parts; the sampler and the resolver are built with theirs in ``start``).
tests/test_layout.py keeps it so.
"""
from __future__ import annotations

import asyncio
import logging
import os
import secrets
import time
from typing import TYPE_CHECKING, Any

import tornado.web
from tornado.httputil import HTTPHeaders, HTTPServerRequest

from gateway import protocol as P
from gateway.backends.state import Backend, Health, Registry
from gateway.config import Config
from gateway.metrics import Metrics
from gateway.logs import text_lines
from gateway.lifecycle import Lifecycle, Started
from gateway.proxy.client import BackendClient, BackendError
from gateway.proxy.follow import FollowUps
from gateway.proxy.forward import Forwarder
from gateway.routing.balancer import Balancer
from gateway.routing.owners import BackendProbe, OwnerLookup
from gateway.routing.context import sql_inputs
from gateway.routing.sql import SqlFacts
from gateway.runtime.offload import Offload, PasswordChecks
from gateway.limits import mask_credentials
from gateway.routing.reload import RulesWatcher
from gateway.routing.router import Route, Router
from gateway.routing.sticky import StickyMap
from gateway.routing.tokens import PREFIX, TokenKeys
from gateway.store.base import DuplicateBackend, HistoryRow
from gateway.store.process import ProcessStore
from gateway.store.writer import AsyncStore, HistoryWriter, StoreCalls
from gateway.backends.monitor import Monitor
from gateway.admission.control import Admission
from gateway.admission.parts import AdmissionParts
from gateway.runtime.serve import backend_ssl_context
from gateway.backends.unfinished import UnfinishedQueries
from gateway.metrics_history import MetricsSampler, instance_name
from gateway.backends.resolver import Resolver
from gateway.runtime.overload import EXCUSED, MARK, Active, LoopLag, failure_counts, forward_verdict, shed_reason

if TYPE_CHECKING:
    from gateway.admin.parts import AdminParts

log = logging.getLogger("gateway")
route_log = logging.getLogger("gateway.routing")

__all__ = ["Gateway", "Route", "make_app", "open_async_store"]


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
    """Composition: builds the parts from the configuration and wires them together.

    The request path uses narrow parts: ``router`` (rules, fallbacks, balancer, explain),
    ``owners`` (who owns a query id a client brought), ``forwarder`` (the one way to a backend),
    ``lifecycle`` (started / seen / finished events for history, metrics, admission) and
    ``tokens`` (the routing-token keys shared by every worker and replica)."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.registry = Registry()
        self.sticky = StickyMap(ttl=config.routing.stickyTtl)
        self.metrics = Metrics()
        backend_tls = backend_ssl_context(config.server)  # once: loading CAs is slow
        # How late this worker's event loop runs: separates "the backend did not answer" from
        # "we did not get to it" (gateway/runtime/overload.py) and drives shedding of new statements.
        self.loop_lag = LoopLag(observe=self.metrics.loop_lag.observe)
        self.client = BackendClient(connect_timeout=config.server.backendConnectTimeout,
                                    request_timeout=config.server.backendRequestTimeout,
                                    ssl_context=backend_tls,
                                    on_connect=self.metrics.backend_connects.inc)
        self.balancer = Balancer(config.routing.policy)
        self.rules = RulesWatcher(
            config.routing.rules, missing_ok=not config.rules_configured,
            on_change=lambda rs: self.metrics.rule_reloads.labels("ok").inc(),
            on_error=lambda err: self.metrics.rule_reloads.labels("error").inc())
        self.router = Router(config, self.registry, self.balancer, lambda: self.rules.current)
        self.forwarder = Forwarder(self.client, x_forwarded=config.server.xForwardedFor,
                                   trust_forwarded=config.server.trustForwardedHeaders,
                                   on_failure=self.note_forward_failure, timing=self.metrics,
                                   lag=self.loop_lag, retry_for=config.server.backendRequestTimeout,
                                   healthy=self._healthy, stopping=lambda: self.shutting_down)
        mon = config.monitor
        self.owners = OwnerLookup(
            self.sticky, self.registry,
            probe=BackendProbe(self.client, self.registry, timeout=mon.timeout,
                               username=mon.username, password=mon.password),
            count=self.metrics.owner_lookup, flush_interval=config.store.historyFlushInterval)
        self.lifecycle = Lifecycle()
        self.monitor = Monitor(self.registry, config.monitor, own_thread=True,
                               http_defaults=None if backend_tls is None else {"ssl_options": backend_tls})
        self.monitor.lag = self.loop_lag
        self.monitor.on_excused = lambda: self.metrics.health_hints.labels("probe", EXCUSED).inc()
        self.admission = Admission(AdmissionParts(
            config=config, registry=self.registry, balancer=self.balancer, metrics=self.metrics,
            client=self.client, forwarder=self.forwarder, lifecycle=self.lifecycle,
            store=lambda: self.store, tokens=lambda: self.tokens,
            route_statement=self.route_statement, statement_refused=self.statement_refused,
            learn=self.learn, taught=self.taught))
        self.active = Active()               # requests proxied now (handler and fast path)
        self.follow_ups = FollowUps(
            tokens=lambda: self.tokens, registry=self.registry, metrics=self.metrics,
            lifecycle=self.lifecycle, forwarder=self.forwarder, active=self.active,
            base_for=self.base_for, taught=self.taught)
        self.offload = Offload()              # SQL analysis and rules checks, with a time budget
        self.passwords = PasswordChecks()     # PBKDF2 off the event loop
        self.monitor.on_round(lambda *_: self.admission.monitor_round())
        self.lifecycle.on_started(self._record_started)
        self.lifecycle.on_seen(self._query_seen)
        self.lifecycle.on_finished(self._record_finished)
        self.store: StoreCalls | None = None
        self._search_store: StoreCalls | None = None
        self._search_opening: asyncio.Lock | None = None
        self.writer: HistoryWriter | None = None
        self.shutting_down = False
        self.oauth_cookie_ttl = 600.0
        # Shared by every worker and replica: from the configuration, else from the store (start()).
        self.cookie_secret = config.routing.cookieSecret or ""
        self.tokens: TokenKeys | None = (TokenKeys.from_text(config.routing.tokenKey,
                                                             config.routing.previousTokenKeys)
                                         if config.routing.tokenKey else None)
        self._tasks: list[asyncio.Task[Any]] = []
        self._backends_stamp: str | None = None
        self.started_at = time.time()
        self._seen: dict[str, int] = {}
        # Queries routed and not seen finishing, per backend, from the shared history.
        self.unfinished = UnfinishedQueries(window=config.store.historyRetention)
        # Built in start(), once the store and the history writer exist.
        self.sampler: MetricsSampler | None = None
        self.resolver: Resolver | None = None

    @property
    def no_forwarded(self) -> set[str]:
        """Backends that answered 406 to X-Forwarded-* (the forwarder learns it)."""
        return self.forwarder.no_forwarded

    @property
    def strict_groups(self) -> frozenset[str]:
        return self.router.strict_groups

    async def _first_monitor_round(self) -> None:
        """Start serving once this process knows which backends are healthy (or the first
        round overran its probe timeout): before it, every statement got NO_NODES_AVAILABLE.
        With two workers the second worker's first statements failed while the first worker
        answered (tests/admin/test_metrics_page.py under CI)."""
        if not await self.monitor.wait_first_round(self.config.monitor.timeout + 2.0):
            log.warning("serving before the first monitor round finished (over %.1fs): new "
                        "statements may find no healthy backend until it does",
                        self.config.monitor.timeout + 2.0)

    async def _shared_secrets(self) -> None:
        """Keys every process of the deployment must agree on: configured, or created once
        and kept in the store (the first process to start stores its candidate)."""
        assert self.store is not None
        now = time.time()
        if self.tokens is None:
            key = await self.store.call("shared_secret", "routing-token-key", secrets.token_hex(32), now)
            prev = self.config.routing.previousTokenKeys
            self.tokens = TokenKeys.from_text(key, [p for p in prev if p != key])
        if not self.cookie_secret:
            self.cookie_secret = await self.store.call("shared_secret", "oauth-cookie-key",
                                                       secrets.token_hex(32), now)

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        cfg = self.config
        self.loop_lag.start()
        self.store = await open_async_store(cfg)
        await self._shared_secrets()
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
        self.owners.store, self.owners.writer = self.store, self.writer
        self.rules.start()
        if not cfg.rules_configured and not any(os.path.exists(p) for p in cfg.routing.rules):
            log.info("no rules: the default folder %s does not exist in %s; every query goes to "
                     "routing.defaultGroup '%s' (or the X-Trino-Routing-Group it names)",
                     ", ".join(cfg.routing.rules), os.getcwd(), cfg.routing.defaultGroup)
        self.monitor.start()
        await self._first_monitor_round()
        self.admission.start()
        self.sampler = MetricsSampler(self.store, self.metrics, instance_name(cfg.server.port),
                                      cfg.store.metricsInterval, cfg.store.metricsRetention,
                                      refresh_gauges=self.refresh_gauges)
        self.sampler.start()
        self.resolver = Resolver(cfg.store.resolveAfter, store=self.store, writer=self.writer,
                                 registry=self.registry, client=self.client, monitor=cfg.monitor)
        if cfg.store.historyEnabled:
            self.resolver.start()
        from gateway.admin import log_auth_mode
        log_auth_mode(cfg)
        self._tasks.append(asyncio.get_running_loop().create_task(self._sync_loop()))
        log.info("gateway started: %d backend(s) in group(s) %s, rules %s, store %s",
                 len(self.registry.all()), ", ".join(sorted(self.registry.groups())) or "-",
                 ", ".join(cfg.routing.rules), _redact_url(cfg.store.url))

    async def stop(self) -> None:
        self.shutting_down = True
        for t in self._tasks:
            t.cancel()
        await self.monitor.stop()
        self.loop_lag.stop()
        await self.admission.stop()
        if self.sampler is not None:
            await self.sampler.stop()
        if self.resolver is not None:
            await self.resolver.stop()
        self.rules.stop()
        if self.writer is not None:
            await self.writer.stop()
        if self._search_store is not None and self._search_store is not self.store:
            await self._search_store.close()
        if self.store is not None:
            await self.store.close()
        self.client.close()
        await self.offload.close()
        self.passwords.close()

    def reload_config(self) -> None:
        """SIGHUP: reload what can change safely at run time (today: the rules files)."""
        log.info("SIGHUP: reloading rules")
        self.rules.trigger()

    async def search_store(self) -> StoreCalls:
        """The store for history searches and downloads: a store process of their own, opened
        on first use, so a slow search waits only behind other searches, never in front of the
        dashboard's, the clusters page's or the history writer's calls (the store process
        serves one call at a time). An in-process store (in-memory SQLite, ``store.process:
        false``) is shared."""
        assert self.store is not None
        if not isinstance(self.store, ProcessStore):
            return self.store
        if self._search_store is None:
            if self._search_opening is None:
                self._search_opening = asyncio.Lock()
            async with self._search_opening:
                if self._search_store is None:
                    cfg = self.config
                    self._search_store = await ProcessStore.open(
                        cfg.store.url, pool_size=cfg.store.poolSize,
                        log_config={"level": cfg.logging.level, "format": cfg.logging.format})
        return self._search_store

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
            if self.store is not None and self.config.store.historyEnabled:
                await self.unfinished.refresh(self.store)
            try:
                await self.sync_backends()
                self.sticky.expire()
            except Exception as exc:  # the store may be down; routing goes on with what we have
                log.warning("cannot reload backends from the store: %s", exc)

    # -- routing -----------------------------------------------------------------------------

    def base_url(self, request: HTTPServerRequest) -> str:
        """The URL clients use to reach the gateway, for URIs written into responses."""
        return self.base_for(request.protocol, request.headers)

    def base_for(self, protocol: str, headers: HTTPHeaders) -> str:
        """``base_url`` from a request's scheme and headers (Tornado's ``request.host``: the
        Host header, else 127.0.0.1)."""
        if self.config.server.publicUrl:
            return self.config.server.publicUrl
        host = headers.get("Host") or "127.0.0.1"
        if self.config.server.trustForwardedHeaders:
            host = headers.get("X-Forwarded-Host", host).split(",")[0].strip()
        return f"{protocol}://{host}"

    def groups_with_backends(self) -> set[str]:
        return self.router.groups_with_backends()

    async def sql_facts(self, headers: HTTPHeaders, body: bytes) -> tuple[SqlFacts, str | None]:
        """SQL facts of a statement, computed off the event loop within ``routing.analysisTimeout``;
        the note says why they are unknown when the budget ran out."""
        sql, catalog, schema, prepared = sql_inputs(headers, body, self.config.routing.maxSqlBytes)
        return await self.offload.sql_facts(sql, catalog, schema, prepared,
                                            budget=self.config.routing.analysisTimeout)

    async def route_statement(self, headers: HTTPHeaders, body: bytes, remote_ip: str, **kw: Any) -> Route:
        """``route`` for a new statement, with its SQL facts (when the rules use them) from
        ``sql_facts``: the event loop never parses a large statement."""
        ruleset = self.rules.current
        if ruleset is None or not ruleset.uses_sql:
            return self.router.route(headers, body, remote_ip, **kw)
        t0 = time.perf_counter()
        facts, note = await self.sql_facts(headers, body)
        route = self.router.route(headers, body, remote_ip, facts=facts, note=note, **kw)
        route.decision_seconds = time.perf_counter() - t0
        return route

    def route(self, headers: HTTPHeaders, body: bytes, remote_ip: str, **kw: Any) -> Route:
        return self.router.route(headers, body, remote_ip, **kw)

    def any_backend(self) -> Backend | None:
        return self.router.any_backend()

    # -- lifecycle subscribers -------------------------------------------------------------

    def _record_started(self, ev: Started) -> None:
        """A query now exists on a backend: balancer counts, metrics, history row, route log."""
        route, backend, qid = ev.route, ev.backend, ev.query_id
        ctx = route.context
        if not route.pinned:
            self.balancer.note_routed(backend.name, route.user, self.registry.states)
            if ev.queued_ms is None:
                self.metrics.overhead.observe(route.decision_seconds)
        self.metrics.statement_routed(backend.routingGroup, backend.name, route.rule)
        self.metrics.queries.started(qid)
        if self.writer is not None and self.config.store.historyEnabled:
            self.writer.add(HistoryRow(
                query_id=qid, user=route.user, source=ctx.get("source"),
                client_tags=tuple(ctx.get("clientTags") or ()), sql=ctx.get("query"),
                routing_group=backend.routingGroup, backend=backend.name, rule=route.history_rule,
                submitted_at=ev.submitted_at, queued_ms=ev.queued_ms))
        if ev.queued_ms is not None or not route_log.isEnabledFor(logging.INFO):
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

    def _query_seen(self, query_id: str) -> None:
        self.admission.touch(query_id)       # a follow-up keeps its admission lease
        self.metrics.queries.seen(query_id)  # and the query counts as in flight

    def statement_refused(self, route: Route | None, query_id: str, state: str, message: str, *,
                          submitted_at: float | None = None) -> None:
        """A statement the gateway answered itself without a cluster's query (a reject rule,
        no backend, admission limits: ``REJECTED``; maxQueueWait: ``QUEUED_TIMEOUT``; a held
        query cancelled or abandoned by its client: ``CANCELED``): its history row, final at
        once, with the reason as the error."""
        if self.writer is None or not self.config.store.historyEnabled:
            return
        ctx = route.context if route is not None else {}
        now = time.time()
        self.writer.add(HistoryRow(
            query_id=query_id, user=route.user if route is not None else None,
            source=ctx.get("source"), client_tags=tuple(ctx.get("clientTags") or ()),
            sql=ctx.get("query"), routing_group=route.group if route is not None else None,
            backend=None, rule=route.history_rule if route is not None else None,
            submitted_at=submitted_at if submitted_at is not None else now,
            final_state=state, error=message, finished_at=now))

    def _record_finished(self, query_id: str, state: str, error: str | None) -> None:
        self.admission.finished(query_id)
        self.metrics.queries.ended(query_id)
        if self.writer is not None and self.config.store.historyEnabled:
            self.writer.update_state(query_id, state, error, time.time())

    def query_finished(self, query_id: str, state: str, error: str | None) -> None:
        self.lifecycle.finished(query_id, state, error)

    # -- sticky routing (id-keyed; token-carrying follow-ups never get here) -----------------

    def learn(self, kind: str, key: str, backend: str) -> None:
        self.owners.learn(kind, key, backend)

    def forget(self, kind: str, key: str) -> None:
        self.owners.forget(kind, key)

    def taught(self, response: Any, backend: str) -> None:
        """Apply what a response's headers taught (``exchange.ResponseHeaders``)."""
        for kind, key in response.learn:
            self.owners.learn(kind, key, backend)
        for kind, key in response.forget:
            self.owners.forget(kind, key)

    async def owner(self, kind: str, key: str, headers: HTTPHeaders) -> str | None:
        """The backend owning a query/transaction/segment/exchange a client named by id."""
        name = await self.owners.owner(kind, key, headers)
        if name is not None and kind == P.QUERY:
            self.lifecycle.seen(key)
        return name

    def refresh_gauges(self) -> None:
        """Copy monitor state into the backend gauges (called when /metrics is scraped)."""
        m = self.metrics
        for b in self.registry.all():
            st = self.registry.state(b.name)
            m.backend_health.labels(b.name, b.routingGroup).set(1 if st.health is Health.HEALTHY else 0)
            m.backend_active.labels(b.name, b.routingGroup).set(1 if b.active else 0)
            # NaN, not 0, while the monitor cannot count (info-api, noop): 0 would be a lie.
            m.backend_queued.labels(b.name).set(st.queued if st.counts_known else float("nan"))
            m.backend_running.labels(b.name).set(st.running if st.counts_known else float("nan"))
            n = self.unfinished.of(b.name)
            m.backend_unfinished.labels(b.name).set(float("nan") if n is None else n)
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

    def _healthy(self, backend: Backend) -> bool:
        """Whether the monitor still takes ``backend`` for HEALTHY (a failed connect is tried
        again only then)."""
        return self.registry.state(backend.name).health is Health.HEALTHY

    def note_forward_failure(self, backend: Backend, exc: BackendError, elapsed: float = 0.0,
                             lag: float = 0.0) -> str | None:
        """Passive health: a forward that could not connect or timed out is a hint, the probe it
        triggers the verdict (gateway/runtime/overload.py ``forward_verdict``). It marks the backend
        UNHEALTHY only when another backend of its group can take its new queries, and never
        when the event loop stalled during the attempt (``lag`` of ``elapsed`` seconds).
        The verdict (``gateway.runtime.overload.forward_verdict``), or None when health is not concerned."""
        if exc.sent and not exc.timeout:
            return None   # the backend answered and then failed: about that request, not its health
        budget = self.client.request_timeout if exc.sent else self.client.connect_timeout
        counts = failure_counts(timeout=exc.timeout, elapsed=elapsed, lag=lag, budget=budget)
        peers = sum(1 for b in self.registry.available(backend.routingGroup) if b.name != backend.name)
        verdict = forward_verdict(counts=counts, healthy_peers=peers)
        if verdict == EXCUSED:
            self.metrics.health_hints.labels("forward", verdict).inc()
            log.info("backend %s: a forward failed while the event loop stalled %.2fs of %.2fs; "
                     "not counted: %s", backend.name, lag, elapsed, exc)
            return verdict
        if self.registry.state(backend.name).health is not Health.HEALTHY:
            return None   # already out of routing: the monitor brings it back
        self.metrics.health_hints.labels("forward", verdict).inc()
        if verdict == MARK:
            log.warning("backend %s marked UNHEALTHY after a failed forward (probing it now): %s",
                        backend.name, exc)
            self.registry.mark_unhealthy(backend.name, str(exc))
        else:
            log.warning("backend %s: a forward failed; it is the last HEALTHY backend of group "
                        "'%s', so it stays HEALTHY until the probe started now says otherwise: %s",
                        backend.name, backend.routingGroup, exc)
        self.monitor.probe_soon(backend.name)
        return verdict

    @property
    def in_flight(self) -> int:
        """Requests this worker is proxying now."""
        return self.active.n

    def shed(self) -> str | None:
        """Why a new statement is refused now because this worker is overloaded, or None."""
        s = self.config.server
        return shed_reason(lag=self.loop_lag.recent(), in_flight=self.in_flight,
                           max_lag=s.shedLoopLag, max_in_flight=s.shedInFlight)


def _redact_url(url: str) -> str:
    return mask_credentials(url)


# The application's first rules, both the proxy: statement submissions and result pages are
# most requests, and matching them against every admin route before the catch-all cost more
# than routing them (no admin or held-query path lies under these).
HOT_RULES = (r"/v1/statement(?:/executing/.*)?", PREFIX + ".*")


def admin_parts(gw: Gateway) -> AdminParts:
    """What the admin surface may use of a started gateway (the store is open); one per
    process, so its sessions (login limiter, random secret) are shared by every handler."""
    from gateway.admin.parts import AdminParts
    from gateway.admin.session import SessionManager
    cfg = gw.config
    return AdminParts(
        config=cfg, registry=gw.registry, store=gw.store, search_store=gw.search_store,
        unfinished=gw.unfinished, rules=gw.rules, router=gw.router, sql_facts=gw.sql_facts,
        offload=gw.offload, passwords=gw.passwords, monitor=gw.monitor, queue=gw.admission,
        metrics=gw.metrics, refresh_gauges=gw.refresh_gauges,
        metrics_instance=instance_name(cfg.server.port),
        shutting_down=lambda: gw.shutting_down, sessions=SessionManager(cfg.auth))


def make_app(gw: Gateway) -> tornado.web.Application:
    """The application of a started gateway (``await gw.start()`` first: the store and the
    shared keys exist from then on)."""
    from gateway.proxy.handler import proxy_route
    from gateway.admin import routes as admin_routes
    from gateway.admission.held import HELD_PATH, HeldQueryHandler
    proxy = proxy_route(gw)
    handlers: list[Any] = [(pattern, proxy) for pattern in HOT_RULES]
    handlers += admin_routes(admin_parts(gw))
    handlers.append((HELD_PATH, HeldQueryHandler, {"admission": gw.admission, "registry": gw.registry,
                                                   "tokens": gw.tokens, "base_url": gw.base_url}))
    handlers.append((r".*", proxy))
    from gateway.resources import resource_dir
    templates = str(resource_dir("templates"))
    app = tornado.web.Application(
        handlers, cookie_secret=gw.cookie_secret, xsrf_cookies=False, compress_response=False,
        template_path=templates, log_function=gw.metrics.log_request)
    # The same first rules, taken by the HTTP server without walking the rule list
    # (gateway/runtime/http_server.py FastRoute; the list stays for Tornado's own server).
    from gateway.runtime.http_server import FastRoute
    app.fast_route = FastRoute(hot_path, proxy)  # type: ignore[attr-defined]
    # Token follow-ups (result-page polls) from the parsed head to the forwarder
    # (gateway/proxy/follow.py); what it does not take goes the way above.
    app.follow_ups = gw.follow_ups  # type: ignore[attr-defined]
    return app


def hot_path(target: str) -> bool:
    """Does a request target fall under ``HOT_RULES`` (result pages, token follow-ups, new
    statements)? Only where their regular expressions match (a line break, which ``.*`` does
    not cross, sends a target the long way; tests/test_fast_route.py)."""
    path = target.partition("?")[0]
    if "\n" in path:
        return False
    return path.startswith(PREFIX) or path == "/v1/statement" or path.startswith("/v1/statement/executing/")
