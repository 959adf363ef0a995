"""Admin security over HTTP against a real gateway process: logins, roles, CSRF, rate limits,
sessions, the no-users default and rules files saved through the API."""
from __future__ import annotations

import re
import time
import uuid
from pathlib import Path
from typing import Any, Iterator

import pytest
import requests

from gateway.admin.auth import hash_password
from tests.conftest import GatewayProcess, gateway_config, start_gateway, wait_for

PASSWORDS = {"ops": "ops-secret", "analyst": "analyst-secret", "robot": "robot-secret",
             "victim": "victim-secret"}
ROLES = {"ops": ["admin"], "analyst": ["user"], "robot": ["api"], "victim": ["admin"]}
RULE = 'name: nightly\ncondition: source == "nightly"\nroutingGroup: etl\n'
BASE = "/trino-gateway"


def users_config() -> dict[str, Any]:
    return {n: {"password": hash_password(PASSWORDS[n], iterations=1000), "roles": ROLES[n]} for n in PASSWORDS}


@pytest.fixture(scope="module")
def gw(clusters, tmp_path_factory) -> Iterator[GatewayProcess]:
    tmp = tmp_path_factory.mktemp("admin-http")
    (tmp / "rules").mkdir()
    (tmp / "rules" / "main.yaml").write_text(RULE)
    cfg = gateway_config(tmp, clusters, rules=[str(tmp / "rules")], auth={"users": users_config()})
    g = start_gateway(tmp, cfg)
    yield g
    g.stop()


def csrf_of(html: str) -> str:
    return re.search(r'<meta name="csrf-token" content="([^"]+)"', html).group(1)


def login(gw: GatewayProcess, user: str, password: str | None = None) -> tuple[requests.Session, str]:
    s = requests.Session()
    token = csrf_of(s.get(gw.url + BASE + "/login", timeout=10).text)
    r = s.post(gw.url + BASE + "/login", data={"user": user, "password": password or PASSWORDS[user],
                                               "_csrf": token}, allow_redirects=False, timeout=10)
    assert r.status_code == 302, r.text
    return s, csrf_of(s.get(gw.url + BASE + "/", timeout=10).text)


def basic(user: str) -> tuple[str, str]:
    return (user, PASSWORDS[user])


def test_pages_need_a_login_and_the_api_credentials(gw):
    r = gw.api("GET", BASE + "/clusters", allow_redirects=False)
    assert r.status_code == 302 and r.headers["Location"].startswith(BASE + "/login?next=")
    assert gw.api("GET", BASE + "/dashboard/fragment").status_code == 401
    r = gw.api("GET", "/api/queries")
    assert r.status_code == 401 and r.headers["WWW-Authenticate"].startswith("Basic")
    assert gw.api("GET", "/api/queries", auth=("ops", "wrong")).status_code == 401
    assert gw.api("GET", "/api/queries", auth=basic("analyst")).status_code == 200
    assert gw.api("GET", "/api/public/backends").status_code == 200      # public, as in trino-gateway
    assert gw.api("GET", BASE + "/livez").status_code == 200


def test_session_cookie_is_httponly_strict_and_scoped(gw):
    s = requests.Session()
    token = csrf_of(s.get(gw.url + BASE + "/login").text)
    r = s.post(gw.url + BASE + "/login", data={"user": "ops", "password": PASSWORDS["ops"], "_csrf": token},
               allow_redirects=False)
    cookie = r.headers["Set-Cookie"]
    assert cookie.startswith("tgw_session=")
    for flag in ("HttpOnly", "SameSite=Strict", "Path=/trino-gateway/", "expires="):
        assert flag in cookie
    page = s.get(gw.url + BASE + "/")
    assert page.status_code == 200 and ">ops<" in page.text
    assert "frame-ancestors 'none'" in page.headers["Content-Security-Policy"]
    assert PASSWORDS["ops"] not in gw.log()


def test_state_changes_need_the_csrf_token(gw):
    s, token = login(gw, "ops")
    url = gw.url + BASE + "/clusters"
    for data in ({"action": "deactivate", "name": "adhoc-1"},
                 {"action": "deactivate", "name": "adhoc-1", "_csrf": "forged"}):
        r = s.post(url, data=data, allow_redirects=False)
        assert r.status_code == 403 and "CSRF" in r.text
    assert gw.api("GET", "/api/public/backends/adhoc-1").json()["active"] is True
    # cookie-authenticated API calls need the header
    body = {"file": str(Path(gw.config["routing"]["rules"][0]) / "main.yaml"), "content": RULE}
    assert s.post(gw.url + BASE + "/api/rules/check", json=body).status_code == 403
    r = s.post(gw.url + BASE + "/api/rules/check", json=body, headers={"X-CSRF-Token": token})
    assert r.status_code == 200 and r.json()["ok"] is True
    # logout is a state change too
    assert s.post(gw.url + BASE + "/logout", allow_redirects=False).status_code == 403
    assert s.get(gw.url + BASE + "/", allow_redirects=False).status_code == 200
    # a cross-site form post is refused even with the token
    r = s.post(url, data={"action": "deactivate", "name": "adhoc-1", "_csrf": token},
               headers={"Origin": "http://evil.example"}, allow_redirects=False)
    assert r.status_code == 403
    # with the token from the same site it asks first (a second page: no script needed) ...
    r = s.post(url, data={"action": "deactivate", "name": "adhoc-1", "_csrf": token}, allow_redirects=False)
    assert r.status_code == 200 and "Deactivate adhoc-1?" in r.text and 'name="confirmed" value="yes"' in r.text
    assert gw.api("GET", "/api/public/backends/adhoc-1").json()["active"] is True
    # ... and the confirmation's button does it
    r = s.post(url, data={"action": "deactivate", "name": "adhoc-1", "_csrf": token, "confirmed": "yes"},
               allow_redirects=False)
    assert r.status_code == 302
    assert gw.api("GET", "/api/public/backends/adhoc-1").json()["active"] is False
    r = s.post(url, data={"action": "activate", "name": "adhoc-1", "_csrf": token}, allow_redirects=False)
    assert r.status_code == 302 and gw.api("GET", "/api/public/backends/adhoc-1").json()["active"] is True
    r = s.post(gw.url + BASE + "/logout", data={"_csrf": token}, allow_redirects=False)
    assert r.status_code == 302
    assert s.get(gw.url + BASE + "/", allow_redirects=False).status_code == 302


def test_login_form_needs_its_csrf_token(gw):
    r = requests.post(gw.url + BASE + "/login", data={"user": "ops", "password": PASSWORDS["ops"]},
                      allow_redirects=False)
    assert r.status_code == 403


def test_roles_limit_what_each_user_may_do(gw):
    s, token = login(gw, "analyst")
    assert s.get(gw.url + BASE + "/clusters").status_code == 200
    page = s.get(gw.url + BASE + "/clusters").text
    assert "Add a backend" not in page and "Deactivate" not in page
    r = s.post(gw.url + BASE + "/clusters", data={"action": "delete", "name": "adhoc-1", "_csrf": token})
    assert r.status_code == 403
    assert s.get(gw.url + BASE + "/clusters/adhoc-1/edit").status_code == 403
    rules_file = str(Path(gw.config["routing"]["rules"][0]) / "main.yaml")
    r = s.put(gw.url + BASE + "/api/rules/file", json={"file": rules_file, "content": RULE},
              headers={"X-CSRF-Token": token})
    assert r.status_code == 403
    r = s.post(gw.url + BASE + "/rules/edit", data={"file": rules_file, "content": RULE, "_csrf": token})
    assert r.status_code == 403
    # REST API with Basic: user may read, api and admin may write
    assert gw.api("POST", "/gateway/backend/deactivate/adhoc-2", auth=basic("analyst")).status_code == 403
    assert gw.api("POST", "/gateway/backend/deactivate/adhoc-2", auth=basic("robot")).status_code == 200
    assert gw.api("POST", "/gateway/backend/activate/adhoc-2", auth=basic("ops")).status_code == 200
    # the api role cannot use the pages
    robot, _ = login(gw, "robot")
    r = robot.get(gw.url + BASE + "/")
    assert r.status_code == 403 and "REST API" in r.text
    assert gw.api("GET", "/api/public/backends/adhoc-2").json()["active"] is True


def test_api_writes_refused_cross_site_even_with_basic(gw):
    r = gw.api("POST", "/gateway/backend/deactivate/adhoc-2", auth=basic("ops"),
               headers={"Origin": "http://evil.example"})
    assert r.status_code == 403
    assert gw.api("GET", "/api/public/backends/adhoc-2").json()["active"] is True


def test_failed_logins_are_rate_limited(gw):
    url = gw.url + BASE + "/login"
    s = requests.Session()
    token = csrf_of(s.get(url).text)
    for i in range(5):
        r = s.post(url, data={"user": "victim", "password": f"guess-{i}", "_csrf": token}, allow_redirects=False)
        assert r.status_code == 401, (i, r.status_code)
        assert "Wrong user name or password" in r.text
    r = s.post(url, data={"user": "victim", "password": PASSWORDS["victim"], "_csrf": token}, allow_redirects=False)
    assert r.status_code == 429
    assert 1 <= int(r.headers["Retry-After"]) <= 60
    # the API's Basic auth shares the limit
    r = gw.api("GET", "/api/queries", auth=basic("victim"))
    assert r.status_code == 429 and "Retry-After" in r.headers
    # other users are not locked out
    login(gw, "ops")
    assert "guess-" not in gw.log() and PASSWORDS["victim"] not in gw.log()
    assert "failed admin login for victim" in gw.log()


def test_plain_users_see_only_their_own_sql(gw):
    mark = uuid.uuid4().hex[:10]
    for user in ("analyst", "bob"):
        cur = gw.connect(user=user).cursor()
        cur.execute(f"SELECT '{user}-{mark}' FROM region")
        cur.fetchall()
    wait_for(lambda: len(gw.api("GET", "/api/queries", params={"text": mark}, auth=basic("ops")).json()) == 2,
             message="both queries in the history")
    s, _ = login(gw, "analyst")
    page = s.get(gw.url + BASE + "/history").text
    assert f"analyst-{mark}" in page and f"bob-{mark}" not in page
    assert "hidden (another user" in page
    page = s.get(gw.url + BASE + "/history", params={"text": f"bob-{mark}"}).text
    table = page.split('<table class="data history', 1)[1]
    assert f"bob-{mark}" not in table and "No queries match" in table and "your own queries only" in page
    ops, _ = login(gw, "ops")
    page = ops.get(gw.url + BASE + "/history", params={"text": mark}).text
    assert f"analyst-{mark}" in page and f"bob-{mark}" in page
    # the REST API masks the same way: the analyst's own SQL, not bob's
    rows = {r["user"]: r["sql"] for r in gw.api("GET", "/api/queries", params={"text": mark},
                                                auth=basic("analyst")).json()}
    assert set(rows) == {"analyst"} and f"analyst-{mark}" in rows["analyst"]  # search: own SQL only
    rows = {r["user"]: r["sql"] for r in gw.api("GET", "/api/queries", auth=basic("analyst")).json()
            if r["user"] == "bob"}
    assert rows and all(v is None for v in rows.values())
    both = gw.api("GET", "/api/queries", params={"text": mark}, auth=basic("ops")).json()
    assert all(r["sql"] for r in both)


def test_history_pages_with_keyset_cursor(gw):
    mark = uuid.uuid4().hex[:10]
    for i in range(55):
        r = requests.post(gw.url + "/v1/statement", data=f"SELECT {i} AS page_{mark}",
                          headers={"X-Trino-User": "pager"}, timeout=10)
        assert r.status_code == 200
    wait_for(lambda: len(gw.api("GET", "/api/queries", params={"text": mark, "limit": 100},
                                auth=basic("ops")).json()) == 55, message="55 rows in the history")
    s, _ = login(gw, "ops")
    first = s.get(gw.url + BASE + "/history", params={"text": mark}).text
    ids1 = re.findall(r'data-query-id="([^"]+)"', first)
    older = re.search(r'href="([^"]+)" rel="next"', first).group(1).replace("&amp;", "&")
    second = s.get(gw.url + older).text
    ids2 = re.findall(r'data-query-id="([^"]+)"', second)
    assert len(ids1) == 50 and len(ids2) == 5 and not set(ids1) & set(ids2)
    assert 'rel="next"' not in second and "Newest" in second
    assert 'data-total="55"' in first and "55 queries match" in first
    newer = re.search(r'href="([^"]+)" rel="prev"', second).group(1).replace("&amp;", "&")
    back = s.get(gw.url + newer).text
    assert re.findall(r'data-query-id="([^"]+)"', back) == ids1          # the same first page
    assert 'rel="prev"' not in back and 'rel="next"' in back


def test_history_finds_ids_users_tags_and_downloads(gw):
    mark = uuid.uuid4().hex[:10]
    ids = {}
    for user, tags in (("Carol", "team-a,nightly"), ("dave", "")):
        cur = gw.connect(user=user, client_tags=[t for t in tags.split(",") if t]).cursor()
        cur.execute(f"SELECT '{user}-{mark}' FROM region")
        cur.fetchall()
        ids[user] = cur.query_id
    wait_for(lambda: len(gw.api("GET", "/api/queries", params={"text": mark}, auth=basic("ops")).json()) == 2,
             message="both queries in the history")
    s, _ = login(gw, "ops")

    def found(**params):
        page = s.get(gw.url + BASE + "/history", params=params).text
        return re.findall(r'data-query-id="([^"]+)"', page)

    assert found(text=ids["dave"]) == [ids["dave"]]                 # a pasted id
    assert found(query_id=ids["dave"][:-3], text=mark) == [ids["dave"]]         # a prefix
    assert found(user="carol", text=mark) == [ids["Carol"]]         # case-insensitive
    assert found(tag="team-a", text=mark) == [ids["Carol"]]
    page = s.get(gw.url + BASE + "/history", params={"text": mark}).text
    assert '?tag=nightly"' in page and 'data-duration="' in page
    row = page.split(f'data-query-id="{ids["dave"]}"', 1)[1].split("</tr>", 1)[0]
    assert re.search(r'data-duration="[0-9.]+"', row)              # finished: it has a duration
    csv = s.get(gw.url + BASE + "/history.csv", params={"text": mark})
    assert csv.status_code == 200 and csv.headers["Content-Type"].startswith("text/csv")
    assert "attachment" in csv.headers["Content-Disposition"]
    lines = csv.text.strip().splitlines()
    assert lines[0].startswith("queryId,submittedAt,finishedAt,durationMs") and len(lines) == 3
    assert ids["Carol"] in csv.text and '"team-a,nightly"' in csv.text
    doc = s.get(gw.url + BASE + "/history.json", params={"user": "DAVE", "text": mark}).json()
    assert [d["queryId"] for d in doc] == [ids["dave"]] and doc[0]["finishedAt"] >= doc[0]["submittedAt"]
    # a plain user downloads other users' rows without their SQL, as on the page
    a, _ = login(gw, "analyst")
    doc = a.get(gw.url + BASE + "/history.json", params={"query_id": ids["dave"]}).json()
    assert [d["sql"] for d in doc] == [None]
    assert gw.api("GET", BASE + "/history.csv").status_code == 401       # no login, no download


def test_rules_save_refuses_paths_outside_the_rules(gw):
    rules_dir = Path(gw.config["routing"]["rules"][0])
    outside = rules_dir.parent / "evil.yaml"
    for file in (f"{rules_dir}/../evil.yaml", str(outside), "/etc/passwd", f"{rules_dir}/x.sh"):
        r = gw.api("PUT", "/api/rules/file", json={"file": file, "content": RULE}, auth=basic("ops"))
        assert r.status_code in (400, 403), (file, r.status_code)
        assert "error" in r.json()
    assert not outside.exists()
    r = gw.api("GET", "/api/rules/file", params={"file": "/etc/passwd"}, auth=basic("ops"))
    assert r.status_code == 403


def test_rules_save_through_the_api_reloads(gw):
    file = str(Path(gw.config["routing"]["rules"][0]) / "api-saved.yaml")
    bad = gw.api("PUT", "/api/rules/file", json={"file": file, "content": "name: x\ncondition: nope ==\n"},
                 auth=basic("robot"))
    assert bad.status_code == 422 and any(p["line"] == 2 for p in bad.json()["problems"])
    r = gw.api("PUT", "/api/rules/file", auth=basic("robot"), json={
        "file": file, "content": 'name: saved\ncondition: user == "z"\nroutingGroup: etl\n', "baseVersion": None})
    assert r.status_code == 200, r.text
    version = r.json()["version"]
    wait_for(lambda: gw.api("GET", "/api/rules/status", auth=basic("robot")).json()["version"] == version,
             message="the saved rules to be loaded")
    r = gw.api("PUT", "/api/rules/file", auth=basic("robot"), json={   # stale: it exists now
        "file": file, "content": 'name: saved\ncondition: "true"\nroutingGroup: etl\n', "baseVersion": None})
    assert r.status_code == 409


# --- other configurations --------------------------------------------------------------------

def test_without_users_pages_are_read_only_and_writes_loopback_only(clusters, gateway_factory, tmp_path):
    gw = gateway_factory(gateway_config(tmp_path, clusters, server={"trustForwardedHeaders": True}))
    remote = {"X-Forwarded-For": "203.0.113.9"}
    s = requests.Session()
    page = s.get(gw.url + BASE + "/clusters", headers=remote)
    assert page.status_code == 200 and "read-only" in page.text and "Add a backend" not in page.text
    token = csrf_of(page.text)
    r = s.post(gw.url + BASE + "/clusters", headers=remote, allow_redirects=False,
               data={"action": "deactivate", "name": "adhoc-1", "_csrf": token})
    assert r.status_code == 403
    assert gw.api("POST", "/gateway/backend/deactivate/adhoc-1", headers=remote).status_code == 403
    assert gw.api("GET", "/api/public/backends/adhoc-1").json()["active"] is True
    # from the gateway's own host: allowed (with the form token), and shown as allowed
    page = s.get(gw.url + BASE + "/clusters")
    assert "Add a backend" in page.text
    r = s.post(gw.url + BASE + "/clusters", allow_redirects=False,
               data={"action": "deactivate", "name": "adhoc-1", "_csrf": token, "confirmed": "yes"})
    assert r.status_code == 302
    assert gw.api("GET", "/api/public/backends/adhoc-1").json()["active"] is False
    assert s.post(gw.url + BASE + "/clusters", data={"action": "activate", "name": "adhoc-1"}).status_code == 403
    # a web page in the operator's browser cannot use the loopback rule
    r = gw.api("POST", "/gateway/backend/activate/adhoc-1", headers={"Origin": "http://evil.example"})
    assert r.status_code == 403
    assert gw.api("POST", "/gateway/backend/activate/adhoc-1").status_code == 200
    assert "nothing to log in to" in s.get(gw.url + BASE + "/login").text


def test_sessions_expire_and_tampered_cookies_are_refused(clusters, gateway_factory, tmp_path):
    gw = gateway_factory(gateway_config(tmp_path, clusters, auth={"users": users_config(), "sessionTtl": "2s"}))
    s, _ = login(gw, "ops")
    issued = time.monotonic()
    assert s.get(gw.url + BASE + "/", allow_redirects=False).status_code == 200
    value = s.cookies.get("tgw_session")
    forged = value[:-2] + ("00" if not value.endswith("00") else "11")
    t = requests.get(gw.url + BASE + "/", cookies={"tgw_session": forged}, allow_redirects=False)
    assert t.status_code == 302
    t = requests.get(gw.url + BASE + "/api/rules/status", cookies={"tgw_session": forged})
    assert t.status_code == 401
    # sent by hand: a browser drops the cookie at its expiry, the server must refuse it anyway
    wait_for(lambda: requests.get(gw.url + BASE + "/", cookies={"tgw_session": value},
                                  allow_redirects=False).status_code == 302, timeout=8,
             interval=0.2, message="the session to expire")
    assert time.monotonic() - issued >= 1.0


def test_forms_work_without_javascript(gw):
    """The rules editor and the explain form post plain forms; the save waits for the reload."""
    s, token = login(gw, "ops")
    file = str(Path(gw.config["routing"]["rules"][0]) / "form-saved.yaml")
    page = s.get(gw.url + BASE + "/rules/edit", params={"folder": str(Path(file).parent), "name": "form-saved.yaml"})
    assert page.status_code == 200 and "New rules file" in page.text
    bad = s.post(gw.url + BASE + "/rules/edit", data={"_csrf": token, "file": file, "baseVersion": "",
                                                       "content": "name: f\r\ncondition: usr == 1\r\nroutingGroup: etl\r\n"})
    assert bad.status_code == 422 and "line 2" in bad.text and not Path(file).exists()
    r = s.post(gw.url + BASE + "/rules/edit", data={"_csrf": token, "file": file, "baseVersion": "",
                                                     "content": 'name: f\r\ncondition: user == "formuser"\r\nroutingGroup: etl\r\n'})
    assert r.status_code == 200 and "Rules reloaded: version" in r.text     # followed the redirect
    assert Path(file).read_text() == 'name: f\ncondition: user == "formuser"\nroutingGroup: etl\n'
    r = s.post(gw.url + BASE + "/rules/explain", data={"_csrf": token, "user": "formuser", "query": "SELECT 1"})
    assert r.status_code == 200
    assert re.search(r'id="explain-rule">\s*f\s*<', r.text) and 'id="explain-group"><strong>etl<' in r.text
    # the form sends GET: a result has a URL of its own, and it carries no form token
    page = s.get(gw.url + BASE + "/rules").text
    assert re.search(r'<form method="get" action="[^"]*/rules/explain#explain"', page)
    assert "_csrf" not in page.split('id="explain-form"', 1)[1].split("</form>", 1)[0]
    link = s.get(gw.url + BASE + "/rules/explain", params={"user": "formuser", "query": "SELECT 1"})
    assert link.status_code == 200 and 'id="explain-group"><strong>etl<' in link.text
    Path(file).unlink()


def test_page_errors_name_the_pages_fields_and_a_favicon(gw):
    s, token = login(gw, "ops")
    r = s.post(gw.url + BASE + "/clusters", data={"_csrf": token, "action": "add", "name": "adhoc-1",
                                                   "proxyTo": "http://127.0.0.1:9"})
    assert r.status_code == 409 and "already exists" in r.text
    assert "Choose another Name" in r.text and "/gateway/backend" not in r.text
    page = s.get(gw.url + BASE + "/").text
    icon = re.search(r'<link rel="icon" href="([^"]+)"', page).group(1)
    got = s.get(gw.url + icon)
    assert got.status_code == 200 and got.headers["Content-Type"].startswith("image/svg") and b"<svg" in got.content


def _store_children(pid: int) -> list[int]:
    """The gateway's store processes (python -m gateway.store.process), oldest first."""
    import subprocess
    out = subprocess.run(["ps", "--ppid", str(pid), "-o", "pid=,args="], capture_output=True,
                         text=True, check=False).stdout
    return sorted(int(line.split()[0]) for line in out.splitlines() if "gateway.store.process" in line)


def test_a_stuck_history_search_does_not_hold_up_other_pages(gw):
    import os
    import signal
    import threading
    s, _ = login(gw, "ops")
    assert s.get(gw.url + BASE + "/history", params={"text": "warm-up"}).status_code == 200
    children = _store_children(gw.proc.pid)
    assert len(children) == 2, children            # searches have a store process of their own
    searchers = children[1:]                       # started on the first search, after the main one
    os.kill(searchers[0], signal.SIGSTOP)                 # a search that takes forever
    try:
        result: list[int] = []
        t = threading.Thread(target=lambda: result.append(
            s.get(gw.url + BASE + "/history", params={"text": "stuck"}, timeout=30).status_code))
        t.start()
        for path in ("/", "/clusters", "/dashboard/fragment"):
            assert s.get(gw.url + BASE + path, timeout=5).status_code == 200, path
        assert gw.api("GET", "/api/public/backends/adhoc-1/state").json()["unfinished"] is not None
        assert not result                                  # the search still waits
    finally:
        os.kill(searchers[0], signal.SIGCONT)
    t.join(30)
    assert result == [200]
