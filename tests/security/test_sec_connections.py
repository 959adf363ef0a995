"""Finding 4 of the hardening review: slow clients cannot hold connections forever or starve
others. A request head is due within ``server.headerTimeout``, a body must keep arriving
(``server.bodyProgressTimeout``), connections are capped per worker and per client address
with a clear 503, and descriptors stay in reserve for the monitor, the store and rules reloads."""
from __future__ import annotations

import http.client
import json
import os
import socket
import sys
import time
from pathlib import Path

import pytest
import requests

from tests.conftest import gateway_config, wait_for


def closed_within(s: socket.socket, seconds: float) -> float | None:
    """Seconds until the gateway closed ``s`` (None if it did not within ``seconds``)."""
    t0 = time.monotonic()
    s.settimeout(seconds)
    try:
        while True:
            data = s.recv(4096)
            if not data:
                return time.monotonic() - t0
    except (socket.timeout, TimeoutError):
        return None
    except OSError:
        return time.monotonic() - t0


def connect(port: int, source_ip: str = "127.0.0.1") -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=5, source_address=(source_ip, 0))


def test_heads_and_bodies_that_do_not_arrive_are_cut_off(fresh_clusters, gateway_factory, tmp_path):
    gw = gateway_factory(gateway_config(tmp_path, fresh_clusters,
                                        server={"headerTimeout": "1s", "bodyProgressTimeout": "1s"}))
    silent = connect(gw.port)                                   # sends nothing at all
    partial = connect(gw.port)
    partial.sendall(b"GET /v1/info HTTP/1.1\r\nHost: x\r\n")    # a head that never ends
    stalled = connect(gw.port)
    stalled.sendall(b"POST /v1/statement HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nSELECT")
    for name, s in (("silent", silent), ("partial head", partial), ("stalled body", stalled)):
        took = closed_within(s, 5)
        assert took is not None, f"the {name} connection was still open after 5 s"
        s.close()
    # keep-alive connections between requests are idle, not late: they stay
    with requests.Session() as session:
        assert session.get(gw.url + "/trino-gateway/livez", timeout=5).status_code == 200
        time.sleep(1.5)   # longer than headerTimeout, shorter than idleConnectionTimeout (the point)
        assert session.get(gw.url + "/trino-gateway/livez", timeout=5).status_code == 200


def test_connections_over_the_cap_per_address_get_a_clear_503(fresh_clusters, gateway_factory, tmp_path):
    gw = gateway_factory(gateway_config(tmp_path, fresh_clusters, server={"maxConnectionsPerAddress": 20}))
    held = [connect(gw.port) for _ in range(20)]
    extra = connect(gw.port)
    extra.sendall(b"GET /trino-gateway/livez HTTP/1.1\r\nHost: x\r\n\r\n")
    answer = extra.recv(4096)
    assert answer.startswith(b"HTTP/1.1 503") and b"maxConnectionsPerAddress 20" in answer, answer
    # another address is not affected
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=5, source_address=("127.0.0.2", 0))
    conn.request("GET", "/trino-gateway/livez")
    assert conn.getresponse().status == 200
    for s in held + [extra]:
        s.close()
    wait_for(lambda: requests.get(gw.url + "/trino-gateway/livez", timeout=5).status_code == 200,
             message="room again once they closed")


def test_slow_connections_under_a_small_descriptor_limit_starve_nobody(
        fresh_clusters, gateway_factory, tmp_path, monkeypatch):
    """400 half-open connections from one client under a 300-descriptor limit made the gateway
    unreachable, its monitor mark the backend UNHEALTHY and a rules reload fail."""
    wrapper = tmp_path / "python-300-fds"
    wrapper.write_text(f"#!/bin/sh\nexec prlimit --nofile=300:300 {sys.executable} \"$@\"\n")
    wrapper.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(wrapper))
    cfg = gateway_config(tmp_path, {"adhoc-1": fresh_clusters["adhoc-1"]}, groups={"adhoc-1": "adhoc"},
                         server={"maxConnectionsPerAddress": 100, "reservedDescriptors": 64})
    gw = gateway_factory(cfg)
    monkeypatch.undo()
    def statement_latency() -> float:
        t0 = time.monotonic()
        conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10, source_address=("127.0.0.2", 0))
        conn.request("POST", "/v1/statement", body=b"SELECT 1", headers={"X-Trino-User": "ann"})
        r = conn.getresponse()
        doc = json.loads(r.read())
        assert r.status == 200 and "error" not in doc, doc
        conn.close()
        return time.monotonic() - t0
    quiet = sorted(statement_latency() for _ in range(10))
    attackers = 400
    open_socks: list[socket.socket] = []
    for _ in range(attackers):
        s = connect(gw.port)
        try:
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")        # never finished
        except OSError:
            pass   # refused and closed already
        open_socks.append(s)
    try:
        # another client keeps working: statements route, the monitor keeps the backend HEALTHY,
        # a rules file written now is loaded
        (tmp_path / "rules" / "during.yaml").write_text("name: during\ncondition: user == 'z'\nroutingGroup: adhoc\n")
        latencies = [statement_latency() for _ in range(10)]

        def state(path: str) -> dict:
            c = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10, source_address=("127.0.0.2", 0))
            c.request("GET", path)
            return json.loads(c.getresponse().read())
        wait_for(lambda: [r for r in state("/api/rules")["rules"] if r["name"] == "during"],
                 message="the rules reload during the attack")
        assert state("/api/public/backends/adhoc-1/state")["health"] == "HEALTHY"
        s = open_socks[-1]
        s.settimeout(5)
        last = s.recv(4096)   # the last one was over the cap: refused in so many words
        assert last.startswith(b"HTTP/1.1 503") and b"maxConnectionsPerAddress 100" in last, last
    finally:
        for s in open_socks:
            s.close()
    print(f"CONNECTIONS {attackers} slow connections from one address under 300 descriptors: "
          f"503 beyond the first 100, another client's statement p50 {sorted(latencies)[5] * 1000:.0f} ms, "
          f"max {max(latencies) * 1000:.0f} ms (before the attack: p50 {quiet[5] * 1000:.0f} ms, "
          f"max {quiet[-1] * 1000:.0f} ms)")
    assert "Traceback" not in gw.log() and "Too many open files" not in gw.log(), gw.log()[-2000:]
