"""Admission control end to end with the official trino client: caps, the gateway queue's
order, priority, cancel while held, both bounds, abandoned queries, dispatch latency, and two
gateway processes sharing one store."""
from __future__ import annotations

import threading
import time

import pytest
import requests
import trino

from tests.conftest import gateway_config, wait_for

ETL_ONLY = {"etl-1": "etl"}


def capped(tmp_path, clusters, rules_text: str | None = None, **group):
    g = {"maxRunningQueries": 1, **group}
    cfg = gateway_config(tmp_path, clusters, groups=ETL_ONLY, routing={"defaultGroup": "etl"})
    cfg["groups"] = {"etl": g}
    cfg["query"] = {"clientTimeout": "2s"}
    if rules_text:
        (tmp_path / "rules").mkdir(exist_ok=True)
        (tmp_path / "rules" / "r.yaml").write_text(rules_text)
    return cfg


def run_in_thread(gw, sql: str, results: dict, key: str, **conn) -> threading.Thread:
    def go() -> None:
        try:
            cur = gw.connect(**conn).cursor()
            cur.execute(sql)
            results[key] = cur.fetchall()
        except BaseException as exc:  # recorded for the test to check
            results[key] = exc
    t = threading.Thread(target=go)
    t.start()
    return t


def start_blocker(gw, etl, res: dict, seconds: float, **conn) -> threading.Thread:
    """A slow query that takes the group's one slot; returns once it runs on ``etl``."""
    t = run_in_thread(gw, f"SELECT sleep({seconds}), 'blocker'", res, "blocker", **conn)
    wait_for(lambda: order_on(etl, ["blocker"]), message="the blocker to run")
    return t


def held_count(gw) -> float:
    for line in gw.api("GET", "/metrics").text.splitlines():
        if line.startswith('trino_gateway_admission_queued_queries{group="etl"}'):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def order_on(cluster, tags) -> list[str]:
    seen = [q["sql"] for q in cluster.queries()]
    return [t for s in seen for t in tags if f"'{t}'" in s]


def test_full_group_queues_and_dispatches_fairly(fresh_clusters, gateway_factory, tmp_path):
    gw = gateway_factory(capped(tmp_path, fresh_clusters))
    etl = fresh_clusters["etl-1"]
    res: dict = {}
    threads = [start_blocker(gw, etl, res, 1.5, user="u1")]
    # u1 queues two, then u2 one: fair share lets u2 go second, not third
    for key, user in (("u1-a", "u1"), ("u1-b", "u1"), ("u2-a", "u2")):
        threads.append(run_in_thread(gw, f"SELECT current_cluster(), '{key}'", res, key, user=user))
        wait_for(lambda: held_count(gw) >= len(threads) - 1, message=f"{key} held")
    for t in threads:
        t.join(60)
    assert all(isinstance(v, list) for v in res.values()), res
    assert res["u2-a"] == [["etl-1", "u2-a"]]
    assert order_on(etl, ["blocker", "u1-a", "u1-b", "u2-a"]) == ["blocker", "u1-a", "u2-a", "u1-b"]
    # history records the time each held query spent at the gateway
    def held_rows() -> list | None:
        rs = [r for r in gw.api("GET", "/api/queries?backend=etl-1&limit=10").json() if r["queuedMs"]]
        return rs if len(rs) == 3 else None

    rows = wait_for(held_rows, message="three history rows with queuedMs")
    assert all(r["queuedMs"] > 0 for r in rows)


def test_the_query_id_changes_at_dispatch_and_the_client_follows(fresh_clusters, gateway_factory, tmp_path):
    gw = gateway_factory(capped(tmp_path, fresh_clusters))
    etl = fresh_clusters["etl-1"]
    res: dict = {}
    blocker = start_blocker(gw, etl, res, 1)
    cur = gw.connect().cursor()
    cur.execute("SELECT n FROM numbers WHERE n <= 300 ORDER BY n")  # held first, then dispatched
    assert cur.fetchall() == [[n] for n in range(1, 301)]
    # the Python client keeps the first id it saw (the gateway's); the cluster ran the query
    # under its own id, which history records
    assert cur.query_id.endswith("_gtw01")
    ran = [q for q in etl.queries() if q["sql"].startswith("SELECT n FROM numbers WHERE n <= 300")]
    assert len(ran) == 1 and not ran[0]["queryId"].endswith("_gtw01")
    wait_for(lambda: [r for r in gw.api("GET", "/api/queries?backend=etl-1").json()
                      if r["queryId"] == ran[0]["queryId"]], message="history under the cluster's id")
    blocker.join(30)


def test_priority_from_rules_goes_first(fresh_clusters, gateway_factory, tmp_path):
    rules = """
name: vip
priority: 10
condition: source == "vip"
routingGroup: etl
queuePriority: 5
"""
    gw = gateway_factory(capped(tmp_path, fresh_clusters, rules))
    etl = fresh_clusters["etl-1"]
    res: dict = {}
    threads = [start_blocker(gw, etl, res, 1.5)]
    for key, source in (("plain-1", "x"), ("plain-2", "x"), ("vip-1", "vip")):
        threads.append(run_in_thread(gw, f"SELECT '{key}'", res, key, user=key, source=source))
        wait_for(lambda: held_count(gw) >= len(threads) - 1, message=f"{key} held")
    explain = gw.api("POST", "/api/routing/explain", json={"source": "vip"}).json()
    assert explain["queuePriority"] == 5
    for t in threads:
        t.join(60)
    assert order_on(etl, ["blocker", "plain-1", "plain-2", "vip-1"]) == ["blocker", "vip-1", "plain-1", "plain-2"]


def test_cancel_while_held_never_reaches_the_cluster(fresh_clusters, gateway_factory, tmp_path):
    gw = gateway_factory(capped(tmp_path, fresh_clusters))
    etl = fresh_clusters["etl-1"]
    res: dict = {}
    blocker = start_blocker(gw, etl, res, 2)
    cur = gw.connect().cursor()
    t = threading.Thread(target=lambda: res.setdefault("held", _try(cur, "SELECT 'held-one'")))
    t.start()
    wait_for(lambda: held_count(gw) == 1 and cur.query_id, message="held")
    assert cur.query_id.endswith("_gtw01")
    cur.cancel()  # DELETE on the held nextUri: 204
    t.join(10)
    blocker.join(30)
    assert not order_on(etl, ["held-one"])
    assert held_count(gw) == 0


def _try(cur, sql):
    try:
        cur.execute(sql)
        return cur.fetchall()
    except BaseException as exc:
        return exc


def test_queue_full_and_wait_too_long_are_clear_limit_errors(fresh_clusters, gateway_factory, tmp_path):
    gw = gateway_factory(capped(tmp_path, fresh_clusters, maxQueued=1, maxQueueWait="1s"))
    etl = fresh_clusters["etl-1"]
    res: dict = {}
    blocker = start_blocker(gw, etl, res, 4)
    waiting = run_in_thread(gw, "SELECT 'waits'", res, "waits")
    wait_for(lambda: held_count(gw) == 1, message="one held")
    with pytest.raises(trino.exceptions.TrinoQueryError) as err:
        gw.connect().cursor().execute("SELECT 'too many'")
    assert err.value.error_name == "QUERY_QUEUE_FULL" and "maxQueued 1" in str(err.value) and "etl" in str(err.value)
    waiting.join(10)
    assert isinstance(res["waits"], trino.exceptions.TrinoQueryError)
    assert res["waits"].error_name == "EXCEEDED_TIME_LIMIT" and "maxQueueWait" in str(res["waits"])
    assert res["waits"].error_type == "INSUFFICIENT_RESOURCES"
    blocker.join(30)


def test_abandoned_held_query_is_dropped_and_counted(fresh_clusters, gateway_factory, tmp_path):
    gw = gateway_factory(capped(tmp_path, fresh_clusters))
    etl = fresh_clusters["etl-1"]
    res: dict = {}
    blocker = start_blocker(gw, etl, res, 4)
    doc = requests.post(gw.url + "/v1/statement", data=b"SELECT 'abandoned'",
                        headers={"X-Trino-User": "a"}, timeout=10).json()
    assert doc["stats"]["state"] == "QUEUED" and doc["stats"]["gatewayQueuePosition"] == 1
    # the dashboard shows what waits at the gateway, per group
    page = gw.api("GET", "/trino-gateway/").text
    assert 'data-group="etl"' in page and 'data-held="1"' in page
    # never poll again: after query.clientTimeout (2s) it is dropped
    wait_for(lambda: 'trino_gateway_admission_dropped_total{group="etl"} 1.0' in gw.api("GET", "/metrics").text,
             timeout=10, message="the drop to be counted")
    late = requests.get(doc["nextUri"], headers={"X-Trino-User": "a"}, timeout=10).json()
    assert late["error"]["errorName"] == "ABANDONED_QUERY"
    blocker.join(30)
    assert not order_on(etl, ["abandoned"])


def test_freed_capacity_dispatches_within_one_poll(fresh_clusters, gateway_factory, tmp_path):
    gw = gateway_factory(capped(tmp_path, fresh_clusters))
    etl = fresh_clusters["etl-1"]
    res: dict = {}
    blocker = start_blocker(gw, etl, res, 1)
    held = run_in_thread(gw, "SELECT 'next'", res, "next")
    wait_for(lambda: held_count(gw) == 1, message="held")
    blocker.join(30)
    done = time.monotonic()
    held.join(30)
    # the held query was created on the cluster soon after the blocker's last page
    created = [q["created"] for q in etl.queries() if "'next'" in q["sql"]][0]
    blocker_created = [q["created"] for q in etl.queries() if "'blocker'" in q["sql"]][0]
    assert created - blocker_created < 1.0 + 1.5  # sleep(1) + at most one poll interval
    assert res["next"] == [["next"]]
    assert time.monotonic() - done < 3


def test_two_gateways_sharing_a_store_never_exceed_the_cap(fresh_clusters, gateway_factory, tmp_path):
    cfg = capped(tmp_path, fresh_clusters, maxRunningQueries=2)
    gw1 = gateway_factory(cfg, name="a1")
    gw2 = gateway_factory(cfg, name="a2")
    etl = fresh_clusters["etl-1"]
    n = 40
    res: dict = {}
    peak = [0]
    stop = threading.Event()

    def watch() -> None:  # the cluster's own view of how many run at once
        while not stop.is_set():
            running = [q for q in etl.queries() if q["state"] not in ("FINISHED", "FAILED")
                       and "burst" in q["sql"]]
            peak[0] = max(peak[0], len(running))

    w = threading.Thread(target=watch)
    w.start()
    threads = [run_in_thread(gw1 if i % 2 else gw2, f"SELECT sleep(0.3), 'burst-{i}'", res, f"q{i}",
                             user=f"user{i % 5}") for i in range(n)]
    for t in threads:
        t.join(120)
    stop.set()
    w.join()
    failed = {k: v for k, v in res.items() if not isinstance(v, list)}
    assert not failed, failed
    assert len(res) == n
    assert 1 <= peak[0] <= 2
