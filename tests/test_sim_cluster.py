"""The simulated Trino coordinator, driven by the official `trino` client and by raw HTTP.

Also unit tests of its pure parts (SQL rewriting, header parsing, base URIs, query ids,
controls).
"""

from __future__ import annotations

import json
import re
import signal
import threading
import time
import uuid
from typing import Any, Callable

import pytest
import requests
import trino
from trino.transaction import IsolationLevel

from gateway.sim import protocol as proto
from gateway.sim.cluster import run_cluster_in_thread, spawn_cluster_process
from gateway.sim.controls import Control, ControlError
from gateway.sim.handlers import external_base
from gateway.sim.planner import (HeaderError, Session, SqlError, SqlPlan, bind_parameters,
                                  parse_session, plan, strip_prefixes)

USER = {"X-Trino-User": "alice"}
QID_RE = re.compile(r"^\d{8}_\d{6}_\d{5}_[a-z2-9]{5}$")


def wait_for(condition: Callable[[], Any], timeout: float = 5.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.01)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@pytest.fixture(scope="module")
def alpha():
    cluster, url, stop = run_cluster_in_thread("alpha", page_rows=100)
    yield cluster, url
    stop()


@pytest.fixture(scope="module")
def beta():
    cluster, url, stop = run_cluster_in_thread("beta", page_rows=7, queued_polls=2)
    yield cluster, url
    stop()


@pytest.fixture(autouse=True)
def restore_controls(request):
    yield
    for name in ("alpha", "beta"):
        if name in request.fixturenames:
            request.getfixturevalue(name)[0].reset_control()


def connect(cluster, **kw) -> trino.dbapi.Connection:
    return trino.dbapi.connect(host="127.0.0.1", port=cluster.port, user="alice",
                               http_scheme="http", **kw)


def query(cluster, sql: str, **kw) -> list[list[Any]]:
    cur = connect(cluster, **kw).cursor()
    cur.execute(sql)
    return cur.fetchall()


def post(url: str, sql: str, headers: dict[str, str] | None = None) -> dict[str, Any]:
    r = requests.post(url + "/v1/statement", data=sql, headers={**USER, **(headers or {})})
    assert r.status_code == 200, r.text
    return r.json()


def follow_until_executing(url: str, sql: str, headers: dict[str, str] | None = None):
    """POST and follow the queued pages; returns the first executing nextUri."""
    doc = post(url, sql, headers)
    nxt = doc["nextUri"]
    while "/queued/" in nxt:
        doc = requests.get(nxt, headers=USER).json()
        nxt = doc["nextUri"]
    return doc["id"], nxt


def drain(next_uri: str) -> list[dict[str, Any]]:
    pages = []
    while next_uri:
        r = requests.get(next_uri, headers=USER)
        assert r.status_code == 200, r.text
        pages.append(r.json())
        next_uri = pages[-1].get("nextUri")
    return pages


def sim_query(url: str, qid: str) -> dict[str, Any]:
    return next(q for q in requests.get(url + "/_sim/queries").json() if q["queryId"] == qid)


# ---------------------------------------------------------------- through the trino client

def test_multi_page_result_is_exact_to_the_row(alpha):
    cluster, url = alpha
    cur = connect(cluster).cursor()
    cur.execute("SELECT n FROM numbers WHERE n <= 1000 ORDER BY n")
    assert cur.fetchall() == [[n] for n in range(1, 1001)]
    assert cur.description[0][:2] == ("n", "bigint")
    logged = sim_query(url, cur.query_id)
    assert logged["state"] == "FINISHED" and logged["rows"] == 1000
    assert logged["requests"] >= 11  # POST, queued, and ten pages of 100 rows


def test_current_cluster_names_the_answering_cluster(alpha, beta):
    assert query(alpha[0], "SELECT current_cluster()") == [["alpha"]]
    assert query(beta[0], "SELECT current_cluster()") == [["beta"]]


def test_tpch_tables_with_catalog_prefixes(alpha):
    for name in ("tpch.tiny.nation", "tiny.nation", '"tpch"."tiny"."nation"', "nation"):
        assert query(alpha[0], f"SELECT count(*) FROM {name}") == [[25]]
    rows = query(alpha[0], "SELECT n.name, r.name FROM tpch.tiny.nation n "
                           "JOIN tpch.tiny.region r ON n.regionkey = r.regionkey "
                           "WHERE n.nationkey = 24")
    assert rows == [["UNITED STATES", "AMERICA"]]


def test_column_types_reach_cursor_description(alpha):
    cur = connect(alpha[0]).cursor()
    cur.execute("SELECT 1 AS i, 2.5 AS d, 'x' AS s, 1 < 2 AS b, n FROM numbers WHERE n = 3")
    assert cur.fetchall() == [[1, 2.5, "x", True, 3]]
    types = [(c.name, c.type_code, c.internal_size) for c in cur.description]
    assert types == [("i", "bigint", None), ("d", "double", None),
                     ("s", "varchar", 2147483647), ("b", "boolean", None), ("n", "bigint", None)]
    cur.execute("SELECT 1 + 1")
    assert cur.fetchall() == [[2]] and cur.description[0].name == "_col0"


def test_failed_queries_raise_user_errors(alpha):
    with pytest.raises(trino.exceptions.TrinoUserError) as info:
        query(alpha[0], "SELECT fail('it broke')")
    assert info.value.message == "it broke" and info.value.error_name == "GENERIC_USER_ERROR"
    with pytest.raises(trino.exceptions.TrinoUserError) as info:
        query(alpha[0], "SELEC 1")
    assert info.value.error_name == "SYNTAX_ERROR" and info.value.error_code == 1
    with pytest.raises(trino.exceptions.TrinoUserError) as info:
        query(alpha[0], "SELECT * FROM no_such_table")
    assert "no_such_table" in info.value.message


def test_cursor_cancel_stops_a_slow_query(alpha):
    cluster, url = alpha
    cur = connect(cluster).cursor()
    errors: list[BaseException] = []

    def run() -> None:
        try:
            cur.execute("SELECT sleep(30)")
            cur.fetchall()
        except BaseException as e:  # the cancelled query may surface as an error
            errors.append(e)

    thread = threading.Thread(target=run, daemon=True)
    started = time.monotonic()
    thread.start()
    wait_for(lambda: cur._query is not None and cur._query.query_id
             and sim_query(url, cur._query.query_id)["state"] == "RUNNING", what="running query")
    cur.cancel()
    thread.join(10)
    assert not thread.is_alive()
    assert time.monotonic() - started < 10
    logged = sim_query(url, cur._query.query_id)
    assert logged["state"] == "FAILED" and logged["errorName"] == "USER_CANCELED"


def test_use_and_session_properties_round_trip(alpha):
    cluster, url = alpha
    conn = connect(cluster)
    cur = conn.cursor()
    cur.execute("USE tpch.tiny")
    assert cur.fetchall() == [[True]]
    assert (conn._client_session.catalog, conn._client_session.schema) == ("tpch", "tiny")
    cur.execute("SET SESSION query_max_run_time = '1 h'")
    cur.fetchall()
    assert conn._client_session.properties == {"query_max_run_time": "1 h"}
    cur.execute("SELECT count(*) FROM nation")
    assert cur.fetchall() == [[25]]
    headers = sim_query(url, cur.query_id)["headers"]
    assert headers["X-Trino-Catalog"] == ["tpch"] and headers["X-Trino-Schema"] == ["tiny"]
    assert "query_max_run_time=1" in headers["X-Trino-Session"][0]
    cur.execute("RESET SESSION query_max_run_time")
    cur.fetchall()
    assert conn._client_session.properties == {}


def test_prepare_execute_deallocate_round_trip(alpha):
    cluster, url = alpha
    cur = connect(cluster, legacy_prepared_statements=True).cursor()
    cur.execute("SELECT name FROM tpch.tiny.nation WHERE nationkey = ? OR name = ?", [7, "PERU"])
    assert sorted(cur.fetchall()) == [["GERMANY"], ["PERU"]]
    sqls = [q["sql"] for q in requests.get(url + "/_sim/queries").json()[-3:]]
    assert sqls[0].startswith("PREPARE st_") and sqls[1].startswith("EXECUTE st_")
    assert sqls[2].startswith("DEALLOCATE PREPARE st_")
    # EXECUTE IMMEDIATE (the client's default) works as well
    cur = connect(cluster).cursor()
    cur.execute("SELECT ? * 2, ?", [21, "it's"])
    assert cur.fetchall() == [[42, "it's"]]


def test_execute_of_unknown_prepared_statement_fails(alpha):
    with pytest.raises(trino.exceptions.TrinoUserError) as info:
        query(alpha[0], "EXECUTE nope")
    assert "Prepared statement not found: nope" in info.value.message


def test_transactions_are_pinned_to_the_cluster_that_started_them(alpha, beta):
    cluster, url = alpha
    conn = connect(cluster, isolation_level=IsolationLevel.READ_COMMITTED)
    cur = conn.cursor()
    cur.execute("SELECT current_cluster()")
    assert cur.fetchall() == [["alpha"]]
    txn = conn.transaction.id
    assert uuid.UUID(txn)
    assert sim_query(url, cur.query_id)["transactionId"] == txn
    # Another cluster does not know that transaction: this is how tests prove pinning.
    doc = post(beta[1], "SELECT 1", {"X-Trino-Transaction-Id": txn})
    failed = drain(doc["nextUri"])[-1]
    assert failed["stats"]["state"] == "FAILED"
    assert failed["error"]["errorName"] == "UNKNOWN_TRANSACTION" and txn in failed["error"]["message"]
    conn.commit()
    assert requests.get(url + "/_sim/queries").json()[-1]["sql"] == "COMMIT"
    # after COMMIT the id is forgotten by alpha too
    doc = post(url, "SELECT 1", {"X-Trino-Transaction-Id": txn})
    pages = drain(doc["nextUri"])
    assert pages[-1]["error"]["errorName"] == "UNKNOWN_TRANSACTION"


def test_transaction_headers_on_raw_protocol(alpha):
    url = alpha[1]
    _, nxt = follow_until_executing(url, "START TRANSACTION")
    r = requests.get(nxt, headers=USER)
    txn = r.headers["X-Trino-Started-Transaction-Id"]
    assert r.json()["updateType"] == "START TRANSACTION" and "nextUri" not in r.json()
    _, nxt = follow_until_executing(url, "ROLLBACK", {"X-Trino-Transaction-Id": txn})
    r = requests.get(nxt, headers=USER)
    assert r.headers["X-Trino-Clear-Transaction-Id"] == "true"


def test_kill_query_named_and_positional(alpha):
    cluster, url = alpha
    for call in ("CALL system.runtime.kill_query(query_id => '{qid}', message => 'stop it')",
                 "CALL system.runtime.kill_query('{qid}', 'stop it')"):
        qid, nxt = follow_until_executing(url, "SELECT sleep(30)")
        assert query(cluster, call.format(qid=qid)) == [[True]]
        page = drain(nxt)[-1]
        assert page["stats"]["state"] == "FAILED"
        assert page["error"]["errorName"] == "ADMINISTRATIVELY_KILLED"
        assert page["error"]["message"] == "Query killed. Message: stop it"
    with pytest.raises(trino.exceptions.TrinoUserError) as info:
        query(cluster, "CALL system.runtime.kill_query(query_id => '20240101_000000_00001_abcde')")
    assert "Target query not found" in info.value.message


def test_dml_on_scratch_tables(alpha):
    cluster = alpha[0]
    cur = connect(cluster).cursor()
    cur.execute("CREATE TABLE memory.default.scratch (a bigint, b varchar)")
    assert cur.fetchall() == [[True]]
    cur.execute("INSERT INTO memory.default.scratch VALUES (1, 'x'), (2, 'y'), (3, 'z')")
    assert cur.fetchall() == [[3]] and cur.rowcount == 3
    assert cur._query.update_type == "INSERT"
    cur.execute("CREATE TABLE scratch2 AS SELECT n FROM numbers WHERE n <= 10")
    assert cur.fetchall() == [[10]]
    assert query(cluster, "SELECT sum(a) FROM memory.default.scratch") == [[6]]
    assert ["scratch"] in query(cluster, "SHOW TABLES")
    query(cluster, "DROP TABLE scratch")
    query(cluster, "DROP TABLE scratch2")


def test_show_statements(alpha):
    assert query(alpha[0], "SHOW CATALOGS") == [["memory"], ["system"], ["tpch"]]
    assert ["tiny"] in query(alpha[0], "SHOW SCHEMAS FROM tpch")
    assert ["nation"] in query(alpha[0], "SHOW TABLES FROM tpch.tiny")
    assert query(alpha[0], "DESCRIBE nation")[1][:2] == ["name", "varchar(25)"]


def test_large_page_is_one_page(alpha):
    cluster, url = alpha
    _, nxt = follow_until_executing(url, "SELECT repeat('x', 100000) FROM numbers LIMIT 100")
    pages = drain(nxt)
    data_pages = [p for p in pages if "data" in p]
    assert len(data_pages) == 1 and len(data_pages[0]["data"]) == 100
    assert all(len(row[0]) == 100000 for row in data_pages[0]["data"])
    assert len(json.dumps(data_pages[0])) > 10_000_000


# ---------------------------------------------------------------- raw protocol

def test_first_response_shape(beta):
    url = beta[1]
    r = requests.post(url + "/v1/statement", data="SELECT 1", headers=USER)
    assert r.headers["Content-Type"] == "application/json"
    assert b": " not in r.content and b"null" not in r.content  # compact, no nulls
    doc = r.json()
    assert QID_RE.match(doc["id"])
    assert doc["infoUri"] == f"{url}/ui/query.html?{doc['id']}"
    m = re.fullmatch(rf"{url}/v1/statement/queued/{doc['id']}/(y[0-9a-f]{{40}})/1", doc["nextUri"])
    assert m
    assert doc["stats"]["state"] == "QUEUED" and set(doc["stats"]) >= {
        "state", "queued", "scheduled", "nodes", "totalSplits", "queuedSplits", "runningSplits",
        "completedSplits", "cpuTimeMillis", "wallTimeMillis", "queuedTimeMillis",
        "elapsedTimeMillis", "processedRows", "processedBytes", "physicalInputBytes",
        "peakMemoryBytes", "spilledBytes"}
    assert doc["warnings"] == [] and "columns" not in doc and "data" not in doc


def test_queued_then_executing_pages_and_token_rules(beta):
    url = beta[1]  # 7 rows per page, 2 queued polls
    doc = post(url, "SELECT n FROM numbers WHERE n <= 20 ORDER BY n")
    q1 = doc["nextUri"]
    r1 = requests.get(q1, headers=USER)
    q2 = r1.json()["nextUri"]
    assert "/queued/" in q2 and q2.endswith("/2")
    assert requests.get(q1, headers=USER).content == r1.content  # repeat: identical
    r2 = requests.get(q2, headers=USER)
    assert r2.json()["stats"]["state"] == "QUEUED"
    assert requests.get(q1, headers=USER).status_code == 410   # stale queued token
    e0 = r2.json()["nextUri"]
    assert re.search(r"/executing/[^/]+/y[0-9a-f]{40}/0$", e0)
    rows, uris, first_columns_page, previous = [], [], None, None
    nxt = e0
    while nxt:
        r = requests.get(nxt, headers=USER)
        assert requests.get(nxt, headers=USER).content == r.content
        page = r.json()
        if "data" in page:
            assert "columns" in page
        if "columns" in page and first_columns_page is None:
            first_columns_page = len(uris)
        rows += page.get("data", [])
        uris.append(nxt)
        if "nextUri" in page:
            assert page["stats"]["state"] == "RUNNING" and "partialCancelUri" in page
        previous, nxt = page, page.get("nextUri")
    assert [r[0] for r in rows] == list(range(1, 21))
    assert previous["stats"]["state"] == "FINISHED" and "partialCancelUri" not in previous
    assert requests.get(uris[0], headers=USER).status_code == 410        # stale
    assert requests.get(uris[-1], headers=USER).json() == previous        # current: cached
    beyond = re.sub(r"/\d+$", f"/{len(uris) + 3}", uris[-1])
    assert requests.get(beyond, headers=USER).status_code == 404
    bad_slug = re.sub(r"/y[0-9a-f]{40}/", "/y" + "0" * 40 + "/", uris[-1])
    r = requests.get(bad_slug, headers=USER)
    assert r.status_code == 404 and r.text == "Query not found"
    # a queued slug is not valid in the executing context
    queued_slug = q1.split("/")[-2]
    assert requests.get(uris[0].replace(uris[0].split("/")[-2], queued_slug),
                        headers=USER).status_code == 404


def test_delete_cancels_with_user_canceled(beta):
    url = beta[1]
    _, nxt = follow_until_executing(url, "SELECT sleep(30)")
    running = requests.get(nxt + "?maxWait=100ms", headers=USER).json()
    assert running["stats"]["state"] == "RUNNING" and "data" not in running
    assert requests.head(running["nextUri"]).status_code == 200   # heartbeat
    r = requests.delete(running["nextUri"])
    assert r.status_code == 204 and r.content == b""
    final = drain(running["nextUri"])[-1]
    assert final["stats"]["state"] == "FAILED" and "nextUri" not in final
    assert final["error"]["errorName"] == "USER_CANCELED" and final["error"]["errorCode"] == 3
    assert final["error"]["failureInfo"]["suppressed"] == [] == final["error"]["failureInfo"]["stack"]


def test_put_killed_jmx_and_page_size_session_property(alpha):
    cluster, url = alpha
    qid, nxt = follow_until_executing(url, "SELECT sleep(30)")
    r = requests.put(url + f"/v1/query/{qid}/killed", data="enough", headers=USER)
    assert r.status_code == 202
    assert requests.put(url + f"/v1/query/{qid}/killed", headers=USER).status_code == 409
    final = drain(nxt)[-1]
    assert final["error"]["message"] == "Query killed. Message: enough"
    assert b"null" not in requests.get(nxt, headers=USER).content
    cluster.set_control(running=5)
    jmx = requests.get(url + "/v1/jmx/mbean/trino.execution:name=QueryManager").json()
    assert {"name": "RunningQueries", "value": 5} in jmx["attributes"]
    _, nxt = follow_until_executing(url, "SELECT n FROM numbers WHERE n <= 10",
                                    {"X-Trino-Session": "sim_page_rows=4"})
    assert [len(p.get("data", [])) for p in drain(nxt)] == [4, 4, 2]


def test_no_queued_polls_and_heartbeat_on_queued_uri():
    cluster, url, stop = run_cluster_in_thread("direct", queued_polls=0)
    try:
        doc = post(url, "SELECT 42")
        assert "/executing/" in doc["nextUri"] and doc["stats"]["state"] == "QUEUED"
        assert drain(doc["nextUri"])[-1]["data"] == [[42]]
        cluster.set_control(queued_polls=1)
        doc = post(url, "SELECT 1")
        assert requests.head(doc["nextUri"]).status_code == 200
        assert requests.delete(doc["nextUri"]).status_code == 204
        failed = requests.get(doc["nextUri"], headers=USER).json()
        assert failed["stats"]["state"] == "FAILED" and "nextUri" not in failed
        assert failed["error"]["errorName"] == "USER_CANCELED"
    finally:
        stop()


def test_max_wait_is_honoured_up_to_one_second(alpha):
    url = alpha[1]
    _, nxt = follow_until_executing(url, "SELECT sleep(5)")
    started = time.monotonic()
    page = requests.get(nxt + "?maxWait=200ms", headers=USER).json()
    assert time.monotonic() - started < 0.9 and page["stats"]["state"] == "RUNNING"
    started = time.monotonic()
    page = requests.get(page["nextUri"] + "?maxWait=10s", headers=USER).json()
    assert 0.8 < time.monotonic() - started < 2.0 and "nextUri" in page
    assert requests.get(page["nextUri"] + "?maxWait=soon", headers=USER).status_code == 400
    requests.delete(page["nextUri"])


def test_head_can_emulate_old_servers(alpha):
    cluster, url = alpha
    _, nxt = follow_until_executing(url, "SELECT 1")
    assert requests.head(nxt).status_code == 200
    cluster.set_control(head_supported=False)
    assert requests.head(nxt).status_code == 405
    assert requests.head(nxt.replace("/y", "/yz")).status_code == 405
    cluster.set_control(head_supported=True)
    assert requests.head(nxt.replace("/y", "/yz")).status_code == 404


def test_bad_posts_get_400_text(alpha):
    url = alpha[1]
    cases = [("", USER, "SQL statement is empty"),
             ("SELECT 1", {}, "User must be set"),
             ("SELECT 1", {**USER, "X-Trino-Schema": "tiny"}, "Schema is set but catalog is not"),
             ("SELECT 1", {**USER, "X-Trino-Session": "novalue"}, "Invalid X-Trino-Session header"),
             ("SELECT 1", {**USER, "X-Presto-User": "x"}, "Both Trino and Presto headers detected")]
    for body, headers, message in cases:
        r = requests.post(url + "/v1/statement", data=body, headers=headers)
        assert r.status_code == 400 and r.headers["Content-Type"].startswith("text/plain")
        assert message in r.text


def test_session_statement_response_headers(alpha):
    url = alpha[1]
    expected = {
        "PREPARE my query FROM SELECT 1": None,
        "PREPARE q1 FROM SELECT * FROM nation WHERE name = ?":
            ("X-Trino-Added-Prepare", "q1=SELECT+%2A+FROM+nation+WHERE+name+%3D+%3F"),
        "DEALLOCATE PREPARE q1": ("X-Trino-Deallocated-Prepare", "q1"),
        "SET SESSION a.b = 5": ("X-Trino-Set-Session", "a.b=5"),
        "RESET SESSION a.b": ("X-Trino-Clear-Session", "a.b"),
        "USE tpch.sf1": ("X-Trino-Set-Schema", "sf1"),
    }
    prepared = {"X-Trino-Prepared-Statement": "q1=SELECT+1"}
    for sql, header in expected.items():
        _, nxt = follow_until_executing(url, sql, prepared)
        r = requests.get(nxt, headers=USER)
        if header is None:
            assert r.json()["error"]["errorName"] == "SYNTAX_ERROR"
            continue
        assert r.headers[header[0]] == header[1], sql
        assert r.json()["stats"]["state"] == "FINISHED"


# ---------------------------------------------------------------- forwarded headers

def test_forwarded_headers_rejected_unless_processed(alpha):
    cluster, url = alpha
    r = requests.post(url + "/v1/statement", data="SELECT 1",
                      headers={**USER, "X-Forwarded-Proto": "https"})
    assert r.status_code == 406 and r.headers["Content-Type"].startswith("text/plain")
    assert r.text == ("Server configuration does not allow processing of the "
                      "X-Forwarded-Proto header")
    cluster.set_control(process_forwarded=True)
    doc = post(url, "SELECT 1", {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "gw.test",
                                 "X-Forwarded-Port": "8443", "X-Forwarded-Prefix": "/trino/"})
    assert doc["nextUri"].startswith("https://gw.test:8443/trino/v1/statement/queued/")
    assert doc["infoUri"] == f"https://gw.test:8443/trino/ui/query.html?{doc['id']}"


def test_uris_use_the_host_header_without_forwarding(alpha):
    url = alpha[1]
    doc = post(url, "SELECT 1", {"Host": "example.test:1234"})
    assert doc["nextUri"].startswith("http://example.test:1234/v1/statement/queued/")


def test_external_base():
    def getter(headers):
        return lambda name: headers.get(name)
    assert external_base(getter({}), "http", "h:1", False) == "http://h:1"
    assert external_base(getter({"X-Forwarded-Proto": "https"}), "http", "h:1", True) == "https://h:1"
    assert external_base(getter({"X-Forwarded-Proto": "https", "X-Forwarded-Host": "gw"}),
                         "http", "h:1", True) == "https://gw"
    assert external_base(getter({"X-Forwarded-Proto": "https", "X-Forwarded-Host": "gw:443"}),
                         "http", "h:1", True) == "https://gw"
    assert external_base(getter({"X-Forwarded-Host": "a, b", "X-Forwarded-Port": "81"}),
                         "http", "h:1", True) == "http://a:81"
    assert external_base(getter({"Forwarded": 'for=1.2.3.4;proto=https;host="gw:9"'}),
                         "http", "h:1", True) == "https://gw:9"
    assert external_base(getter({"X-Forwarded-Host": "[::1]:8080"}), "http", "h", True) == \
        "http://[::1]:8080"


# ---------------------------------------------------------------- health, UI, metrics, control

def test_info_status_and_starting(alpha):
    cluster, url = alpha
    info = requests.get(url + "/v1/info").json()
    assert info["nodeVersion"]["version"] and info["coordinator"] is True
    assert info["starting"] is False and re.fullmatch(r"[\d.]+(ns|us|ms|s|m|h|d)", info["uptime"])
    assert requests.get(url + "/v1/info/state").json() == "ACTIVE"
    assert requests.get(url + "/v1/status").json()["nodeId"] == "alpha-coordinator"
    cluster.set_control(starting=True)
    assert requests.get(url + "/v1/info").json()["starting"] is True
    with pytest.raises(trino.exceptions.TrinoQueryError) as info_:
        query(cluster, "SELECT 1")
    assert info_.value.error_name == "SERVER_STARTING_UP"


def test_ui_login_then_stats_and_queued_queries(alpha):
    cluster, url = alpha
    assert requests.get(url + "/ui/api/stats").status_code == 401
    session = requests.Session()
    r = session.post(url + "/ui/login", data={"username": "admin", "password": "",
                                              "redirectPath": "/ui/"}, allow_redirects=False)
    assert r.status_code == 303 and "Trino-UI-Token=" in r.headers["Set-Cookie"]
    cluster.set_control(workers=3, user_queued={"bob": 2})
    stats = session.get(url + "/ui/api/stats").json()
    assert stats["activeWorkers"] == 3 and stats["queuedQueries"] >= 2
    queued = session.get(url + "/ui/api/query?state=QUEUED").json()
    assert [q["sessionUser"] for q in queued].count("bob") == 2
    assert all(q["state"] == "QUEUED" and QID_RE.match(q["queryId"]) for q in queued)
    doc = post(url, "SELECT 1")  # never followed: stays queued
    queued = session.get(url + "/ui/api/query?state=QUEUED").json()
    assert any(q["queryId"] == doc["id"] and q["sessionUser"] == "alice" for q in queued)
    assert session.get(url + f"/ui/api/query/{doc['id']}").json()["state"] == "QUEUED"
    # Like Trino 476: without the UI login the page sends the browser to log in and come back.
    bare = requests.get(doc["infoUri"], allow_redirects=False)
    assert bare.status_code == 303
    assert bare.headers["Location"] == f"{url}/ui/login.html?/ui/query.html?{doc['id']}"
    assert f"value='/ui/query.html?{doc['id']}'" in requests.get(bare.headers["Location"]).text
    assert requests.get(url + "/ui/api/stats").headers["WWW-Authenticate"] == "Trino-Form-Login"
    page = session.get(doc["infoUri"])
    assert page.status_code == 200 and doc["id"] in page.text and "alpha" in page.text
    requests.delete(doc["nextUri"])
    assert session.get(url + "/ui/api/query/20200101_000000_00000_zzzzz").status_code == 410


def test_v1_query_and_metrics(alpha):
    cluster, url = alpha
    doc = post(url, "SELECT 1")
    assert requests.get(url + f"/v1/query/{doc['id']}", headers=USER).json()["state"] == "QUEUED"
    assert requests.get(url + "/v1/query/20200101_000000_00000_zzzzz",
                        headers=USER).status_code == 410
    listed = requests.get(url + "/v1/query?state=QUEUED", headers=USER).json()
    assert doc["id"] in [q["queryId"] for q in listed]
    text = requests.get(url + "/metrics", headers=USER).text
    queued = float(re.search(r"^trino_execution_name_QueryManager_QueuedQueries (\S+)$", text,
                             re.M).group(1))
    assert queued >= 1
    assert "# TYPE trino_execution_name_QueryManager_RunningQueries gauge" in text
    assert re.search(r"^trino_metadata_name_DiscoveryNodeManager_ActiveNodeCount 1\.0$", text, re.M)
    cluster.set_control(queued=0, running=9, workers=4)
    text = requests.get(url + "/metrics?name[]=trino_execution_name_QueryManager_RunningQueries",
                        headers=USER).text
    assert "RunningQueries 9.0" in text and "QueuedQueries" not in text
    assert requests.get(url + "/metrics").status_code == 401
    requests.delete(doc["nextUri"])


def test_control_endpoint(alpha):
    cluster, url = alpha
    state = requests.get(url + "/_sim/control").json()
    assert state["page_rows"] == 100 and state["fail"] is False
    state = requests.post(url + "/_sim/control", json={"fail": True, "slow": 0.01}).json()
    assert state["fail"] is True and cluster.control.slow == 0.01
    r = requests.post(url + "/v1/statement", data="SELECT 1", headers=USER)
    assert r.status_code == 500 and r.headers["Content-Type"].startswith("text/plain")
    r = requests.post(url + "/_sim/control", json={"workers": -1})
    assert r.status_code == 400 and "workers" in r.text
    r = requests.post(url + "/_sim/control", json={"nonsense": 1})
    assert r.status_code == 400 and "nonsense" in r.text
    requests.post(url + "/_sim/control", json={"fail": False, "hang": True})
    with pytest.raises(requests.exceptions.ReadTimeout):
        requests.post(url + "/v1/statement", data="SELECT 1", headers=USER, timeout=0.3)
    requests.post(url + "/_sim/control", json={"hang": False, "page_rows": 3})
    assert query(cluster, "SELECT n FROM numbers WHERE n <= 10") == [[n] for n in range(1, 11)]


def test_slow_control_delays_statement_responses(alpha):
    cluster, url = alpha
    cluster.set_control(slow=0.3)
    started = time.monotonic()
    post(url, "SELECT 1")
    assert time.monotonic() - started >= 0.3
    started = time.monotonic()
    requests.get(url + "/v1/info")
    assert time.monotonic() - started < 0.3


def test_abandoned_queries_fail(alpha):
    cluster, url = alpha
    cluster.set_control(client_timeout=0.1)
    doc = post(url, "SELECT 1")
    wait_for(lambda: sim_query(url, doc["id"])["state"] == "FAILED", what="abandonment")
    assert sim_query(url, doc["id"])["errorName"] == "ABANDONED_QUERY"


def test_reset_forgets_queries_and_restores_controls():
    cluster, url, stop = run_cluster_in_thread("gamma", page_rows=5)
    try:
        cluster.set_control(page_rows=50, workers=0)
        query(cluster, "CREATE TABLE t (a bigint)")
        assert requests.get(url + "/_sim/queries").json()
        state = requests.post(url + "/_sim/reset").json()
        assert state["page_rows"] == 5 and state["workers"] == 1
        assert requests.get(url + "/_sim/queries").json() == []
        assert query(cluster, "SHOW TABLES LIKE 't'") == []
    finally:
        stop()


# ---------------------------------------------------------------- auth and spooling

def test_basic_auth():
    cluster, url, stop = run_cluster_in_thread("basic", auth="basic")
    try:
        r = requests.post(url + "/v1/statement", data="SELECT 1", headers=USER)
        assert r.status_code == 401 and r.headers["WWW-Authenticate"] == 'Basic realm="Trino"'
        conn = trino.dbapi.connect(host="127.0.0.1", port=cluster.port, user="alice",
                                   http_scheme="http", allow_insecure_auth=True,
                                   auth=trino.auth.BasicAuthentication("alice", "pw"))
        cur = conn.cursor()
        cur.execute("SELECT current_cluster()")
        assert cur.fetchall() == [["basic"]]
        cluster.set_control(auth="jwt")
        r = requests.post(url + "/v1/statement", data="SELECT 1", headers=USER)
        assert r.headers["WWW-Authenticate"] == 'Bearer realm="Trino", token_type="JWT"'
        r = requests.post(url + "/v1/statement", data="SELECT 1",
                          headers={**USER, "Authorization": "Bearer abc"})
        assert r.status_code == 200
    finally:
        stop()


def test_oauth2_flow_with_the_trino_client():
    cluster, url, stop = run_cluster_in_thread("oauth", auth="oauth2")
    try:
        r = requests.post(url + "/v1/statement", data="SELECT 1", headers=USER)
        challenge = r.headers["WWW-Authenticate"]
        assert r.status_code == 401 and challenge.startswith("Bearer x_redirect_server=")
        assert f'x_token_server="{url}/oauth2/token/' in challenge
        visited: list[str] = []

        def browser(auth_url: str) -> None:  # the "user" completes the login in a browser
            visited.append(auth_url)
            assert requests.get(auth_url).status_code == 200

        auth = trino.auth.OAuth2Authentication(redirect_auth_url_handler=browser)
        conn = trino.dbapi.connect(host="127.0.0.1", port=cluster.port, user="alice",
                                   http_scheme="http", allow_insecure_auth=True, auth=auth)
        cur = conn.cursor()
        cur.execute("SELECT current_cluster()")
        assert cur.fetchall() == [["oauth"]]
        assert visited and visited[0].startswith(f"{url}/oauth2/token/initiate/")
    finally:
        stop()


def test_spooling_protocol_with_the_trino_client():
    cluster, url, stop = run_cluster_in_thread("spool", spooling=True, page_rows=50)
    try:
        cur = trino.dbapi.connect(host="127.0.0.1", port=cluster.port, user="alice",
                                  http_scheme="http", encoding="json").cursor()
        cur.execute("SELECT n FROM numbers WHERE n <= 120 ORDER BY n")
        assert cur.fetchall() == [[n] for n in range(1, 121)]
        wait_for(lambda: not cluster.engine.spool, what="segments acknowledged")
        _, nxt = follow_until_executing(url, "SELECT 1", {"X-Trino-Query-Data-Encoding": "json"})
        r = requests.get(nxt, headers=USER)
        assert r.headers["X-Trino-Query-Data-Encoding"] == "json"
        segment = r.json()["data"]["segments"][0]
        assert segment["type"] == "spooled" and segment["metadata"]["rowsCount"] == 1
        body = requests.get(segment["uri"]).content
        assert json.loads(body) == [[1]] and segment["metadata"]["segmentSize"] == len(body)
        assert requests.get(segment["ackUri"]).status_code == 200
        assert requests.get(segment["uri"]).status_code == 404
        # a client that asks for another encoding gets the direct protocol
        _, nxt = follow_until_executing(url, "SELECT 1",
                                        {"X-Trino-Query-Data-Encoding": "json+zstd"})
        assert requests.get(nxt, headers=USER).json()["data"] == [[1]]
    finally:
        stop()


# ---------------------------------------------------------------- as a process

def test_spawned_process_serves_and_exits_on_sigterm():
    proc, url = spawn_cluster_process("proc1", page_rows=3)
    try:
        assert requests.get(url + "/_sim/control").json()["page_rows"] == 3
        host, port = url.rsplit(":", 1)
        cur = trino.dbapi.connect(host="127.0.0.1", port=int(port), user="alice",
                                  http_scheme="http").cursor()
        cur.execute("SELECT current_cluster(), count(*) FROM nation")
        assert cur.fetchall() == [["proc1", 25]]
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0


# ---------------------------------------------------------------- pure parts

def test_strip_prefixes():
    assert strip_prefixes("SELECT * FROM tpch.tiny.nation") == "SELECT * FROM nation"
    assert strip_prefixes('SELECT * FROM "tpch"."tiny"."nation"') == 'SELECT * FROM "nation"'
    assert strip_prefixes("SELECT n.name FROM tiny.nation n") == "SELECT n.name FROM nation n"
    assert strip_prefixes("SELECT tiny.nation.name FROM a, hive.web.t") == \
        "SELECT nation.name FROM a, t"
    assert strip_prefixes("SELECT 'tpch.tiny.nation'") == "SELECT 'tpch.tiny.nation'"
    assert strip_prefixes("INSERT INTO memory.default.t VALUES (1.5)") == \
        "INSERT INTO t VALUES (1.5)"


def test_plan_decisions():
    s = Session("u", prepared={"st": "SELECT ? + ?"})
    p = plan("EXECUTE st USING 1, DOUBLE '2.5'", s)
    assert isinstance(p, SqlPlan) and p.sql == "SELECT 1 + 2.5"
    with pytest.raises(SqlError) as info:
        plan("EXECUTE st USING 1", s)
    assert info.value.name == "INVALID_PARAMETER_USAGE"
    with pytest.raises(SqlError) as info:
        plan("USE tiny", s)
    assert "Catalog must be specified" in info.value.message
    assert plan("USE tiny", Session("u", catalog="tpch")).headers == [
        ("X-Trino-Set-Catalog", "tpch"), ("X-Trino-Set-Schema", "tiny")]
    assert bind_parameters("SELECT '?', ?", ["'x'"]) == "SELECT '?', 'x'"
    assert plan("  SELECT 1 ;; ", s).sql == "SELECT 1"


def test_parse_session_headers():
    headers = {"X-Trino-Session": ["a=1, b=x%2Cy", "c=%20"],
               "X-Trino-Prepared-Statement": ["q=SELECT+1"], "X-Trino-Transaction-Id": ["NONE"]}
    s = parse_session(lambda n: headers.get(n, []), "u")
    assert s.properties == {"a": "1", "b": "x,y", "c": " "} and s.prepared == {"q": "SELECT 1"}
    assert s.transaction_id is None
    with pytest.raises(HeaderError):
        parse_session(lambda n: {"X-Trino-Session": ["=1"]}.get(n, []), "u")


def test_query_ids_and_slugs():
    ids = proto.QueryIdGenerator(clock=lambda: 0.0)
    first, second = ids.next(), ids.next()
    assert first.startswith("19700101_000000_00000_") and second[16:21] == "00001"
    assert QID_RE.match(first)
    with pytest.raises(ValueError):
        proto.QueryIdGenerator("abcd1")  # 1 is not in Trino's alphabet
    slug = proto.make_slug(b"k", proto.QUEUED, 1)
    assert re.fullmatch(r"y[0-9a-f]{40}", slug)
    assert proto.slug_ok(b"k", proto.QUEUED, 1, slug)
    assert not proto.slug_ok(b"k", proto.EXECUTING, 1, slug)
    assert not proto.slug_ok(b"k", proto.QUEUED, 2, slug)


def test_control_validation():
    c = Control()
    c.update({"queued": None, "user_queued": {"a": 1}, "slow": 1})
    assert c.slow == 1.0
    for bad in ({"fail": 1}, {"page_rows": True}, {"user_queued": {"a": -1}}, {"auth": "x"}):
        with pytest.raises(ControlError):
            c.update(bad)
    assert c.fail is False
