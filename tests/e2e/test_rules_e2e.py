"""Rules route real client queries: groups by user/source/tags/SQL, reject, reload under load,
explain, /api/rules and the rule name in query history."""
from __future__ import annotations

import os
import shutil
import threading
import time
from pathlib import Path

import pytest
import trino

from tests.conftest import REPO, cluster_of, gateway_config, wait_for
from tests.routing.examples import ISSUE_EXAMPLE

RULES = ISSUE_EXAMPLE + """\
---
name: no-drop
priority: 100
condition: queryType == "DATA_DEFINITION" and query =~ "(?i)\\\\s*drop.*"
reject: "DROP is frozen until Monday"
"""


@pytest.fixture
def ruled(fresh_clusters, gateway_factory, tmp_path):
    rules = tmp_path / "rules"
    rules.mkdir(exist_ok=True)
    (rules / "etl.yaml").write_text(RULES)
    return gateway_factory(gateway_config(tmp_path, fresh_clusters))


def test_rules_route_client_queries_as_written(ruled):
    assert cluster_of(ruled.connect(source="airflow-dag-7").cursor()) == "etl-1"
    assert cluster_of(ruled.connect(source="dbt").cursor()) == "etl-1"
    assert cluster_of(ruled.connect(client_tags=["team-x", "etl"]).cursor()) == "etl-1"
    assert cluster_of(ruled.connect(source="superset").cursor()).startswith("adhoc-")
    # SQL facts: a CTAS counts as INSERT (as in Trino) and goes to etl
    cur = ruled.connect().cursor()
    cur.execute("CREATE TABLE t_rules AS SELECT 1 AS x")
    cur.fetchall()
    wait_for(lambda: [q for q in ruled_queries(ruled, "etl-1") if "CREATE TABLE t_rules" in q["sql"]
                      and q["rule"] == "big-scans"], message="the CTAS routed to etl by big-scans")
    # a table the SQL names, qualified with the session catalog and schema
    cur = ruled.connect(catalog="hive", schema="raw").cursor()
    with pytest.raises(trino.exceptions.TrinoUserError):  # no such table here, but etl-1 said so
        cur.execute("SELECT current_cluster() FROM events")
        cur.fetchall()
    wait_for(lambda: [q for q in ruled_queries(ruled, "etl-1") if "FROM events" in q["sql"]],
             message="the query on hive.raw.events routed to etl")


def ruled_queries(gw, backend):
    rows = gw.api("GET", f"/api/queries?backend={backend}&limit=100").json()
    return rows


def test_reject_rule_answers_a_trino_failure_with_its_message(ruled):
    cur = ruled.connect().cursor()
    with pytest.raises(trino.exceptions.TrinoUserError) as err:
        cur.execute("DROP TABLE nation")
    assert "DROP is frozen until Monday" in str(err.value)
    assert 'trino_gateway_statements_rejected_total{rule="no-drop"} 1.0' in ruled.api("GET", "/metrics").text


def test_history_records_the_deciding_rule(ruled):
    cur = ruled.connect(source="airflow", user="etl_bot").cursor()
    cur.execute("SELECT 1")
    cur.fetchall()
    qid = cur.query_id
    row = wait_for(lambda: [r for r in ruled.api("GET", "/api/queries?user=etl_bot").json()
                            if r["queryId"] == qid and r["finalState"]], message="history row with final state")[0]
    assert row["rule"] == "etl-tools" and row["routingGroup"] == "etl" and row["backend"] == "etl-1"
    assert row["source"] == "airflow" and row["finalState"] == "FINISHED"


def test_api_rules_and_explain(ruled, tmp_path):
    doc = ruled.api("GET", "/api/rules").json()
    assert doc["error"] is None and len(doc["version"]) >= 8
    assert [r["name"] for r in doc["rules"]] == ["no-drop", "big-scans", "etl-tools"]
    r = ruled.api("POST", "/api/routing/explain", json={"user": "bob", "source": "airflow", "query": "SELECT 1"})
    out = r.json()
    assert out["routingGroup"] == "etl" and out["rule"] == "etl-tools" and out["backend"] == "etl-1"
    assert [t["rule"] for t in out["trace"]][:3] == ["no-drop", "big-scans", "etl-tools"]
    r = ruled.api("POST", "/api/routing/explain", json={"user": "bob", "query": "INSERT INTO x SELECT * FROM y"})
    assert r.json()["rule"] == "big-scans"
    r = ruled.api("POST", "/api/routing/explain", json={"bogus": 1})
    assert r.status_code == 400 and "bogus" in r.json()["error"]


def test_broken_edit_keeps_last_good_rules_and_reports_the_error(ruled, tmp_path):
    path = tmp_path / "rules" / "etl.yaml"
    path.write_text(RULES.replace('source =~ "(airflow|dbt).*"', 'sourc =~ "x"'))
    doc = wait_for(lambda: (d := ruled.api("GET", "/api/rules").json())["error"] and d, timeout=3,
                   message="the load error to show")
    assert "etl.yaml:3" in doc["error"] and "sourc" in doc["error"]  # the condition's line
    assert "trino_gateway_rules_error 1.0" in ruled.api("GET", "/metrics").text
    assert cluster_of(ruled.connect(source="airflow").cursor()) == "etl-1"  # old rules still route
    path.write_text(RULES)
    wait_for(lambda: ruled.api("GET", "/api/rules").json()["error"] is None, timeout=3, message="recovery")


def test_edit_under_load_takes_effect_within_a_second_with_zero_failures(ruled, tmp_path):
    stop = threading.Event()
    failures: list[BaseException] = []
    answered: list[tuple[float, str]] = []

    def client() -> None:
        cur = ruled.connect(source="looker").cursor()
        while not stop.is_set():
            try:
                answered.append((time.monotonic(), cluster_of(cur)))
            except BaseException as exc:
                failures.append(exc)

    threads = [threading.Thread(target=client) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        wait_for(lambda: len(answered) > 20, message="load")
        assert all(c.startswith("adhoc-") for _, c in answered)
        # an editor's atomic save: write a temp file and rename it over the rules file
        tmp = tmp_path / "rules" / ".etl.yaml.swp"
        tmp.write_text(RULES.replace('(airflow|dbt).*', '(airflow|dbt|looker).*'))
        saved = time.monotonic()
        os.replace(tmp, tmp_path / "rules" / "etl.yaml")
        wait_for(lambda: any(t > saved and c == "etl-1" for t, c in answered), timeout=3,
                 message="queries to follow the new rule")
        first = min(t for t, c in answered if t > saved and c == "etl-1")
        assert first - saved < 1.0
        wait_for(lambda: len([1 for t, _ in answered if t > first + 0.5]) > 20, message="more load after the swap")
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert failures == []
    # after the swap settled every query follows the new rule
    late = [c for t, c in answered if t > first + 0.5]
    assert late and set(late) == {"etl-1"}


def test_example_rules_load_and_route(fresh_clusters, gateway_factory, tmp_path):
    cfg = gateway_config(tmp_path, fresh_clusters, rules=[str(REPO / "rules")])
    gw = gateway_factory(cfg)
    assert cluster_of(gw.connect(user="svc_loader").cursor()) == "etl-1"
    assert cluster_of(gw.connect(user="alice", source="tableau").cursor()).startswith("adhoc-")
