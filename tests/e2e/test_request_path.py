"""The request path's second design (issue 14), end to end: each finding is a test here.

1. Spooled results through two workers: every follow-up is routed by its routing token (no
   store lookup, no probe), and nothing fails.
2. ``infoUri`` opened by a browser right after the query answers on any worker.
3. OAuth2 logins through two workers without ``routing.cookieSecret``.
4. Statements pinned to a backend (transaction, kill_query) meet reject rules and are recorded.
5. A statement held in the gateway queue is answered through the one forwarding path.
6. Explain does not move the live balancer.
Plus: tampered tokens are refused, a token naming a removed backend gets a Trino-shaped error,
and clients treat token URIs as opaque (the Python and JavaScript clients here; the Java CLI
in test_cli_tokens).
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import threading
from concurrent.futures import ThreadPoolExecutor

import requests
import trino

from gateway.sim.handlers import make_oauth_token
from tests.admission.test_admission_js import CACHE as JS_CACHE
from tests.admission.test_admission_js import js_client  # noqa: F401  (a fixture)
from tests.conftest import gateway_config, spawn_cluster, wait_for

CLOSE = {"X-Trino-User": "alice", "Connection": "close"}   # every request on a new connection


def owner_lookups(gw) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in gw.api("GET", "/metrics").text.splitlines():
        m = re.match(r'trino_gateway_owner_lookups_total\{source="(\w+)"\} (\S+)', line)
        if m:
            out[m.group(1)] = float(m.group(2))
    return out


def two_workers(gateway_factory, tmp_path, clusters, **overrides):
    gw = gateway_factory(gateway_config(tmp_path, clusters, server={"workers": 2}, **overrides))
    wait_for(lambda: gw.log().count("listening on") >= 2, message="two workers")
    names = [b["name"] for b in gw.config["backends"]]

    def all_healthy_on_both() -> bool:
        # each worker probes on its own: ask on new connections until both have said HEALTHY
        return all(requests.get(f"{gw.url}/api/public/backends/{n}/state", headers={"Connection": "close"},
                                timeout=5).json()["health"] == "HEALTHY" for _ in range(12) for n in names)
    wait_for(all_healthy_on_both, timeout=20, message="backends HEALTHY on both workers")
    return gw


def follow_pages(doc: dict, get) -> list:
    """The rows of a query, following its pages and spooled segments (each acknowledged) with
    ``get(uri) -> Response``."""
    rows: list = []
    while True:
        data = doc.get("data")
        if isinstance(data, dict):
            for seg in data["segments"]:
                assert seg["type"] == "spooled", seg
                rows += json.loads(get(seg["uri"]).content)
                get(seg["ackUri"])
        elif data:
            rows += data
        if "nextUri" not in doc:
            assert "error" not in doc, doc["error"]
            return rows
        doc = get(doc["nextUri"]).json()


def get_closing(uri: str) -> requests.Response:
    r = requests.get(uri, headers=CLOSE, timeout=20)
    assert r.status_code == 200, r.text
    return r


def run_spooled(gw) -> list:
    """One spooled query followed like a client that opens a connection per request."""
    doc = requests.post(gw.url + "/v1/statement", data=b"SELECT n FROM numbers WHERE n <= 600 ORDER BY n",
                        headers={**CLOSE, "X-Trino-Query-Data-Encoding": "json"}, timeout=20).json()
    return follow_pages(doc, get_closing)


def test_finding1_spooled_follow_ups_through_two_workers_are_routed_by_token_alone(
        fresh_clusters, gateway_factory, tmp_path):
    for c in fresh_clusters.values():
        c.control(spooling=True, page_rows=50, spool_inline_bytes=0)
    try:
        gw = two_workers(gateway_factory, tmp_path, fresh_clusters)
        before = owner_lookups(gw)
        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(lambda _: run_spooled(gw), range(16)))
        assert all(rows == [[n] for n in range(1, 601)] for rows in results)
        # and with the official client, which follows the URIs as opaque strings
        cur = gw.connect(encoding="json").cursor()
        cur.execute("SELECT n FROM numbers WHERE n <= 300 ORDER BY n")
        assert cur.fetchall() == [[n] for n in range(1, 301)]
        after = owner_lookups(gw)
        delta = {k: after.get(k, 0) - before.get(k, 0) for k in set(after) | set(before)}
        # 16 queries x (12 segments x 2 + several pages): all by token; no lookup of any kind
        assert delta.get("token", 0) >= 16 * 24, delta
        assert all(delta.get(k, 0) == 0 for k in ("memory", "probe", "store", "none", "refused")), delta
    finally:
        for c in fresh_clusters.values():
            c.control(spooling=False)


def test_finding2_info_uri_answers_on_any_worker_right_after_the_query(
        fresh_clusters, gateway_factory, tmp_path):
    gw = two_workers(gateway_factory, tmp_path, fresh_clusters)
    for _ in range(3):
        doc = requests.post(gw.url + "/v1/statement", data=b"SELECT 1", headers=CLOSE, timeout=10).json()
        qid, info = doc["id"], doc["infoUri"]
        assert info == f"{gw.url}/ui/query.html?{qid}"     # the web UI's own URL, no token
        for _ in range(10):   # as a browser opens it: no X-Trino-User, a new connection each time
            r = requests.get(info, headers={"Connection": "close"}, timeout=10)
            assert r.status_code == 200, r.text
            assert qid in r.text


def test_finding3_oauth2_logins_work_on_two_workers_without_a_configured_secret(
        gateway_factory, tmp_path):
    a = spawn_cluster("oauth-a", 0, "--auth", "oauth2")
    try:
        gw = two_workers(gateway_factory, tmp_path, {"oauth-a": a}, groups={"oauth-a": "adhoc"})
        for _ in range(8):
            r = requests.post(gw.url + "/v1/statement", data=b"SELECT 1", headers=CLOSE, timeout=10)
            assert r.status_code == 401
            redirect = re.search(r'x_redirect_server="([^"]+)"', r.headers["WWW-Authenticate"]).group(1)
            token_uri = re.search(r'x_token_server="([^"]+)"', r.headers["WWW-Authenticate"]).group(1)
            start = requests.get(redirect, headers={"Connection": "close"}, allow_redirects=False, timeout=10)
            assert start.status_code == 303, start.text
            done = requests.get(start.headers["Location"], cookies=start.cookies,
                                headers={"Connection": "close"}, allow_redirects=False, timeout=10)
            assert done.status_code == 200, done.text      # whichever worker took the callback
            tok = requests.get(token_uri, headers={"Connection": "close"}, timeout=20).json()
            assert "token" in tok, tok
            # both URIs carry a routing token: any worker routes them without a lookup
            assert redirect.startswith(gw.url + "/_r/") and token_uri.startswith(gw.url + "/_r/")
    finally:
        a.stop()


SECRET_RULES = """
name: no-secret
condition: query =~ "(?is).*secret_table.*"
reject: "secret_table is off limits"
---
name: no-kill-for-mallory
condition: user == "mallory" and query =~ "(?is).*kill_query.*"
reject: "mallory may not kill queries"
"""


def test_finding4_pinned_statements_meet_reject_rules_and_are_recorded(
        fresh_clusters, gateway_factory, tmp_path):
    (tmp_path / "rules").mkdir(exist_ok=True)
    (tmp_path / "rules" / "r.yaml").write_text(SECRET_RULES)
    gw = gateway_factory(gateway_config(tmp_path, fresh_clusters))
    conn = gw.connect(isolation_level=trino.transaction.IsolationLevel.READ_COMMITTED)
    cur = conn.cursor()
    cur.execute("SELECT current_cluster() AS in_txn")
    owner = cur.fetchall()[0][0]
    try:
        cur.execute("SELECT * FROM secret_table")
        cur.fetchall()
        raise AssertionError("a statement inside a transaction skipped the reject rule")
    except trino.exceptions.TrinoUserError as exc:
        assert exc.error_name == "PERMISSION_DENIED" and "off limits" in exc.message
    conn.rollback()
    # kill_query pinned to its query's backend: still rejected for mallory, allowed for alice
    victim_conn = gw.connect()
    victim = victim_conn.cursor()
    res: dict = {}

    def run() -> None:
        try:
            victim.execute("SELECT sleep(20), 'victim'")
            res["rows"] = victim.fetchall()
        except Exception as exc:  # noqa: BLE001 - killed, as the test wants
            res["error"] = exc
    t = threading.Thread(target=run)
    t.start()
    qid = wait_for(lambda: victim.query_id, message="the victim's id")
    kill = f"CALL system.runtime.kill_query('{qid}', 'test')"
    try:
        gw.connect(user="mallory").cursor().execute(kill).fetchall()
        raise AssertionError("a pinned kill_query skipped the reject rule")
    except trino.exceptions.TrinoUserError as exc:
        assert exc.error_name == "PERMISSION_DENIED"
    gw.connect().cursor().execute(kill).fetchall()
    t.join(30)
    assert "error" in res
    # every statement has a history row with its rule and backend, pinned ones included; the
    # refused kill_query too, as REJECTED with no backend
    def kills(rs: list) -> dict:
        return {r["user"]: r for r in rs if "kill_query" in (r["sql"] or "")}

    def rows() -> list | None:
        rs = gw.api("GET", "/api/queries?limit=50").json()
        return rs if any("in_txn" in (r["sql"] or "") for r in rs) and len(kills(rs)) == 2 else None
    rs = wait_for(rows, message="history rows of the pinned statements")
    in_txn = [r for r in rs if "in_txn" in (r["sql"] or "")]
    killed = kills(rs)
    assert in_txn[0]["backend"] == owner
    assert killed["alice"]["backend"] is not None and killed["alice"]["finalState"] != "REJECTED"
    assert killed["mallory"]["backend"] is None and killed["mallory"]["finalState"] == "REJECTED"
    assert killed["mallory"]["rule"] == "no-kill-for-mallory"
    metrics = gw.api("GET", "/metrics").text
    assert 'trino_gateway_statements_rejected_total{rule="no-secret"} 1.0' in metrics
    assert 'trino_gateway_statements_rejected_total{rule="no-kill-for-mallory"} 1.0' in metrics


def test_finding5_a_held_statement_is_answered_through_the_one_forwarding_path(gateway_factory, tmp_path):
    """The gateway queue had its own forward; its answers kept the backend's URIs in an OAuth2
    challenge (and dropped no Connection-listed header, learned no transaction)."""
    a = spawn_cluster("oauth-q", 0, "--auth", "oauth2")
    try:
        cfg = gateway_config(tmp_path, {"oauth-q": a}, groups={"oauth-q": "etl"},
                             routing={"defaultGroup": "etl"})
        cfg["groups"] = {"etl": {"maxRunningQueries": 1}}
        gw = gateway_factory(cfg)
        bearer = {"X-Trino-User": "alice", "Authorization": f"Bearer {make_oauth_token()}"}
        blocker = requests.post(gw.url + "/v1/statement", data=b"SELECT sleep(1), 'blocker'",
                                headers=bearer, timeout=10).json()
        held = requests.post(gw.url + "/v1/statement", data=b"SELECT 1", headers=CLOSE, timeout=10).json()
        assert held["id"].endswith("_gtw01"), held          # waits in the gateway queue
        doc = blocker
        while "nextUri" in doc:                              # the blocker ends, the slot frees
            doc = requests.get(doc["nextUri"], headers=bearer, timeout=10).json()
        uri = held["nextUri"]
        r = None
        for _ in range(50):
            r = requests.get(uri, headers=CLOSE, timeout=10)
            if r.status_code != 200:
                break
            uri = r.json()["nextUri"]
        assert r is not None and r.status_code == 401, r.text if r is not None else None
        challenge = r.headers["WWW-Authenticate"]
        assert re.search(rf'x_token_server="{re.escape(gw.url)}/_r/[^"]+/oauth2/token/', challenge), challenge
        assert re.search(rf'x_redirect_server="{re.escape(gw.url)}/_r/', challenge), challenge
    finally:
        a.stop()


def test_finding6_explain_does_not_move_round_robin(fresh_clusters, gateway_factory, tmp_path):
    gw = gateway_factory(gateway_config(tmp_path, fresh_clusters, routing={"policy": "round-robin"}))
    cur = gw.connect().cursor()
    seen = []
    for _ in range(4):
        cur.execute("SELECT current_cluster()")
        seen.append(cur.fetchall()[0][0])
        explained = gw.api("POST", "/api/routing/explain", json={"user": "alice", "query": "SELECT 1"}).json()
        # explain names the backend the next statement gets, and then that statement gets it
        cur.execute("SELECT current_cluster()")
        got = cur.fetchall()[0][0]
        assert explained["backend"] == got
        seen.append(got)
    assert seen == ["adhoc-1", "adhoc-2"] * 4 or seen == ["adhoc-2", "adhoc-1"] * 4


def test_tampered_tokens_are_refused_and_a_removed_backend_gets_a_trino_error(
        fresh_clusters, gateway_factory, tmp_path):
    gw = gateway_factory(gateway_config(tmp_path, fresh_clusters))
    doc = requests.post(gw.url + "/v1/statement", data=b"SELECT sleep(2)", headers=CLOSE, timeout=10).json()
    nxt = doc["nextUri"]
    token = nxt.split("/_r/", 1)[1].split("/", 1)[0]
    kid, name, mac = token.split(".")
    before = {c: len(x.queries()) for c, x in fresh_clusters.items()}
    for bad in (f"{kid}.{name}.{mac[:-1]}{'A' if mac[-1] != 'A' else 'B'}",      # changed MAC
                f"{kid}.ZXRsLTE.{mac}",                                          # another backend
                f"AAAA.{name}.{mac}"):                                           # unknown key
        r = requests.get(nxt.replace(token, bad), headers=CLOSE, timeout=10)
        assert r.status_code == 400 and "routing token" in r.text, r.text
    # the token of this query does not route another query's path
    other = re.sub(r"/(\d{8}_\d{6}_\d{5}_[a-z0-9]{5})/", "/20200101_000000_00000_zzzzz/", nxt)
    assert requests.get(other, headers=CLOSE, timeout=10).status_code == 400
    assert {c: len(x.queries()) for c, x in fresh_clusters.items()} == before   # nothing was routed
    owner = next(c for c, x in fresh_clusters.items() if any(q["queryId"] == doc["id"] for q in x.queries()))
    assert gw.api("POST", "/gateway/backend/modify/delete", data=owner).status_code == 200
    wait_for(lambda: owner not in [b["name"] for b in gw.api("GET", "/gateway/backend/all").json()],
             message="backend removed")

    def removed_answer() -> dict | None:
        r = requests.get(nxt, headers=CLOSE, timeout=10)
        body = r.json() if r.headers.get("Content-Type", "").startswith("application/json") else {}
        return body if body.get("error") else None
    body = wait_for(removed_answer, message="the removed-backend error")
    assert body["error"]["errorName"] == "NO_NODES_AVAILABLE" and owner in body["error"]["message"]
    assert body["stats"]["state"] == "FAILED" and "nextUri" not in body


def test_the_javascript_client_follows_token_uris_across_two_workers(
        js_client, fresh_clusters, gateway_factory, tmp_path):
    gw = two_workers(gateway_factory, tmp_path, fresh_clusters)
    before = owner_lookups(gw).get("token", 0)
    for _ in range(3):
        out = subprocess.run(["node", str(js_client), gw.url], capture_output=True, text=True, timeout=60,
                             cwd=js_client.parent, env={**os.environ, "NODE_PATH": str(JS_CACHE / "node_modules")})
        assert out.returncode == 0, out.stdout + out.stderr
        doc = json.loads(out.stdout.strip().splitlines()[-1])
        assert doc["error"] is None and doc["rows"] == [[n] for n in range(1, 251)], doc
    assert owner_lookups(gw).get("token", 0) - before >= 3 * 2   # its polls came back with tokens
