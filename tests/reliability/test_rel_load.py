"""Load: many concurrent official-client users, multi-page results exact to the row, no error,
flat gateway memory and no file-descriptor leak afterwards."""
from __future__ import annotations

import gc
from typing import Any

import pytest
import trino

from tests.conftest import gateway_config, wait_for
from tests.reliability.helpers import fd_kinds, metric, rss_mb, run_clients, sizes

ALL_ADHOC = {"adhoc-1": "adhoc", "adhoc-2": "adhoc", "etl-1": "adhoc"}


def rows_for(client: int, i: int) -> int:
    """Each query asks for a different number of rows: 1 to 5 pages of 100."""
    return 60 + (client * 37 + i * 101) % 440


def _connect(gw: Any, client: int) -> Any:
    return trino.dbapi.connect(host="127.0.0.1", port=gw.port, user=f"load-{client % 7}",
                               source="reliability-load", http_scheme="http", request_timeout=60)


def _query(conn: Any, client: int, i: int) -> None:
    k = rows_for(client, i)
    cur = conn.cursor()
    cur.execute(f"SELECT n, n * 2 FROM numbers WHERE n <= {k} ORDER BY n")
    rows = cur.fetchall()
    if rows != [[n, 2 * n] for n in range(1, k + 1)]:
        raise AssertionError(f"wrong rows for k={k}: {len(rows)} rows, first {rows[:2]}, last {rows[-2:]}")


@pytest.mark.parametrize("clients,queries", sizes((50, 10), (200, 20)))
def test_concurrent_clients_get_exact_rows_with_flat_memory_and_no_fd_leak(
        clients, queries, fresh_clusters, gateway_factory, tmp_path, record_property):
    cfg = gateway_config(tmp_path, fresh_clusters, groups=ALL_ADHOC,
                         routing={"policy": "round-robin"},
                         server={"idleConnectionTimeout": "5s"})
    gw = gateway_factory(cfg)
    pid = gw.proc.pid

    def run(n_queries: int) -> Any:
        return run_clients(clients, n_queries, lambda c, i, conn: _query(conn, c, i),
                           make_state=lambda c: _connect(gw, c), close_state=lambda conn: conn.close())

    # Warm-up at full concurrency: imports, pools and buffers reach their working size.
    warm = run(2)
    assert not warm.errors, warm.errors[:5]
    wait_for(lambda: fd_kinds(pid)["in"] == 0, timeout=15, message="the warm-up's client connections to close")
    fds_idle = fd_kinds(pid)
    rss_warm = rss_mb(pid)

    res = run(queries)
    total = clients * queries
    assert not res.errors, f"{len(res.errors)} errors, first: {res.errors[:5]}"
    assert res.ok == total

    # every query was routed once, and every backend took a share
    text = gw.api("GET", "/metrics").text
    assert metric(text, "trino_gateway_statements_routed_total") == total + 2 * clients
    for name in ALL_ADHOC:
        assert metric(text, "trino_gateway_statements_routed_total", backend=name) > 0, name
    assert metric(text, "trino_gateway_requests_total", status="500") == 0

    # history holds every query (written in the background)
    wait_for(lambda: len(gw.api("GET", f"/api/queries?limit={total + 2 * clients}").json())
             == total + 2 * clients, timeout=20, message="every query in the history")

    gc.collect()
    rss_after = rss_mb(pid)
    growth = rss_after - rss_warm
    # Client connections close with the clients; backend keep-alive pools may grow up to the
    # run's peak concurrency (at most 64 idle per backend); anything else would be a leak.
    wait_for(lambda: fd_kinds(pid)["in"] == 0, timeout=15, message="the client connections to close")
    fds_after = wait_for(lambda: (k := fd_kinds(pid))["other"] <= fds_idle["other"] + 2 and k, timeout=5,
                         message=f"fds other than sockets back to {fds_idle['other']}")
    record_property("queries", total)
    record_property("seconds", round(res.seconds, 1))
    record_property("queries_per_second", round(total / res.seconds, 1))
    record_property("p50_ms", round(res.p(0.5) * 1000))
    record_property("p99_ms", round(res.p(0.99) * 1000))
    record_property("rss_warm_mb", round(rss_warm, 1))
    record_property("rss_growth_mb", round(growth, 1))
    record_property("fds_idle", str(fds_idle))
    record_property("fds_after", str(fds_after))
    print(f"\nLOAD {clients}x{queries}={total} queries in {res.seconds:.1f}s "
          f"({total / res.seconds:.0f}/s), p50 {res.p(0.5) * 1000:.0f} ms, p99 {res.p(0.99) * 1000:.0f} ms; "
          f"RSS {rss_warm:.1f} -> {rss_after:.1f} MB; fds {fds_idle} -> {fds_after}")
    assert growth < 20 + total / 400, f"gateway RSS grew {growth:.1f} MB over {total} queries"
    assert fds_after["other"] <= fds_idle["other"] + 2, f"fds {fds_idle} -> {fds_after} after {total} queries"
    assert fds_after["out"] <= len(ALL_ADHOC) * min(64, clients) + 3, f"fds {fds_idle} -> {fds_after}"
