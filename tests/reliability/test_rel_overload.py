"""Overload never looks like a dead cluster; shedding is honest (issue 19, item 2).

The gateway's event loop is stalled for real: the whole process is stopped with SIGSTOP while a
monitor probe is in flight (a stand-in for a long garbage collection or a CPU-starved worker)
and continued with SIGCONT. The backend answered during the stall; the probe's timer fired
late. The only backend must stay HEALTHY, the next new statement gets the documented 429, and a
poll of a running query is not shed.
"""
from __future__ import annotations

import os
import select
import signal
import socket
import threading
import time

import pytest
import requests

from tests.conftest import gateway_config, spawn_cluster, wait_for
from tests.reliability.helpers import BlackHoleRelay, free_port, metric

STALL_SECONDS = 2.5   # longer than monitor.timeout (1s) and the server.shedLoopLag set below (1s)


class ProbeHoldingRelay:
    """Relays TCP to ``upstream_port``; while ``hold`` is set, the first ``GET /v1/info`` it
    sees is held back until ``release`` is set (``held`` tells the test it has one)."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.hold = threading.Event()
        self.held = threading.Event()
        self.release = threading.Event()
        self.answered = threading.Event()   # the held probe's answer went back to the gateway
        self._stop = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0), backlog=256)
        self._listener.settimeout(0.2)
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        self._stop.set()
        self.release.set()
        self._listener.close()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except OSError:
                continue
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        upstream = socket.create_connection(("127.0.0.1", self.upstream_port), timeout=5)
        upstream.settimeout(None)
        holding = False
        try:
            while not self._stop.is_set():
                r, _, _ = select.select([client, upstream], [], [], 0.2)
                for s in r:
                    data = s.recv(65536)
                    if not data:
                        return
                    if s is client:
                        if data.startswith(b"GET /v1/info") and self.hold.is_set() and not self.held.is_set():
                            holding = True
                            self.held.set()
                            self.release.wait()
                        upstream.sendall(data)
                    else:
                        client.sendall(data)
                        if holding:
                            self.answered.set()
        except OSError:
            return
        finally:
            client.close()
            upstream.close()


def _post(gw, sql: str = "SELECT 1") -> requests.Response:
    return requests.post(f"{gw.url}/v1/statement", data=sql, timeout=10,
                         headers={"X-Trino-User": "alice"})


def _state(gw, name: str) -> dict:
    return gw.api("GET", f"/api/public/backends/{name}/state").json()


def test_a_stalled_gateway_keeps_its_only_backend_and_sheds_new_statements(gateway_factory, tmp_path):
    cluster = spawn_cluster("ovl-1")
    relay = ProbeHoldingRelay(cluster.port)
    gw = None
    try:
        cfg = gateway_config(tmp_path, None, monitor={"interval": "500ms", "timeout": "1s"},
                             server={"shedLoopLag": "1s", "shedRetryAfter": "2s"})
        cfg["backends"] = [{"name": "ovl-1", "proxyTo": relay.url, "routingGroup": "adhoc"}]
        gw = gateway_factory(cfg)
        cluster.control(slow=0.3)     # the query below is still running after the stall
        first = _post(gw, "SELECT * FROM tpch.tiny.nation")
        assert first.status_code == 200, first.text
        next_uri = first.json()["nextUri"]

        relay.hold.set()
        wait_for(relay.held.is_set, timeout=5, message="a probe in flight")
        os.kill(gw.proc.pid, signal.SIGSTOP)
        try:
            relay.release.set()       # the backend answers while the gateway cannot look
            wait_for(relay.answered.is_set, timeout=5, message="the probe's answer sent")
            time.sleep(STALL_SECONDS)  # the stall itself (the stimulus, not a wait for a condition)
        finally:
            os.kill(gw.proc.pid, signal.SIGCONT)
        resumed = time.time()

        # A new statement right after the stall is shed the documented way.
        shed = _post(gw)
        assert shed.status_code == 429, (shed.status_code, shed.text[:300])
        assert shed.headers["Retry-After"] == "2"
        doc = shed.json()
        assert doc["stats"]["state"] == "FAILED"
        assert doc["error"]["errorName"] == "QUERY_QUEUE_FULL"
        assert doc["error"]["message"].startswith("The gateway is overloaded: its event loop ran")
        assert "server.shedLoopLag" in doc["error"]["message"]
        wait_for(lambda: "shedding new statements (1 since the last such line" in gw.log(), timeout=5,
                 message="the shed logged")

        # A poll of the running query is never shed.
        poll = requests.get(next_uri, timeout=10)
        assert poll.status_code == 200, poll.text[:300]
        assert poll.json()["id"] == first.json()["id"]

        # The probe that timed out during the stall was not counted: the only backend stayed
        # HEALTHY through it and through the probes after it.
        wait_for(lambda: (_state(gw, "ovl-1")["lastProbe"] or 0) > resumed + 0.5, timeout=10,
                 message="a probe after the stall")
        assert "HEALTHY -> UNHEALTHY" not in gw.log()
        assert _state(gw, "ovl-1")["health"] == "HEALTHY"
        text = gw.api("GET", "/metrics").text
        assert metric(text, "trino_gateway_health_hints_total", source="probe", verdict="excused") >= 1
        assert metric(text, "trino_gateway_shed_total", reason="loop-lag") == 1
        assert metric(text, "trino_gateway_event_loop_lag_seconds_count") > 0

        # Once the loop is on time again, statements run.
        wait_for(lambda: _post(gw).status_code == 200, timeout=10, message="statements accepted again")
    finally:
        relay.close()
        cluster.stop()


def test_a_dead_only_backend_still_goes_unhealthy_at_once(gateway_factory, tmp_path):
    """The last HEALTHY backend is not taken out by a failed forward, but the probe that
    failure triggers finds a dead cluster long before the next monitor round."""
    cluster = spawn_cluster("ovl-dead")
    try:
        cfg = gateway_config(tmp_path, {"ovl-dead": cluster}, groups={"ovl-dead": "adhoc"},
                             monitor={"interval": "60s", "timeout": "1s"})
        gw = gateway_factory(cfg)
        cluster.kill()
        t0 = time.monotonic()
        doc = _post(gw).json()
        assert doc["error"]["errorName"] == "NO_NODES_AVAILABLE"
        assert "ovl-dead" in doc["error"]["message"]
        wait_for(lambda: _state(gw, "ovl-dead")["health"] == "UNHEALTHY", timeout=5,
                 message="the dead backend UNHEALTHY")
        assert time.monotonic() - t0 < 5     # the next round was a minute away
        assert "connection refused" in _state(gw, "ovl-dead")["error"]
        text = gw.api("GET", "/metrics").text
        assert metric(text, "trino_gateway_health_hints_total", source="forward", verdict="probe") == 1
    finally:
        cluster.stop()


def test_a_new_statement_waits_out_a_backend_whose_accept_queue_overflowed(gateway_factory, tmp_path):
    """A burst filled the only backend's accept queue: the kernel drops the gateway's SYNs and
    its connect times out. Nothing was sent, so the statement is tried again (it failed with
    NO_NODES_AVAILABLE before, issue 19) and runs once the backend accepts again."""
    cluster = spawn_cluster("ovl-queue")
    relay = BlackHoleRelay(cluster.port, backlog=0)
    try:
        cfg = gateway_config(tmp_path, None, monitor={"interval": "60s", "timeout": "5s"},
                             server={"backendConnectTimeout": "300ms"})
        cfg["backends"] = [{"name": "ovl-queue", "proxyTo": relay.url, "routingGroup": "adhoc"}]
        gw = gateway_factory(cfg)
        relay.overflow()
        answer: dict[str, requests.Response] = {}
        post = threading.Thread(target=lambda: answer.update(r=_post(gw)))
        post.start()
        wait_for(lambda: "the connect to ovl-queue timed out; trying again" in gw.log(), timeout=10,
                 message="the statement tried again")
        relay.accept_again()
        post.join(20)
        doc = answer["r"].json()
        assert answer["r"].status_code == 200 and "error" not in doc, doc
        assert doc["id"] and doc["stats"]["state"] != "FAILED"
        assert _state(gw, "ovl-queue")["health"] == "HEALTHY"
    finally:
        relay.close()
        cluster.stop()


@pytest.mark.parametrize("workers", [1, 2])
def test_the_python_client_runs_a_query_through_a_backend_whose_accept_queue_overflowed(
        gateway_factory, tmp_path, workers):
    """The same as above with the official Trino client, one and two workers: the client sees
    nothing of the dropped SYNs, and the whole query (statement and every poll) completes."""
    import trino
    cluster = spawn_cluster("ovl-client")
    relay = BlackHoleRelay(cluster.port, backlog=0)
    try:
        cfg = gateway_config(tmp_path, None, monitor={"interval": "60s", "timeout": "5s"},
                             server={"backendConnectTimeout": "300ms", "workers": workers,
                                     "port": free_port()})
        cfg["backends"] = [{"name": "ovl-client", "proxyTo": relay.url, "routingGroup": "adhoc"}]
        gw = gateway_factory(cfg)
        relay.overflow()
        result: dict[str, object] = {}

        def run() -> None:
            try:
                conn = trino.dbapi.connect(host="127.0.0.1", port=gw.port, user="alice",
                                           http_scheme="http")
                cur = conn.cursor()
                cur.execute("SELECT count(*) FROM tpch.tiny.nation")
                result["rows"] = cur.fetchall()
            except Exception as exc:  # noqa: BLE001 - reported by the assertion below
                result["error"] = exc

        client = threading.Thread(target=run)
        client.start()
        wait_for(lambda: "the connect to ovl-client timed out; trying again" in gw.log(), timeout=10,
                 message="the statement tried again")
        relay.accept_again()
        client.join(30)
        assert not client.is_alive(), "the query did not finish"
        assert result.get("rows") == [[25]], result
        assert _state(gw, "ovl-client")["health"] == "HEALTHY"
    finally:
        relay.close()
        cluster.stop()
