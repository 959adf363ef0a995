"""The admin pages in real headless Chromium: what an operator does from the browser alone."""
from __future__ import annotations

import re
import threading
import uuid
from pathlib import Path

import pytest

from tests.browser.support import RULES, USERS, login, logout
from tests.conftest import cluster_of, wait_for

pytestmark = pytest.mark.browser

B = "/trino-gateway"


def ops_api(gw, method, path, **kw):
    return gw.api(method, path, auth=("ops", USERS["ops"][0]), **kw)


def test_login_wrong_password_then_logout(page, admin_gw):
    page.goto(admin_gw.url + B + "/history")
    page.wait_for_url(re.compile(r".*/login\?next="))
    page.fill("input[name=user]", "ops")
    page.fill("input[name=password]", "wrong")
    page.click("button[type=submit]")
    assert "Wrong user name or password" in page.inner_text("main")
    page.fill("input[name=password]", USERS["ops"][0])
    page.click("button[type=submit]")
    page.wait_for_url(admin_gw.url + B + "/history")   # back where the operator was going
    assert page.inner_text("header .who .user") == "ops"
    logout(page)
    page.goto(admin_gw.url + B + "/")
    page.wait_for_url(re.compile(r".*/login"))


def test_dashboard_shows_a_cluster_going_down_and_back(page, admin_gw, clusters):
    login(page, admin_gw.url, "analyst")       # reading needs only the user role
    page.goto(admin_gw.url + B + "/?refresh=1")
    status = page.locator('tr[data-backend="etl-1"] [data-status]')
    assert status.inner_text() == "HEALTHY"
    etl = clusters["etl-1"]
    try:
        etl.control(starting=True)             # /v1/info says starting: the monitor stops routing there
        page.wait_for_function(
            "() => document.querySelector('tr[data-backend=\"etl-1\"] [data-status]').textContent != 'HEALTHY'")
        assert status.inner_text() == "PENDING"
        assert "starting" in page.inner_text('tr[data-backend="etl-1"]')
        assert page.locator('tr[data-backend="adhoc-1"] [data-status]').inner_text() == "HEALTHY"
    finally:
        etl.control(starting=False)
    page.wait_for_function(
        "() => document.querySelector('tr[data-backend=\"etl-1\"] [data-status]').textContent == 'HEALTHY'")


def test_add_and_drain_a_cluster(page, admin_gw, spare):
    login(page, admin_gw.url, "ops")
    page.goto(admin_gw.url + B + "/clusters")
    form = page.locator("#add-backend")
    form.locator("input[name=name]").fill("spare-1")
    form.locator("input[name=proxyTo]").fill(spare.url)
    form.locator("input[name=routingGroup]").fill("spare")
    form.locator("button[type=submit]").click()
    assert "Backend spare-1 added" in page.inner_text(".flash")
    row = page.locator('tr[data-backend="spare-1"]')
    assert "spare" in row.inner_text()
    wait_for(lambda: ops_api(admin_gw, "GET", "/api/public/backends/spare-1/state").json()["health"] == "HEALTHY",
             message="spare-1 HEALTHY")
    # a slow query on it, then drain it while the query runs
    conn = admin_gw.connect(user="drainer", http_headers={"X-Trino-Routing-Group": "spare"})
    cur = conn.cursor()
    done: list[object] = []
    t = threading.Thread(target=lambda: (cur.execute("SELECT sleep(2), current_cluster()"),
                                         done.append(cur.fetchall())))
    t.start()
    wait_for(lambda: any(q["state"] not in ("FINISHED", "FAILED") for q in spare.queries()),
             message="the slow query to run on spare-1")
    wait_for(lambda: ops_api(admin_gw, "GET", "/api/queries", params={"backend": "spare-1"}).json(),
             message="the slow query in the history")
    page.goto(admin_gw.url + B + "/clusters")
    row.locator("button", has_text="Deactivate").click()   # the confirm dialog is accepted
    assert "deactivated" in page.inner_text(".flash")
    assert row.locator("[data-drain]").inner_text() == "draining"
    assert "still runs 1 query" in row.inner_text()
    # new queries for the group go elsewhere while it drains
    other = admin_gw.connect(user="drainer", http_headers={"X-Trino-Routing-Group": "spare"}).cursor()
    assert cluster_of(other) == "adhoc-1"
    t.join(15)
    assert done and done[0][0][1] == "spare-1"             # the running query finished where it was
    # the gateway sees the query finish (history is written in batches): the page says drained
    wait_for(lambda: page.reload() and row.locator("[data-drain]").inner_text() == "drained",
             interval=0.2, message="spare-1 shown as drained")
    assert "no queries left" in row.inner_text()


def test_find_a_query_by_text_and_open_it_on_its_cluster(page, admin_gw):
    needle = "needle_" + uuid.uuid4().hex[:8]
    cur = admin_gw.connect(user="finder").cursor()
    cur.execute(f"SELECT '{needle}' AS x FROM region")
    cur.fetchall()
    qid = cur.query_id
    wait_for(lambda: ops_api(admin_gw, "GET", "/api/queries", params={"text": needle}).json(),
             message="the query in the history")
    login(page, admin_gw.url, "ops")
    page.click("nav >> text=Query history")
    page.fill("input[name=text]", needle)
    page.click("#history-filters button[type=submit]")
    rows = page.locator("tr[data-query-id]")
    assert rows.count() == 1
    assert needle in rows.first.inner_text()
    with page.context.expect_page() as popup:
        rows.first.locator("a.query-link").click()
    ui = popup.value
    ui.wait_for_load_state()
    # As with a real coordinator: its UI asks for a login first, then comes back to the query.
    assert f"/ui/login.html?/ui/query.html?{qid}" in ui.url
    ui.fill("input[name=username]", "finder")
    ui.click("button")
    ui.wait_for_url(f"**/ui/query.html?{qid}")
    assert qid in ui.content()
    assert qid in ui.content()


def test_edit_a_rule_and_watch_a_real_query_route_differently(page, admin_gw):
    rules_file = Path(admin_gw.config["routing"]["rules"][0]) / "main.yaml"
    nightly = admin_gw.connect(user="bob", source="nightly").cursor()
    assert cluster_of(nightly) == "etl-1"
    try:
        login(page, admin_gw.url, "ops")
        page.goto(admin_gw.url + B + "/rules")
        page.click(f'a[href="{B}/rules/edit?file={str(rules_file).replace("/", "%2F")}"]')
        editor = page.locator("#editor")
        assert "nightly-to-etl" in editor.input_value()
        # a typo: reported as you type, with its line, and Save is disabled
        editor.fill(RULES.replace('condition: source == "nightly"', 'condition: sorce == "nightly"'))
        page.wait_for_function("() => document.getElementById('check-state').textContent.includes('problem')")
        assert "line 4" in page.inner_text("#problems") and "sorce" in page.inner_text("#problems")
        assert page.locator("#save").is_disabled()
        # the fix: nightly jobs go to adhoc now
        editor.fill(RULES.replace("routingGroup: etl\n---\nname: big-scans", "routingGroup: adhoc\n---\nname: big-scans"))
        page.wait_for_function("() => document.getElementById('check-state').textContent.startsWith('Valid')")
        page.click("#save")
        page.wait_for_function("() => document.getElementById('reload-state').textContent.startsWith('Reloaded')")
        assert cluster_of(nightly) == "adhoc-1"
        assert "routingGroup: adhoc" in rules_file.read_text()
        page.goto(admin_gw.url + B + "/rules")
        assert "adhoc" in page.inner_text('tr[data-rule="nightly-to-etl"]')
    finally:
        rules_file.write_text(RULES)
        wait_for(lambda: cluster_of(nightly) == "etl-1", message="the original rules back in force")


def test_explain_a_query(page, admin_gw):
    login(page, admin_gw.url, "analyst")
    page.goto(admin_gw.url + B + "/rules")
    page.fill("#explain-form input[name=user]", "bob")
    page.fill("#explain-form input[name=source]", "nightly")
    page.fill("#explain-form textarea[name=query]", "SELECT count(*) FROM tpch.tiny.orders")
    page.click("#explain-form button[type=submit]")
    assert page.inner_text("#explain-group") == "etl"
    assert page.inner_text("#explain-rule") == "nightly-to-etl"
    trace = page.inner_text("#explain-result table.trace")
    assert "no-drops" in trace and "matched: decides" in trace
    # a DDL statement is rejected by the highest-priority rule
    page.fill("#explain-form textarea[name=query]", "DROP TABLE hive.web.clicks")
    page.click("#explain-form button[type=submit]")
    assert "DDL is frozen this week" in page.inner_text("#explain-result")


def test_refused_without_the_right_role(page, admin_gw):
    login(page, admin_gw.url, "analyst")
    page.goto(admin_gw.url + B + "/clusters")
    assert page.locator("#add-backend").count() == 0
    assert page.locator("button", has_text="Deactivate").count() == 0
    resp = page.goto(admin_gw.url + B + "/clusters/adhoc-1/edit")
    assert resp.status == 403 and "admin role" in page.inner_text("main")
    rules_file = str(Path(admin_gw.config["routing"]["rules"][0]) / "main.yaml")
    page.goto(admin_gw.url + B + "/rules/edit?file=" + rules_file)
    assert page.locator("#editor").get_attribute("readonly") is not None
    assert page.locator("#save").count() == 0
    # even a hand-made request with the page's own token is refused
    status = page.evaluate("""async (file) => {
        const token = document.querySelector('meta[name=csrf-token]').content;
        const r = await fetch('/trino-gateway/api/rules/file', {method: 'PUT',
            headers: {'Content-Type': 'application/json', 'X-CSRF-Token': token},
            body: JSON.stringify({file: file, content: 'name: x\\ncondition: "true"\\nroutingGroup: etl\\n'})});
        return r.status; }""", rules_file)
    assert status == 403
    assert "nightly-to-etl" in Path(rules_file).read_text()
    logout(page)
    login_as_api = page.goto(admin_gw.url + B + "/login")
    assert login_as_api.status == 200
    page.fill("input[name=user]", "robot")
    page.fill("input[name=password]", USERS["robot"][0])
    page.click("button[type=submit]")
    assert "The api role is for the REST API" in page.inner_text("main")


def test_screenshots_script_captures_every_page(page, admin_gw, tmp_path):
    from tests.browser.screenshots import take_screenshots
    files = take_screenshots(page, admin_gw.url, tmp_path)
    names = ["clusters", "dashboard", "history", "login", "metric", "metrics", "rules"]
    assert sorted(f.name for f in files) == sorted([f"{n}.png" for n in names] + [f"{n}-phone.png" for n in names])
    for f in files:
        assert f.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f.stat().st_size > 10_000
