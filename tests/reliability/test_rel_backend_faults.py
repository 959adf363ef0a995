"""Backend faults: a cluster killed mid-run, a cluster that accepts connections but never
answers, and a cluster that comes back on the same port."""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

import pytest
import requests
import trino

from tests.conftest import cluster_of, gateway_config, spawn_cluster, wait_for
from tests.reliability.helpers import BlackHoleRelay, metric, run_clients, sizes

DONE = ("FINISHED", "FAILED")


@dataclass
class Outcome:
    client: int
    submitted: float
    ended: float
    query_id: str | None
    error: str | None


def _loop_queries(gw: Any, client: int, stop: threading.Event, out: list[Outcome], lock: threading.Lock) -> None:
    conn = trino.dbapi.connect(host="127.0.0.1", port=gw.port, user=f"u{client}", http_scheme="http",
                               request_timeout=30)
    i = 0
    try:
        while not stop.is_set():
            k = 60 + (client * 31 + i * 17) % 120
            cur = conn.cursor()
            t0 = time.monotonic()
            err = None
            try:
                cur.execute(f"SELECT n FROM numbers WHERE n <= {k} ORDER BY n")
                rows = cur.fetchall()
                if rows != [[n] for n in range(1, k + 1)]:
                    err = f"wrong rows: {len(rows)} for {k}"
            except Exception as exc:
                err = f"{type(exc).__name__}: {exc}"
            with lock:
                out.append(Outcome(client, t0, time.monotonic(), cur.query_id, err))
            i += 1
    finally:
        conn.close()


@pytest.mark.parametrize("clients,seconds_after", sizes((8, 3.0), (40, 20.0)))
def test_killed_cluster_fails_in_flight_queries_promptly_and_no_new_query_fails(
        clients, seconds_after, gateway_factory, tmp_path, record_property):
    a = spawn_cluster("kill-a", 0, "--page-rows", "20")
    b = spawn_cluster("kill-b", 0, "--page-rows", "20")
    a2 = None
    try:
        for c in (a, b):
            c.control(slow=0.03)  # every page takes a little while: queries sit between pages
        cfg = gateway_config(tmp_path, {"kill-a": a, "kill-b": b}, groups={"kill-a": "adhoc", "kill-b": "adhoc"},
                             routing={"policy": "round-robin"}, monitor={"interval": "1s"})
        gw = gateway_factory(cfg)
        stop = threading.Event()
        outcomes: list[Outcome] = []
        lock = threading.Lock()
        threads = [threading.Thread(target=_loop_queries, args=(gw, c, stop, outcomes, lock), daemon=True)
                   for c in range(clients)]
        for t in threads:
            t.start()
        in_flight = wait_for(lambda: [q["queryId"] for q in a.queries() if q["state"] not in DONE]
                             if len(a.queries()) >= clients // 2 else None,
                             timeout=20, message="queries in flight on kill-a")
        t_kill = time.monotonic()
        a.kill()
        time.sleep(seconds_after)  # the run goes on without kill-a for a while (load, not a wait)
        stop.set()
        for t in threads:
            t.join(30)
        assert not any(t.is_alive() for t in threads), "a client hung after the cluster was killed"

        failed = [o for o in outcomes if o.error]
        after = [o for o in outcomes if o.submitted > t_kill]
        worst = max((o.ended - t_kill for o in failed), default=0.0)
        record_property("in_flight_at_kill", len(in_flight))
        record_property("failed", len(failed))
        record_property("new_queries_after_kill", len(after))
        record_property("slowest_failure_s", round(worst, 2))
        print(f"\nKILL: {len(in_flight)} in flight on kill-a, {len(failed)} failed (last {worst:.2f}s after "
              f"the kill), {len(after)} new queries after the kill, all ok; errors: {sorted({o.error[:90] for o in failed})}")
        assert failed, "queries were in flight on kill-a, yet none failed"
        for o in failed:
            assert o.submitted < t_kill, f"a query submitted after the kill failed: {o}"
            assert o.ended - t_kill < 10, f"an in-flight query took {o.ended - t_kill:.1f}s to fail: {o}"
            assert "kill-a" in o.error, f"the error does not name the lost backend: {o.error}"
        assert len(after) >= clients, "too few queries ran after the kill to say anything"
        assert [o for o in after if o.error] == []
        assert gw.api("GET", "/api/public/backends/kill-a/state").json()["health"] == "UNHEALTHY"
        assert metric(gw.api("GET", "/metrics").text, "trino_gateway_requests_total", status="500") == 0

        # The cluster comes back on the same port: the monitor sees it and it takes queries again.
        a2 = spawn_cluster("kill-a", a.port, "--page-rows", "20")
        wait_for(lambda: gw.api("GET", "/api/public/backends/kill-a/state").json()["health"] == "HEALTHY",
                 timeout=10, message="kill-a HEALTHY again")
        cur = gw.connect().cursor()
        assert {cluster_of(cur) for _ in range(6)} == {"kill-a", "kill-b"}
    finally:
        for c in (a, b, a2):
            if c is not None:
                c.stop()


def _first_page(gw: Any, group: str, sql: str) -> dict[str, Any]:
    r = requests.post(gw.url + "/v1/statement", data=sql.encode(), timeout=10,
                      headers={"X-Trino-User": "alice", "X-Trino-Routing-Group": group})
    assert r.status_code == 200, r.text
    return r.json()


@pytest.mark.parametrize("stuck", sizes(8, 40))
def test_backend_that_never_answers_times_out_and_blocks_nobody(
        stuck, fresh_clusters, gateway_factory, tmp_path, record_property):
    relay = BlackHoleRelay(fresh_clusters["etl-1"].port)
    try:
        cfg = gateway_config(tmp_path, {"adhoc-1": fresh_clusters["adhoc-1"]}, groups={"adhoc-1": "adhoc"},
                             server={"backendRequestTimeout": "1500ms"},
                             monitor={"interval": "300ms", "timeout": "500ms"})
        cfg["backends"].append({"name": "hole", "proxyTo": relay.url, "routingGroup": "hole"})
        cfg["groups"] = {"hole": {"fallback": "none"}}
        gw = gateway_factory(cfg)
        wait_for(lambda: gw.api("GET", "/api/public/backends/hole/state").json()["health"] == "HEALTHY",
                 message="hole HEALTHY while it relays")

        # Queries on the relayed cluster, each sitting between pages.
        sql = "SELECT n FROM numbers WHERE n <= 500 ORDER BY n"
        pages = [_first_page(gw, "hole", sql) for _ in range(stuck)]
        assert all("nextUri" in p for p in pages)

        healthy = gw.connect()

        def healthy_query(c: int, i: int, _: Any) -> None:
            cur = healthy.cursor() if c == 0 else gw.connect().cursor()
            cur.execute("SELECT n FROM numbers WHERE n <= 150 ORDER BY n")
            assert cur.fetchall() == [[n] for n in range(1, 151)]

        baseline = run_clients(2, 10, healthy_query)
        assert not baseline.errors, baseline.errors

        relay.swallow()
        t_hole = time.monotonic()
        stuck_results: list[tuple[float, int, str]] = []
        lock = threading.Lock()

        def poll(doc: dict[str, Any]) -> None:
            t0 = time.monotonic()
            r = requests.get(doc["nextUri"], headers={"X-Trino-User": "alice"}, timeout=30)
            with lock:
                stuck_results.append((time.monotonic() - t0, r.status_code, r.text))

        def new_statement() -> None:
            t0 = time.monotonic()
            doc = _first_page(gw, "hole", "SELECT 1")
            with lock:
                stuck_results.append((time.monotonic() - t0, 200, doc.get("error", {}).get("message", "")))

        pollers = [threading.Thread(target=poll, args=(p,)) for p in pages]
        pollers += [threading.Thread(target=new_statement) for _ in range(2)]
        for t in pollers:
            t.start()
        # Meanwhile the healthy cluster serves as before, and the event loop stays responsive.
        during = run_clients(2, 10, healthy_query)
        livez = []
        for _ in range(20):
            t0 = time.monotonic()
            assert gw.api("GET", "/trino-gateway/livez").status_code == 200
            livez.append(time.monotonic() - t0)
        for t in pollers:
            t.join(30)
        assert not any(t.is_alive() for t in pollers)
        assert not during.errors, during.errors

        record_property("baseline_p50_ms", round(baseline.p(0.5) * 1000))
        record_property("during_max_ms", round(max(during.latencies) * 1000))
        record_property("stuck_max_s", round(max(x[0] for x in stuck_results), 2))
        print(f"\nHANG: {len(stuck_results)} requests stuck on the hole answered in at most "
              f"{max(x[0] for x in stuck_results):.2f}s; healthy queries p50 {baseline.p(0.5) * 1000:.0f} ms "
              f"before, max {max(during.latencies) * 1000:.0f} ms during; livez max {max(livez) * 1000:.0f} ms")
        for seconds, code, text in stuck_results:
            assert seconds < 5, f"a request to the hanging backend took {seconds:.1f}s"
            assert "hole" in text, text
            if code != 200:  # a poll: the gateway's own timeout answer
                assert code == 504 and "no answer within 1.5s" in text, (code, text)
            else:            # a new statement: a Trino-shaped failure
                assert "no answer within 1.5s" in text or "strict isolation" in text, text
        # No healthy request waited behind a hanging one (the timeout is 1.5 s).
        assert max(during.latencies) < 1.0, sorted(during.latencies)[-3:]
        assert max(livez) < 0.5, max(livez)

        # The monitor's own probe marks it down (its error is a probe timeout) and keeps it down.
        def probed_down() -> bool:
            st = gw.api("GET", "/api/public/backends/hole/state").json()
            return st["health"] == "UNHEALTHY" and "timed out" in (st["error"] or "")
        wait_for(probed_down, timeout=5, message="the monitor to mark the hanging backend down")
        doc = _first_page(gw, "hole", "SELECT 1")
        assert "hole" in doc["error"]["message"]

        relay.relay()
        wait_for(lambda: gw.api("GET", "/api/public/backends/hole/state").json()["health"] == "HEALTHY",
                 timeout=10, message="the backend HEALTHY again")
        cur = gw.connect(http_headers={"X-Trino-Routing-Group": "hole"}).cursor()
        assert cluster_of(cur) == "etl-1"
    finally:
        relay.close()
