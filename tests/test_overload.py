"""Overload decisions (gateway/runtime/overload.py): loop lag, what a failure counts, shedding."""
from __future__ import annotations

import asyncio
from typing import Any

import pytest

from gateway.app import Gateway
from gateway.backends.state import Backend, Health, Registry
from gateway.config import ConfigError, MonitorConfig, config_from_dict
from gateway.backends.monitor import Monitor
from gateway.backends.probes import ProbeResult, apply_probe
from gateway.runtime.overload import (EXCUSED, MARK, PROBE, LoopLag, failure_counts, forward_verdict,
                              shed_reason)
from gateway.proxy.client import BackendError


# -- failure_counts ---------------------------------------------------------------------------

@pytest.mark.parametrize("elapsed,lag", [(0.001, 0.0), (5.0, 4.9), (30.0, 30.0)])
def test_an_answer_that_is_an_error_always_counts(elapsed: float, lag: float) -> None:
    assert failure_counts(timeout=False, elapsed=elapsed, lag=lag, budget=5.0) is True


@pytest.mark.parametrize("elapsed,lag,counts", [
    (5.0, 0.0, True),      # the loop ran the whole budget: the backend did not answer
    (5.01, 0.003, True),   # ordinary timer jitter does not excuse a dead backend
    (5.0, 0.5, True),      # 4.5 s of 5 s is the fair share (0.9)
    (5.0, 0.51, False),    # less than that: we did not get to it
    (5.0, 0.8, False),     # a 0.8 s garbage-collection pause during a 5 s connect
    (6.0, 2.5, False),     # a late timeout: 3.5 s of loop time for a 5 s budget
    (9.0, 4.0, True),      # stalled, but the loop still ran 5 s of it
    (5.0, -1.0, True),     # a negative reading (clock noise) is no lag
])
def test_a_timeout_counts_only_when_the_loop_gave_the_backend_its_budget(
        elapsed: float, lag: float, counts: bool) -> None:
    assert failure_counts(timeout=True, elapsed=elapsed, lag=lag, budget=5.0) is counts


# -- forward_verdict --------------------------------------------------------------------------

@pytest.mark.parametrize("counts,peers,verdict", [
    (False, 0, EXCUSED), (False, 3, EXCUSED),
    (True, 0, PROBE),      # the last HEALTHY backend of its group is never taken out by one failure
    (True, 1, MARK), (True, 5, MARK),
])
def test_forward_verdict(counts: bool, peers: int, verdict: str) -> None:
    assert forward_verdict(counts=counts, healthy_peers=peers) == verdict


# -- shed_reason ------------------------------------------------------------------------------

@pytest.mark.parametrize("lag,in_flight,max_lag,max_in_flight,reason", [
    (0.0, 0, 1.0, 8000, None),
    (0.99, 7999, 1.0, 8000, None),
    (1.0, 0, 1.0, 8000, "loop-lag"),
    (0.2, 8000, 1.0, 8000, "in-flight"),
    (3.0, 9000, 1.0, 8000, "loop-lag"),     # the loop is the first thing named
    (5.0, 0, 0.0, 8000, None),              # 0 turns the lag limit off
    (0.0, 10**6, 1.0, 0, None),             # and the in-flight limit
])
def test_shed_reason(lag: float, in_flight: int, max_lag: float, max_in_flight: int,
                     reason: str | None) -> None:
    assert shed_reason(lag=lag, in_flight=in_flight, max_lag=max_lag,
                       max_in_flight=max_in_flight) == reason


def test_shedding_settings_are_validated() -> None:
    cfg = config_from_dict({"server": {"shedLoopLag": "500ms", "shedInFlight": 10, "shedRetryAfter": "3s"}}, "t.yaml")
    assert (cfg.server.shedLoopLag, cfg.server.shedInFlight, cfg.server.shedRetryAfter) == (0.5, 10, 3.0)
    with pytest.raises(ConfigError, match="server.shedRetryAfter"):
        config_from_dict({"server": {"shedRetryAfter": "500ms"}}, "t.yaml")
    with pytest.raises(ConfigError, match="server.shedInFlight"):
        config_from_dict({"server": {"shedInFlight": -1}}, "t.yaml")


# -- LoopLag ----------------------------------------------------------------------------------

class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _lag(clock: Clock, seen: list[float] | None = None) -> LoopLag:
    lag = LoopLag(interval=0.05, window=2.0, observe=seen.append if seen is not None else None, clock=clock)
    lag._due = clock.now + 0.05   # as start() does, without a loop
    return lag


def test_loop_lag_measures_how_late_the_timer_ran() -> None:
    clock, seen = Clock(), []
    lag = _lag(clock, seen)
    clock.now += 0.05
    assert lag.sample(clock.now) == 0.0
    clock.now += 0.05 + 0.8          # a 0.8 s stall
    assert lag.sample(clock.now) == pytest.approx(0.8)
    assert seen == [0.0, pytest.approx(0.8)]
    assert lag.recent() == pytest.approx(0.8)
    clock.now += 2.1                 # the window moved past it (the next sample is 2.05 s late)
    lag.sample(clock.now)
    clock.now += 0.05
    lag.sample(clock.now)
    clock.now += 2.01
    assert lag.pending() == pytest.approx(1.96)
    assert lag.recent() == pytest.approx(1.96)   # the old stall left the window; this one is on


def test_recent_is_the_worst_stall_still_in_the_window() -> None:
    """recent() keeps only the samples that can still be the worst (a sliding-window maximum):
    checked against the plain maximum over the window after every sample of a varied run."""
    import random
    rnd = random.Random(7)
    clock = Clock()
    lag = _lag(clock)
    kept: list[tuple[float, float]] = []
    for _ in range(400):
        late = rnd.choice([0.0, 0.0005, rnd.uniform(0.002, 0.3), rnd.uniform(0.3, 1.5)])
        clock.now = lag._due + late
        got = lag.sample(clock.now)
        if got > 0.001:
            kept.append((clock.now, got))
        clock.now += rnd.uniform(0.0, 0.04)      # a look before the next sample is due
        floor = clock.now - 2.0
        worst = max((v for t, v in kept if t >= floor), default=0.0)
        assert lag.recent() == pytest.approx(max(worst, lag.pending()))


def test_stalled_difference_is_the_stall_during_an_attempt() -> None:
    clock = Clock()
    lag = _lag(clock)
    clock.now += 0.05
    lag.sample(clock.now)
    clock.now += 0.3                 # the loop is stalled already when the attempt starts
    before = lag.stalled()
    assert before == pytest.approx(0.25)
    clock.now += 1.0                 # ... and for 1 s more
    lag.sample(clock.now)            # the sample records the whole 1.25 s stall
    clock.now += 0.05
    lag.sample(clock.now)
    clock.now += 0.02                # ordinary time: no lag
    assert lag.stalled() - before == pytest.approx(1.0)


def test_loop_lag_samples_a_real_loop() -> None:
    import time

    async def main() -> tuple[float, float]:
        lag = LoopLag(interval=0.01)
        lag.start()
        await asyncio.sleep(0.03)
        before = lag.stalled()
        time.sleep(0.3)              # the loop is blocked: what the sampler exists to see
        await asyncio.sleep(0.03)
        lag.stop()
        return lag.stalled() - before, lag.recent()

    during, recent = asyncio.run(main())
    assert 0.25 <= during < 1.0
    assert recent >= 0.25


def test_a_held_loop_lag_ticks_only_while_held_and_sees_a_stall_then() -> None:
    """The probe thread's sampler: no timer between attempts, the stall during one measured."""
    import time

    async def main() -> None:
        lag = LoopLag(interval=0.01)
        assert lag._handle is None
        lag.hold()
        lag.hold()                    # two probes at once
        before = lag.stalled()
        time.sleep(0.2)               # the loop is blocked during them
        await asyncio.sleep(0.03)
        assert 0.15 <= lag.stalled() - before < 1.0
        lag.release()
        assert lag._handle is not None    # one still under way
        lag.release()
        assert lag._handle is None and lag._due is None
        total = lag.stalled()
        time.sleep(0.05)              # between attempts nothing ticks, nothing is added
        await asyncio.sleep(0.03)
        assert lag.stalled() == total
        lag.release()                 # one release too many changes nothing
        lag.hold()
        assert lag._handle is not None
        lag.release()
        assert lag._handle is None

        running = LoopLag(interval=0.01)   # the worker's own: started, holds leave it running
        running.start()
        running.hold()
        running.release()
        assert running._handle is not None
        running.stop()

    asyncio.run(main())


def test_the_probe_threads_sampler_ticks_only_during_probes() -> None:
    """Between monitor rounds the probe thread's loop has no lag timer (it sleeps); a probe
    holds the sampler and lets go of it when it ends."""
    seen = []

    async def main() -> None:
        server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        mon = Monitor(Registry([Backend("b", f"http://127.0.0.1:{port}")]), MonitorConfig(timeout=1.0),
                      own_thread=True)
        mon._probes.start()
        lag = mon._probes.lag
        real_hold = lag.hold
        lag.hold = lambda: (seen.append(lag._handle), real_hold())   # type: ignore[method-assign]
        try:
            assert lag._handle is None
            result = await mon.probe(mon.registry.get("b"))
            assert result.health is Health.UNHEALTHY
            assert seen == [None] and lag._handle is None and lag._holds == 0
        finally:
            await mon.stop()
            server.close()

    asyncio.run(main())


# -- probes during a stall ----------------------------------------------------------------------

def test_an_inconclusive_probe_changes_nothing() -> None:
    reg = Registry([Backend("b", "http://b:8080")])
    st = reg.state("b")
    apply_probe("b", st, ProbeResult(Health.HEALTHY), MonitorConfig(), 1.0)
    before = (st.health, st.error, st.consecutive_ok, st.consecutive_bad, st.last_probe)
    assert apply_probe("b", st, ProbeResult(Health.UNHEALTHY, "timed out", inconclusive=True),
                       MonitorConfig(), 2.0) is None
    assert (st.health, st.error, st.consecutive_ok, st.consecutive_bad, st.last_probe) == before


class FakeLag:
    def __init__(self, readings: list[float]) -> None:
        self.readings = readings
        self.holds = 0

    def stalled(self) -> float:
        assert self.holds == 1   # read only while the probe holds the sampler
        return self.readings.pop(0)

    def hold(self) -> None:
        self.holds += 1

    def release(self) -> None:
        self.holds -= 1


def _probe_against_a_hole(lag_readings: list[float] | None) -> tuple[ProbeResult, int]:
    """A probe of a port that accepts and never answers, with a made-up loop lag."""
    excused = []

    async def main() -> ProbeResult:
        server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        mon = Monitor(Registry(), MonitorConfig(timeout=0.2))
        mon.on_excused = lambda: excused.append(1)
        if lag_readings is not None:
            mon.lag = FakeLag(lag_readings)   # type: ignore[assignment]
        try:
            return await mon.probe(Backend("hole", f"http://127.0.0.1:{port}"))
        finally:
            await mon.stop()
            server.close()

    return asyncio.run(main()), len(excused)


def test_a_probe_timeout_during_a_stall_is_inconclusive() -> None:
    result, excused = _probe_against_a_hole([10.0, 10.15])   # 0.15 s of 0.2 s stalled
    assert result.inconclusive and "timed out" in (result.error or "") and excused == 1


def test_a_probe_timeout_without_a_stall_counts() -> None:
    result, excused = _probe_against_a_hole([10.0, 10.0])
    assert not result.inconclusive and result.error == "timed out after 0.2s" and excused == 0
    result, _ = _probe_against_a_hole(None)      # no lag sampler at all: as before
    assert not result.inconclusive and result.health is Health.UNHEALTHY


# -- passive health: a forward failure is a hint ----------------------------------------------------

def _gateway(*names: str) -> tuple[Gateway, list[str]]:
    gw = Gateway(config_from_dict({}, "t.yaml"))
    gw.registry.replace([Backend(n, f"http://{n}:8080") for n in names])
    for n in names:
        gw.registry.state(n).health = Health.HEALTHY
    probed: list[str] = []
    gw.monitor.probe_soon = probed.append   # type: ignore[method-assign]
    return gw, probed


def _hints(gw: Gateway, source: str, verdict: str) -> float:
    return gw.metrics.health_hints.labels(source, verdict)._value.get()


REFUSED = BackendError("cannot connect: Connection refused", sent=False)
CONNECT_TIMEOUT = BackendError("timed out connecting after 5s", sent=False, timeout=True)


def test_one_failed_connect_never_takes_out_the_last_healthy_backend() -> None:
    gw, probed = _gateway("only")
    assert gw.note_forward_failure(gw.registry.get("only"), REFUSED, 0.001, 0.0) == PROBE
    assert gw.registry.state("only").health is Health.HEALTHY
    assert probed == ["only"]            # ... but it is probed at once: the probe decides
    assert _hints(gw, "forward", PROBE) == 1


def test_a_failed_connect_marks_a_backend_down_when_others_take_its_queries() -> None:
    gw, probed = _gateway("a", "b")
    assert gw.note_forward_failure(gw.registry.get("a"), REFUSED, 0.001, 0.0) == MARK
    assert gw.registry.state("a").health is Health.UNHEALTHY
    assert gw.registry.state("b").health is Health.HEALTHY
    assert probed == ["a"]
    # b is now the last HEALTHY backend: a failure on it only probes it
    gw.note_forward_failure(gw.registry.get("b"), CONNECT_TIMEOUT, 5.0, 0.0)
    assert gw.registry.state("b").health is Health.HEALTHY and probed == ["a", "b"]


def test_a_connect_timeout_during_a_loop_stall_is_not_counted() -> None:
    gw, probed = _gateway("a", "b")
    assert gw.note_forward_failure(gw.registry.get("a"), CONNECT_TIMEOUT, 5.0, 0.9) == EXCUSED
    assert gw.registry.state("a").health is Health.HEALTHY and probed == []
    assert _hints(gw, "forward", EXCUSED) == 1
    gw.note_forward_failure(gw.registry.get("a"), CONNECT_TIMEOUT, 5.0, 0.0)   # no stall: counts
    assert gw.registry.state("a").health is Health.UNHEALTHY


def test_an_error_after_the_request_was_sent_is_not_about_health() -> None:
    gw, probed = _gateway("a", "b")
    assert gw.note_forward_failure(gw.registry.get("a"), BackendError("connection lost", sent=True),
                                   1.0, 0.0) is None
    assert gw.registry.state("a").health is Health.HEALTHY and probed == []


def test_shed_reads_the_loop_lag_and_in_flight_count() -> None:
    gw, _ = _gateway("a")
    gw.config.server.shedInFlight = 3
    gw.config.server.shedLoopLag = 1.0
    assert gw.shed() is None
    gw.active.n = 3
    assert gw.shed() == "in-flight"
    gw.active.n = 0
    gw.loop_lag.sample(gw.loop_lag._clock())   # first sample: no lag yet
    gw.loop_lag._due = gw.loop_lag._clock() - 1.5   # the next sample is 1.5 s overdue
    assert gw.shed() == "loop-lag"


def test_probe_soon_probes_one_backend_once_at_a_time() -> None:
    server = _slow_info_server(0.05)

    async def main() -> list[Any]:
        reg = Registry([Backend("b", f"http://127.0.0.1:{server.server_address[1]}")])
        mon = Monitor(reg, MonitorConfig(type="info-api", interval=3600, timeout=1.0))
        mon.probe_soon("b")              # not running: nothing
        assert mon._early == {}
        mon.start()
        while mon.rounds < 1:            # the first round (the next is an hour away)
            await asyncio.sleep(0.001)
        reg.state("b").health = Health.UNHEALTHY
        mon.probe_soon("b")
        mon.probe_soon("b")              # already under way: not a second one
        assert list(mon._early) == ["b"]
        await mon._early["b"]
        await asyncio.sleep(0)           # its done callback
        out = [reg.state("b").health, dict(mon._early)]
        await mon.stop()
        return out

    try:
        assert asyncio.run(main()) == [Health.HEALTHY, {}]
    finally:
        server.shutdown()


def test_probe_soon_does_nothing_for_the_noop_monitor() -> None:
    async def main() -> dict[str, Any]:
        mon = Monitor(Registry([Backend("b", "http://b:8080")]), MonitorConfig(type="noop", interval=3600))
        mon.start()
        mon.probe_soon("b")              # noop says HEALTHY whatever happens: no evidence
        early = dict(mon._early)
        await mon.stop()
        return early

    assert asyncio.run(main()) == {}


# -- probes on their own thread ---------------------------------------------------------------

def _slow_info_server(delay: float) -> Any:
    import http.server
    import threading
    import time

    class Info(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            time.sleep(delay)
            body = b'{"starting": false}'
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Info)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.mark.parametrize("own_thread", [True, False])
def test_a_blocked_proxy_loop_does_not_starve_a_threaded_probe(own_thread: bool) -> None:
    """The backend answers in 0.3 s of a 1 s timeout while the proxy loop is blocked for
    1.5 s. On the probe thread the answer is read in time (HEALTHY); on the proxy loop the
    deadline fires late and the probe can say nothing (inconclusive, not UNHEALTHY)."""
    import threading
    import time

    server = _slow_info_server(0.3)
    seen: list[str] = []

    async def main() -> ProbeResult:
        reg = Registry([Backend("b", f"http://127.0.0.1:{server.server_address[1]}")])
        mon = Monitor(reg, MonitorConfig(type="info-api", interval=3600, timeout=1.0), own_thread=own_thread)
        lag = LoopLag(interval=0.01)
        lag.start()
        mon.lag = lag
        real = mon._probe_info

        async def spy(backend: Backend, deadline: float) -> ProbeResult:
            seen.append(threading.current_thread().name)
            return await real(backend, deadline)

        mon._probe_info = spy   # type: ignore[method-assign]
        mon.start()
        while mon.rounds < 1:
            await asyncio.sleep(0.01)
        task = asyncio.ensure_future(mon.probe(reg.get("b")))
        await asyncio.sleep(0.05)      # the request is on its way
        time.sleep(1.5)                # the proxy loop is blocked
        try:
            return await task
        finally:
            await mon.stop()
            lag.stop()

    try:
        result = asyncio.run(main())
    finally:
        server.shutdown()
    if own_thread:
        assert seen and set(seen) == {"gateway-probes"}
        assert result.ok, result
    else:
        assert set(seen) == {"MainThread"}
        assert result.inconclusive and not result.ok, result


def test_rounds_on_the_probe_thread_keep_their_interval_while_the_proxy_loop_is_blocked() -> None:
    """Interval 0.1 s; the proxy loop is blocked for 1 s. On the probe thread the rounds go on
    (about 10, each probe's completion time kept); on the proxy loop they would wait."""
    import time

    server = _slow_info_server(0.0)

    async def main() -> tuple[int, list[float]]:
        reg = Registry([Backend("b", f"http://127.0.0.1:{server.server_address[1]}")])
        mon = Monitor(reg, MonitorConfig(type="info-api", interval=0.1, timeout=1.0), own_thread=True)
        probed: list[float] = []
        apply = mon._apply

        def spy(*args: Any) -> Any:    # when each applied probe completed
            probed.append(args[-1])
            return apply(*args)

        mon._apply = spy   # type: ignore[method-assign]
        mon.start()
        while mon.rounds < 1:
            await asyncio.sleep(0.01)
        before = mon.rounds
        t0 = time.time()
        time.sleep(1.0)                # the proxy loop is blocked
        await asyncio.sleep(0.05)      # the results handed over meanwhile are applied now
        rounds = mon.rounds - before
        await mon.stop()
        return rounds, [t - t0 for t in probed if t is not None and t >= t0]

    try:
        rounds, during = asyncio.run(main())
    finally:
        server.shutdown()
    assert rounds >= 7, rounds
    # the probes completed while the loop was blocked, spread over that second
    assert len([t for t in during if t < 1.0]) >= 7 and max(during) - min(during) >= 0.5, during
