"""Plain-number metrics (gateway/metrics_plain.py) export exactly what prometheus-client's own
metrics export for the same updates: /metrics must not change when the locks go."""
from __future__ import annotations

import re

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import metrics as library

from gateway.metrics import Metrics
from gateway.metrics_plain import PlainCounter, PlainGauge, PlainHistogram

INF, NAN = float("inf"), float("nan")


def _drive(counter, gauge, histogram) -> str:
    reg = CollectorRegistry()
    c = counter("a_total", "A counter", ["kind", "status"], registry=reg)
    c.labels("x", "200").inc()
    c.labels("x", "200").inc(2.5)
    c.labels("y", 404).inc()                     # label values become strings
    c.labels(kind="z", status="500").inc()
    counter("never_total", "Unlabelled, never counted", registry=reg)
    counter("once_total", "Unlabelled", registry=reg).inc(3)
    g = gauge("g", "A gauge", registry=reg)
    g.inc()
    g.inc(2)
    g.dec()
    g2 = gauge("g2", "Labelled gauge", ["backend"], registry=reg)
    g2.labels("b").set(NAN)
    g2.labels("a").set(4)
    h = histogram("h_seconds", "A histogram", ["kind"], registry=reg, buckets=(0.001, 0.01, 0.1, 1))
    for v in (0.0005, 0.001, 0.0011, 0.1, 0.5, 2, INF, NAN, 0):
        h.labels("s").observe(v)
    h.labels("t")
    histogram("h2_seconds", "Unlabelled histogram", registry=reg, buckets=(0.001, 0.01)).observe(0.003)
    return generate_latest(reg).decode()


def _without_timestamps(text: str) -> str:
    return re.sub(r"^(\S+_created(?:\{[^}]*\})?) \S+$", r"\1 <time>", text, flags=re.M)


def test_plain_families_render_what_prometheus_client_renders() -> None:
    ours = _drive(PlainCounter, PlainGauge, PlainHistogram)
    theirs = _drive(Counter, Gauge, Histogram)
    assert "_created" in ours and 'le="+Inf"' in ours
    assert _without_timestamps(ours) == _without_timestamps(theirs)


def test_created_series_follow_the_library_switch() -> None:
    library.disable_created_metrics()
    try:
        ours = _drive(PlainCounter, PlainGauge, PlainHistogram)
        assert "_created" not in ours
        assert ours == _drive(Counter, Gauge, Histogram)
    finally:
        library.enable_created_metrics()


def drive_gateway(m: Metrics) -> str:
    """Drive the gateway's own bookkeeping one fixed way; what /metrics then shows."""
    m.request_started("statement")
    m.statement_routed("adhoc", "b1", None)
    m.statement_routed("adhoc", "b1", "r1")
    m.overhead.observe(0.0002)
    m.owner_lookup("token")
    m.owner_lookup("token")
    m.statement_failed("no-backend")
    m.rejected("no-drop")
    m.backend_connects.inc()
    m.gc_pause(2, 0.003)
    m.loop_lag.observe(0.02)
    m.queries.started("q1")
    m.request_done("statement", 200, 0.004)
    rec = m.follow_up_started("query", "token")   # a poll of the fast path
    m.follow_up_done(rec, 200, 0.003, 0.002)
    m.follow_up_started("query", "memory")         # one still in flight
    m.backend_health.labels("b1", "adhoc").set(1)
    m.backend_queued.labels("b1").set(3)
    m.set_ruleset("v1")
    m.set_ruleset("v2")
    return m.render()[0].decode()


def test_gateway_metrics_read_the_same_plain_or_locked() -> None:
    """The gateway's own bookkeeping, driven the same way, renders the same /metrics."""
    plain, locked = drive_gateway(Metrics(plain=True)), drive_gateway(Metrics(plain=False))
    assert 'trino_gateway_statements_routed_total{backend="b1",group="adhoc",rule="r1"} 1.0' in plain
    assert "trino_gateway_queries_in_flight 1.0" in plain
    assert _without_timestamps(plain) == _without_timestamps(locked)


def test_labels_are_checked_as_by_prometheus_client() -> None:
    c = PlainCounter("c_total", "c", ["a", "b"])
    with pytest.raises(ValueError):
        c.labels("only-one")
    with pytest.raises(ValueError):
        c.labels(a="x", c="y")
    with pytest.raises(ValueError):
        c.labels("x", "y").inc(-1)
    assert c.labels("x", "y") is c.labels(a="x", b="y")
    with pytest.raises(ValueError):
        PlainCounter("u_total", "u").labels("x")


def test_values_read_like_prometheus_client_children() -> None:
    """Code that reads a child's value the library's way (``_value.get()``) reads plain ones too."""
    for counter in (Counter, PlainCounter):
        labelled = counter("l_total", "l", ["k"], registry=None)
        labelled.labels("a").inc(2)
        single = counter("s_total", "s", registry=None)
        single.inc(3)
        assert labelled.labels("a")._value.get() == 2.0 and single._value.get() == 3.0
