"""Deferred multiprocess metric writes (gateway/metrics_deferred.py): what a loop turn wrote,
applied after it, gives the files exactly what writing each at once gives."""
from __future__ import annotations

import asyncio
import math

from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from gateway.metrics_deferred import Deferred, DeferredValue, observe_all

BUCKETS = (0.001, 0.01, 0.1, 1.0, 10.0)


def _family(reg: CollectorRegistry) -> tuple[Counter, Gauge, Histogram]:
    return (Counter("c_total", "c", ["k"], registry=reg), Gauge("g", "g", registry=reg),
            Histogram("h_seconds", "h", ["k"], buckets=BUCKETS, registry=reg))


amounts = st.lists(st.one_of(st.floats(min_value=0, max_value=100, allow_nan=False),
                             st.sampled_from([0.0, *BUCKETS, math.inf, math.nan])), max_size=30)


@given(amounts, st.lists(st.integers(min_value=-3, max_value=3), max_size=10))
@settings(max_examples=300, deadline=None)
def test_a_turns_writes_applied_together_expose_what_each_written_at_once_exposes(obs, steps):
    direct, deferred = CollectorRegistry(), CollectorRegistry()
    c1, g1, h1 = _family(direct)
    c2, g2, h2 = _family(deferred)
    c1.labels("a"), h1.labels("a")   # (the children exist on both sides)
    d = Deferred()

    async def turn() -> None:   # with a running loop: applied after the turn, not before
        dc, dg, dh = (DeferredValue(c2.labels("a"), d), DeferredValue(g2, d), DeferredValue(h2.labels("a"), d))
        for a in obs:
            h1.labels("a").observe(a)
            dh.observe(a)
            c1.labels("a").inc()
            dc.inc()
        for s in steps:
            g1.inc(s)
            dg.inc(s) if s >= 0 else dg.dec(-s)
        if obs:
            assert c2.labels("a")._value.get() == 0   # nothing written yet
        await asyncio.sleep(0)
    asyncio.run(turn())
    assert generate_latest(direct).replace(b"nan", b"NaN") == generate_latest(deferred).replace(b"nan", b"NaN") \
        or _same_but_created(direct, deferred)


def _same_but_created(a: CollectorRegistry, b: CollectorRegistry) -> bool:
    strip = lambda r: b"\n".join(l for l in generate_latest(r).split(b"\n") if b"_created" not in l)  # noqa: E731
    return strip(a) == strip(b)


def test_without_a_running_loop_a_write_is_applied_at_once():
    reg = CollectorRegistry()
    c, _, h = _family(reg)
    d = Deferred()
    DeferredValue(c.labels("x"), d).inc(2)
    DeferredValue(h.labels("x"), d).observe(0.5)
    assert c.labels("x")._value.get() == 2
    assert h.labels("x")._sum.get() == 0.5


def test_a_histogram_without_the_expected_parts_is_observed_one_by_one():
    seen = []

    class Plain:
        def observe(self, a: float) -> None:
            seen.append(a)
    observe_all(Plain(), [1.0, 2.0])
    assert seen == [1.0, 2.0]
