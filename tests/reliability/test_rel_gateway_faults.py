"""Gateway faults: the gateway dies by SIGKILL while clients sit between result pages; a new
gateway process on the same port and store picks the queries up and every client finishes with
exactly its rows. (SIGTERM draining and a second process sharing the store are covered in
tests/ops and tests/e2e.)"""
from __future__ import annotations

import signal
import threading
import time
from typing import Any

import pytest
import trino

from tests.conftest import gateway_config, wait_for
from tests.reliability.helpers import free_port, sizes


@pytest.mark.parametrize("clients", sizes(10, 60))
def test_sigkill_between_pages_then_new_gateway_on_same_store_continues_every_query(
        clients, fresh_clusters, gateway_factory, tmp_path, record_property):
    port = free_port()
    cfg = gateway_config(tmp_path, fresh_clusters, server={"port": port})
    gw1 = gateway_factory(cfg, name="gw1")
    rows = 450  # five pages of 100
    paused = threading.Barrier(clients + 1)
    resume = threading.Event()
    results: dict[int, Any] = {}

    def client(c: int) -> None:
        try:
            conn = trino.dbapi.connect(host="127.0.0.1", port=port, user=f"u{c}", http_scheme="http")
            cur = conn.cursor()
            cur.execute(f"SELECT n, {c} FROM numbers WHERE n <= {rows} ORDER BY n")
            got = cur.fetchmany(50)           # the first page only; the rest is still on the backend
            paused.wait(30)
            resume.wait(60)
            got += cur.fetchall()             # the remaining pages, through the new gateway
            results[c] = got == [[n, c] for n in range(1, rows + 1)] or f"{len(got)} rows, last {got[-1:]}"
            conn.close()
        except Exception as exc:
            results[c] = f"{type(exc).__name__}: {exc}"

    threads = [threading.Thread(target=client, args=(c,), daemon=True) for c in range(clients)]
    for t in threads:
        t.start()
    paused.wait(60)
    # The mappings reached the store (written in the background every flush interval).
    wait_for(lambda: len(gw1.api("GET", "/api/queries?limit=1000").json()) >= clients, timeout=10,
             message="the queries in the store")
    gw1.proc.send_signal(signal.SIGKILL)
    gw1.proc.wait(10)
    t0 = time.monotonic()
    gw2 = gateway_factory(cfg, name="gw2")
    restart = time.monotonic() - t0
    assert gw2.port == port
    resume.set()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads)
    bad = {c: r for c, r in results.items() if r is not True}
    record_property("clients", clients)
    record_property("restart_seconds", round(restart, 2))
    print(f"\nSIGKILL: {clients} clients between pages, new gateway ready in {restart:.2f}s, "
          f"{clients - len(bad)} finished exactly")
    assert len(results) == clients and not bad, bad

    # The new process learned the final states of queries the old one had recorded.
    def all_finished() -> bool:
        hist = gw2.api("GET", "/api/queries?limit=1000").json()
        mine = [h for h in hist if h["user"].startswith("u")]
        return len(mine) == clients and all(h["finalState"] == "FINISHED" for h in mine)
    wait_for(all_finished, timeout=10, message="every query FINISHED in the shared history")
