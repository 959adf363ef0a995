"""End to end: the official trino client through a gateway process in front of simulated clusters."""
from __future__ import annotations

import json
import os
import re
import socket
import threading
import time

import pytest
import requests
import trino
from trino.transaction import IsolationLevel

from tests.conftest import cluster_of, gateway_config, wait_for


def test_multi_page_results_are_exact(gateway):
    cur = gateway.connect().cursor()
    cur.execute("SELECT n, n * 2 FROM numbers WHERE n <= 2500 ORDER BY n")
    rows = cur.fetchall()
    assert rows == [[n, n * 2] for n in range(1, 2501)]
    assert [d[0] for d in cur.description] == ["n", "_col1"] or len(cur.description) == 2


def test_uris_point_at_the_gateway_for_both_coordinator_settings(gateway, fresh_clusters):
    """adhoc-1 does not process X-Forwarded-*, adhoc-2 does; clients stay on the gateway either way."""
    seen = set()
    for _ in range(40):
        r = requests.post(gateway.url + "/v1/statement", data=b"SELECT current_cluster()",
                          headers={"X-Trino-User": "alice"}, timeout=10)
        assert r.status_code == 200, r.text
        doc = r.json()
        # a routing token names the owning backend (docs/sticky-routing.md), then Trino's path
        assert re.match(re.escape(gateway.url) + r"/_r/[\w-]{4}\.[\w-]+\.[\w-]{16}/v1/statement/queued/",
                        doc["nextUri"]), doc["nextUri"]
        assert doc["infoUri"].startswith(gateway.url + "/ui/query.html?")
        while "nextUri" in doc:
            assert doc["nextUri"].startswith(gateway.url + "/"), doc["nextUri"]
            doc = requests.get(doc["nextUri"], headers={"X-Trino-User": "alice"}, timeout=10).json()
        seen.add(doc["data"][0][0])
        if seen == {"adhoc-1", "adhoc-2"}:
            break
    assert seen == {"adhoc-1", "adhoc-2"}


def test_failed_query_message_reaches_the_client(gateway):
    cur = gateway.connect().cursor()
    with pytest.raises(trino.exceptions.TrinoUserError) as err:
        cur.execute("SELECT * FROM no_such_table")
        cur.fetchall()
    assert "no_such_table" in str(err.value)


def test_cancel_reaches_the_owning_cluster(gateway, fresh_clusters):
    conn = gateway.connect()
    cur = conn.cursor()
    errors: list[BaseException] = []

    def run() -> None:
        try:
            cur.execute("SELECT sleep(20), current_cluster()")
            cur.fetchall()
        except BaseException as exc:  # the cancel surfaces here
            errors.append(exc)

    t = threading.Thread(target=run)
    t.start()
    running = wait_for(lambda: [(c, q) for c in fresh_clusters.values() for q in c.queries()
                                if "sleep(20)" in q["sql"] and q["state"] not in ("FINISHED", "FAILED")],
                       timeout=10, message="the slow query to start")
    wait_for(lambda: cur.query_id is not None, message="the cursor to know its query id")
    cur.cancel()
    t.join(20)
    assert not t.is_alive()
    cluster, q = running[0]
    assert cur.query_id == q["queryId"]
    final = wait_for(lambda: [x for x in cluster.queries() if x["queryId"] == q["queryId"]
                              and x["state"] == "FAILED"], message="the query to end FAILED")
    assert "cancel" in json.dumps(final[0]).lower()


def test_session_properties_use_and_prepared_statements_round_trip(gateway, fresh_clusters):
    conn = gateway.connect(catalog="tpch", schema="tiny")
    cur = conn.cursor()
    cur.execute("USE tpch.sf1")
    cur.fetchall()
    assert conn._client_session.schema == "sf1"
    cur.execute("SET SESSION query_max_run_time = '1h'")
    cur.fetchall()
    assert conn._client_session.properties.get("query_max_run_time") == "1h"
    # parameters make the client PREPARE, EXECUTE (with X-Trino-Prepared-Statement) and DEALLOCATE
    cur.execute("SELECT name FROM nation WHERE nationkey = ?", (3,))
    assert cur.fetchall() == [["CANADA"]]
    cur.execute("SELECT current_cluster()")
    cur.fetchall()
    # the session headers reached a cluster on the follow-up statements
    last = [q for c in fresh_clusters.values() for q in c.queries() if q["sql"] == "SELECT current_cluster()"]
    headers = {k.lower(): ",".join(v) for k, v in last[-1]["headers"].items()}
    assert "query_max_run_time=1h" in headers.get("x-trino-session", "")
    assert headers.get("x-trino-schema") == "sf1"


def test_transaction_is_pinned_to_one_backend(gateway, fresh_clusters):
    conn = gateway.connect(isolation_level=IsolationLevel.READ_COMMITTED)
    cur = conn.cursor()
    names = set()
    for _ in range(12):  # with two adhoc backends, a wrong pin fails with UNKNOWN_TRANSACTION
        cur.execute("SELECT current_cluster()")
        names.add(cur.fetchall()[0][0])
    conn.commit()
    assert len(names) == 1
    conn.close()


def test_group_header_selects_the_group(gateway):
    conn = gateway.connect(http_headers={"X-Trino-Routing-Group": "etl"})
    assert {cluster_of(conn.cursor()) for _ in range(5)} == {"etl-1"}
    conn = gateway.connect()
    assert cluster_of(conn.cursor()) in ("adhoc-1", "adhoc-2")
    # an unknown group falls back to the default group
    conn = gateway.connect(http_headers={"X-Trino-Routing-Group": "nope"})
    assert cluster_of(conn.cursor()) in ("adhoc-1", "adhoc-2")


def test_kill_query_reaches_the_owner(gateway, fresh_clusters):
    victim = gateway.connect(user="bob").cursor()
    errors: list[BaseException] = []

    def run() -> None:
        try:
            victim.execute("SELECT sleep(20)")
            victim.fetchall()
        except BaseException as exc:
            errors.append(exc)

    t = threading.Thread(target=run)
    t.start()
    wait_for(lambda: victim.query_id, message="the victim query id")
    qid = victim.query_id
    killer = gateway.connect(user="admin").cursor()
    # several kills: with two adhoc backends, a kill routed by rules would miss half the time
    killer.execute(f"CALL system.runtime.kill_query(query_id => '{qid}', message => 'too slow')")
    killer.fetchall()
    t.join(20)
    assert not t.is_alive()
    assert errors and "too slow" in str(errors[0])


def test_unknown_query_id_is_404(gateway):
    r = requests.get(gateway.url + "/v1/statement/executing/20240101_000000_00000_zzzzz/yabc/1", timeout=10)
    assert r.status_code == 404
    assert r.headers["Content-Type"].startswith("text/plain")


def _follow(doc: dict, base: str, other: str) -> dict:
    """Follow nextUris, but through ``other`` instead of the gateway that wrote them."""
    rows = []
    while "nextUri" in doc:
        uri = doc["nextUri"].replace(base, other)
        r = requests.get(uri, headers={"X-Trino-User": "alice"}, timeout=10)
        assert r.status_code == 200, (r.status_code, r.text)
        doc = r.json()
        rows += doc.get("data", [])
        if "nextUri" in doc:
            assert doc["nextUri"].startswith(other)
    doc["rows"] = rows
    return doc


def test_two_gateways_sharing_a_store_and_a_restart(fresh_clusters, gateway_factory, tmp_path):
    cfg = gateway_config(tmp_path, fresh_clusters)
    gw1 = gateway_factory(cfg, name="gw1")
    gw2 = gateway_factory(cfg, name="gw2")
    sql = b"SELECT n FROM numbers WHERE n <= 500 ORDER BY n"
    for _ in range(4):
        r = requests.post(gw1.url + "/v1/statement", data=sql, headers={"X-Trino-User": "alice"}, timeout=10)
        doc = _follow(r.json(), gw1.url, gw2.url)  # every follow-up through the other process
        assert doc["stats"]["state"] == "FINISHED"
        assert doc["rows"] == [[n] for n in range(1, 501)]
    # a query submitted through gw1, then gw1 restarts between pages
    r = requests.post(gw1.url + "/v1/statement", data=sql, headers={"X-Trino-User": "alice"}, timeout=10)
    first = requests.get(r.json()["nextUri"], headers={"X-Trino-User": "alice"}, timeout=10).json()
    assert gw1.stop() == 0
    gw3 = gateway_factory(cfg, name="gw3")
    doc = _follow(first, gw1.url, gw3.url)
    assert doc["stats"]["state"] == "FINISHED"
    assert [r[0] for r in first.get("data", []) + doc["rows"]] == list(range(1, 501))


def test_no_backend_gives_a_trino_shaped_failure(gateway_factory, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    cfg = gateway_config(tmp_path, None)
    cfg["backends"] = [{"name": "dead-1", "proxyTo": f"http://127.0.0.1:{dead}", "routingGroup": "adhoc"}]
    gw = gateway_factory(cfg, wait_ready=False)
    wait_for(lambda: gw.api("GET", "/trino-gateway/readyz").status_code == 200, message="readyz")
    cur = gw.connect().cursor()
    with pytest.raises(trino.exceptions.TrinoQueryError) as err:
        cur.execute("SELECT 1")
    assert "adhoc" in str(err.value)


def test_post_that_cannot_connect_is_retried_on_another_backend(fresh_clusters, gateway_factory, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    cfg = gateway_config(tmp_path, fresh_clusters, groups={"adhoc-1": "adhoc"},
                         monitor={"type": "noop"}, routing={"policy": "round-robin"})
    cfg["backends"].append({"name": "dead-1", "proxyTo": f"http://127.0.0.1:{dead}", "routingGroup": "adhoc"})
    gw = gateway_factory(cfg)
    cur = gw.connect().cursor()
    for _ in range(6):
        assert cluster_of(cur) == "adhoc-1"


def test_headers_pass_both_ways(gateway, fresh_clusters):
    r = requests.post(gateway.url + "/v1/statement", data=b"SELECT current_cluster()",
                      headers={"X-Trino-User": "alice", "X-Trino-Client-Tags": "a,b",
                               "X-Trino-Routing-Group": "etl", "Connection": "keep-alive, X-Secret-Hop",
                               "X-Secret-Hop": "drop me"}, timeout=10)
    assert r.status_code == 200
    q = [q for q in fresh_clusters["etl-1"].queries() if q["queryId"] == r.json()["id"]][0]
    h = {k.lower(): ",".join(v) for k, v in q["headers"].items()}
    assert h["x-trino-client-tags"] == "a,b"
    assert "x-secret-hop" not in h
    assert "trino-gateway" in h.get("via", "")
    assert h.get("x-forwarded-for") is None or "127.0.0.1" in h["x-forwarded-for"]
