"""A query held in the gateway queue lives in one process; its client's polls may reach any
worker (a new connection per request, SO_REUSEPORT) or replica. Every process answers them
(gateway/admission/shared.py): queued pages, the dispatched first answer, cancels, and, if the
holder stops, adoption of the statement by another process."""
from __future__ import annotations

import threading

import requests

from tests.admission.test_admission_e2e import capped, order_on
from tests.conftest import wait_for

CLOSE = {"X-Trino-User": "alice", "Connection": "close"}   # every request on a new connection


def submit(url: str, sql: str) -> dict:
    return requests.post(url + "/v1/statement", data=sql.encode(), headers=CLOSE, timeout=10).json()


def follow(doc: dict, via: str | None = None) -> tuple[list, list[dict]]:
    """Poll to the end on new connections (through ``via`` instead of the URI's gateway if
    given); every page must be a 200. The rows and the QUEUED pages seen."""
    rows: list = []
    queued: list[dict] = []
    while True:
        rows += doc.get("data") or []
        if doc.get("stats", {}).get("state") == "QUEUED" and doc["id"].endswith("_gtw01"):
            queued.append(doc)
        if "nextUri" not in doc:
            assert "error" not in doc, doc["error"]
            return rows, queued
        uri = doc["nextUri"]
        if via is not None:
            uri = via + "/" + uri.split("/", 3)[3]
        r = requests.get(uri, headers=CLOSE, timeout=20)
        assert r.status_code == 200, (r.status_code, r.text)
        doc = r.json()


def blocker(url: str, seconds: float, etl) -> threading.Thread:
    """A query that takes the group's one slot until it ends (followed on new connections)."""
    doc = submit(url, f"SELECT sleep({seconds}), 'blocker'")
    t = threading.Thread(target=follow, args=(doc,))
    t.start()
    wait_for(lambda: order_on(etl, ["blocker"]), message="the blocker to run")
    return t


def test_held_queries_polled_on_new_connections_through_two_workers(fresh_clusters, gateway_factory, tmp_path):
    cfg = capped(tmp_path, fresh_clusters)
    cfg["server"]["workers"] = 2
    cfg["query"] = {"clientTimeout": "3s"}   # polls seen by the other worker keep it alive
    gw = gateway_factory(cfg)
    wait_for(lambda: gw.log().count("listening on") >= 2, message="two workers")
    etl = fresh_clusters["etl-1"]
    t = blocker(gw.url, 4, etl)
    held = [submit(gw.url, f"SELECT n, '{k}' FROM numbers WHERE n <= 3 ORDER BY n") for k in ("h1", "h2", "h3")]
    assert all(d["id"].endswith("_gtw01") for d in held), held
    results: dict = {}
    threads = [threading.Thread(target=lambda d=d: results.setdefault(d["id"], follow(d))) for d in held]
    for th in threads:
        th.start()
    for th in threads + [t]:
        th.join(60)
    assert len(results) == 3
    for (rows, _), key in zip((results[d["id"]] for d in held), ("h1", "h2", "h3")):
        assert rows == [[n, key] for n in (1, 2, 3)]
    # some polls were answered by the worker that does not hold the query (it does not know the
    # place in line), and none of them failed
    pages = [p for _, qs in results.values() for p in qs]
    assert any("gatewayQueuePosition" not in p["stats"] for p in pages), pages
    ran = order_on(etl, ["blocker", "h1", "h2", "h3"])
    # each ran once, after the blocker (the order among them is per worker: docs/admission.md)
    assert ran[0] == "blocker" and sorted(ran[1:]) == ["h1", "h2", "h3"], ran


def two_replicas(pg_database, fresh_clusters, gateway_factory, tmp_path):
    cfg = capped(tmp_path, fresh_clusters)
    cfg["store"]["url"] = pg_database
    cfg["query"] = {"clientTimeout": "3s"}
    return gateway_factory(cfg, name="A"), gateway_factory(cfg, name="B")


def test_a_query_held_on_one_replica_is_polled_and_canceled_through_the_other(
        pg_database, fresh_clusters, gateway_factory, tmp_path):
    a, b = two_replicas(pg_database, fresh_clusters, gateway_factory, tmp_path)
    etl = fresh_clusters["etl-1"]
    t = blocker(a.url, 3, etl)
    kept = submit(a.url, "SELECT 'kept'")
    dropped = submit(a.url, "SELECT 'dropped'")
    assert kept["id"].endswith("_gtw01") and dropped["id"].endswith("_gtw01")
    # cancel through B: 204, and A (the holder) never sends it
    r = requests.delete(dropped["nextUri"].replace(a.url, b.url), headers=CLOSE, timeout=10)
    assert r.status_code == 204, r.text
    # every poll of the other one through B, which never held it
    rows, queued = follow(kept, via=b.url)
    assert rows == [["kept"]] and queued
    t.join(30)
    assert not order_on(etl, ["dropped"])

    def canceled() -> dict | None:
        doc = requests.get(dropped["nextUri"], headers=CLOSE, timeout=10).json()
        return doc if doc.get("error") else None
    assert wait_for(canceled, message="the canceled query's answer")["error"]["errorName"] == "USER_CANCELED"
    # a held URI that was never issued is still a 404 on either replica
    bogus = kept["nextUri"].replace(kept["nextUri"].split("/")[-2], "y" + "0" * 40)
    assert requests.get(bogus.replace(a.url, b.url), headers=CLOSE, timeout=10).status_code == 404


def test_a_held_query_survives_its_holder_stopping(pg_database, fresh_clusters, gateway_factory, tmp_path):
    a, b = two_replicas(pg_database, fresh_clusters, gateway_factory, tmp_path)
    etl = fresh_clusters["etl-1"]
    t = blocker(b.url, 8, etl)
    held = submit(a.url, "SELECT 'orphan'")
    assert held["id"].endswith("_gtw01")
    a.proc.kill()          # the holder dies without a word
    a.proc.wait()
    # its client (behind a load balancer) now reaches B, which adopts the statement once A's
    # heartbeat is stale, and sends it when the slot frees
    rows, _ = follow(held, via=b.url)
    assert rows == [["orphan"]]
    t.join(30)
    assert order_on(etl, ["blocker", "orphan"]) == ["blocker", "orphan"]
    assert "adopted" in b.log()
    wait_for(lambda: any("orphan" in (r["sql"] or "") for r in b.api("GET", "/api/queries?limit=20").json()),
             message="the adopted query in history")
