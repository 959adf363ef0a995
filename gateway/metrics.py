"""Prometheus metrics of the gateway (served at /metrics).

With ``server.workers > 1`` every process writes to files in a shared folder
(prometheus-client's multiprocess mode, ``PROMETHEUS_MULTIPROC_DIR``), and /metrics aggregates
them, so a scrape that lands on any worker sees the whole gateway.
"""
from __future__ import annotations

import os

from prometheus_client import (CollectorRegistry, Counter, Gauge, Histogram, generate_latest,
                               CONTENT_TYPE_LATEST)
from prometheus_client import multiprocess

_LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                    0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Metrics:
    """All gateway metrics in one place; methods are cheap enough for the request path."""

    def __init__(self) -> None:
        self.multiprocess = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
        reg = None if self.multiprocess else CollectorRegistry()
        kw = {"registry": reg} if reg is not None else {}
        self._registry = reg
        live = {"multiprocess_mode": "livesum"} if self.multiprocess else {}
        mx = {"multiprocess_mode": "max"} if self.multiprocess else {}
        self.requests = Counter("trino_gateway_requests_total", "Client requests by kind and status",
                                ["kind", "status"], **kw)
        self.latency = Histogram("trino_gateway_request_seconds",
                                 "Time from request start to response end, by kind",
                                 ["kind"], buckets=_LATENCY_BUCKETS, **kw)
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
        self.backend_health = Gauge("trino_gateway_backend_healthy",
                                    "1 if the backend is HEALTHY", ["backend", "group"], **mx, **kw)
        self.backend_queued = Gauge("trino_gateway_backend_queued_queries",
                                    "Queued queries the monitor saw", ["backend"], **mx, **kw)
        self.backend_running = Gauge("trino_gateway_backend_running_queries",
                                     "Running queries the monitor saw", ["backend"], **mx, **kw)
        self.rule_reloads = Counter("trino_gateway_rule_reloads_total", "Rules reloads by outcome",
                                    ["outcome"], **kw)
        self.ruleset_info = Gauge("trino_gateway_ruleset_loaded",
                                  "1 for the loaded ruleset version", ["version"], **mx, **kw)
        self.rules_error = Gauge("trino_gateway_rules_error",
                                 "1 while the rules files on disk do not load", **mx, **kw)
        self.store_failures = Counter("trino_gateway_store_write_failures_total",
                                      "Failed store writes (retried)", **kw)
        self.history_dropped = Counter("trino_gateway_history_rows_dropped_total",
                                       "History rows dropped after the store stayed down", **kw)
        self._kinds: dict[tuple[str, int], object] = {}

    # Hot-path helpers
    def request_started(self, kind: str) -> None:
        self.in_flight.inc()

    def request_done(self, kind: str, status: int, seconds: float) -> None:
        self.in_flight.dec()
        key = (kind, status)
        c = self._kinds.get(key)
        if c is None:
            c = self._kinds[key] = (self.requests.labels(kind, str(status)), self.latency.labels(kind))
        c[0].inc()  # type: ignore[index]
        c[1].observe(seconds)  # type: ignore[index]

    def statement_failed(self, reason: str) -> None:
        self.failures.labels(reason).inc()

    def rejected(self, rule: str | None) -> None:
        self.rejects.labels(rule or "").inc()

    def render(self) -> tuple[bytes, str]:
        if self.multiprocess:
            reg = CollectorRegistry()
            multiprocess.MultiProcessCollector(reg)
            return generate_latest(reg), CONTENT_TYPE_LATEST
        assert self._registry is not None
        return generate_latest(self._registry), CONTENT_TYPE_LATEST
