"""Overload: telling "the backend did not answer" from "we did not get to it", and shedding.

A worker whose event loop is saturated (a full garbage collection, a burst of answers, CPU
starvation on a shared box) runs its timers late. A connect or probe that "timed out" during
such a stall may never have had its budget: the backend could have answered in time and the
loop just did not look. Counting that as a backend failure turns the gateway's own overload
into a dead cluster (every new statement then fails with NO_NODES_AVAILABLE). So:

* ``LoopLag`` measures the loop: a cheap timer every ``interval`` notes how late it ran. The
  cumulative lateness (``stalled()``) taken before and after an attempt is the time the loop was
  not running during it; ``recent()`` is the worst lateness of the last few seconds.
* ``failure_counts`` (pure) decides whether a failed attempt counts against the backend.
* ``forward_verdict`` (pure) decides what one failed forward does to a backend's health.
* ``shed_reason`` (pure) decides whether a NEW statement is refused because this worker is
  overloaded. Polls of running queries are never shed: refusing them would lose queries that
  already cost a cluster work; a new statement can be retried (the answer is 429 with
  ``Retry-After``, see docs/deployment.md).
"""
from __future__ import annotations

import asyncio
import collections
import time
from typing import Any, Callable

__all__ = ["LoopLag", "failure_counts", "forward_verdict", "shed_reason", "FAIR_SHARE",
           "MARK", "PROBE", "EXCUSED"]

# A timed-out attempt counts against the backend only when the loop gave it at least this share
# of its budget. Below 1.0 on purpose: timers always fire a little late, and a dead backend must
# still be found while the loop has ordinary sub-millisecond jitter.
FAIR_SHARE = 0.9

MARK, PROBE, EXCUSED = "mark", "probe", "excused"


def failure_counts(*, timeout: bool, elapsed: float, lag: float, budget: float) -> bool:
    """Whether one failed attempt (connect, request or probe) counts against the backend.

    ``elapsed``: wall time of the attempt; ``lag``: how long the event loop was stalled during
    it (``LoopLag.stalled()`` after minus before); ``budget``: the timeout it had.

    An answer that was an error (refused, reset, HTTP 5xx, a bad document) always counts: the
    backend itself spoke. A timeout counts only when the loop actually ran for at least
    ``FAIR_SHARE`` of the budget: ``elapsed - lag >= FAIR_SHARE * budget``.
    """
    if not timeout:
        return True
    return elapsed - max(0.0, lag) >= FAIR_SHARE * budget


def forward_verdict(*, counts: bool, healthy_peers: int) -> str:
    """What a failed forward (nothing sent, or a timeout) does to its backend's health.

    A forward failure is a *hint*, the monitor's probe is the verdict:

    * ``EXCUSED``: it does not count (the loop stalled, see ``failure_counts``): nothing changes.
    * ``PROBE``: it counts, but the backend is the last HEALTHY one of its routing group
      (``healthy_peers`` = other HEALTHY, active backends of the group): it stays HEALTHY and is
      probed at once; a dead cluster goes UNHEALTHY as soon as that probe fails, a cluster
      that only refused one connect under a burst keeps taking queries.
    * ``MARK``: it counts and others can take new queries: UNHEALTHY now (failover costs
      nothing), probed at once so a healthy answer restores it quickly.
    """
    if not counts:
        return EXCUSED
    return MARK if healthy_peers > 0 else PROBE


def shed_reason(*, lag: float, in_flight: int, max_lag: float, max_in_flight: int) -> str | None:
    """Why a new statement is refused now (``loop-lag`` or ``in-flight``), or None to accept.

    ``lag``: the worst event-loop lateness of the last few seconds; ``in_flight``: requests this
    worker is proxying. A limit of 0 is off."""
    if max_lag > 0 and lag >= max_lag:
        return "loop-lag"
    if max_in_flight > 0 and in_flight >= max_in_flight:
        return "in-flight"
    return None


class Active:
    """Requests this worker is proxying now (``n``): shedding reads it, the drain waits for
    it to reach 0. One shared counter for every part that proxies (handler, fast path)."""

    __slots__ = ("n",)

    def __init__(self) -> None:
        self.n = 0


class LoopLag:
    """Samples how late the event loop runs a timer every ``interval`` seconds.

    ``observe(lag)`` (e.g. a histogram's ``observe``) gets every sample. The timer is one
    ``call_later`` per interval: nothing per request.

    A sampler whose lag is only read during attempts (the probe thread's: did a probe time
    out because its loop stalled?) need not wake its loop 20 times a second between them:
    ``hold``/``release`` around each attempt make it tick only while one is under way. Each
    wake-up of an idle thread costs about 0.1 ms of CPU here, and a thread that needs the GIL
    from a busy worker forces it to hand over."""

    def __init__(self, interval: float = 0.05, window: float = 2.0,
                 observe: Callable[[float], Any] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self.window = window
        self._observe = observe
        self._clock = clock
        self._total = 0.0                   # lateness summed over all samples
        self._due: float | None = None      # when the next sample should run
        self._recent: collections.deque[tuple[float, float]] = collections.deque()
        self._handle: asyncio.TimerHandle | None = None
        self._holds = 0                     # attempts under way (hold without release)
        self._held = False                  # ... which started the timer (so they stop it)

    def hold(self) -> None:
        """An attempt starts that the lag will be read for: tick (if not already) until its
        ``release``. On the loop's own thread."""
        self._holds += 1
        if self._handle is None:
            self.start()
            self._held = True

    def release(self) -> None:
        """The attempt of a ``hold`` ended: stop ticking when it was the last one and the holds
        started the timer (one started by ``start`` keeps running)."""
        self._holds -= 1
        if self._holds <= 0:
            self._holds = 0
            if self._held:
                self._held = False
                self.stop()

    def start(self) -> None:
        if self._handle is not None:
            return
        self._due = self._clock() + self.interval
        self._handle = asyncio.get_running_loop().call_later(self.interval, self._tick)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self._due = None

    def _tick(self) -> None:
        now = self._clock()
        self.sample(now)
        self._handle = asyncio.get_running_loop().call_later(self.interval, self._tick)

    def sample(self, now: float) -> float:
        """Record the timer that was due at ``self._due`` running at ``now``; the lateness."""
        lag = max(0.0, now - self._due) if self._due is not None else 0.0
        self._due = now + self.interval
        self._total += lag
        recent = self._recent
        if lag > 0.001:   # only real stalls are kept for recent(); jitter is not news
            # A sliding-window maximum: a sample no later one exceeds can never be the worst
            # again, so the deque's lags decrease and its first live entry is the worst.
            while recent and recent[-1][1] <= lag:
                recent.pop()
            recent.append((now, lag))
        while recent and recent[0][0] < now - self.window:
            recent.popleft()
        if self._observe is not None:
            self._observe(lag)
        return lag

    def pending(self, now: float | None = None) -> float:
        """How late the next sample already is (the loop may be stalled right now); ``now``:
        the clock, if the caller just read it."""
        if self._due is None:
            return 0.0
        return max(0.0, (self._clock() if now is None else now) - self._due)

    def stalled(self) -> float:
        """Cumulative lateness so far, including the stall in progress; subtract two readings
        to get the stall during an attempt."""
        due = self._due   # (pending, without the call: read for every forward)
        return self._total if due is None else self._total + max(0.0, self._clock() - due)

    def recent(self) -> float:
        """The worst lateness within the last ``window`` seconds (a stall in progress too)."""
        now = self._clock()
        floor = now - self.window
        recent = self._recent
        while recent and recent[0][0] < floor:
            recent.popleft()
        worst = recent[0][1] if recent else 0.0
        return max(worst, self.pending(now))
