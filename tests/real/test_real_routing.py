"""Routing of real queries: rules on the source and on SQL facts; explain agrees with where they went."""
from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import GatewayProcess
from tests.real.conftest import history_row

pytestmark = pytest.mark.real

CASES = [
    # (client settings, statements (the last one is checked), expected group, expected rule)
    ({"source": "airflow-dag-7"}, ["SELECT 1"], "etl", "etl-sources"),
    ({"source": "superset"}, ["SELECT orderkey FROM tpch.sf1.lineitem LIMIT 1"], "etl",
     "lineitem-sf1-to-etl"),
    ({"source": "superset"}, ["SELECT count(*) FROM tpch.tiny.lineitem"], "adhoc", None),
    # the session default from USE decides the table's full name
    ({"source": "superset"}, ["USE tpch.sf1", "SELECT orderkey FROM lineitem LIMIT 1"], "etl",
     "lineitem-sf1-to-etl"),
    ({"source": "superset", "catalog": "tpch", "schema": "sf1"},
     ["SELECT orderkey FROM lineitem LIMIT 1"], "etl", "lineitem-sf1-to-etl"),
    ({"source": "superset"}, ["SHOW SCHEMAS FROM memory"], "adhoc", None),
]


def explain(gw: GatewayProcess, settings: dict[str, Any], sql: str, catalog: str | None = None,
            schema: str | None = None) -> dict[str, Any]:
    r = gw.api("POST", "/api/routing/explain", json={
        "user": "alice", "source": settings.get("source"), "catalog": catalog or settings.get("catalog"),
        "schema": schema or settings.get("schema"), "query": sql})
    assert r.status_code == 200, r.text
    return r.json()


@pytest.mark.parametrize("settings,statements,group,rule", CASES, ids=[c[1][-1][:40] for c in CASES])
def test_rules_decide_on_real_queries_and_explain_agrees(gw: GatewayProcess, settings: dict[str, Any],
                                                         statements: list[str], group: str,
                                                         rule: str | None) -> None:
    conn = gw.connect(**settings)
    cur = conn.cursor()
    for sql in statements:
        cur.execute(sql)
        cur.fetchall()
    row = history_row(gw, cur.query_id)
    assert (row["routingGroup"], row["backend"], row["rule"]) == (group, f"trino-{group}", rule)
    # The session the client sent with the last statement (after a USE, the new defaults).
    used = [sql.split()[1].split(".") for sql in statements if sql.upper().startswith("USE ")]
    catalog, schema = used[-1] if used else (None, None)
    decision = explain(gw, settings, statements[-1], catalog, schema)
    assert (decision["routingGroup"], decision["rule"]) == (group, rule)


def test_a_reject_rule_refuses_before_any_coordinator_sees_it(gw: GatewayProcess) -> None:
    decision = explain(gw, {"source": "superset"}, "SELECT * FROM memory.default.secret_table")
    assert decision["rule"] == "no-secrets"
