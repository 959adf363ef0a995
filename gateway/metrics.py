"""Prometheus metrics of the gateway (served at /metrics), and the per-request bookkeeping
behind them. docs/metrics.md lists every metric with what it measures.

With ``server.workers > 1`` every process writes to files in a shared folder
(prometheus-client's multiprocess mode, ``PROMETHEUS_MULTIPROC_DIR``; gateway/metrics_shared.py
writes them), and /metrics aggregates them, so a scrape that lands on any worker sees the whole
gateway.

Per request the proxy handler calls ``request_started`` and ``request_done``; Tornado calls
``log_request`` (the application's ``log_function``) when any response finishes. A small record
in a context variable ties these together without the handler passing it around: Tornado runs
every request in its own asyncio task, and each task has its own copy of the context. A pooled
backend connection finishes responses for whichever request uses it now: it calls the sink in
that exchange's context (``_Conn.start`` copies the caller's), never in its transport's own
(the request that happened to open it), and the handler also carries the record the forwarder
(``backend_start``) left on it; a task that outlives its request finds the record marked done.
A token follow-up of the fast path runs in no task of its own (gateway/proxy/follow.py): it
holds its record from the start (``follow_up_started``) and passes it along.
"""
from __future__ import annotations

import contextvars
import logging
import os
import time
from dataclasses import dataclass
from typing import Any, Callable

from prometheus_client import (CollectorRegistry, generate_latest, CONTENT_TYPE_LATEST)
from prometheus_client import Counter as _LibCounter, Gauge as _LibGauge, Histogram as _LibHistogram
from prometheus_client import multiprocess

from gateway.metrics_plain import PlainCounter, PlainGauge, PlainHistogram
from gateway.metrics_shared import SharedCounter, SharedGauge, SharedHistogram

__all__ = ["Metrics", "ActiveQueries", "request_kind", "METRIC_NAMES", "QUERY_IDLE_SECONDS"]

error_log = logging.getLogger("gateway.errors")

_LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                    0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

_GC_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)

# A query with no request for this long is taken as abandoned by its client (clients poll
# continuously while a query runs; Trino answers a poll within about a second). It bounds how
# long an abandoned query can hold up a graceful shutdown.
QUERY_IDLE_SECONDS = 5.0

# The protocol's request kinds (gateway.protocol) that go to the backend owning something.
_FOLLOW_UP_KINDS = frozenset({"query", "spool", "oauth", "oauth-initiate", "oauth-callback"})


def request_kind(protocol_kind: str | None, path: str) -> str:
    """The ``kind`` label: statement, follow-up, ui (Trino's web UI through the gateway),
    other (proxied, tied to no query) or admin (the gateway's own pages, API, health, metrics)."""
    if protocol_kind is None:
        return "admin"
    if path.startswith("/ui/") or path == "/ui":
        return "ui"
    if protocol_kind == "statement":
        return "statement"
    if protocol_kind in _FOLLOW_UP_KINDS:
        return "follow-up"
    return "other"


_SHED = "shed: the worker is overloaded"


@dataclass(slots=True)
class _Request:
    """What one proxied request did, filled in as it goes."""
    protocol_kind: str
    backend_seconds: float = 0.0      # time inside BackendClient.fetch (connect, send, relay)
    forwarded: bool = False
    backend_answered: bool = False    # the status sent to the client came from a backend
    backend_error: str | None = None
    failure: str | None = None        # why the gateway failed a statement itself
    label: str | None = None
    counted: bool = False
    done: bool = False                # request_done ran: the record is no longer anyone's


_current: contextvars.ContextVar[_Request | None] = contextvars.ContextVar("gateway_request", default=None)


def _mine() -> _Request | None:
    """The current request's record, while that request is being served.

    Tasks started while serving a request inherit its context; one that outlives the request
    finds the record done. A backend connection calls its sink in the context of the exchange
    it serves (gateway/proxy/client.py ``_Conn.start``), not in that of the request that
    opened it.
    """
    rec = _current.get()
    return rec if rec is not None and not rec.done else None


class ActiveQueries:
    """Queries this process routed or relayed whose final state it has not seen yet.

    Feeds the in-flight queries gauge (queries *routed* here) and the graceful shutdown, which
    waits until every query this process knows is finished. A query with no request for
    ``idle`` seconds is forgotten: its client is gone, or it polls through another process.
    """

    def __init__(self, idle: float = QUERY_IDLE_SECONDS, gauge: Any = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.idle = idle
        self._gauge = gauge
        self._clock = clock
        # query id -> last request seen; oldest first (each request moves its query to the end),
        # so a sweep reads only the queries it forgets and the first one it keeps
        self._last: dict[str, float] = {}
        self._owned: set[str] = set()         # routed by this process (counted in the gauge)
        self._swept = 0.0

    def started(self, query_id: str) -> None:
        if query_id not in self._owned:
            self._owned.add(query_id)
            if self._gauge is not None:
                self._gauge.inc()
        self.seen(query_id)

    def seen(self, query_id: str) -> None:
        last = self._last
        if query_id in last:
            del last[query_id]   # (to the end: see _last)
        now = last[query_id] = self._clock()
        if now - self._swept >= 1.0:
            self.sweep()

    def ended(self, query_id: str) -> None:
        self._last.pop(query_id, None)
        self._disown(query_id)

    def live(self) -> int:
        """How many queries are still in flight (after forgetting idle ones)."""
        self.sweep()
        return len(self._last)

    def sweep(self) -> None:
        now = self._clock()
        self._swept = now
        idle = []
        for qid, t in self._last.items():
            if now - t <= self.idle:
                break   # seen recently, and so was every query after it
            idle.append(qid)
        for qid in idle:
            del self._last[qid]
            self._disown(qid)

    def _disown(self, query_id: str) -> None:
        if query_id in self._owned:
            self._owned.discard(query_id)
            if self._gauge is not None:
                self._gauge.dec()


class Metrics:
    """All gateway metrics in one place; methods are cheap enough for the request path.

    In one process the metrics are plain numbers exported when scraped
    (gateway/metrics_plain.py: no lock per update); with several workers the same numbers are
    also written to this worker's files of prometheus-client's multiprocess mode
    (gateway/metrics_shared.py: no lock or pid check per update), which /metrics reads back."""

    def __init__(self, *, plain: bool | None = None, shared: bool = True) -> None:
        """``plain``: plain numbers (default: unless in multiprocess mode, where they cannot be).
        ``shared``: in multiprocess mode, the numbers written straight to this worker's files
        (gateway/metrics_shared.py); False: prometheus-client's own multiprocess values."""
        self.multiprocess = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
        reg = None if self.multiprocess else CollectorRegistry()
        # In multiprocess mode nothing is read through a registry (render reads the files).
        kw = {"registry": reg}
        self._registry = reg
        if plain is None:
            plain = not self.multiprocess
        elif plain and self.multiprocess:
            raise ValueError("plain metrics cannot be shared between worker processes")
        if plain:
            Counter, Gauge, Histogram = PlainCounter, PlainGauge, PlainHistogram
        elif self.multiprocess and shared:
            Counter, Gauge, Histogram = SharedCounter, SharedGauge, SharedHistogram
        else:
            Counter, Gauge, Histogram = _LibCounter, _LibGauge, _LibHistogram
        live = {"multiprocess_mode": "livesum"} if self.multiprocess else {}
        mx = {"multiprocess_mode": "max"} if self.multiprocess else {}
        self.requests = Counter("trino_gateway_requests_total",
                                "Client requests by kind (statement, follow-up, ui, other, admin) "
                                "and HTTP status", ["kind", "status"], **kw)
        self.latency = Histogram("trino_gateway_request_seconds",
                                 "Whole request time, from the request to the end of the response, "
                                 "by kind (includes the backend's time)",
                                 ["kind"], buckets=_LATENCY_BUCKETS, **kw)
        self.proxy_overhead = Histogram(
            "trino_gateway_proxy_overhead_seconds",
            "Gateway time per forwarded request: the whole request time minus the time spent "
            "connecting to the backend, waiting for it and relaying its answer", ["kind"],
            buckets=_LATENCY_BUCKETS, **kw)
        self.overhead = Histogram("trino_gateway_statement_decision_seconds",
                                  "Gateway time to route a new statement (context, rules, balancer)",
                                  buckets=_LATENCY_BUCKETS, **kw)
        self.routed = Counter("trino_gateway_statements_routed_total",
                              "Statements routed, by routing group, backend and rule",
                              ["group", "backend", "rule"], **kw)
        self.rejects = Counter("trino_gateway_statements_rejected_total",
                               "Statements refused by a reject rule", ["rule"], **kw)
        self.failures = Counter("trino_gateway_statement_failures_total",
                                "Statements the gateway answered with a failure itself, by reason",
                                ["reason"], **kw)
        self.in_flight = Gauge("trino_gateway_requests_in_flight", "Requests being proxied now",
                               **live, **kw)
        self.queries_in_flight = Gauge(
            "trino_gateway_queries_in_flight",
            "Queries routed by the gateway whose final state it has not seen yet", **live, **kw)
        self.backend_health = Gauge("trino_gateway_backend_healthy",
                                    "1 if the backend is HEALTHY", ["backend", "group"], **mx, **kw)
        self.backend_active = Gauge("trino_gateway_backend_active",
                                    "1 if the backend takes new queries (not drained)",
                                    ["backend", "group"], **mx, **kw)
        self.backend_queued = Gauge("trino_gateway_backend_queued_queries",
                                    "Queued queries the monitor saw", ["backend"], **mx, **kw)
        self.backend_running = Gauge("trino_gateway_backend_running_queries",
                                     "Running queries the monitor saw", ["backend"], **mx, **kw)
        self.backend_unfinished = Gauge(
            "trino_gateway_backend_unfinished_queries",
            "Queries the gateway routed to the backend and has not seen finish (from the shared "
            "query history; all workers and replicas)", ["backend"], **mx, **kw)
        self.rule_reloads = Counter("trino_gateway_rule_reloads_total",
                                    "Rules reloads by outcome (each worker process reloads)",
                                    ["outcome"], **kw)
        self.ruleset_info = Gauge("trino_gateway_ruleset_loaded",
                                  "1 for the loaded ruleset version", ["version"], **mx, **kw)
        self.rules_error = Gauge("trino_gateway_rules_error",
                                 "1 while the rules files on disk do not load", **mx, **kw)
        self.store_failures = Counter("trino_gateway_store_write_failures_total",
                                      "Failed store writes (retried)", **kw)
        self.history_dropped = Counter("trino_gateway_history_rows_dropped_total",
                                       "History rows dropped after the store stayed down", **kw)
        self.admission_queued = Gauge("trino_gateway_admission_queued_queries",
                                      "Queries held in the gateway queue, by routing group",
                                      ["group"], **mx, **kw)
        self.admission_wait = Histogram("trino_gateway_admission_wait_seconds",
                                        "Time held queries waited before dispatch", ["group"],
                                        buckets=(0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800), **kw)
        self.admission_dispatched = Counter("trino_gateway_admission_dispatched_total",
                                            "Held queries sent to a backend", ["group"], **kw)
        self.admission_rejected = Counter("trino_gateway_admission_rejected_total",
                                          "Statements refused by admission control, by limit",
                                          ["group", "limit"], **kw)
        self.admission_dropped = Counter("trino_gateway_admission_dropped_total",
                                         "Held queries whose client stopped polling", ["group"], **kw)
        self.owner_lookups = Counter(
            "trino_gateway_owner_lookups_total",
            "Follow-ups routed to the backend owning their query, segment, transaction or OAuth2 "
            "exchange, by how the owner was found: token (from the URI, no lookup), memory, probe "
            "(asking every backend), store, none (not found)", ["source"], **kw)
        self.loop_lag = Histogram(
            "trino_gateway_event_loop_lag_seconds",
            "How late this worker's event loop ran a timer due every 50 ms (time it was busy or "
            "stalled); sustained values near server.shedLoopLag mean the worker is overloaded",
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5), **kw)
        self.shed = Counter("trino_gateway_shed_total",
                            "New statements refused with 429 + Retry-After because this worker "
                            "was overloaded, by reason (loop-lag, in-flight)", ["reason"], **kw)
        # Also counted on the monitor's probe thread: a locked prometheus-client counter always.
        self.health_hints = _LibCounter(
            "trino_gateway_health_hints_total",
            "Forward failures and probe timeouts by what they did to the backend's health: mark "
            "(UNHEALTHY, others take the queries), probe (last HEALTHY backend of its group: probed "
            "at once instead), excused (the event loop stalled during the attempt: not counted)",
            ["source", "verdict"], **kw)
        self._owner_sources: dict[str, Any] = {}
        self._shed_logged = float("-inf")
        self._shed_since_log = 0
        self.gc_pauses = Histogram(
            "trino_gateway_gc_pause_seconds",
            "Pauses of Python's cyclic garbage collector (every request of the worker waits), by "
            "generation (2: full collections)", ["generation"], buckets=_GC_BUCKETS, **kw)
        self._gc_children: dict[int, Any] = {}
        self.backend_connects = Counter(
            "trino_gateway_backend_connects_total",
            "New connections opened to backends for forwarding (a pooled connection reused is not "
            "counted)", **kw)
        self.queries = ActiveQueries(gauge=self.queries_in_flight)
        self._ruleset_version: str | None = None
        self._kinds: dict[tuple[str, str], Any] = {}
        self._overheads: dict[str, Any] = {}
        self._routed: dict[tuple[str, str, str], Any] = {}

    # -- the request path (proxy handler) ----------------------------------------------------

    def request_started(self, kind: str) -> None:
        _current.set(self.follow_up_started(kind))

    def follow_up_started(self, kind: str, owner: str | None = None) -> _Request:
        """A proxied request starts: counted in flight, its record returned. A token follow-up
        of the fast path (gateway/proxy/follow.py), which runs in no task of its own, holds it
        (``_gateway_metrics``); ``request_started`` puts it in the context variable. ``owner``:
        how its backend was found (``owner_lookup``), when already known."""
        self.in_flight.inc()
        if owner is not None:   # (owner_lookup, without the call)
            c = self._owner_sources.get(owner)
            if c is None:
                c = self._owner_sources[owner] = self.owner_lookups.labels(owner)
            c.inc()
        return _Request(kind)

    def follow_up_done(self, rec: _Request, status: int, seconds: float, backend_seconds: float) -> None:
        """A token follow-up of the fast path relayed its backend's whole answer with
        ``status``, in ``seconds`` of which ``backend_seconds`` were the backend's: what
        ``backend_start``, ``backend_end``, ``log_request`` and ``request_done`` record for it,
        in one call (nothing to log: the answer was the backend's)."""
        self.in_flight.dec()
        rec.forwarded = rec.backend_answered = rec.counted = rec.done = True
        rec.backend_seconds += backend_seconds
        label = rec.label = "follow-up"
        self._count(label, status, seconds)
        h = self._overheads.get(label)
        if h is None:
            h = self._overheads[label] = self.proxy_overhead.labels(label)
        h.observe(max(0.0, seconds - rec.backend_seconds))

    def request_done(self, kind: str, status: int, seconds: float, rec: _Request | None = None) -> None:
        self.in_flight.dec()
        if rec is None:
            rec = _mine()
        label = (rec.label if rec is not None else None) or request_kind(kind, "")
        if rec is not None and rec.forwarded:
            h = self._overheads.get(label)
            if h is None:
                h = self._overheads[label] = self.proxy_overhead.labels(label)
            h.observe(max(0.0, seconds - rec.backend_seconds))
        if rec is None or not rec.counted:
            # The response never finished normally (the backend failed mid-response and the
            # connection was closed), so Tornado never called log_request.
            self._count(label, "aborted", seconds)
            if rec is not None:
                rec.counted = True
        if rec is not None:
            rec.done = True

    def statement_routed(self, group: str, backend: str, rule: str | None) -> None:
        """A statement now runs on ``backend`` (the lifecycle's started event)."""
        key = (group, backend, rule or "")
        c = self._routed.get(key)
        if c is None:
            c = self._routed[key] = self.routed.labels(*key)
        c.inc()

    def statement_failed(self, reason: str) -> None:
        self.failures.labels(reason).inc()
        rec = _mine()
        if rec is not None:
            rec.failure = reason

    def shed_statement(self, reason: str, message: str) -> None:
        """A new statement refused because the worker is overloaded (gateway/runtime/overload.py).
        Logged once per 10 s with a count, not per statement: a line per refusal would add
        work to a worker that has too much."""
        self.shed.labels(reason).inc()
        rec = _mine()
        if rec is not None:
            rec.failure = _SHED
        self._shed_since_log += 1
        now = time.monotonic()
        if now - self._shed_logged >= 10.0:
            error_log.warning("shedding new statements (%d since the last such line, at most "
                              "one per 10s): %s", self._shed_since_log, message,
                              extra={"event": "statements_shed", "reason": reason,
                                     "count": self._shed_since_log})
            self._shed_logged, self._shed_since_log = now, 0

    def rejected(self, rule: str | None) -> None:
        self.rejects.labels(rule or "").inc()
        rec = _mine()
        if rec is not None:
            rec.failure = f"rejected by rule {rule or '-'}"

    def backend_start(self, sink: Any) -> None:
        """A forward into ``sink`` begins (called by gateway/proxy/forward.py, the one place
        that sends client requests to backends)."""
        rec = getattr(sink, "_gateway_metrics", None) or _mine()
        if rec is not None and hasattr(sink, "request"):   # the proxy handler, not a buffer
            rec.forwarded = True
            sink._gateway_metrics = rec   # see the module docstring

    def backend_end(self, sink: Any, seconds: float, error: str | None) -> None:
        """The forward took ``seconds`` (connect, send, relay); ``error`` if it failed."""
        rec = getattr(sink, "_gateway_metrics", None) or _mine()
        if rec is None:
            return
        if hasattr(sink, "request"):
            rec.backend_answered = error is None
            if error is not None:
                rec.backend_error = error
        rec.backend_seconds += seconds

    def gc_pause(self, generation: int, seconds: float) -> None:
        """One garbage-collector pause (gateway/runtime/gcpolicy.py hands them over from the loop)."""
        h = self._gc_children.get(generation)
        if h is None:
            h = self._gc_children[generation] = self.gc_pauses.labels(str(generation))
        h.observe(seconds)

    def owner_lookup(self, source: str) -> None:
        """How the owner of a follow-up was found (token, memory, probe, store, none)."""
        c = self._owner_sources.get(source)
        if c is None:
            c = self._owner_sources[source] = self.owner_lookups.labels(source)
        c.inc()

    def log_request(self, handler: Any) -> None:
        """Tornado's ``log_function``: count every finished response, log gateway errors."""
        request = handler.request
        status = handler.get_status()
        rec = getattr(handler, "_gateway_metrics", None) or _mine()
        if rec is None and _is_proxy(handler):
            from gateway import protocol as P   # finished before dispatch (400, 413)
            rec = _Request(P.classify(request.method or "GET", request.path, request.query).kind)
        label = request_kind(rec.protocol_kind if rec is not None else None, request.path)
        self._count(label, status, request.request_time())
        if rec is None:
            return
        rec.label = label
        rec.counted = True
        if rec.failure is _SHED:
            return   # counted and logged in batches by shed_statement
        if rec.failure is not None:
            level = logging.INFO if rec.failure.startswith("rejected") else logging.WARNING
            error_log.log(level, "statement failed at the gateway (%s): user=%s source=%s remote=%s",
                          rec.failure, request.headers.get("X-Trino-User"),
                          request.headers.get("X-Trino-Source"), request.remote_ip,
                          extra={"event": "statement_failed", "reason": rec.failure,
                                 "user": request.headers.get("X-Trino-User"),
                                 "source": request.headers.get("X-Trino-Source"),
                                 "remote": request.remote_ip})
        elif not rec.backend_answered and (status >= 400 or rec.backend_error):
            # An answer the gateway made itself: an error status, or a FAILED query document
            # after the backend could not be reached.
            why = f": {rec.backend_error}" if rec.backend_error else ""
            error_log.warning("%s %s -> %d from the gateway%s", request.method, request.path, status, why,
                              extra={"event": "request_failed", "method": request.method,
                                     "path": request.path, "status": status, "kind": label,
                                     "remote": request.remote_ip, "backend_error": rec.backend_error})

    def _count(self, label: str, status: int | str, seconds: float) -> None:
        """``status``: an HTTP status, or ``aborted``. Kept as given in the key (no ``str`` and
        no new string to hash per request); the label is its text."""
        key = (label, status)
        c = self._kinds.get(key)
        if c is None:
            c = self._kinds[key] = (self.requests.labels(label, str(status)), self.latency.labels(label))
        c[0].inc()
        c[1].observe(seconds)

    # -- state copied in when scraped --------------------------------------------------------

    def set_ruleset(self, version: str | None) -> None:
        """Mark ``version`` as the loaded ruleset. In multiprocess mode a label cannot be
        removed (the files keep it), so the previous version is set to 0 instead."""
        if version == self._ruleset_version:
            return
        if self._ruleset_version is not None:
            self.ruleset_info.labels(self._ruleset_version).set(0)
        if version is not None:
            self.ruleset_info.labels(version).set(1)
        self._ruleset_version = version

    def described(self) -> list[tuple[str, str, str]]:
        """(name, type, help) of every metric defined here, sampled or not."""
        out = []
        for value in vars(self).values():
            for fam in value.describe() if isinstance(value, _METRIC_TYPES) else ():
                out.append((fam.name, fam.type, fam.documentation))
        return out

    def render(self) -> tuple[bytes, str]:
        self.queries.sweep()
        if self.multiprocess:
            reg = CollectorRegistry()
            multiprocess.MultiProcessCollector(reg)
            return generate_latest(reg), CONTENT_TYPE_LATEST
        assert self._registry is not None
        return generate_latest(self._registry), CONTENT_TYPE_LATEST


_METRIC_TYPES = (_LibCounter, _LibGauge, _LibHistogram, PlainCounter, PlainGauge, PlainHistogram)


def _is_proxy(handler: Any) -> bool:
    from gateway.proxy.handler import ProxyHandler
    return isinstance(handler, ProxyHandler)


# Every metric the gateway exports (the Grafana dashboard and docs are checked against this).
METRIC_NAMES = (
    "trino_gateway_requests_total", "trino_gateway_request_seconds",
    "trino_gateway_proxy_overhead_seconds", "trino_gateway_statement_decision_seconds",
    "trino_gateway_statements_routed_total", "trino_gateway_statements_rejected_total",
    "trino_gateway_statement_failures_total", "trino_gateway_requests_in_flight",
    "trino_gateway_queries_in_flight", "trino_gateway_backend_healthy",
    "trino_gateway_backend_active", "trino_gateway_backend_queued_queries",
    "trino_gateway_backend_running_queries", "trino_gateway_backend_unfinished_queries",
    "trino_gateway_rule_reloads_total",
    "trino_gateway_ruleset_loaded", "trino_gateway_rules_error",
    "trino_gateway_store_write_failures_total", "trino_gateway_history_rows_dropped_total",
    "trino_gateway_admission_queued_queries", "trino_gateway_admission_wait_seconds",
    "trino_gateway_admission_dispatched_total", "trino_gateway_admission_rejected_total",
    "trino_gateway_admission_dropped_total", "trino_gateway_owner_lookups_total",
    "trino_gateway_event_loop_lag_seconds", "trino_gateway_shed_total",
    "trino_gateway_health_hints_total",
    "trino_gateway_gc_pause_seconds", "trino_gateway_backend_connects_total",
)
