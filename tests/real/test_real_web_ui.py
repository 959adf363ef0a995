"""Trino's own web UI through the gateway, in Debian's headless Chromium (tests/browser's way).

A query runs through the gateway; its ``infoUri`` points at the gateway. Opening it in the
browser must lead, after the coordinator's login form (no authentication configured: a user
name only), to the coordinator's query page showing that query, with every request of the
page answered through the gateway by the coordinator that owns the query.
"""
from __future__ import annotations

import re
from typing import Any

import pytest
import trino

from tests.browser.conftest import browser, page  # noqa: F401  (the project's Chromium fixtures)
from tests.conftest import GatewayProcess
from tests.real.launcher import Cluster, Coordinator
from tests.real.test_real_python_client import routed_to

pytestmark = [pytest.mark.real, pytest.mark.browser]


def submit(base_host: str, port: int, source: str) -> tuple[str, str]:
    """Run a small query; its id and infoUri."""
    conn = trino.dbapi.connect(host=base_host, port=port, user="ui-user", source=source, http_scheme="http")
    cur = conn.cursor()
    cur.execute("SELECT count(*) FROM tpch.tiny.region")
    assert cur.fetchall() == [[5]]
    return cur.query_id, cur.info_uri


def open_query_page(page: Any, info_uri: str, query_id: str) -> dict[str, Any]:  # noqa: F811
    """Open the infoUri, log in with a user name, wait for the query page; what it showed."""
    seen: list[tuple[str, int]] = []
    page.on("response", lambda r: seen.append((r.url, r.status)))
    # Trino's pages link a web font on fonts.googleapis.com: nothing leaves the machine.
    page.route(re.compile(r"^https?://(?!127\.0\.0\.1[:/])"), lambda route: route.abort())
    page.goto(info_uri)
    page.wait_for_url(re.compile(r".*/ui/login\.html.*"))
    page.fill("#username", "ui-user")
    page.click("#submit")
    page.wait_for_url(re.compile(rf".*/ui/query\.html\?{query_id}$"))
    # The page's script fetches /ui/api/query/<id> and renders the id in its header.
    page.wait_for_function("id => document.querySelector('#query-detail') && "
                           "document.querySelector('#query-detail').innerText.includes(id)",
                           arg=query_id, timeout=20_000)
    api = page.evaluate("id => fetch('/ui/api/query/' + id).then(r => r.json())", query_id)
    return {"url": page.url, "text": page.inner_text("#query-detail"), "responses": seen, "api": api}


@pytest.mark.parametrize("source", ["superset", "airflow"], ids=["adhoc", "etl"])
def test_info_uri_opens_the_owning_coordinators_query_page(
        gw: GatewayProcess, coords: Cluster, browser: Any, page: Any, source: str) -> None:  # noqa: F811
    """Also the query on etl, the coordinator that is not the default group's: before the
    gateway routed the UI by the page that asks, its login went to adhoc, whose cookie etl
    refused, and the browser looped between the query and the login page."""
    query_id, info_uri = submit("127.0.0.1", gw.port, source)
    owner: Coordinator = routed_to(gw, coords, query_id)
    assert owner.name == ("etl" if source == "airflow" else "adhoc")
    assert info_uri == f"{gw.url}/ui/query.html?{query_id}"
    shown = open_query_page(page, info_uri, query_id)
    assert shown["url"] == info_uri
    assert "ui-user" in shown["text"] and "FINISHED" in shown["text"]
    # Every request of the page went to the gateway, and the query's own data came back.
    assert all(url.startswith(gw.url + "/") for url, _ in shown["responses"]), shown["responses"]
    api = [status for url, status in shown["responses"] if url.endswith(f"/ui/api/query/{query_id}")]
    assert api and set(api) == {200}, shown["responses"]
    # The same page straight from the coordinator shows the same thing.
    ctx = browser.new_context(viewport={"width": 1360, "height": 900})
    try:
        plain = open_query_page(ctx.new_page(), f"{owner.url}/ui/query.html?{query_id}", query_id)
    finally:
        ctx.close()
    assert shown["api"] == plain["api"]
    assert shown["text"] == plain["text"]
