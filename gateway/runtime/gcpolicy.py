"""Garbage-collector settings for a proxy worker, and when its full collections run.

Why (issue 19): every query in flight holds some tens of objects the cyclic collector tracks
(its client connection, request, handler, backend connection, the coroutines waiting on the
long poll). Python's default settings start a full collection after a fixed share of new
long-lived objects, so with ``N`` queries in flight a worker ran full collections at a rate that
grows with ``N``, each walking all ``N`` queries: GC CPU grew with about N² (38 % of the worker at
10,000 in flight) and each full collection stopped every request of the worker for up to 0.8 s.

What this module does instead, in each worker after start-up:

- young collections less often (``gen0`` threshold 10,000 instead of 700): most request garbage
  is freed by reference counting before a collection ever looks at it;
- no automatic full collection (``gen2`` threshold out of reach); the worker runs one itself
  (``FullCollections``) when the loop is quiet and the last one is at least ``min_interval`` ago,
  or after ``max_interval`` whatever the load, so cyclic garbage stays bounded;
- the pause of every collection, by generation, is kept for the
  ``trino_gateway_gc_pause_seconds`` histogram (gateway/metrics.py).

The decision (``FullCollections.due``) is plain code with unit tests; ``install`` wires it to
``gc`` and the event loop. ``TRINO_GATEWAY_GC=python`` keeps Python's own settings (for A/B
measurements, benchmarks/gc_inflight.py and docs/benchmarks.md).
"""
from __future__ import annotations

import asyncio
import gc
import os
import time
from dataclasses import dataclass
from typing import Any, Callable

__all__ = ["FullCollections", "GcPauses", "install", "YOUNG_THRESHOLD", "MIDDLE_THRESHOLD"]

YOUNG_THRESHOLD = 10_000
MIDDLE_THRESHOLD = 10
_NO_AUTOMATIC_FULL = 1 << 30   # gen1 collections before an automatic gen2 one: never reached
_TICK = 1.0                    # seconds between looks at the loop


@dataclass(frozen=True)
class FullCollections:
    """When a worker runs a full collection itself.

    ``due`` answers for one look at the worker: seconds since the last full collection and the
    share of one CPU the worker used since the previous look (0..1; a busy proxy is near 1).
    """
    min_interval: float = 60.0     # never more often: each one walks everything in flight
    max_interval: float = 600.0    # at the latest: bounds memory held by cyclic garbage
    quiet_cpu: float = 0.5         # below this CPU share the loop is between bursts

    def due(self, since_last: float, cpu_share: float) -> bool:
        if since_last >= self.max_interval:
            return True
        return since_last >= self.min_interval and cpu_share < self.quiet_cpu


class GcPauses:
    """Records each collection's pause from ``gc.callbacks``; ``drain`` hands them over.

    The callback runs inside whatever allocation triggered the collection, possibly while a
    metrics lock is held, so it only appends to a list; metrics are updated later, from the
    event loop."""

    __slots__ = ("_started", "pending", "longest")

    def __init__(self) -> None:
        self._started = 0.0
        self.pending: list[tuple[int, float]] = []
        self.longest = 0.0

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            pause = time.perf_counter() - self._started
            self.pending.append((info["generation"], pause))
            if pause > self.longest:
                self.longest = pause

    def drain(self) -> list[tuple[int, float]]:
        out, self.pending = self.pending, []
        return out


class _Scheduler:
    def __init__(self, policy: FullCollections, pauses: GcPauses,
                 observe: Callable[[int, float], None] | None) -> None:
        self.thresholds = gc.get_threshold()
        self.policy = policy
        self.pauses = pauses
        self.observe = observe
        self.last_full = time.monotonic()
        self.cpu = time.process_time()
        self.wall = time.monotonic()
        self.handle: asyncio.TimerHandle | None = None

    def start(self) -> None:
        self.handle = asyncio.get_running_loop().call_later(_TICK, self.tick)

    def tick(self) -> None:
        now, cpu = time.monotonic(), time.process_time()
        share = (cpu - self.cpu) / max(1e-6, now - self.wall)
        self.cpu, self.wall = cpu, now
        if self.policy.due(now - self.last_full, share):
            gc.collect()
            self.last_full = time.monotonic()
        if self.observe is not None:
            for generation, seconds in self.pauses.drain():
                self.observe(generation, seconds)
        else:
            self.pauses.drain()
        self.start()

    def stop(self) -> None:
        if self.handle is not None:
            self.handle.cancel()
        if self.pauses in gc.callbacks:
            gc.callbacks.remove(self.pauses)
        gc.set_threshold(*self.thresholds)


def install(observe: Callable[[int, float], None] | None = None,
            policy: FullCollections | None = None) -> Callable[[], None]:
    """Apply the proxy's collector settings in this process (call from the running loop, after
    start-up objects are frozen). ``observe(generation, seconds)`` receives every pause (also
    with ``TRINO_GATEWAY_GC=python``, which only leaves the settings alone). Returns a function
    that stops the scheduling."""
    pauses = GcPauses()
    if os.environ.get("TRINO_GATEWAY_GC", "proxy") == "python":
        sched = _Scheduler(FullCollections(min_interval=float("inf"), max_interval=float("inf")),
                           pauses, observe)
    else:
        sched = _Scheduler(policy or FullCollections(), pauses, observe)
        gc.set_threshold(YOUNG_THRESHOLD, MIDDLE_THRESHOLD, _NO_AUTOMATIC_FULL)
    gc.callbacks.append(pauses)
    sched.start()
    return sched.stop
