"""Multiprocess metric writes made on the request path, applied once per turn of the event loop.

With several workers the metrics are prometheus-client's multiprocess values: every ``inc`` or
``observe`` takes a lock, asks the process id (a system call) and packs a float into a file the
workers share. A poll made eight of them; at 5,000 queries in flight through two workers they
were about 15 % of a worker's busy time (py-spy, issue 19). ``Deferred`` adds up what one turn
of the loop writes and applies it after that turn: one write per metric (and per histogram
bucket) touched, however many requests the turn served. A scrape, on any worker, sees a
request's counts within that turn, as it already saw them only after the response was written.
Without a running loop (a thread, a test) a write is applied at once.
"""
from __future__ import annotations

import asyncio
from bisect import bisect_left
from typing import Any

__all__ = ["Deferred", "DeferredValue"]


class Deferred:
    """The writes of the current loop turn, applied by ``flush`` (scheduled once per turn)."""

    __slots__ = ("_counts", "_observed", "_scheduled")

    def __init__(self) -> None:
        self._counts: dict[Any, float] = {}            # counter or gauge child -> amount to add
        self._observed: dict[Any, list[float]] = {}    # histogram child -> amounts observed
        self._scheduled = False

    def add(self, child: Any, amount: float) -> None:
        counts = self._counts
        counts[child] = counts.get(child, 0.0) + amount
        if not self._scheduled:
            self._schedule()

    def observe(self, child: Any, amount: float) -> None:
        seen = self._observed.get(child)
        if seen is None:
            self._observed[child] = [amount]
        else:
            seen.append(amount)
        if not self._scheduled:
            self._schedule()

    def _schedule(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.flush()
            return
        self._scheduled = True
        loop.call_soon(self.flush)

    def flush(self) -> None:
        """Apply every write made since the last flush."""
        self._scheduled = False
        counts, self._counts = self._counts, {}
        observed, self._observed = self._observed, {}
        for child, amount in counts.items():
            if amount:
                child.inc(amount)
        for child, amounts in observed.items():
            observe_all(child, amounts)


def observe_all(child: Any, amounts: list[float]) -> None:
    """``child.observe(a)`` for each of ``amounts``, with one write per bucket touched and one
    for the sum (prometheus-client's histogram keeps a value per bucket, ``_buckets``, each
    counting the observations up to its bound, ``_upper_bounds``, the last of them +Inf)."""
    buckets = getattr(child, "_buckets", None)
    bounds = getattr(child, "_upper_bounds", None)
    if buckets is None or bounds is None or len(buckets) != len(bounds):
        for amount in amounts:
            child.observe(amount)
        return
    per_bucket = [0] * len(bounds)
    total = 0.0
    for amount in amounts:
        total += amount
        if amount == amount:   # NaN lands in no bucket, as in Histogram.observe
            per_bucket[bisect_left(bounds, amount)] += 1   # the first bound >= amount
    child._sum.inc(total)
    for bucket, n in zip(buckets, per_bucket):
        if n:
            bucket.inc(n)


class DeferredValue:
    """A metric child whose writes go through ``Deferred`` (the request path's interface:
    ``inc``, ``dec``, ``observe``)."""

    __slots__ = ("child", "_deferred")

    def __init__(self, child: Any, deferred: Deferred) -> None:
        self.child = child
        self._deferred = deferred

    def inc(self, amount: float = 1.0) -> None:
        self._deferred.add(self.child, amount)

    def dec(self, amount: float = 1.0) -> None:
        self._deferred.add(self.child, -amount)

    def observe(self, amount: float) -> None:
        self._deferred.observe(self.child, amount)
