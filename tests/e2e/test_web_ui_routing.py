"""Trino's web UI through the gateway: a query page's login reaches the query's owner.

Each coordinator signs its UI login cookie with a key of its own (simulated clusters too), so a
browser that logged in on the default group's backend was refused by the owner of a query
elsewhere and looped between the query page and the login page (found with real Trino in
Chromium: tests/real/test_real_web_ui.py). The login form carries no query id; the page that
posts it, in the ``Referer``, does.
"""
from __future__ import annotations

import requests

from tests.conftest import cluster_of


def test_login_from_a_query_page_is_valid_on_the_querys_owner(gateway):
    cur = gateway.connect(http_headers={"X-Trino-Routing-Group": "etl"}).cursor()
    assert cluster_of(cur) == "etl-1"            # not the default group's backends
    qid = cur.query_id
    page = f"{gateway.url}/ui/query.html?{qid}"
    browser = requests.Session()
    r = browser.post(f"{gateway.url}/ui/login", timeout=10, allow_redirects=False,
                     data={"username": "alice", "password": "", "redirectPath": f"/ui/query.html?{qid}"},
                     headers={"Referer": f"{gateway.url}/ui/login.html?/ui/query.html?{qid}"})
    assert r.status_code == 303 and "Trino-UI-Token" in browser.cookies
    r = browser.get(f"{gateway.url}/ui/api/query/{qid}", headers={"Referer": page}, timeout=10)
    assert r.status_code == 200, (r.status_code, r.text)
    assert r.json()["queryId"] == qid
