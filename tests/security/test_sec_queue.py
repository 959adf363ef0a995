"""Finding 3 of the hardening review: nobody can fill a capped group's gateway queue for others.
Statements are held before any cluster authenticates them; per-user and per-address caps (on by
default) refuse the flooder with a Trino-shaped QUERY_QUEUE_FULL while others keep their place.
Also finding 11's held-query token of thousands of digits (a 500 before)."""
from __future__ import annotations

import http.client
import json
import threading
import time
from typing import Any

import pytest

from tests.admission.test_admission_e2e import capped, held_count, order_on, run_in_thread
from tests.conftest import wait_for
from tests.reliability.helpers import sizes


def post_statement(port: int, sql: str, *, user: str | None = None, source_ip: str = "127.0.0.1") -> dict[str, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30, source_address=(source_ip, 0))
    try:
        conn.request("POST", "/v1/statement", body=sql.encode(), headers={"X-Trino-User": user} if user else {})
        r = conn.getresponse()
        assert r.status == 200, (r.status, r.read()[:200])
        return json.loads(r.read())
    finally:
        conn.close()


def get(port: int, uri: str, source_ip: str = "127.0.0.1") -> tuple[int, bytes]:
    path = "/" + uri.split("://", 1)[1].split("/", 1)[1]
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30, source_address=(source_ip, 0))
    try:
        conn.request("GET", path, headers={"X-Trino-User": "legit"})
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


@pytest.mark.parametrize("flood", sizes(250, 1001))
def test_an_anonymous_flood_cannot_fill_the_queue_for_others(flood, fresh_clusters, gateway_factory, tmp_path):
    cfg = capped(tmp_path, fresh_clusters)          # etl: one running query, default queue caps
    cfg["query"] = {"clientTimeout": "60s"}          # the flood does not poll; keep it queued
    gw = gateway_factory(cfg)
    etl = fresh_clusters["etl-1"]
    res: dict = {}
    blocker = run_in_thread(gw, "SELECT sleep(3), 'blocker'", res, "blocker", user="u1")
    wait_for(lambda: order_on(etl, ["blocker"]), message="the blocker to run")
    t0 = time.monotonic()
    answers = [post_statement(gw.port, "SELECT 1") for _ in range(flood)]
    states = [a["stats"]["state"] for a in answers]
    held = states.count("QUEUED")
    refused = [a["error"] for a in answers if a["stats"]["state"] == "FAILED"]
    # maxQueuedPerUser: 100 held at most at once (one more when the blocker ended meanwhile)
    assert 100 <= held <= 102 and len(refused) == flood - held, (held, len(refused))
    assert all(e["errorName"] == "QUERY_QUEUE_FULL" and "maxQueuedPerUser 100" in e["message"] for e in refused)
    # a legitimate user from another address keeps a place in line ...
    t_legit = time.monotonic()
    doc = post_statement(gw.port, "SELECT 'legit'", user="legit", source_ip="127.0.0.2")
    waited = t_legit - t0
    assert doc["stats"]["state"] == "QUEUED", doc
    # ... and users taking turns, it runs after the blocker and one anonymous statement
    def dispatched() -> bytes | None:
        code, body = get(gw.port, doc["nextUri"], "127.0.0.2")
        data = json.loads(body)
        return body if not data["id"].endswith("_gtw01") else None
    first = json.loads(wait_for(dispatched, timeout=30, message="the legitimate query to be dispatched"))
    assert first["stats"]["state"] != "FAILED", first
    print(f"QUEUE flood of {flood} anonymous statements in {waited:.1f}s: {held} held, "
          f"{len(refused)} refused; the legitimate user's statement queued at position "
          f"{doc['stats']['gatewayQueuePosition']} and reached the cluster "
          f"{time.monotonic() - t_legit:.1f}s later (the blocker held the only slot)")
    # one address sending under many user names is capped too
    rotating = [post_statement(gw.port, "SELECT 2", user=f"bot{i}", source_ip="127.0.0.3") for i in range(210)]
    refused = [a["error"]["message"] for a in rotating if a["stats"]["state"] == "FAILED"]
    assert len(refused) == 10 and all("maxQueuedPerAddress 200" in m for m in refused), refused[:2]
    blocker.join(30)


def test_a_held_query_token_of_thousands_of_digits_is_refused(fresh_clusters, gateway_factory, tmp_path):
    gw = gateway_factory(capped(tmp_path, fresh_clusters))
    etl = fresh_clusters["etl-1"]
    res: dict = {}
    blocker = run_in_thread(gw, "SELECT sleep(2), 'blocker'", res, "blocker", user="u1")
    wait_for(lambda: order_on(etl, ["blocker"]), message="the blocker to run")
    doc = post_statement(gw.port, "SELECT 1", user="u2")
    assert doc["stats"]["state"] == "QUEUED"
    base = doc["nextUri"].rsplit("/", 1)[0]
    code, body = get(gw.port, base + "/" + "9" * 5000)
    assert code == 410, (code, body[:200])
    blocker.join(30)
