"""A real coordinator killed mid-query; monitors reading a real coordinator's counts."""
from __future__ import annotations

import threading
from typing import Any

import pytest
import requests
import trino

from tests.conftest import GatewayProcess, wait_for
from tests.real.conftest import history_row
from tests.real.launcher import Cluster, Coordinator

pytestmark = pytest.mark.real

LONG_QUERY = "SELECT count(*) FROM tpch.sf100.lineitem WHERE comment LIKE '%zz%'"


def state(gw: GatewayProcess, backend: str) -> dict[str, Any]:
    r = gw.api("GET", f"/api/public/backends/{backend}/state")
    assert r.status_code == 200, r.text
    return r.json()


def start_long_query(gw: GatewayProcess, **kw: Any) -> tuple[Any, list[BaseException], threading.Thread]:
    cur = gw.connect(**kw).cursor()
    errors: list[BaseException] = []

    def go() -> None:
        try:
            cur.execute(LONG_QUERY)
            cur.fetchall()
        except BaseException as exc:
            errors.append(exc)

    t = threading.Thread(target=go, daemon=True)
    t.start()
    wait_for(lambda: cur.query_id, timeout=30, message="the long query's id")
    return cur, errors, t


def running_on(c: Coordinator, query_id: str) -> bool:
    r = requests.get(f"{c.url}/v1/query/{query_id}", headers={"X-Trino-User": "observer"}, timeout=5)
    return r.status_code == 200 and r.json()["state"] == "RUNNING"


def test_a_killed_coordinator_fails_its_query_and_the_next_ones_go_elsewhere(
        coords: Cluster, real_gateway_factory: Any) -> None:
    etl = coords.coordinators["etl"]
    if etl.attached:
        pytest.skip("coordinators attached from outside the tests: not killed here")
    gw = real_gateway_factory(monitor={"interval": "500ms", "timeout": "3s"})
    cur, errors, t = start_long_query(gw, source="airflow-fault")
    assert history_row(gw, cur.query_id)["backend"] == "trino-etl"
    wait_for(lambda: running_on(etl, cur.query_id), timeout=60, message="the query to run on etl")
    try:
        etl.kill()
        t.join(60)
        assert not t.is_alive(), "the client is still waiting on a dead coordinator"
        # A Trino-shaped error the client shows, naming the lost backend.
        assert errors and isinstance(errors[0], trino.exceptions.TrinoQueryError), errors
        assert "trino-etl" in str(errors[0])
        wait_for(lambda: state(gw, "trino-etl")["health"] == "UNHEALTHY", timeout=30,
                 message="the monitor to mark etl UNHEALTHY")
        # The etl group falls back to the default group while its only backend is down.
        cur2 = gw.connect(source="airflow-after").cursor()
        cur2.execute("SELECT 1")
        assert cur2.fetchall() == [[1]]
        assert history_row(gw, cur2.query_id)["backend"] == "trino-adhoc"
    finally:
        coords.restart("etl")
    wait_for(lambda: state(gw, "trino-etl")["health"] == "HEALTHY", timeout=60,
             message="etl HEALTHY again after the restart")
    cur3 = gw.connect(source="airflow-back").cursor()
    cur3.execute("SELECT 1")
    cur3.fetchall()
    assert history_row(gw, cur3.query_id)["backend"] == "trino-etl"


@pytest.mark.parametrize("monitor", ["ui-api", "metrics"])
def test_monitors_report_the_real_running_count(coords: Cluster, real_gateway_factory: Any, monitor: str) -> None:
    gw = real_gateway_factory(monitor={"type": monitor, "interval": "300ms", "timeout": "3s"})
    adhoc = coords.coordinators["adhoc"]
    cur, errors, t = start_long_query(gw, source="monitor-check")
    try:
        assert history_row(gw, cur.query_id)["backend"] == "trino-adhoc"
        wait_for(lambda: running_on(adhoc, cur.query_id), timeout=60, message="the query to run")
        seen = wait_for(lambda: (s := state(gw, "trino-adhoc"))["running"] >= 1 and s, timeout=30,
                        message=f"the {monitor} monitor to see the running query")
        assert seen["health"] == "HEALTHY" and seen["queued"] == 0
    finally:
        cur.cancel()
        t.join(30)
    wait_for(lambda: state(gw, "trino-adhoc")["running"] == 0, timeout=30,
             message=f"the {monitor} monitor to see the query end")
