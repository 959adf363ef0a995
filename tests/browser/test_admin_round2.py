"""The admin pages' second round in real Chromium: the metrics page, honest numbers, history
search, a dashboard that says when it is stale, no-JavaScript confirmations, the keyboard, a
phone-sized screen, and an automated accessibility scan (axe-core from npm)."""
from __future__ import annotations

import re
import uuid
from pathlib import Path

import pytest
import trino

from tests.browser.support import USERS, login
from tests.conftest import wait_for

pytestmark = pytest.mark.browser

B = "/trino-gateway"
AXE = Path(__file__).parent / "node_modules" / "axe-core" / "axe.min.js"
PAGES = ("/", "/clusters", "/history", "/rules", "/metrics")


def ops_api(gw, method, path, **kw):
    return gw.api(method, path, auth=("ops", USERS["ops"][0]), **kw)


def run_query(gw, user="alice", sql="SELECT 1", **kw):
    cur = gw.connect(user=user, **kw).cursor()
    cur.execute(sql)
    cur.fetchall()
    return cur.query_id


def test_metrics_page_lists_charts_and_downloads(page, admin_gw):
    run_query(admin_gw)
    login(page, admin_gw.url, "analyst")
    page.click("nav >> text=Metrics")
    assert page.locator('tr[data-metric="trino_gateway_statements_routed_total"]').count() == 1
    assert "Statements routed" in page.inner_text('tr[data-metric="trino_gateway_statements_routed_total"]')
    page.click('tr[data-metric="trino_gateway_requests_in_flight"] strong a')
    page.wait_for_url(re.compile(r".*/metrics/trino_gateway_requests_in_flight$"))
    wait_for(lambda: page.reload() and page.locator("svg.chart.lines").count() == 1, interval=0.5,
             timeout=20, message="a chart of the sampled history")
    page.click("text=6 h")
    assert page.url.endswith("?hours=6")
    with page.expect_download() as dl:
        page.click("a >> text=CSV")
    path = dl.value.path()
    head = Path(path).read_text().splitlines()[0]
    assert head.startswith("time,unix") and head.endswith("value")
    with page.expect_download() as dl:
        page.click("a >> text=JSON")
    assert dl.value.suggested_filename.endswith(".json")


def test_dashboard_numbers_summary_stale_focus_and_period(page, admin_gw):
    run_query(admin_gw)
    login(page, admin_gw.url, "ops")
    page.goto(admin_gw.url + B + "/?refresh=1")
    row = page.locator('tr[data-backend="adhoc-1"]')
    assert "unknown" in row.inner_text()                           # info-api cannot count
    assert row.locator("[data-running]").get_attribute("data-running") == ""
    assert row.locator("[data-unfinished]").get_attribute("data-unfinished") == "0"
    assert int(page.inner_text('[data-summary="healthy"]')) == 2
    assert int(page.inner_text('[data-summary="last-hour"]')) >= 1
    assert page.locator("svg.chart.lines").count() == 1             # queries over time per backend
    # the period switch keeps ?refresh=
    assert page.get_attribute('.choices a:text("6 h")', "href").endswith("hours=6&refresh=1")
    # keyboard focus survives a refresh
    page.focus('#dashboard a[href="/trino-gateway/rules"]')
    before = page.inner_text("#dashboard .updated")
    page.wait_for_function("(b) => document.querySelector('#dashboard .updated').innerText != b", arg=before)
    assert page.evaluate("document.activeElement.getAttribute('href')") == "/trino-gateway/rules"
    # refreshes that fail are shown, not hidden
    page.route("**/dashboard/fragment*", lambda route: route.abort())
    page.wait_for_selector("#stale:not([hidden])")
    assert re.search(r"Stale — last update \d+ s ago", page.inner_text("#stale"))
    page.unroute("**/dashboard/fragment*")
    page.wait_for_selector("#stale", state="hidden")


def test_times_in_utc_or_the_browsers_zone(browser, admin_gw):
    ctx = browser.new_context(timezone_id="Asia/Tokyo")
    page = ctx.new_page()
    try:
        login(page, admin_gw.url, "ops")
        first = page.inner_text("#dashboard .updated time")
        assert first.endswith("UTC")
        page.select_option("#timezone", "local")
        assert page.inner_text("#dashboard .updated time").endswith("Asia/Tokyo")
        page.goto(admin_gw.url + B + "/history")                   # remembered on the next page
        assert page.locator("td time").first.inner_text().endswith("Asia/Tokyo")
    finally:
        ctx.close()


def test_history_finds_a_pasted_id_pages_newer_and_shows_rejections(page, admin_gw):
    mark = uuid.uuid4().hex[:8]
    ids = [run_query(admin_gw, user="pager2", sql=f"SELECT {i} AS p_{mark}") for i in range(3)]
    with pytest.raises(trino.exceptions.TrinoUserError):
        run_query(admin_gw, user="ddl_user", sql=f"CREATE TABLE t_{mark} (x int)")
    wait_for(lambda: len(ops_api(admin_gw, "GET", "/api/queries", params={"text": mark}).json()) == 4,
             message="four rows")
    login(page, admin_gw.url, "ops")
    page.goto(admin_gw.url + B + "/history")
    page.fill("input[name=text]", ids[1])
    page.click("#history-filters button[type=submit]")
    assert page.locator("tr[data-query-id]").all_inner_texts()[0].count(ids[1]) == 1
    assert page.locator("tr[data-query-id]").count() == 1
    assert page.input_value("input[name=query_id]") == ids[1]       # moved to the id field
    page.fill("input[name=query_id]", "")
    page.select_option("select[name=state]", "REJECTED")
    page.fill("input[name=user]", "DDL_USER")                        # any case
    page.click("#history-filters button[type=submit]")
    rej = page.locator("tr[data-query-id]")
    assert rej.count() == 1 and "REJECTED" in rej.inner_text() and "DDL is frozen" in rej.inner_text()
    # Older, then Newer, back to the same rows
    page.goto(admin_gw.url + B + "/history?user=pager2&text=" + mark)
    assert page.inner_text("p.total").startswith("3 queries match")
    page.goto(page.url + "&before=" + _cursor(admin_gw, ids[2]))
    assert page.locator("tr[data-query-id]").count() == 2
    page.click("text=‹ Newer")
    # the page just newer than the one shown: the newest row
    assert [r.get_attribute("data-query-id") for r in page.locator("tr[data-query-id]").all()] == [ids[2]]
    assert page.locator("text=Older ›").count() == 1


def _cursor(gw, qid):
    row = next(r for r in ops_api(gw, "GET", "/api/queries", params={"queryId": qid}).json())
    return f"{row['submittedAt']!r}~{qid}"


def test_deactivate_asks_on_a_second_page_without_javascript(browser, admin_gw):
    ctx = browser.new_context(java_script_enabled=False)
    page = ctx.new_page()
    try:
        login(page, admin_gw.url, "ops")
        page.goto(admin_gw.url + B + "/clusters")
        page.locator('tr[data-backend="etl-1"] button', has_text="Deactivate").click()
        assert "Deactivate etl-1?" in page.inner_text("main")
        assert ops_api(admin_gw, "GET", "/api/public/backends/etl-1").json()["active"] is True
        page.click("text=Cancel")
        page.locator('tr[data-backend="etl-1"] button', has_text="Delete").click()
        assert "Delete etl-1?" in page.inner_text("main")
        page.click("text=Cancel")
        page.locator('tr[data-backend="etl-1"] button', has_text="Deactivate").click()
        page.click("button >> text=Deactivate etl-1")
        assert "deactivated" in page.inner_text(".flash")
        assert ops_api(admin_gw, "GET", "/api/public/backends/etl-1").json()["active"] is False
    finally:
        ops_api(admin_gw, "POST", "/gateway/backend/activate/etl-1")
        ctx.close()


def test_explain_result_has_a_url_and_pages_have_a_favicon(page, admin_gw):
    login(page, admin_gw.url, "analyst")
    page.goto(admin_gw.url + B + "/rules")
    page.fill("#explain-form input[name=user]", "bob")
    page.fill("#explain-form input[name=source]", "nightly")
    page.click("#explain-form button[type=submit]")
    assert "source=nightly" in page.url and page.inner_text("#explain-group") == "etl"
    again = page.context.new_page()
    again.goto(page.url)
    assert again.inner_text("#explain-group") == "etl"
    icon = page.get_attribute('link[rel="icon"]', "href")
    assert page.request.get(admin_gw.url + icon).status == 200


def test_the_rules_editor_does_not_trap_the_keyboard(page, admin_gw):
    rules_file = Path(admin_gw.config["routing"]["rules"][0]) / "main.yaml"
    login(page, admin_gw.url, "ops")
    page.goto(admin_gw.url + B + "/rules/edit?file=" + str(rules_file))
    assert page.get_attribute("#editor", "aria-describedby").startswith("editor-keys")
    assert page.locator('label[for="editor"]').count() == 1
    assert page.get_attribute("#problems", "aria-labelledby") == "problems-title"
    page.focus("#editor")
    page.keyboard.press("Control+Home")
    page.keyboard.press("Tab")                                      # indents
    assert page.input_value("#editor").startswith("  name:")
    page.keyboard.press("Shift+Tab")                                # outdents
    assert page.input_value("#editor").startswith("name:")
    page.keyboard.press("Escape")
    page.keyboard.press("Tab")                                      # leaves
    assert page.evaluate("document.activeElement.id") == "save"


def test_phone_layout(browser, admin_gw):
    ctx = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
    page = ctx.new_page()
    try:
        run_query(admin_gw, sql="SELECT '" + "a_very_long_identifier_" * 12 + "' AS x")
        login(page, admin_gw.url, "ops")
        for path in PAGES:
            page.goto(admin_gw.url + B + path)
            width = page.evaluate("document.documentElement.scrollWidth")
            assert width <= 390, (path, width)
            for sel in ("header nav a >> nth=-1", "header .who .user", "header .who button"):
                box = page.locator(sel).bounding_box()
                assert box and box["x"] >= 0 and box["x"] + box["width"] <= 390, (path, sel, box)
        page.goto(admin_gw.url + B + "/clusters")
        for b in page.locator('tr[data-backend="adhoc-1"] td.actions button, tr[data-backend="adhoc-1"] td.actions a').all():
            box = b.bounding_box()
            assert box and box["x"] + box["width"] <= 390
        page.goto(admin_gw.url + B + "/history")
        sql = page.locator("td.sql").first.bounding_box()
        assert sql["x"] + sql["width"] <= 390
    finally:
        ctx.close()


@pytest.fixture(scope="session")
def axe() -> Path:
    """axe-core from the npm registry, fetched on first use with ``npm ci`` (pinned by the lock file)."""
    import os
    import shutil
    import subprocess
    import sys
    if not AXE.exists():
        npm = shutil.which("npm")
        why = "no 'npm' on PATH (install Debian's 'npm' package)"
        if npm:
            print(f"\n[browser] fetching axe-core with npm ci in {AXE.parents[2]} (first use)",
                  file=sys.__stderr__, flush=True)
            proc = subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=AXE.parents[2],
                                  capture_output=True, text=True, timeout=600)
            why = f"npm ci failed ({proc.returncode}): {(proc.stderr or proc.stdout)[-500:]}"
        if not AXE.exists():
            if os.environ.get("TRINO_GATEWAY_REQUIRE_BROWSER") == "1":
                pytest.fail(f"axe-core is not installed: {why}")
            pytest.skip(f"axe-core is not installed: {why}")
    return AXE


@pytest.mark.parametrize("path", PAGES + ("/login", "/rules/edit?file=MAIN"))
def test_no_serious_accessibility_violations(browser, admin_gw, axe, path):
    ctx = browser.new_context(bypass_csp=True)       # to inject axe into the strict-CSP pages
    page = ctx.new_page()
    try:
        if path != "/login":
            login(page, admin_gw.url, "ops")
        path = path.replace("MAIN", str(Path(admin_gw.config["routing"]["rules"][0]) / "main.yaml"))
        page.goto(admin_gw.url + B + path)
        page.add_script_tag(path=str(AXE))
        result = page.evaluate("async () => await axe.run(document, {resultTypes: ['violations']})")
        bad = [(v["id"], v["impact"], [n["target"] for n in v["nodes"]][:3])
               for v in result["violations"] if v["impact"] in ("serious", "critical")]
        assert not bad, bad
    finally:
        ctx.close()
