"""The official Python client through the gateway and directly, against real coordinators.

Each check runs the same statements through the gateway (one worker and two) and directly
against the coordinator the gateway chose, and compares what the client sees.
"""
from __future__ import annotations

import hashlib
import threading
import uuid
from typing import Any

import pytest
import requests
import trino

from tests.conftest import GatewayProcess, wait_for
from tests.real.conftest import coordinator_of, history_row
from tests.real.launcher import Cluster, Coordinator

pytestmark = pytest.mark.real


def direct(c: Coordinator, user: str = "alice", **kw: Any) -> Any:
    return trino.dbapi.connect(host="127.0.0.1", port=c.port, user=user, http_scheme="http", **kw)


def run(conn: Any, sql: str, params: Any = None) -> tuple[list[list[Any]], Any]:
    cur = conn.cursor()
    cur.execute(sql, params) if params is not None else cur.execute(sql)
    return cur.fetchall(), cur


def checksum(rows: list[list[Any]]) -> str:
    """Order-independent digest of a result (Trino returns pages in no fixed order)."""
    return hashlib.sha256("\n".join(sorted(repr(r) for r in rows)).encode()).hexdigest()


def routed_to(gw: GatewayProcess, coords: Cluster, query_id: str) -> Coordinator:
    return coordinator_of(coords, history_row(gw, query_id)["backend"])


def coordinator_query(c: Coordinator, query_id: str) -> dict[str, Any]:
    """What the coordinator itself says of a query (its REST resource)."""
    r = requests.get(f"{c.url}/v1/query/{query_id}", headers={"X-Trino-User": "observer"}, timeout=10)
    assert r.status_code == 200, f"{query_id} unknown to {c.name}: {r.status_code}"
    return r.json()


def error_code(q: dict[str, Any]) -> str | None:
    return (q.get("errorCode") or {}).get("name")


def test_multi_page_result_is_identical_to_direct(gw: GatewayProcess, coords: Cluster) -> None:
    rows, cur = run(gw.connect(), "SELECT * FROM tpch.tiny.lineitem")
    assert len(rows) == 60175
    target = routed_to(gw, coords, cur.query_id)
    direct_rows, _ = run(direct(target), "SELECT * FROM tpch.tiny.lineitem")
    assert checksum(rows) == checksum(direct_rows)


@pytest.mark.parametrize("sql", ["SELEC 1", "SELECT * FROM tpch.tiny.no_such_table",
                                 "SELECT no_such_column FROM tpch.tiny.nation"])
def test_errors_are_identical_to_direct(gw: GatewayProcess, coords: Cluster, sql: str) -> None:
    with pytest.raises(trino.exceptions.TrinoUserError) as through:
        run(gw.connect(), sql)
    target = routed_to(gw, coords, through.value.query_id)
    with pytest.raises(trino.exceptions.TrinoUserError) as plain:
        run(direct(target), sql)
    for attr in ("error_name", "error_type", "error_code", "message", "error_location"):
        assert getattr(through.value, attr) == getattr(plain.value, attr), attr


def test_cancel_mid_query_is_user_canceled_on_the_coordinator(gw: GatewayProcess, coords: Cluster) -> None:
    cur = gw.connect().cursor()
    failure: list[BaseException] = []

    def long_query() -> None:
        try:
            cur.execute("SELECT count(*) FROM tpch.sf100.lineitem WHERE comment LIKE '%x%'")
            cur.fetchall()
        except BaseException as exc:  # the cancel surfaces here, or not at all
            failure.append(exc)

    t = threading.Thread(target=long_query, daemon=True)
    t.start()
    wait_for(lambda: cur.query_id, timeout=30, message="the query id")
    target = routed_to(gw, coords, cur.query_id)
    wait_for(lambda: coordinator_query(target, cur.query_id)["state"] == "RUNNING", timeout=60,
             message="the query to run")
    cur.cancel()
    t.join(30)
    assert not t.is_alive()
    final = wait_for(lambda: (q := coordinator_query(target, cur.query_id))["state"] == "FAILED" and q,
                     timeout=30, message="the coordinator to fail the query")
    assert error_code(final) == "USER_CANCELED"


def test_session_properties_use_and_prepared_statements(gw: GatewayProcess, coords: Cluster) -> None:
    conn = gw.connect(session_properties={"query_max_run_time": "17m"})
    rows, cur = run(conn, "SHOW SESSION LIKE 'query_max_run_time'")
    assert rows[0][1] == "17m"
    run(conn, "USE tpch.tiny")
    rows, _ = run(conn, "SELECT (SELECT count(*) FROM nation), current_catalog, current_schema")
    assert rows == [[25, "tpch", "tiny"]]                 # the USE holds on the next query
    rows, cur = run(conn, "SELECT name FROM nation WHERE nationkey = ? AND regionkey = ?", (7, 3))
    target = routed_to(gw, coords, cur.query_id)
    expected, _ = run(direct(target, catalog="tpch", schema="tiny"),
                      "SELECT name FROM nation WHERE nationkey = 7 AND regionkey = 3")
    assert rows == expected == [["GERMANY"]]


def test_transaction_on_the_memory_catalog(gw: GatewayProcess, coords: Cluster) -> None:
    """START TRANSACTION ... COMMIT: every statement reaches the coordinator that owns it.

    The memory connector takes writes only in autocommit mode ("Catalog only supports writes
    using autocommit"), so the table is written first and the transaction reads it; a write
    inside the transaction must fail exactly as it does directly.
    """
    table = f"memory.default.t_{gw.port}_{uuid.uuid4().hex[:6]}"
    rows, cur = run(gw.connect(source="dbt-real"), f"CREATE TABLE {table} AS SELECT * FROM (VALUES (1, 'one'), (2, 'two')) t(id, name)")
    owner = routed_to(gw, coords, cur.query_id)
    assert owner.name == "etl"          # the source rule: the table lives on etl
    conn = gw.connect(source="dbt-real", isolation_level=trino.transaction.IsolationLevel.READ_COMMITTED)
    cur = conn.cursor()
    cur.execute(f"SELECT id, name FROM {table} ORDER BY id")
    assert cur.fetchall() == [[1, "one"], [2, "two"]]
    ids = [cur.query_id]
    with pytest.raises(trino.exceptions.TrinoUserError) as through:
        cur.execute(f"INSERT INTO {table} VALUES (3, 'three')")
        cur.fetchall()
    ids.append(through.value.query_id)
    conn.rollback()
    direct_conn = direct(owner, isolation_level=trino.transaction.IsolationLevel.READ_COMMITTED)
    with pytest.raises(trino.exceptions.TrinoUserError) as plain:
        direct_conn.cursor().execute(f"INSERT INTO {table} VALUES (3, 'three')")
    direct_conn.rollback()
    assert (through.value.error_name, through.value.message) == (plain.value.error_name, plain.value.message)
    for query_id in ids:
        assert history_row(gw, query_id)["backend"] == "trino-etl"
    rows, _ = run(direct(owner), f"SELECT count(*) FROM {table}")
    assert rows == [[2]]
    run(gw.connect(source="dbt-real"), f"DROP TABLE {table}")


def test_kill_query_through_the_gateway(gw: GatewayProcess, coords: Cluster) -> None:
    victim = gw.connect(source="airflow-kill-test").cursor()   # routed to etl by source
    threading.Thread(target=lambda: _swallow(victim.execute,
                                             "SELECT count(*) FROM tpch.sf100.orders WHERE comment LIKE '%y%'"),
                     daemon=True).start()
    wait_for(lambda: victim.query_id, timeout=30, message="the victim's id")
    target = routed_to(gw, coords, victim.query_id)
    assert target.name == "etl"
    wait_for(lambda: coordinator_query(target, victim.query_id)["state"] == "RUNNING", timeout=60,
             message="the victim to run")
    # The killer has no source: by rules it would go to adhoc; the gateway pins it to the victim's.
    run(gw.connect(user="admin"), f"CALL system.runtime.kill_query(query_id => '{victim.query_id}', "
                                  "message => 'killed through the gateway')")
    final = wait_for(lambda: (q := coordinator_query(target, victim.query_id))["state"] == "FAILED" and q,
                     timeout=30, message="the victim to be killed")
    assert error_code(final) == "ADMINISTRATIVELY_KILLED"


def _swallow(fn: Any, *args: Any) -> None:
    try:
        fn(*args)
    except Exception:
        pass


def test_coordinator_sees_the_clients_user_source_and_tags(gw: GatewayProcess, coords: Cluster) -> None:
    conn = gw.connect(user="carol", source="superset-real", client_tags=["team-a", "dash"])
    _, cur = run(conn, "SELECT 1")
    target = routed_to(gw, coords, cur.query_id)
    session = coordinator_query(target, cur.query_id)["session"]
    assert (session["user"], session["source"], sorted(session["clientTags"])) == (
        "carol", "superset-real", ["dash", "team-a"])


def test_next_and_info_uris_point_at_the_gateway(gw: GatewayProcess, coords: Cluster) -> None:
    for source in ("superset", "airflow"):          # one coordinator answers 406 to X-Forwarded-*
        r = requests.post(f"{gw.url}/v1/statement", data="SELECT 1",
                          headers={"X-Trino-User": "alice", "X-Trino-Source": source}, timeout=30)
        assert r.status_code == 200, r.text
        doc = r.json()
        assert doc["infoUri"].startswith(gw.url + "/"), doc["infoUri"]
        data = list(doc.get("data", []))
        while "nextUri" in doc:
            assert doc["nextUri"].startswith(gw.url + "/"), doc["nextUri"]
            # A new connection per request, as browsers and some clients do: any worker answers.
            r = requests.get(doc["nextUri"], headers={"X-Trino-User": "alice", "Connection": "close"},
                             timeout=30)
            assert r.status_code == 200, (r.status_code, r.text[:300])
            doc = r.json()
            assert doc["infoUri"].startswith(gw.url + "/"), doc["infoUri"]
            data += doc.get("data", [])
        assert doc["stats"]["state"] == "FINISHED"
        assert data == [[1]]


def test_rejected_statement_never_reaches_a_coordinator(gw: GatewayProcess, coords: Cluster) -> None:
    with pytest.raises(trino.exceptions.TrinoQueryError) as err:
        run(gw.connect(), "SELECT * FROM memory.default.secret_table")
    assert "secret_table is not to be queried" in str(err.value)
