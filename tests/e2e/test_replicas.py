"""Several gateway replicas (separate ``trino-gateway serve`` processes on their own ports, as
behind a load balancer) sharing one PostgreSQL store, against simulated clusters.

- a query started on replica A is followed to the end through B (and alternating), spooled
  segments too, routed by token alone;
- the routing-token key and the OAuth2 cookie key are created once per deployment; a key
  rotation done replica by replica keeps running queries working;
- ids clients bring on their own (``/v1/query/<id>``, ``/ui/api/query/<id>``, ``kill_query``)
  of a query started on A are found on B;
- a backend added through A's REST API is routed to by B, and a drain on A is honoured by B;
- history rows written by both replicas are one history.

Needs PostgreSQL (``TRINO_GATEWAY_REQUIRE_PG=1`` makes a missing server a failure).
"""
from __future__ import annotations

import re
import threading

import psycopg
import pytest
import requests
import trino

from tests.conftest import gateway_config, spawn_cluster, wait_for
from tests.e2e.test_request_path import follow_pages, owner_lookups

USER = {"X-Trino-User": "alice", "Connection": "close"}


@pytest.fixture
def replica(pg_database, gateway_factory, tmp_path):
    """Start one replica on the shared PostgreSQL database: ``replica(clusters, name, **overrides)``."""
    def start(clusters, name, *, workers=1, **overrides):
        cfg = gateway_config(tmp_path, clusters, store_url=pg_database, **overrides)
        cfg.setdefault("server", {})["workers"] = workers
        gw = gateway_factory(cfg, name=name)
        if workers > 1:
            wait_for(lambda: gw.log().count("listening on") >= workers, message=f"{workers} workers of {name}")
        return gw
    return start


def _base(uri: str) -> str:
    return re.match(r"https?://[^/]+", uri).group(0)


def follow_alternating(doc: dict, replicas: list, headers: dict) -> list:
    """Follow a query to its end, sending each follow-up (pages, spooled segments and their
    acks) to the next replica in turn, whatever replica wrote the URI."""
    turn = iter(range(10**6))

    def get(uri: str) -> requests.Response:
        if "/v1/spooled/" in uri:
            assert "/_r/" in uri, uri          # segments and acks carry a routing token too
        target = replicas[next(turn) % len(replicas)].url
        r = requests.get(uri.replace(_base(uri), target), headers=headers, timeout=20)
        assert r.status_code == 200, (r.status_code, r.text)
        return r
    return follow_pages(doc, get)


def _delta(after: dict, before: dict) -> dict:
    return {k: after.get(k, 0) - before.get(k, 0) for k in set(after) | set(before)}


def test_a_query_started_on_one_replica_is_followed_through_the_other(replica, fresh_clusters):
    a = replica(fresh_clusters, "A", workers=2)
    b = replica(fresh_clusters, "B", workers=2)
    sql = b"SELECT n FROM numbers WHERE n <= 400 ORDER BY n"
    for c in fresh_clusters.values():
        c.control(spooling=True, page_rows=50, spool_inline_bytes=0)
    try:
        before_a, before_b = owner_lookups(a), owner_lookups(b)
        for i in range(4):
            spooled = i % 2 == 0
            headers = {**USER, "X-Trino-Query-Data-Encoding": "json"} if spooled else USER
            doc = requests.post(a.url + "/v1/statement", data=sql, headers=headers, timeout=20).json()
            only_b = follow_alternating(doc, [b], USER) if i < 2 else None
            if only_b is None:  # started on A, then B, A, B, ...
                only_b = follow_alternating(doc, [b, a], USER)
            assert only_b == [[n] for n in range(1, 401)]
        delta_a, delta_b = _delta(owner_lookups(a), before_a), _delta(owner_lookups(b), before_b)
        # every follow-up on B (and A) was routed by its token: no memory, store or probe lookup
        assert delta_b.get("token", 0) >= 2 * 8 + 2 * 4, delta_b
        for delta in (delta_a, delta_b):
            assert all(delta.get(k, 0) == 0 for k in ("memory", "probe", "store", "none", "refused")), delta
    finally:
        for c in fresh_clusters.values():
            c.control(spooling=False)


def _stored(pg_url: str) -> dict[str, str]:
    with psycopg.connect(pg_url) as conn:
        return dict(conn.execute("SELECT name, value FROM shared_secrets").fetchall())


def test_keys_are_created_once_per_deployment_and_rotation_keeps_queries_running(
        replica, pg_database, fresh_clusters):
    a = replica(fresh_clusters, "A")
    b = replica(fresh_clusters, "B")
    stored = _stored(pg_database)
    assert set(stored) == {"routing-token-key", "oauth-cookie-key"}, stored   # one row each, shared

    def kid(uri: str) -> str:
        return uri.split("/_r/", 1)[1].split(".", 1)[0]
    doc_a = requests.post(a.url + "/v1/statement", data=b"SELECT 1", headers=USER, timeout=10).json()
    doc_b = requests.post(b.url + "/v1/statement", data=b"SELECT 1", headers=USER, timeout=10).json()
    assert kid(doc_a["nextUri"]) == kid(doc_b["nextUri"])              # the same key signs on both
    assert follow_alternating(doc_a, [b], USER) == [[1]]
    assert follow_alternating(doc_b, [a], USER) == [[1]]

    # Rotation, replica by replica (docs/sticky-routing.md): a query runs throughout.
    old, new = stored["routing-token-key"], "n" * 32
    slow = requests.post(a.url + "/v1/statement", data=b"SELECT sleep(3), 'slow'", headers=USER,
                         timeout=10).json()
    old_kid = kid(slow["nextUri"])
    # step 1: every replica accepts the new key (still signing with the old one)
    b.stop()
    b1 = replica(fresh_clusters, "B1", routing={"tokenKey": old, "previousTokenKeys": [new]})
    # step 2: every replica signs with the new key and still accepts the old one
    a.stop()
    a2 = replica(fresh_clusters, "A2", routing={"tokenKey": new, "previousTokenKeys": [old]})
    fresh = requests.post(a2.url + "/v1/statement", data=b"SELECT 2", headers=USER, timeout=10).json()
    assert kid(fresh["nextUri"]) != old_kid
    # B1 (step 1) follows URIs A2 signed with the new key, A2 follows the old running query's
    assert follow_alternating(fresh, [b1, a2], USER) == [[2]]
    rows = follow_alternating(slow, [a2, b1], USER)
    assert rows and rows[-1][1] == "slow"
    # the stored key stays what it was: rotation is configuration, not a second stored row
    assert _stored(pg_database) == stored


def test_oauth2_login_started_on_one_replica_completes_on_the_other(replica, tmp_path):
    idp = spawn_cluster("oauth-r", 0, "--auth", "oauth2")
    try:
        clusters = {"oauth-r": idp}
        a = replica(clusters, "A", groups={"oauth-r": "adhoc"})
        b = replica(clusters, "B", groups={"oauth-r": "adhoc"})
        for first, second in ((a, b), (b, a)):
            r = requests.post(first.url + "/v1/statement", data=b"SELECT 1", headers=USER, timeout=10)
            assert r.status_code == 401
            challenge = r.headers["WWW-Authenticate"]
            redirect = re.search(r'x_redirect_server="([^"]+)"', challenge).group(1)
            token_uri = re.search(r'x_token_server="([^"]+)"', challenge).group(1)
            start = requests.get(redirect, allow_redirects=False, timeout=10)
            assert start.status_code == 303, start.text
            # the identity provider sends the browser back; the load balancer picks the other
            callback = start.headers["Location"].replace(first.url, second.url)
            done = requests.get(callback, cookies=start.cookies, allow_redirects=False, timeout=10)
            assert done.status_code == 200, done.text   # the callback cookie verifies on the other
            tok = requests.get(token_uri.replace(first.url, second.url), timeout=20).json()
            assert "token" in tok, tok
    finally:
        idp.stop()


def test_ids_clients_bring_of_a_query_started_on_one_replica_answer_on_the_other(
        replica, fresh_clusters):
    a = replica(fresh_clusters, "A")
    b = replica(fresh_clusters, "B")
    before = owner_lookups(b)
    for _ in range(3):
        doc = requests.post(a.url + "/v1/statement", data=b"SELECT sleep(1)", headers=USER, timeout=10).json()
        qid = doc["id"]
        # at once, on B: no 404 (B never saw the query; it probes or reads the store)
        r = requests.get(f"{b.url}/v1/query/{qid}", headers=USER, timeout=10)
        assert r.status_code == 200 and qid in r.text, (r.status_code, r.text)
        # as a browser calls it (no X-Trino-User): the owner's own answer (its UI wants a login:
        # 401, as on A and as directly on the cluster), never the gateway's 404
        ui = [requests.get(f"{gw.url}/ui/api/query/{qid}", headers={"Connection": "close"}, timeout=10)
              for gw in (b, a)]
        assert ui[0].status_code == ui[1].status_code != 404, [(r.status_code, r.text) for r in ui]
        assert "not known to the gateway" not in ui[0].text
        follow_alternating(doc, [a], USER)
    # B found them by asking the backends or the store, never "not found"
    delta = _delta(owner_lookups(b), before)
    assert delta.get("probe", 0) + delta.get("store", 0) + delta.get("memory", 0) >= 3, delta
    assert delta.get("none", 0) == 0, delta
    # kill_query on B of a query running through A
    victim = a.connect().cursor()
    res: dict = {}

    def run() -> None:
        try:
            victim.execute("SELECT sleep(20), 'victim'")
            res["rows"] = victim.fetchall()
        except trino.exceptions.TrinoQueryError as exc:
            res["error"] = exc
    t = threading.Thread(target=run)
    t.start()
    qid = wait_for(lambda: victim.query_id, message="the victim's id")
    b.connect().cursor().execute(f"CALL system.runtime.kill_query('{qid}', 'replica test')").fetchall()
    t.join(30)
    assert "error" in res, res          # killed (a finished sleep would have given rows)
    assert "replica test" in str(res["error"]) or "kill" in str(res["error"]).lower(), res["error"]


def _cluster_of_on(gw) -> str:
    doc = requests.post(gw.url + "/v1/statement", data=b"SELECT current_cluster()", headers=USER,
                        timeout=10).json()
    return follow_alternating(doc, [gw], USER)[0][0]


def test_backend_changes_and_drain_on_one_replica_are_honoured_by_the_other(
        replica, fresh_clusters):
    only_one = {"adhoc-1": "adhoc"}
    a = replica(fresh_clusters, "A", groups=only_one)
    b = replica(fresh_clusters, "B", groups=only_one)
    assert {_cluster_of_on(b) for _ in range(4)} == {"adhoc-1"}
    backend = {"name": "adhoc-2", "proxyTo": fresh_clusters["adhoc-2"].url, "routingGroup": "adhoc",
               "active": True}
    assert a.api("POST", "/gateway/backend/modify/add", json=backend).status_code == 200
    # B loads it from the store (store.syncInterval, 200 ms here), probes it HEALTHY with its own
    # monitor (monitor.interval, 300 ms here), then routes to it (docs/deployment.md)
    wait_for(lambda: b.api("GET", "/api/public/backends/adhoc-2/state").json()["health"] == "HEALTHY",
             timeout=10, message="B to know and probe the backend added on A")
    wait_for(lambda: "adhoc-2" in {_cluster_of_on(b) for _ in range(4)}, message="B routing to adhoc-2")
    # drain adhoc-1 on A: B takes no new query there
    assert a.api("POST", "/gateway/backend/deactivate/adhoc-1").status_code == 200
    wait_for(lambda: b.api("GET", "/api/public/backends/adhoc-1").json()["active"] is False,
             timeout=5, message="B to see the drain")
    assert {_cluster_of_on(b) for _ in range(8)} == {"adhoc-2"}
    # deleting on A removes it on B too
    assert a.api("POST", "/gateway/backend/modify/delete", data="adhoc-1").status_code == 200
    wait_for(lambda: "adhoc-1" not in [x["name"] for x in b.api("GET", "/gateway/backend/all").json()],
             timeout=5, message="B to drop the deleted backend")


def test_history_written_by_both_replicas_is_one_history(replica, fresh_clusters):
    a = replica(fresh_clusters, "A")
    b = replica(fresh_clusters, "B")
    ids = set()
    for gw, tag in ((a, "on_a"), (b, "on_b"), (a, "on_a"), (b, "on_b")):
        doc = requests.post(gw.url + "/v1/statement", data=f"SELECT 1 AS {tag}".encode(), headers=USER,
                            timeout=10).json()
        follow_alternating(doc, [gw], USER)
        ids.add(doc["id"])

    def both_see_all() -> bool:
        return all(ids <= {r["queryId"] for r in gw.api("GET", "/api/queries?limit=50").json()}
                   for gw in (a, b))
    wait_for(both_see_all, message="every query in the history of both replicas")
    rows = [r for r in a.api("GET", "/api/queries?limit=50").json() if r["queryId"] in ids]
    assert len(rows) == 4 and all(r["backend"] for r in rows)
