"""Screenshots of the admin pages for the docs: ``python3 -m tests.browser.screenshots [OUT]``.

Starts simulated clusters and a gateway with admin users and example rules, sends a mix of
queries through the official client, then drives Debian's chromium through each page and
writes ``login``, ``dashboard``, ``clusters``, ``history``, ``rules``, ``metrics`` and
``metric`` (one metric's chart), each at 1360 px and as ``<name>-phone`` at 390 px (PNG), into
OUT (default ``docs/screenshots``). ``take_screenshots`` is also run by the browser tests.
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any

from tests.browser.support import USERS, admin_config, launch, login
from tests.conftest import REPO, spawn_cluster, start_gateway, wait_for

PAGES = {"dashboard": "", "clusters": "clusters", "history": "history", "rules": "rules",
         "metrics": "metrics", "metric": "metrics/trino_gateway_statements_routed_total?hours=1"}
VIEWPORTS = {"": {"width": 1360, "height": 860}, "-phone": {"width": 390, "height": 844}}


def seed_queries(gw: Any) -> None:
    """A realistic mix: several users and sources, a failure, a rejected DDL."""
    import trino
    plan = [("alice", "superset", "SELECT name, regionkey FROM nation ORDER BY name LIMIT 5"),
            ("bob", "nightly", "SELECT count(*) FROM numbers WHERE n % 7 = 0"),
            ("alice", "dbt", "SELECT r.name, count(*) FROM nation n JOIN region r ON n.regionkey = r.regionkey GROUP BY 1"),
            ("carol", "jupyter", "SELECT * FROM no_such_table"),
            ("ops", "cli", "SELECT current_cluster()"),
            ("bob", "airflow", "SELECT sum(n) FROM numbers WHERE n < 1000"),
            ("dave", "superset", "SELECT name FROM region"),
            ("erin", "cli", "CREATE TABLE scratch.tmp_orders AS SELECT * FROM nation")]
    tags = {"nightly": ["etl", "nightly"], "dbt": ["team-finance"]}
    for i in range(3):
        for user, source, sql in plan:
            cur = trino.dbapi.connect(host="127.0.0.1", port=gw.port, user=user, source=source,
                                      client_tags=tags.get(source), http_scheme="http").cursor()
            try:
                cur.execute(sql)
                cur.fetchall()
            except Exception:  # noqa: BLE001 - the failing one is part of the picture
                pass


def take_screenshots(page: Any, base: str, out: Path, *, user: str = "ops") -> list[Path]:
    """Log in as ``user`` and capture each page into ``out``, desktop and phone; the files."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for suffix, viewport in VIEWPORTS.items():
        page.set_viewport_size(viewport)
        page.context.clear_cookies()
        page.goto(f"{base}/trino-gateway/login")
        page.screenshot(path=str(out / f"login{suffix}.png"))
        written.append(out / f"login{suffix}.png")
        login(page, base, user)
        for name, path in PAGES.items():
            page.goto(f"{base}/trino-gateway/{path}")
            if name == "rules":
                page.fill("#explain-form input[name=user]", "bob")
                page.fill("#explain-form input[name=source]", "nightly")
                page.fill("#explain-form textarea[name=query]", "SELECT count(*) FROM tpch.tiny.orders")
                page.click("#explain-form button[type=submit]")
                page.wait_for_selector("#explain-result")
            shot = out / f"{name}{suffix}.png"
            page.screenshot(path=str(shot), full_page=not suffix)   # phones: the first screen
            written.append(shot)
    return written


def main(argv: list[str]) -> int:
    from playwright.sync_api import sync_playwright
    out = Path(argv[0]) if argv else REPO / "docs" / "screenshots"
    tmp = Path(tempfile.mkdtemp(prefix="tgw-shots-"))
    clusters = {n: spawn_cluster(n) for n in ("adhoc-1", "adhoc-2", "etl-1", "etl-2")}
    groups = {"adhoc-1": "adhoc", "adhoc-2": "adhoc", "etl-1": "etl", "etl-2": "etl"}
    gw = start_gateway(tmp, admin_config(tmp, clusters, groups, store={"metricsInterval": "2s"}))
    try:
        seed_queries(gw)
        # rejected and cancelled statements, and a few samples for the metrics chart
        for _ in range(4):
            seed_queries(gw)
        clusters["etl-2"].stop()   # one unhealthy backend on the pictures, one drained
        r = gw.api("POST", "/gateway/backend/deactivate/adhoc-2", auth=("ops", USERS["ops"][0]))
        r.raise_for_status()
        wait_for(lambda: gw.api("GET", "/api/public/backends/etl-2/state").json()["health"] == "UNHEALTHY",
                 message="etl-2 to turn UNHEALTHY")
        with sync_playwright() as p:
            browser = launch(p)
            try:
                for f in take_screenshots(browser.new_page(), gw.url, out):
                    print(f)
            finally:
                browser.close()
    finally:
        gw.stop()
        for c in clusters.values():
            c.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
