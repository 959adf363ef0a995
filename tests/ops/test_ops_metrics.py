"""Prometheus metrics: every metric exists and moves as documented, with one and two workers;
the Grafana dashboard only uses metrics that exist."""
from __future__ import annotations

import json
import re
import sqlite3
import threading

import pytest

from gateway.metrics import METRIC_NAMES, ActiveQueries, Metrics, request_kind
from tests.conftest import REPO, gateway_config, wait_for
from tests.ops.support import metric, metric_samples, scrape, statement

RULES = """
name: etl-tag
priority: 10
condition: '"etl" in clientTags'
routingGroup: etl
---
name: no-drop
priority: 100
condition: query =~ "(?is)\\\\s*drop\\\\s.*"
reject: "DROP is frozen"
---
name: to-ghost
priority: 50
condition: source == "ghost"
routingGroup: ghost
"""


# -- units -------------------------------------------------------------------------------------

def test_metric_names_list_matches_what_is_registered():
    m = Metrics()
    registered = {c._name for c in m._registry._collector_to_names}  # type: ignore[union-attr]
    # counters are registered without their _total suffix
    assert {n.removesuffix("_total") for n in METRIC_NAMES} == registered


@pytest.mark.parametrize("kind,path,label", [
    ("statement", "/v1/statement", "statement"),
    ("query", "/v1/statement/executing/x/y/1", "follow-up"),
    ("spool", "/v1/spooled/download/abc", "follow-up"),
    ("oauth", "/oauth2/token/abc", "follow-up"),
    ("query", "/ui/query.html", "ui"),
    ("other", "/ui/api/stats", "ui"),
    ("other", "/v1/info", "other"),
    (None, "/api/queries", "admin"),
])
def test_request_kind_labels(kind, path, label):
    assert request_kind(kind, path) == label


def test_active_queries_track_started_seen_ended_and_forget_idle_ones():
    now = [100.0]
    m = Metrics()
    q = ActiveQueries(idle=10, gauge=m.queries_in_flight, clock=lambda: now[0])
    gauge = lambda: m._registry.get_sample_value("trino_gateway_queries_in_flight")  # noqa: E731
    q.started("a")
    q.started("b")
    q.seen("c")                      # relayed only: waited for on shutdown, not in the gauge
    assert q.live() == 3 and gauge() == 2
    q.ended("a")
    assert q.live() == 2 and gauge() == 1
    now[0] += 5
    q.seen("b")
    now[0] += 6                      # c idle for 11 s, b for 6 s
    assert q.live() == 1 and gauge() == 1
    now[0] += 11
    assert q.live() == 0 and gauge() == 0
    q.ended("zzz")                   # unknown ids are fine
    assert gauge() == 0
    # a sweep reads the queries oldest first and stops at the first it keeps: a query polled
    # again moves behind those that were not
    q.started("x")
    now[0] += 1
    q.started("y")
    now[0] += 1
    q.seen("x")
    now[0] += 9.5                    # y idle for 10.5 s, x for 9.5 s
    assert q.live() == 1 and list(q._last) == ["x"]


# -- one worker, end to end --------------------------------------------------------------------

@pytest.fixture
def gw(fresh_clusters, gateway_factory, tmp_path):
    (tmp_path / "rules").mkdir(exist_ok=True)
    (tmp_path / "rules" / "r.yaml").write_text(RULES)
    cfg = gateway_config(tmp_path, fresh_clusters, groups={"adhoc-1": "adhoc", "etl-1": "etl"})
    cfg["groups"] = {"ghost": {"fallback": "none"}}
    return gateway_factory(cfg)


def _delta(before: str, after: str, name: str, **labels: str) -> float:
    return metric(after, name, **labels) - metric(before, name, **labels)


def test_requests_routing_rejects_failures_and_latency_are_counted(gw):
    before = scrape(gw)
    for _ in range(3):
        assert statement(gw.url, "SELECT 1")["stats"]["state"] == "FINISHED"
    for _ in range(2):
        assert statement(gw.url, "SELECT 2", **{"X-Trino-Client-Tags": "etl"})["stats"]["state"] == "FINISHED"
    rejected = statement(gw.url, "DROP TABLE t")
    assert rejected["error"]["errorName"] == "PERMISSION_DENIED"
    failed = statement(gw.url, "SELECT 3", **{"X-Trino-Source": "ghost"})
    assert failed["error"]["errorName"] == "NO_NODES_AVAILABLE"
    assert gw.api("GET", "/v1/info").status_code == 200
    gw.api("GET", "/ui/api/stats")
    # the last request is counted a moment after its answer was sent
    wait_for(lambda: _delta(before, scrape(gw), "trino_gateway_requests_total", kind="ui") == 1,
             message="the last request counted")
    after = scrape(gw)

    d = lambda name, **lb: _delta(before, after, name, **lb)  # noqa: E731
    assert d("trino_gateway_requests_total", kind="statement", status="200") == 7
    assert d("trino_gateway_requests_total", kind="follow-up", status="200") >= 5   # each query polls
    assert d("trino_gateway_requests_total", kind="other") == 1
    assert d("trino_gateway_requests_total", kind="ui") == 1
    assert d("trino_gateway_requests_total", kind="admin") >= 1                     # the first scrape
    assert d("trino_gateway_statements_routed_total", group="adhoc", backend="adhoc-1", rule="") == 3
    assert d("trino_gateway_statements_routed_total", group="etl", backend="etl-1", rule="etl-tag") == 2
    assert d("trino_gateway_statements_rejected_total", rule="no-drop") == 1
    assert d("trino_gateway_statement_failures_total", reason="no-backend") == 1
    assert d("trino_gateway_statement_decision_seconds_count") == 5
    # whole-request latency for all 7 statements; gateway overhead only for the 5 forwarded ones
    assert d("trino_gateway_request_seconds_count", kind="statement") == 7
    assert d("trino_gateway_proxy_overhead_seconds_count", kind="statement") == 5
    assert d("trino_gateway_proxy_overhead_seconds_count", kind="follow-up") == \
        d("trino_gateway_requests_total", kind="follow-up")
    overhead = d("trino_gateway_proxy_overhead_seconds_sum", kind="follow-up")
    whole = d("trino_gateway_request_seconds_sum", kind="follow-up")
    assert 0 < overhead < whole
    assert metric(after, "trino_gateway_requests_in_flight") == 0


def test_backend_rules_and_in_flight_gauges(gw, tmp_path):
    text = scrape(gw)
    for name, group in (("adhoc-1", "adhoc"), ("etl-1", "etl")):
        assert metric(text, "trino_gateway_backend_healthy", backend=name, group=group) == 1
        assert metric(text, "trino_gateway_backend_active", backend=name, group=group) == 1
        assert ("trino_gateway_backend_queued_queries", {"backend": name}) in [(n, lb) for n, lb, _ in metric_samples(text)]
        assert ("trino_gateway_backend_running_queries", {"backend": name}) in [(n, lb) for n, lb, _ in metric_samples(text)]
    gw.api("POST", "/gateway/backend/deactivate/etl-1")
    assert metric(scrape(gw), "trino_gateway_backend_active", backend="etl-1") == 0

    version = gw.api("GET", "/api/rules").json()["version"]
    assert metric(text, "trino_gateway_ruleset_loaded", version=version) == 1
    assert metric(text, "trino_gateway_rules_error") == 0
    ok_before = metric(text, "trino_gateway_rule_reloads_total", outcome="ok")
    (tmp_path / "rules" / "r.yaml").write_text(RULES.replace("priority: 10", "priority: 11"))
    new = wait_for(lambda: (v := gw.api("GET", "/api/rules").json()["version"]) != version and v,
                   message="the rules reload")
    text = scrape(gw)
    assert metric(text, "trino_gateway_rule_reloads_total", outcome="ok") == ok_before + 1
    assert metric(text, "trino_gateway_ruleset_loaded", version=new) == 1
    assert metric(text, "trino_gateway_ruleset_loaded", version=version) == 0
    (tmp_path / "rules" / "r.yaml").write_text("name: [broken\n")
    wait_for(lambda: metric(scrape(gw), "trino_gateway_rule_reloads_total", outcome="error") == 1,
             message="the failed reload to be counted")
    assert metric(scrape(gw), "trino_gateway_rules_error") == 1

    # a query in flight is counted until its final state passes through
    assert metric(scrape(gw), "trino_gateway_queries_in_flight") == 0
    done = threading.Event()
    threading.Thread(target=lambda: (statement(gw.url, "SELECT sleep(1.5)"), done.set()), daemon=True).start()
    wait_for(lambda: metric(scrape(gw), "trino_gateway_queries_in_flight") == 1, message="1 query in flight")
    wait_for(done.is_set, message="the query to finish")
    assert metric(scrape(gw), "trino_gateway_queries_in_flight") == 0


def test_store_write_failures_and_dropped_history_rows(fresh_clusters, gateway_factory, tmp_path):
    db = tmp_path / "gateway.db"
    gw = gateway_factory(gateway_config(tmp_path, fresh_clusters, groups={"adhoc-1": "adhoc"},
                                        store={"historyMaxPending": 2}))
    statement(gw.url, "SELECT 1")  # the history table exists and is flushed
    wait_for(lambda: gw.api("GET", "/api/queries").json(), message="history written")
    lock = sqlite3.connect(db, timeout=10, isolation_level=None)
    lock.execute("BEGIN EXCLUSIVE")   # the store cannot write until we let go
    try:
        for _ in range(5):
            statement(gw.url, "SELECT 1")
        wait_for(lambda: metric(scrape(gw), "trino_gateway_history_rows_dropped_total") >= 3,
                 message="dropped rows counted")
        wait_for(lambda: metric(scrape(gw), "trino_gateway_store_write_failures_total") >= 1, timeout=15,
                 message="a failed write counted")
    finally:
        lock.execute("ROLLBACK")
        lock.close()
    assert "store write failed" in gw.log()


# -- two workers ---------------------------------------------------------------------------------

def test_two_workers_aggregate_counters_and_gauges(fresh_clusters, gateway_factory, tmp_path):
    (tmp_path / "rules").mkdir(exist_ok=True)
    (tmp_path / "rules" / "r.yaml").write_text(RULES)
    gw = gateway_factory(gateway_config(tmp_path, fresh_clusters, server={"workers": 2},
                                        groups={"adhoc-1": "adhoc", "etl-1": "etl"}))
    wait_for(lambda: gw.log().count("listening on") >= 2, message="two workers")
    # each worker loads the rules once at start
    wait_for(lambda: metric(scrape(gw), "trino_gateway_rule_reloads_total", outcome="ok") == 2,
             message="both workers' rule loads")
    for i in range(20):
        statement(gw.url, "SELECT 1", **({"X-Trino-Client-Tags": "etl"} if i % 2 else {}))
    pids = set(re.findall(r"\[(\d+)\] INFO gateway.routing: query ", gw.log()))
    assert len(pids) == 2, "both workers should have routed statements"
    # any worker's /metrics (every scrape on a new connection) shows the whole gateway; the
    # last request is counted a moment after its answer was sent
    wait_for(lambda: metric(scrape(gw), "trino_gateway_proxy_overhead_seconds_count", kind="follow-up")
             == metric(scrape(gw), "trino_gateway_requests_total", kind="follow-up"), message="counts settle")
    for _ in range(6):
        text = scrape(gw)
        assert metric(text, "trino_gateway_statements_routed_total") == 20
        assert metric(text, "trino_gateway_statements_routed_total", rule="etl-tag") == 10
        assert metric(text, "trino_gateway_requests_total", kind="statement") == 20
        assert metric(text, "trino_gateway_proxy_overhead_seconds_count", kind="statement") == 20
        assert metric(text, "trino_gateway_requests_in_flight") == 0
        assert metric(text, "trino_gateway_backend_healthy", backend="adhoc-1") == 1
    # a rules change is reloaded (and counted) by each worker
    (tmp_path / "rules" / "r.yaml").write_text(RULES.replace("priority: 10", "priority: 12"))
    wait_for(lambda: metric(scrape(gw), "trino_gateway_rule_reloads_total", outcome="ok") == 4,
             message="both workers' reloads")


# -- Grafana dashboard ---------------------------------------------------------------------------

def _dashboard_exprs(doc: object) -> list[str]:
    found: list[str] = []
    if isinstance(doc, dict):
        for k, v in doc.items():
            if k in ("expr", "query") and isinstance(v, str):
                found.append(v)
            else:
                found += _dashboard_exprs(v)
    elif isinstance(doc, list):
        for v in doc:
            found += _dashboard_exprs(v)
    return found


def test_grafana_dashboard_parses_and_uses_only_existing_metrics():
    doc = json.loads((REPO / "docker" / "grafana-dashboard.json").read_text())
    assert doc["title"] and doc["panels"]
    exprs = _dashboard_exprs(doc)
    assert exprs, "the dashboard has no queries"
    known = set(METRIC_NAMES)
    for suffix in ("_bucket", "_sum", "_count"):
        known |= {n + suffix for n in METRIC_NAMES if n.endswith("_seconds")}
    used = set()
    for e in exprs:
        for name in re.findall(r"\btrino_gateway_[a-z_]+", e):
            assert name in known, f"dashboard query uses unknown metric {name}: {e}"
            used.add(re.sub(r"_(bucket|sum|count)$", "", name))
    # the key metrics each have a panel
    for must in ("trino_gateway_requests_total", "trino_gateway_proxy_overhead_seconds",
                 "trino_gateway_statements_routed_total", "trino_gateway_statement_failures_total",
                 "trino_gateway_backend_healthy", "trino_gateway_queries_in_flight",
                 "trino_gateway_rules_error", "trino_gateway_history_rows_dropped_total"):
        assert must in used, f"no dashboard panel shows {must}"


def test_every_metric_is_documented():
    doc = (REPO / "docs" / "metrics.md").read_text()
    for name in METRIC_NAMES:
        assert f"`{name}`" in doc, f"{name} is missing from docs/metrics.md"
