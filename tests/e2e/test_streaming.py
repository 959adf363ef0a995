"""Large pages stream through the gateway; spooled segments reach the backend that issued them."""
from __future__ import annotations

import json
import re

import requests

from tests.conftest import gateway_config, wait_for


def _rss_kb(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise AssertionError(field)


def test_a_100mb_page_streams_with_flat_gateway_memory(fresh_clusters, gateway_factory, tmp_path):
    cfg = gateway_config(tmp_path, fresh_clusters, groups={"etl-1": "adhoc"})
    gw = gateway_factory(cfg)
    fresh_clusters["etl-1"].control(page_rows=1000)
    pid = gw.proc.pid
    # warm up the code paths so the peak below is about the page, not imports
    requests.post(gw.url + "/v1/statement", data=b"SELECT 1", headers={"X-Trino-User": "a"}, timeout=10)
    before = _rss_kb(pid, "VmRSS")
    r = requests.post(gw.url + "/v1/statement",
                      data=b"SELECT n, repeat('x', 100000) FROM numbers WHERE n <= 1000 ORDER BY n",
                      headers={"X-Trino-User": "alice"}, timeout=30)
    doc = r.json()
    biggest = 0
    rows = 0
    while "nextUri" in doc:
        with requests.get(doc["nextUri"], headers={"X-Trino-User": "alice"}, stream=True, timeout=60) as resp:
            assert resp.status_code == 200
            body = b"".join(resp.iter_content(1 << 20))
        biggest = max(biggest, len(body))
        doc = json.loads(body)
        for row in doc.get("data", []):
            assert row[1] == "x" * 100000
            rows += 1
    assert rows == 1000
    assert biggest > 100_000_000  # one page of about 100 MB went through
    peak = _rss_kb(pid, "VmHWM")
    growth_mb = (peak - before) / 1024
    assert growth_mb < 64, f"gateway peak memory grew by {growth_mb:.0f} MB for a 100 MB page"


def test_spooled_segments_are_routed_to_their_backend(fresh_clusters, gateway_factory, tmp_path):
    for c in fresh_clusters.values():
        c.control(spooling=True, page_rows=50)
    gw = gateway_factory(gateway_config(tmp_path, fresh_clusters))
    conn = gw.connect(encoding="json")
    cur = conn.cursor()
    cur.execute("SELECT n FROM numbers WHERE n <= 300 ORDER BY n")
    assert cur.fetchall() == [[n] for n in range(1, 301)]
    # the segments really were spooled and downloaded through the gateway
    seen = [q for c in fresh_clusters.values() for q in c.queries()
            if q["sql"].startswith("SELECT n FROM numbers WHERE n <= 300")]
    assert seen
    for c in fresh_clusters.values():
        c.control(spooling=False)


def test_two_workers_share_one_port_and_follow_each_others_queries(fresh_clusters, gateway_factory, tmp_path):
    cfg = gateway_config(tmp_path, fresh_clusters, server={"workers": 2})
    gw = gateway_factory(cfg)
    wait_for(lambda: gw.log().count("listening on") >= 2, message="two workers")
    close = {"X-Trino-User": "alice", "Connection": "close"}  # every request on a new connection
    for _ in range(30):
        doc = requests.post(gw.url + "/v1/statement", data=b"SELECT n FROM numbers WHERE n <= 250 ORDER BY n",
                            headers=close, timeout=10).json()
        rows = doc.get("data", [])
        while "nextUri" in doc:
            r = requests.get(doc["nextUri"], headers=close, timeout=10)
            assert r.status_code == 200, r.text
            doc = r.json()
            rows += doc.get("data", [])
        assert rows == [[n] for n in range(1, 251)]
    # both worker processes routed statements (the log names the process)
    pids = set(re.findall(r"\[(\d+)\] INFO gateway.routing: query ", gw.log()))
    assert len(pids) == 2, pids
    # /metrics from any worker counts the statements of both
    text = gw.api("GET", "/metrics").text
    total = sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                if line.startswith("trino_gateway_statements_routed_total{"))
    assert total == 30
