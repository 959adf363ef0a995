"""Queries the gateway routed to each backend and has not seen finish: what the gateway itself
knows about a backend's load, whatever the monitor can see.

The ``info-api`` monitor (the default) and ``noop`` cannot count a cluster's queries, so a page
or API that showed their counts would say "0 running" while queries run. This count comes from
the query history instead: rows with a backend and no final state yet. The history is shared by
every worker process and replica, so the count is the whole gateway's, and it is what the
blue/green drain waits for (docs/operations.md). It lags by the history flush interval; queries
whose client went away are resolved by ``gateway.backends.resolver`` instead of counting forever.

The request path never reads the store: a background task refreshes ``counts`` every couple of
seconds; the pages and the state API read it afresh (``force``), since a stale snapshot taken
before a query's row was written would call a draining backend drained.
"""
from __future__ import annotations

import logging
import time
from typing import Any

log = logging.getLogger("gateway")

__all__ = ["UnfinishedQueries"]


class UnfinishedQueries:
    """The last snapshot of unfinished queries per backend (None: not known, e.g. no history)."""

    def __init__(self, window: float, min_interval: float = 2.0) -> None:
        self.window = window                   # rows older than this are not counted
        self.min_interval = min_interval       # at most one store read per this many seconds
        self.counts: dict[str, int] | None = None
        self.updated_at: float | None = None
        self.error: str | None = None
        self._last_try = float("-inf")

    def of(self, backend: str) -> int | None:
        """Unfinished queries on ``backend``; None when the gateway does not know."""
        if self.counts is None:
            return None
        return self.counts.get(backend, 0)

    def total(self, backends: list[str]) -> int | None:
        if self.counts is None:
            return None
        return sum(self.counts.get(b, 0) for b in backends)

    async def refresh(self, store: Any, *, force: bool = False) -> None:
        """Read the counts from the store (at most every ``min_interval`` unless forced)."""
        now = time.monotonic()
        if not force and now - self._last_try < self.min_interval:
            return
        self._last_try = now
        try:
            self.counts = await store.call("unfinished_by_backend", time.time() - self.window)
            self.updated_at = time.time()
            self.error = None
        except Exception as exc:  # noqa: BLE001 - keep the last snapshot; say why it is old
            self.error = str(exc)
            log.debug("cannot count unfinished queries: %s", exc)
