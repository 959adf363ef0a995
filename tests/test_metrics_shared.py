"""Shared metrics (gateway/metrics_shared.py) write prometheus-client's multiprocess files so
that a scrape reads exactly what the library's own multiprocess values give for the same
updates, at once, across growth of the file, a fork and a dead worker."""
from __future__ import annotations

import math
import os
import tempfile

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, values
from prometheus_client.multiprocess import MultiProcessCollector

from gateway import metrics_shared
from gateway.metrics import Metrics
from gateway.metrics_shared import SharedCounter, SharedGauge, SharedHistogram
from tests.test_metrics_plain import drive_gateway

BUCKETS = (0.001, 0.01, 0.1, 1.0, 10.0)


def _scrape(folder: str) -> list[str]:
    """What /metrics shows from the files in ``folder`` (lines sorted: files are read in any order)."""
    reg = CollectorRegistry()
    MultiProcessCollector(reg, path=folder)
    return sorted(generate_latest(reg).decode().replace("nan", "NaN").splitlines())


@pytest.fixture
def library_values(monkeypatch):
    """prometheus-client's own multiprocess values, as with PROMETHEUS_MULTIPROC_DIR at import."""
    monkeypatch.setattr(values, "ValueClass", values.MultiProcessValue(lambda: 4242))


def _families(counter, gauge, histogram, **mode):
    return (counter("c_total", "a counter", ["k"], registry=None),
            gauge("live", "a live gauge", registry=None, **({"multiprocess_mode": "livesum"} | mode)),
            gauge("top", "a max gauge", ["b"], registry=None, multiprocess_mode="max"),
            histogram("h_seconds", "a histogram", ["k"], buckets=BUCKETS, registry=None))


amounts = st.one_of(st.floats(min_value=0, max_value=100, allow_nan=False),
                    st.sampled_from([0.0, *BUCKETS, math.inf, math.nan]))
ops = st.lists(st.tuples(st.sampled_from(["c", "inc", "dec", "set", "h"]), st.sampled_from(["a", "b", "é\"x"]),
                         amounts), max_size=40)


def _apply(fams, steps) -> None:
    c, live, top, h = fams
    h.labels("seen-never")   # a child never updated shows zeros
    for op, label, amount in steps:
        if op == "c" and not math.isnan(amount):
            c.labels(label).inc(amount)
        elif op == "inc" and not math.isinf(amount):
            live.inc(amount)
        elif op == "dec" and not math.isinf(amount):
            live.dec(amount)
        elif op == "set":
            top.labels(label).set(amount)
        elif op == "h":
            h.labels(label).observe(amount)


@given(ops)
@settings(max_examples=200, deadline=None)
def test_a_scrape_reads_what_the_librarys_own_multiprocess_values_give(steps):
    ours, theirs = tempfile.mkdtemp(), tempfile.mkdtemp()
    saved = os.environ.get("PROMETHEUS_MULTIPROC_DIR"), values.ValueClass
    try:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = ours
        _apply(_families(SharedCounter, SharedGauge, SharedHistogram), steps)
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = theirs
        values.ValueClass = values.MultiProcessValue(lambda: 4242)
        _apply(_families(Counter, Gauge, Histogram), steps)
    finally:
        if saved[0] is None:
            os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
        else:
            os.environ["PROMETHEUS_MULTIPROC_DIR"] = saved[0]
        values.ValueClass = saved[1]
    assert _scrape(ours) == _scrape(theirs)
    assert any(line.startswith("h_seconds_bucket") for line in _scrape(ours))


@pytest.fixture
def folder(tmp_path, monkeypatch) -> str:
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    return str(tmp_path)


def test_an_update_is_in_the_next_scrape(folder):
    c = SharedCounter("c_total", "c", ["k"])
    h = SharedHistogram("h_seconds", "h", buckets=BUCKETS)
    for n in range(1, 4):
        c.labels("x").inc()
        h.observe(0.005)
        lines = _scrape(folder)
        assert f'c_total{{k="x"}} {float(n)}' in lines
        assert f'h_seconds_bucket{{le="0.01"}} {float(n)}' in lines and f"h_seconds_count {float(n)}" in lines


def test_values_written_before_the_file_grew_are_still_written_where_the_scrape_reads(folder):
    c = SharedCounter("c_total", "c", ["k"])
    first = c.labels("first")
    for i in range(3000):   # ~100 bytes an entry: the 64 KB file doubles a few times
        c.labels(f"label-{i:04d}").inc(i)
    first.inc(7)
    c.labels("label-0001").inc(1)
    size = os.path.getsize(os.path.join(folder, metrics_shared.file_name("counter", os.getpid())))
    assert size > 1 << 16
    lines = _scrape(folder)
    assert 'c_total{k="first"} 7.0' in lines and 'c_total{k="label-0001"} 2.0' in lines
    assert 'c_total{k="label-2999"} 2999.0' in lines and len(lines) == 3001 + 2


def test_a_second_family_of_the_same_name_in_the_process_carries_on_from_the_file(folder):
    """As with the library's values (and a pid used again): one file per process, values read
    back from it, other entries left alone."""
    SharedCounter("c_total", "c", ["k"]).labels("x").inc(2)
    SharedCounter("other_total", "o").inc(5)
    metrics_shared._files.clear()   # as in a new process with the same pid
    again = SharedCounter("c_total", "c", ["k"]).labels("x")
    assert again.get() == 2.0
    again.inc()
    assert 'c_total{k="x"} 3.0' in _scrape(folder) and "other_total 5.0" in _scrape(folder)


def test_a_forked_child_never_writes_the_parents_files_and_its_new_families_are_its_own(folder):
    c = SharedCounter("c_total", "c")
    c.inc()
    pid = os.fork()
    if pid == 0:   # the child: exits without pytest's clean-up
        code = 1
        try:
            c.inc(100)                                   # private memory from now on
            SharedCounter("child_total", "made after the fork").inc(2)
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    c.inc()
    lines = _scrape(folder)
    assert "c_total 2.0" in lines and "child_total 2.0" in lines
    assert os.path.exists(os.path.join(folder, metrics_shared.file_name("counter", pid)))


def test_a_dead_workers_live_gauges_go_and_its_counts_stay(folder):
    SharedGauge("live", "l", multiprocess_mode="livesum").inc(3)
    SharedGauge("top", "t", multiprocess_mode="max").set(9)
    SharedCounter("c_total", "c").inc(4)
    metrics_shared.process_dead(os.getpid() + 1, folder)   # another worker: nothing of ours goes
    assert "live 3.0" in _scrape(folder)
    metrics_shared.process_dead(os.getpid(), folder)
    lines = _scrape(folder)
    assert not any(line.startswith("live ") for line in lines)
    assert "top 9.0" in lines and "c_total 4.0" in lines


def test_the_supervisor_marks_a_dead_worker_in_both_kinds_of_file(folder, library_values):
    from gateway.runtime.serve import _metrics_process_dead
    pid = os.getpid()
    SharedGauge("ours", "o", multiprocess_mode="livesum").inc()
    metrics_shared._files.clear()
    lib = Gauge("theirs", "t", registry=None, multiprocess_mode="livesum")
    lib.inc()
    names = set(os.listdir(folder))
    assert metrics_shared.file_name("gauge_livesum", pid) in names and "gauge_livesum_4242.db" in names
    _metrics_process_dead(4242)
    _metrics_process_dead(pid)
    assert not any(n.startswith("gauge_livesum") for n in os.listdir(folder))


def test_a_failed_library_clean_up_still_leaves_ours_done(folder, monkeypatch):
    from prometheus_client import multiprocess
    from gateway.runtime.serve import _metrics_process_dead

    def broken(pid, path=None):
        raise PermissionError("read-only")
    monkeypatch.setattr(multiprocess, "mark_process_dead", broken)
    SharedGauge("ours", "o", multiprocess_mode="livesum").inc()
    _metrics_process_dead(os.getpid())
    assert not any(n.startswith("gauge_livesum") for n in os.listdir(folder))


def test_bad_uses_are_refused_with_the_reason(folder, monkeypatch):
    with pytest.raises(ValueError, match="pid label"):
        SharedGauge("g", "g", multiprocess_mode="all")
    with pytest.raises(ValueError, match="non-negative"):
        SharedCounter("c_total", "c").inc(-1)
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", os.path.join(folder, "missing"))
    with pytest.raises(ValueError, match="PROMETHEUS_MULTIPROC_DIR"):
        SharedCounter("d_total", "d")


def test_gateway_metrics_read_the_same_shared_or_with_the_librarys_values(tmp_path, monkeypatch):
    """The gateway's /metrics with several workers: the same as prometheus-client's own gives."""
    (tmp_path / "ours").mkdir()
    (tmp_path / "theirs").mkdir()
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path / "ours"))
    ours = drive_gateway(Metrics())
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path / "theirs"))
    monkeypatch.setattr(values, "ValueClass", values.MultiProcessValue(lambda: 4242))
    theirs = drive_gateway(Metrics(shared=False))
    assert 'trino_gateway_requests_total{kind="follow-up",status="200"} 1.0' in ours
    assert "trino_gateway_requests_in_flight 1.0" in ours
    assert sorted(ours.splitlines()) == sorted(theirs.splitlines())
    assert any(n.endswith(metrics_shared.file_name("histogram", os.getpid())) for n in os.listdir(tmp_path / "ours"))
