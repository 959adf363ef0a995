"""The cluster monitor: parsers and health transitions (pure), then each monitor type over HTTP."""
from __future__ import annotations

import asyncio
import base64
import json
import logging
import socket
import time
from collections import Counter
from typing import Any, Awaitable, Callable

import pytest
import requests
import tornado.web
from tornado.httpclient import HTTPClientError
from tornado.httpserver import HTTPServer
from tornado.iostream import StreamClosedError
from tornado.netutil import bind_sockets

from gateway.backends.state import Backend, BackendState, Health, Registry
from gateway.config import MonitorConfig
from gateway.sim.cluster import run_cluster_in_thread
from gateway.backends.monitor import Monitor
from gateway.backends.probes import (
    NODES_METRIC, QUEUED_METRIC, RUNNING_METRIC, ProbeResult, apply_probe, describe_error,
    discount_routed, parse_info, parse_metrics, parse_openmetrics, parse_queued_users, parse_stats,
)
from gateway.routing.balancer import Balancer

H, U, P, K = Health.HEALTHY, Health.UNHEALTHY, Health.PENDING, Health.UNKNOWN
GOOD = ProbeResult(H)
BAD = ProbeResult(U, "connection refused")
STARTING = ProbeResult(P, "starting")


# -- /v1/info -------------------------------------------------------------------------------

def test_info_ready_is_healthy() -> None:
    body = json.dumps({"nodeVersion": {"version": "476"}, "coordinator": True, "starting": False})
    assert parse_info(200, body) == ProbeResult(H)


def test_info_starting_is_pending() -> None:
    r = parse_info(200, b'{"starting": true}')
    assert (r.health, r.error) == (P, "starting")


@pytest.mark.parametrize("status, body, error", [
    (503, b"", "HTTP 503 from /v1/info"),
    (404, b"nope", "HTTP 404 from /v1/info (not a Trino coordinator?)"),
    (200, b"<html>", "/v1/info did not return JSON"),
    (200, b"[]", "/v1/info has no 'starting' flag (not a Trino coordinator?)"),
    (200, b'{"starting": "no"}', "/v1/info has no 'starting' flag (not a Trino coordinator?)"),
])
def test_info_anything_else_is_unhealthy(status: int, body: bytes, error: str) -> None:
    assert parse_info(status, body) == ProbeResult(U, error)


# -- /ui/api/stats and /ui/api/query --------------------------------------------------------------

def stats(**kw: object) -> bytes:
    doc = {"runningQueries": 3, "blockedQueries": 0, "queuedQueries": 1, "activeCoordinators": 1,
           "activeWorkers": 4, "runningDrivers": 120, "reservedMemory": 1.2e9}
    doc.update(kw)
    return json.dumps(doc).encode()


def test_stats_reads_running_queued_and_workers() -> None:
    assert parse_stats(200, stats()) == ProbeResult(H, queued=1, running=3, workers=4)


def test_stats_zero_workers_is_unhealthy_but_keeps_counts() -> None:
    assert parse_stats(200, stats(activeWorkers=0)) == \
        ProbeResult(U, "0 active workers", queued=1, running=3, workers=0)


@pytest.mark.parametrize("status, body, error", [
    (500, b"", "HTTP 500 from /ui/api/stats"),
    (401, b"", "HTTP 401 from /ui/api/stats (check monitor.username/password)"),
    (200, b"not json", "/ui/api/stats did not return JSON"),
    (200, b"[1]", "/ui/api/stats is not a JSON object"),
    (200, b'{"runningQueries": 1, "activeWorkers": 2}', "/ui/api/stats lacks queuedQueries"),
    (200, b'{"runningQueries": -1, "queuedQueries": 0, "activeWorkers": "x"}',
     "/ui/api/stats lacks runningQueries, activeWorkers"),
])
def test_stats_errors(status: int, body: bytes, error: str) -> None:
    assert parse_stats(status, body) == ProbeResult(U, error)


def test_queued_users_counts_session_users() -> None:
    items = [{"queryId": "q1", "state": "QUEUED", "sessionUser": "alice"},
             {"queryId": "q2", "state": "QUEUED", "sessionUser": "alice"},
             {"queryId": "q3", "state": "QUEUED", "sessionUser": "bob"},
             {"queryId": "q4", "state": "RUNNING", "sessionUser": "bob"},     # ?state ignored
             {"queryId": "q5", "state": "QUEUED", "session": {"user": "carol"}},
             {"queryId": "q6", "state": "QUEUED"},                            # no user: skipped
             "garbage"]
    assert parse_queued_users(200, json.dumps(items)) == {"alice": 2, "bob": 1, "carol": 1}
    assert parse_queued_users(200, b"[]") == {}


@pytest.mark.parametrize("status, body, error", [
    (500, b"", "HTTP 500 from /ui/api/query"),
    (200, b"{}", "/ui/api/query is not a JSON list"),
    (200, b"{", "/ui/api/query did not return JSON"),
])
def test_queued_users_errors(status: int, body: bytes, error: str) -> None:
    assert parse_queued_users(status, body) == error


# -- /metrics ----------------------------------------------------------------------------------------

def metrics_text(running: object = 3, queued: object = 1, nodes: object = 4, skip: str = "") -> str:
    lines = ["# HELP whatever", "# TYPE trino_execution_name_QueryManager_RunningQueries gauge",
             'jvm_memory_bytes_used{area="heap"} 1.5E9',
             f"{RUNNING_METRIC} {running}", f"{QUEUED_METRIC} {queued} 1700000000000",
             f"{NODES_METRIC} {nodes}", "# EOF"]
    return "\n".join(line for line in lines if not (skip and line.startswith(skip + " ")))


def test_openmetrics_parser_handles_labels_timestamps_and_comments() -> None:
    samples = parse_openmetrics('a 1\nb{x="y z",w="}"} 2.5 123\n# c 3\n\nbad\nd NaN\ne notanumber\na 9\n')
    assert samples["a"] == 1.0 and samples["b"] == 2.5
    assert "c" not in samples and "bad" not in samples and "e" not in samples
    assert samples["d"] != samples["d"]   # NaN kept as such


def test_metrics_reads_the_three_gauges() -> None:
    cfg = MonitorConfig(type="metrics")
    assert parse_metrics(200, metrics_text(3.0, 1.0, 4.0), cfg) == ProbeResult(H, queued=1, running=3, workers=4)


@pytest.mark.parametrize("missing", [RUNNING_METRIC, QUEUED_METRIC, NODES_METRIC])
def test_metrics_missing_gauge_is_unhealthy_and_named(missing: str) -> None:
    r = parse_metrics(200, metrics_text(skip=missing), MonitorConfig(type="metrics"))
    assert r == ProbeResult(U, f"/metrics lacks {missing}")


def test_metrics_nan_counts_as_missing() -> None:
    r = parse_metrics(200, metrics_text(nodes="NaN"), MonitorConfig(type="metrics"))
    assert r.health is U and NODES_METRIC in (r.error or "")


def test_metrics_http_error() -> None:
    r = parse_metrics(401, "", MonitorConfig(type="metrics"))
    assert r == ProbeResult(U, "HTTP 401 from /metrics (check monitor.username/password)")


@pytest.mark.parametrize("cfg, text, error", [
    (MonitorConfig(minActiveNodes=1), metrics_text(nodes=0),
     "0 active nodes, fewer than minActiveNodes 1"),
    (MonitorConfig(minActiveNodes=3), metrics_text(nodes=2),
     "2 active nodes, fewer than minActiveNodes 3"),
    (MonitorConfig(maxQueued=10), metrics_text(queued=11),
     "11 queued queries, more than maxQueued 10"),
    (MonitorConfig(maxRunning=5), metrics_text(running=6),
     "6 running queries, more than maxRunning 5"),
    (MonitorConfig(maxRunning=5, maxQueued=0), metrics_text(running=6, queued=1),
     "1 queued queries, more than maxQueued 0; 6 running queries, more than maxRunning 5"),
])
def test_metrics_bounds_violated_is_unhealthy_with_the_reason(cfg: MonitorConfig, text: str, error: str) -> None:
    r = parse_metrics(200, text, cfg)
    assert (r.health, r.error) == (U, error)
    assert r.queued is not None and r.running is not None   # counts kept for the state API


def test_metrics_at_the_bounds_is_healthy() -> None:
    cfg = MonitorConfig(minActiveNodes=2, maxQueued=10, maxRunning=5)
    assert parse_metrics(200, metrics_text(running=5, queued=10, nodes=2), cfg).health is H


# -- error descriptions ---------------------------------------------------------------------------

@pytest.mark.parametrize("exc, text", [
    (ConnectionRefusedError(111, "Connection refused"), "connection refused"),
    (asyncio.TimeoutError(), "timed out after 3s"),
    (HTTPClientError(599, "Timeout during request"), "timed out after 3s"),
    (HTTPClientError(599, "Timeout while connecting"), "timed out after 3s"),
    (HTTPClientError(502), "HTTP 502"),
    (StreamClosedError(real_error=ConnectionResetError()), "connection reset"),
    (StreamClosedError(), "connection closed"),
    (socket.gaierror(-2, "Name or service not known"), "cannot resolve host name"),
    (OSError(113, "No route to host"), "no route to host"),
    (RuntimeError("x" * 500), "RuntimeError: " + "x" * 183 + "..."),
])
def test_describe_error_is_short_and_human(exc: BaseException, text: str) -> None:
    assert describe_error(exc, 3.0) == text


def test_describe_error_formats_fractional_timeouts() -> None:
    assert describe_error(TimeoutError(), 0.5) == "timed out after 0.5s"


# -- transitions and flap damping ------------------------------------------------------------------

def run(results: list[ProbeResult], cfg: MonitorConfig, start: Health = P,
        state: BackendState | None = None) -> list[Health]:
    st = state or BackendState(health=start)
    seen = []
    for i, r in enumerate(results):
        apply_probe("trino-1", st, r, cfg, now=1000.0 + i)
        seen.append(st.health)
    return seen


@pytest.mark.parametrize("start", [P, K])
@pytest.mark.parametrize("result", [GOOD, BAD, STARTING])
def test_first_result_from_pending_or_unknown_applies_at_once(start: Health, result: ProbeResult) -> None:
    cfg = MonitorConfig(healthyThreshold=3, unhealthyThreshold=3)
    st = BackendState(health=start)
    t = apply_probe("trino-1", st, result, cfg, now=5.0)
    assert st.health is result.health
    if start is result.health:
        assert t is None
    else:
        assert t is not None and (t.old, t.new, t.backend) == (start, result.health, "trino-1")
    assert st.last_probe == 5.0 and st.error == result.error


def test_thresholds_of_one_follow_every_result() -> None:
    cfg = MonitorConfig(healthyThreshold=1, unhealthyThreshold=1)
    assert run([GOOD, BAD, GOOD, STARTING, GOOD], cfg) == [H, U, H, P, H]


def test_unhealthy_threshold_damps_failures_of_a_healthy_backend() -> None:
    cfg = MonitorConfig(healthyThreshold=1, unhealthyThreshold=3)
    assert run([GOOD, BAD, BAD, GOOD, BAD, BAD, BAD, BAD], cfg) == [H, H, H, H, H, H, U, U]


def test_healthy_threshold_damps_recovery() -> None:
    cfg = MonitorConfig(healthyThreshold=2, unhealthyThreshold=1)
    assert run([BAD, GOOD, BAD, GOOD, GOOD, GOOD], cfg, start=U) == [U, U, U, U, H, H]


def test_starting_counts_as_bad_for_a_healthy_backend() -> None:
    cfg = MonitorConfig(unhealthyThreshold=2)
    assert run([GOOD, STARTING, STARTING, GOOD], cfg) == [H, H, P, H]


def test_unhealthy_to_pending_and_back_is_immediate() -> None:
    cfg = MonitorConfig(healthyThreshold=3, unhealthyThreshold=3)
    assert run([BAD, STARTING, BAD], cfg, start=U) == [U, P, U]


def test_damped_states_explain_themselves_in_the_error() -> None:
    cfg = MonitorConfig(healthyThreshold=2, unhealthyThreshold=2)
    st = BackendState(health=H)
    apply_probe("b", st, BAD, cfg, 1.0)
    assert (st.health, st.error) == (H, "connection refused (1 of 2 bad probes)")
    apply_probe("b", st, BAD, cfg, 2.0)
    assert (st.health, st.error) == (U, "connection refused")
    apply_probe("b", st, GOOD, cfg, 3.0)
    assert (st.health, st.error) == (U, "recovering: 1 of 2 good probes")
    apply_probe("b", st, GOOD, cfg, 4.0)
    assert (st.health, st.error) == (H, None)


def test_transition_message_for_the_log() -> None:
    st = BackendState(health=H)
    t = apply_probe("trino-2", st, BAD, MonitorConfig(), 1.0)
    assert t is not None and t.message() == "backend trino-2 HEALTHY -> UNHEALTHY: connection refused"
    t = apply_probe("trino-2", st, GOOD, MonitorConfig(), 2.0)
    assert t is not None and t.message() == "backend trino-2 UNHEALTHY -> HEALTHY"


def test_no_transition_when_health_stays() -> None:
    st = BackendState(health=H)
    assert apply_probe("b", st, GOOD, MonitorConfig(), 1.0) is None
    assert apply_probe("b", st, ProbeResult(H, queued=2), MonitorConfig(), 2.0) is None
    assert st.queued == 2


def test_passive_mark_is_overridden_by_the_next_good_probe() -> None:
    cfg = MonitorConfig(healthyThreshold=3, unhealthyThreshold=3)
    reg = Registry([Backend("trino-1", "http://t1:8080")])
    st = reg.state("trino-1")
    apply_probe("trino-1", st, GOOD, cfg, 1.0)
    apply_probe("trino-1", st, GOOD, cfg, 2.0)
    reg.mark_unhealthy("trino-1", "connection refused")
    assert st.health is U
    t = apply_probe("trino-1", st, GOOD, cfg, 3.0)
    assert st.health is H and t is not None and t.old is U
    assert st.error is None


def test_probe_made_unhealthy_still_needs_the_threshold_after_a_passive_mark() -> None:
    cfg = MonitorConfig(healthyThreshold=2, unhealthyThreshold=1)
    reg = Registry([Backend("trino-1", "http://t1:8080")])
    st = reg.state("trino-1")
    apply_probe("trino-1", st, BAD, cfg, 1.0)
    reg.mark_unhealthy("trino-1", "timed out")
    assert run([GOOD, GOOD], cfg, state=st) == [U, H]


def test_counts_are_updated_only_when_reported() -> None:
    st = BackendState(health=H, queued=4, running=2, workers=3, user_queued={"a": 1})
    apply_probe("b", st, GOOD, MonitorConfig(), 1.0)
    assert (st.queued, st.running, st.workers, st.user_queued) == (4, 2, 3, {"a": 1})
    apply_probe("b", st, ProbeResult(H, queued=0, running=7, workers=5, user_queued={"b": 2}),
                MonitorConfig(), 2.0)
    assert (st.queued, st.running, st.workers, st.user_queued) == (0, 7, 5, {"b": 2})


def test_discount_routed_keeps_queries_routed_while_the_probe_was_in_flight() -> None:
    st = BackendState(routed_since_probe=5, user_routed_since_probe={"alice": 3, "bob": 2})
    snapshot = (3, {"alice": 2, "bob": 1})   # at send time
    discount_routed(st, *snapshot)
    assert st.routed_since_probe == 2
    assert st.user_routed_since_probe == {"alice": 1, "bob": 1}
    discount_routed(st, 2, {"alice": 1, "bob": 1})
    assert (st.routed_since_probe, st.user_routed_since_probe) == (0, {})


# =================================================================================================
# Over HTTP. A small fake coordinator checks what the monitor sends (credentials, cookies,
# re-login); the simulated cluster (gateway/sim/cluster.py) covers the cluster scenarios below.
# =================================================================================================


class FakeTrino:
    """A coordinator with settable answers that records the monitor's requests."""

    def __init__(self, password: str | None = None) -> None:
        self.starting = False
        self.workers = 2
        self.queued = 0
        self.running = 0
        self.queued_users: list[str] = []
        self.hang = False
        self.password = password            # required UI / Basic password; None = any
        self.tokens: set[str] = set()
        self.logins: list[tuple[str, str]] = []
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self.release = asyncio.Event()      # set at shutdown to free hung handlers
        self.url = ""
        self._server: HTTPServer | None = None

    async def start(self) -> "FakeTrino":
        fake = self

        class Handler(tornado.web.RequestHandler):
            async def prepare(self) -> None:
                fake.requests.append((self.request.method, self.request.uri, dict(self.request.headers)))
                if fake.hang:
                    await fake.release.wait()

            def ui_ok(self) -> bool:
                if self.get_cookie("Trino-UI-Token") in fake.tokens:
                    return True
                self.set_status(401)
                return False

        class Info(Handler):
            def get(self) -> None:
                self.write({"coordinator": True, "starting": fake.starting, "uptime": "1.00m"})

        class Login(Handler):
            def check_xsrf_cookie(self) -> None:
                pass

            def post(self) -> None:
                user = self.get_body_argument("username", "")
                pw = self.get_body_argument("password", "")
                fake.logins.append((user, pw))
                if fake.password is None or pw == fake.password:
                    token = f"tok{len(fake.logins)}"
                    fake.tokens.add(token)
                    self.set_cookie("Trino-UI-Token", token, httponly=True)
                    self.redirect("/ui/", status=303)
                else:
                    self.redirect("/ui/login.html", status=303)

        class Stats(Handler):
            def get(self) -> None:
                if self.ui_ok():
                    self.write({"runningQueries": fake.running, "queuedQueries": fake.queued,
                                "blockedQueries": 0, "activeCoordinators": 1,
                                "activeWorkers": fake.workers})

        class Queries(Handler):
            def get(self) -> None:
                if self.ui_ok():
                    state = self.get_query_argument("state", None)
                    items = [{"queryId": f"q{i}", "state": "QUEUED", "sessionUser": u}
                             for i, u in enumerate(fake.queued_users)]
                    self.set_header("Content-Type", "application/json")
                    self.write(json.dumps([i for i in items if state in (None, i["state"])]))

        class Metrics(Handler):
            def get(self) -> None:
                if not self.request.headers.get("X-Trino-User"):
                    self.set_status(401)
                    return
                if fake.password is not None:
                    want = "Basic " + base64.b64encode(
                        f"{self.request.headers['X-Trino-User']}:{fake.password}".encode()).decode()
                    if self.request.headers.get("Authorization") != want:
                        self.set_status(401)
                        return
                self.set_header("Content-Type", "application/openmetrics-text; version=1.0.0")
                self.write(metrics_text(fake.running, fake.queued, fake.workers + 1))

        app = tornado.web.Application([(r"/v1/info", Info), (r"/ui/login", Login),
                                       (r"/ui/api/stats", Stats), (r"/ui/api/query", Queries),
                                       (r"/metrics", Metrics)])
        sockets = bind_sockets(0, "127.0.0.1")
        self._server = HTTPServer(app)
        self._server.add_sockets(sockets)
        self.url = f"http://127.0.0.1:{sockets[0].getsockname()[1]}"
        return self

    async def stop(self) -> None:
        self.release.set()
        if self._server is not None:
            self._server.stop()
            await self._server.close_all_connections()

    def paths(self) -> list[str]:
        return [uri for _, uri, _ in self.requests]


def free_port() -> int:
    """A port nobody listens on: bind, note the port, close."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


async def wait_until(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


def with_fakes(n: int = 1, **kw: Any) -> Callable[[Callable[..., Awaitable[None]]], Callable[[], None]]:
    """Run an async test with ``n`` started fake coordinators, stopping them afterwards."""
    def deco(fn: Callable[..., Awaitable[None]]) -> Callable[[], None]:
        def test() -> None:
            async def main() -> None:
                fakes = [await FakeTrino(**kw).start() for _ in range(n)]
                try:
                    await fn(*fakes)
                finally:
                    for f in fakes:
                        await f.stop()
            asyncio.run(main())
        test.__name__ = fn.__name__
        test.__doc__ = fn.__doc__
        return test
    return deco


def registry_for(*urls: str) -> Registry:
    return Registry([Backend(f"trino-{i}", url) for i, url in enumerate(urls, 1)])


def health(reg: Registry) -> dict[str, tuple[Health, str | None]]:
    return {n: (s.health, s.error) for n, s in reg.states.items()}


@with_fakes(1)
async def test_info_api_reads_v1_info(fake: FakeTrino) -> None:
    reg = registry_for(fake.url)
    mon = Monitor(reg, MonitorConfig(type="info-api", timeout=2))
    await mon.run_round()
    assert health(reg) == {"trino-1": (H, None)}
    assert fake.paths() == ["/v1/info"]
    fake.starting = True
    await mon.run_round()
    assert health(reg) == {"trino-1": (P, "starting")}
    await mon.stop()


@with_fakes(1)
async def test_ui_api_logs_in_once_and_reads_counts_and_user_queues(fake: FakeTrino) -> None:
    fake.running, fake.queued, fake.workers = 4, 3, 5
    fake.queued_users = ["alice", "alice", "bob"]
    reg = registry_for(fake.url)
    mon = Monitor(reg, MonitorConfig(type="ui-api", timeout=2))
    await mon.run_round()
    await mon.run_round()
    st = reg.state("trino-1")
    assert (st.health, st.running, st.queued, st.workers) == (H, 4, 3, 5)
    assert st.user_queued == {"alice": 2, "bob": 1}
    assert fake.logins == [("trino-gateway", "")]
    assert fake.paths().count("/ui/api/stats") == 2
    assert "/ui/api/query?state=QUEUED" in fake.paths()
    await mon.stop()


@with_fakes(1)
async def test_ui_api_logs_in_again_when_the_token_expires(fake: FakeTrino) -> None:
    reg = registry_for(fake.url)
    mon = Monitor(reg, MonitorConfig(type="ui-api", timeout=2, username="monitor"))
    await mon.run_round()
    fake.tokens.clear()          # coordinator restarted: old cookies now get 401
    await mon.run_round()
    assert health(reg) == {"trino-1": (H, None)}
    assert fake.logins == [("monitor", ""), ("monitor", "")]
    await mon.stop()


@with_fakes(1, password="s3cret")
async def test_ui_api_wrong_password_is_unhealthy_with_a_hint(fake: FakeTrino) -> None:
    reg = registry_for(fake.url)
    mon = Monitor(reg, MonitorConfig(type="ui-api", timeout=2, password="wrong"))
    await mon.run_round()
    assert health(reg) == {"trino-1": (U, "UI login as 'trino-gateway' failed (no Trino-UI-Token "
                                          "cookie; check monitor.username/password)")}
    mon.cfg.password = "s3cret"
    await mon.run_round()
    assert health(reg)["trino-1"][0] is H
    await mon.stop()


@with_fakes(1, password="pw")
async def test_metrics_sends_user_header_and_basic_auth(fake: FakeTrino) -> None:
    fake.running, fake.queued, fake.workers = 2, 1, 3
    reg = registry_for(fake.url)
    mon = Monitor(reg, MonitorConfig(type="metrics", timeout=2, username="ops", password="pw"))
    await mon.run_round()
    st = reg.state("trino-1")
    assert (st.health, st.running, st.queued, st.workers) == (H, 2, 1, 4)
    _, uri, headers = fake.requests[-1]
    assert uri.startswith("/metrics?") and "RunningQueries" in uri
    assert headers["X-Trino-User"] == "ops"
    mon.cfg.password = "nope"
    await mon.run_round()
    assert health(reg)["trino-1"] == (U, "HTTP 401 from /metrics (check monitor.username/password)")
    await mon.stop()


@with_fakes(2)
async def test_noop_makes_everything_healthy_without_requests(a: FakeTrino, b: FakeTrino) -> None:
    reg = registry_for(a.url, f"http://127.0.0.1:{free_port()}")
    reg.state("trino-1").queued = 7
    mon = Monitor(reg, MonitorConfig(type="noop"))
    await mon.run_round()
    assert {n: h for n, (h, _) in health(reg).items()} == {"trino-1": H, "trino-2": H}
    assert reg.state("trino-1").queued == 7
    assert a.requests == []
    await mon.stop()


@with_fakes(2)
async def test_a_hung_backend_delays_nobody(ok: FakeTrino, hung: FakeTrino) -> None:
    hung.hang = True
    reg = registry_for(ok.url, hung.url, hung.url, f"http://127.0.0.1:{free_port()}")
    mon = Monitor(reg, MonitorConfig(type="ui-api", timeout=0.4))
    started = time.monotonic()
    await mon.run_round()
    elapsed = time.monotonic() - started
    assert health(reg) == {"trino-1": (H, None), "trino-2": (U, "timed out after 0.4s"),
                           "trino-3": (U, "timed out after 0.4s"), "trino-4": (U, "connection refused")}
    assert 0.35 < elapsed < 0.75, elapsed     # concurrent: one timeout, not the sum
    await mon.stop()


@with_fakes(1)
async def test_transitions_are_logged_and_reported(fake: FakeTrino) -> None:
    reg = registry_for(fake.url, f"http://127.0.0.1:{free_port()}")
    mon = Monitor(reg, MonitorConfig(type="info-api", timeout=1))
    seen: list[str] = []
    mon.on_transition(lambda t: seen.append(t.message()))
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger("gateway.monitor")
    logger.addHandler(handler)
    old_level = logger.level
    logger.setLevel(logging.INFO)
    try:
        transitions = await mon.run_round()
        assert await mon.run_round() == []          # nothing changes, nothing logged
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
    expected = {"backend trino-1 PENDING -> HEALTHY",
                "backend trino-2 PENDING -> UNHEALTHY: connection refused"}
    assert {t.message() for t in transitions} == expected
    assert set(seen) == expected
    assert {r.getMessage() for r in records} == expected
    assert all(r.levelno == logging.INFO for r in records)
    assert {r.backend for r in records} == {"trino-1", "trino-2"}  # type: ignore[attr-defined]
    await mon.stop()


@with_fakes(2)
async def test_backends_added_or_removed_at_run_time_follow_the_registry(a: FakeTrino, b: FakeTrino) -> None:
    reg = Registry([Backend("a", a.url, active=False)])       # drained backends are probed too
    mon = Monitor(reg, MonitorConfig(type="info-api", timeout=1))
    await mon.run_round()
    assert health(reg) == {"a": (H, None)}
    reg.put(Backend("b", b.url))
    await mon.run_round()
    assert health(reg) == {"a": (H, None), "b": (H, None)}
    reg.remove("a")
    requests_before = len(a.requests)
    await mon.run_round()
    assert set(reg.states) == {"b"} and len(a.requests) == requests_before
    await mon.stop()


@with_fakes(1)
async def test_a_backend_removed_during_its_probe_gets_no_state(fake: FakeTrino) -> None:
    fake.hang = True
    reg = registry_for(fake.url)
    mon = Monitor(reg, MonitorConfig(type="info-api", timeout=0.3))
    round_ = asyncio.ensure_future(mon.run_round())
    await wait_until(lambda: bool(fake.requests))
    reg.remove("trino-1")
    assert await round_ == []
    assert reg.states == {}
    await mon.stop()


@with_fakes(1)
async def test_fresh_counts_reset_the_locally_routed_counters(fake: FakeTrino) -> None:
    reg = registry_for(fake.url)
    st = reg.state("trino-1")
    st.routed_since_probe, st.user_routed_since_probe = 5, {"alice": 5}
    mon = Monitor(reg, MonitorConfig(type="ui-api", timeout=2))
    await mon.run_round()
    assert (st.routed_since_probe, st.user_routed_since_probe) == (0, {})
    # A failed probe reports no counts: the local counts stay.
    await fake.stop()
    st.routed_since_probe = 2
    await mon.run_round()
    assert st.health is U and st.routed_since_probe == 2
    await mon.stop()


@with_fakes(1)
async def test_info_api_clears_the_locally_routed_counters_each_round(fake: FakeTrino) -> None:
    reg = registry_for(fake.url)
    st = reg.state("trino-1")
    st.routed_since_probe, st.user_routed_since_probe = 3, {"bob": 3}
    mon = Monitor(reg, MonitorConfig(type="info-api", timeout=2))
    await mon.run_round()
    assert (st.routed_since_probe, st.user_routed_since_probe) == (0, {})
    await mon.stop()


@with_fakes(1)
async def test_start_probes_at_once_then_every_interval_until_stopped(fake: FakeTrino) -> None:
    reg = registry_for(fake.url)
    mon = Monitor(reg, MonitorConfig(type="info-api", interval=0.05, timeout=1))
    rounds: list[int] = []

    async def note(m: Monitor) -> None:
        rounds.append(m.rounds)
    mon.on_round(note)
    assert not mon.first_round_done
    mon.start()
    await wait_until(lambda: mon.first_round_done)
    assert reg.state("trino-1").health is H
    await wait_until(lambda: len(rounds) >= 3)
    await mon.stop()
    done = len(fake.requests)
    await asyncio.sleep(0.15)
    assert len(fake.requests) == done        # no probes after stop
    assert rounds[:3] == [1, 2, 3]


def test_first_round_is_done_even_without_backends() -> None:
    async def main() -> None:
        mon = Monitor(Registry(), MonitorConfig())
        assert await mon.run_round() == []
        assert mon.first_round_done
        await mon.stop()
    asyncio.run(main())


# -- against simulated clusters (gateway/sim/cluster.py) -------------------------------------------
# The simulator's `hang` control holds only statement requests, so "slow" uses a socket that
# accepts connections and never answers.

PROBED = ["info-api", "ui-api", "metrics"]


@pytest.fixture(scope="module")
def sim_cluster() -> Any:
    cluster, url, stop = run_cluster_in_thread("sim-monitor")
    yield url
    stop()


@pytest.fixture
def sim(sim_cluster: str) -> str:
    requests.post(sim_cluster + "/_sim/reset", timeout=10).raise_for_status()
    return sim_cluster


def control(url: str, **changes: Any) -> None:
    r = requests.post(url + "/_sim/control", json=changes, timeout=5)
    assert r.status_code == 200, r.text


def probe_states(cfg: MonitorConfig, *urls: str, rounds: int = 1) -> Registry:
    reg = registry_for(*urls)

    async def main() -> None:
        mon = Monitor(reg, cfg)
        for _ in range(rounds):
            await mon.run_round()
        await mon.stop()
    asyncio.run(main())
    return reg


@pytest.fixture
def silent_port() -> Any:
    """A listening socket that never accepts or answers: every request to it times out."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(16)
    yield s.getsockname()[1]
    s.close()


@pytest.mark.parametrize("kind", PROBED)
def test_sim_healthy_cluster(sim: str, kind: str) -> None:
    control(sim, workers=3, queued=5, running=2, user_queued={"alice": 3})
    st = probe_states(MonitorConfig(type=kind, timeout=2), sim).state("trino-1")
    assert (st.health, st.error) == (H, None)
    assert st.last_probe is not None
    reported = {"info-api": (0, 0, None, {}),          # info-api knows health only
                "ui-api": (5, 2, 3, {"alice": 3}),
                "metrics": (5, 2, 3, {})}[kind]
    assert (st.queued, st.running, st.workers, st.user_queued) == reported


def test_sim_starting_cluster_is_pending_until_ready(sim: str) -> None:
    control(sim, starting=True)
    cfg = MonitorConfig(type="info-api", timeout=2, healthyThreshold=3)
    reg = probe_states(cfg, sim)
    assert health(reg) == {"trino-1": (P, "starting")}
    control(sim, starting=False)
    assert health(probe_states(cfg, sim)) == {"trino-1": (H, None)}   # from PENDING: at once


@pytest.mark.parametrize("kind, error", [
    ("ui-api", "0 active workers"),
    ("metrics", "0 active nodes, fewer than minActiveNodes 1"),
])
def test_sim_zero_workers_is_unhealthy(sim: str, kind: str, error: str) -> None:
    control(sim, workers=0)
    assert health(probe_states(MonitorConfig(type=kind, timeout=2), sim)) == {"trino-1": (U, error)}


def test_sim_info_api_cannot_see_missing_workers(sim: str) -> None:
    # A documented limitation: /v1/info says nothing about workers.
    control(sim, workers=0)
    assert health(probe_states(MonitorConfig(type="info-api", timeout=2), sim))["trino-1"][0] is H


@pytest.mark.parametrize("changes, bounds, error", [
    ({"queued": 11}, {"maxQueued": 10}, "11 queued queries, more than maxQueued 10"),
    ({"running": 9}, {"maxRunning": 8}, "9 running queries, more than maxRunning 8"),
    ({"workers": 2}, {"minActiveNodes": 3}, "2 active nodes, fewer than minActiveNodes 3"),
])
def test_sim_metrics_bounds(sim: str, changes: dict[str, int], bounds: dict[str, int], error: str) -> None:
    cfg = MonitorConfig(type="metrics", timeout=2, **bounds)
    control(sim, **changes)
    reg = probe_states(cfg, sim)
    assert health(reg) == {"trino-1": (U, error)}
    control(sim, queued=10, running=8, workers=3)       # exactly at the bounds
    assert health(probe_states(cfg, sim)) == {"trino-1": (H, None)}


@pytest.mark.parametrize("kind", PROBED)
def test_sim_down_cluster_is_unhealthy(kind: str) -> None:
    reg = probe_states(MonitorConfig(type=kind, timeout=2), f"http://127.0.0.1:{free_port()}")
    assert health(reg) == {"trino-1": (U, "connection refused")}


@pytest.mark.parametrize("kind", PROBED)
def test_sim_slow_cluster_times_out(kind: str, silent_port: int, sim: str) -> None:
    started = time.monotonic()
    reg = probe_states(MonitorConfig(type=kind, timeout=0.3), f"http://127.0.0.1:{silent_port}", sim)
    assert health(reg) == {"trino-1": (U, "timed out after 0.3s"), "trino-2": (H, None)}
    assert time.monotonic() - started < 2.5


def test_sim_basic_auth_cluster_needs_the_monitor_password() -> None:
    cluster, url, stop = run_cluster_in_thread("sim-basic", auth="basic")
    try:
        no_pw = probe_states(MonitorConfig(type="metrics", timeout=2), url)
        assert health(no_pw)["trino-1"] == (U, "HTTP 401 from /metrics (check monitor.username/password)")
        ui = probe_states(MonitorConfig(type="ui-api", timeout=2), url)
        assert health(ui)["trino-1"][0] is U and "UI login as 'trino-gateway' failed" in (health(ui)["trino-1"][1] or "")
        for kind in ("metrics", "ui-api"):
            ok = probe_states(MonitorConfig(type=kind, timeout=2, username="mon", password="pw"), url)
            assert health(ok)["trino-1"] == (H, None), kind
    finally:
        stop()


@pytest.mark.parametrize("kind", PROBED)
def test_sim_killed_cluster_goes_unhealthy_and_comes_back(kind: str) -> None:
    cluster, url, stop = run_cluster_in_thread("sim-killed")
    port = int(url.rsplit(":", 1)[1])
    reg = registry_for(url)
    cfg = MonitorConfig(type=kind, timeout=1, unhealthyThreshold=2, healthyThreshold=2)

    async def rounds(n: int) -> list[Health]:
        out = []
        for _ in range(n):
            await mon.run_round()
            out.append(reg.state("trino-1").health)
        return out

    async def main() -> None:
        assert await rounds(1) == [H]
        stop()
        assert await rounds(2) == [H, U]             # damped: two bad probes
        assert reg.state("trino-1").error == "connection refused"
        _, _, stop2 = run_cluster_in_thread("sim-killed", port=port)   # restarted in place
        try:
            assert await rounds(2) == [U, H]         # damped: two good probes
        finally:
            stop2()
        await mon.stop()

    mon = Monitor(reg, cfg)
    try:
        asyncio.run(main())
    finally:
        stop()


def test_sim_overloaded_cluster_stops_receiving_work() -> None:
    started = [run_cluster_in_thread(f"sim-{i}") for i in (1, 2, 3)]
    try:
        reg = registry_for(*(url for _, url, _ in started))
        busy = started[1][1]
        control(busy, queued=50)
        cfg = MonitorConfig(type="metrics", timeout=2, maxQueued=20)
        mon = Monitor(reg, cfg)
        asyncio.run(mon.run_round())
        assert [b.name for b in reg.available("adhoc")] == ["trino-1", "trino-3"]
        bal = Balancer("least-queued")
        picks = Counter()
        for _ in range(30):
            b = bal.pick(reg.available("adhoc"), reg.states, "alice")
            assert b is not None
            bal.note_routed(b.name, "alice", reg.states)
            picks[b.name] += 1
        assert picks == {"trino-1": 15, "trino-3": 15}
        # The next round sees fresh counts and forgets the locally routed ones.
        control(busy, queued=0)
        asyncio.run(Monitor(reg, cfg).run_round())
        assert [b.name for b in reg.available("adhoc")] == ["trino-1", "trino-2", "trino-3"]
        assert all(s.routed_since_probe == 0 for s in reg.states.values())
    finally:
        for _, _, stop in started:
            stop()
