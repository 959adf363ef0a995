"""The history drop count is exact: rows stored + ``dropped_rows`` == rows added, however many
sticky mappings and state updates were dropped alongside them during a store outage.

(In-process, no database: the end-to-end outage tests in test_rel_store_faults.py check the same
through /metrics, but need PostgreSQL or a mountable file system.)"""
from __future__ import annotations

import asyncio
from typing import Any

from gateway.store.base import HistoryRow, StoreError
from gateway.store.writer import HistoryWriter


class FlakyStore:
    """Stands in for AsyncStore: fails every call while ``down``; counts what it stored."""

    def __init__(self) -> None:
        self.down = False
        self.rows: dict[str, HistoryRow] = {}
        self.sticky = 0

    async def call(self, method: str, batch: list[Any]) -> None:
        await asyncio.sleep(0)
        if self.down:
            raise StoreError("connection refused (test outage)")
        if method == "insert_history":
            self.rows.update((r.query_id, r) for r in batch)
        elif method == "put_sticky":
            self.sticky += len(batch)


def test_drop_count_is_exactly_the_rows_that_never_arrived():
    async def scenario() -> tuple[int, HistoryWriter, FlakyStore]:
        store = FlakyStore()
        w = HistoryWriter(store, flush_interval=0.01, batch_size=7, max_pending=25, max_backoff=0.05)  # type: ignore[arg-type]
        w.start()
        added = 0
        for phase_down, n in ((False, 40), (True, 300), (False, 40)):
            store.down = phase_down
            for _ in range(n):
                qid = f"q{added:05d}"
                w.add(HistoryRow(query_id=qid, submitted_at=float(added)))
                w.add_sticky("query", qid, "b1", 1e12)
                w.update_state(qid, "FINISHED")
                added += 1
                await asyncio.sleep(0.001)
        store.down = False
        await w.stop()
        return added, w, store

    added, w, store = asyncio.run(scenario())
    assert w.dropped_rows > 0, "the outage dropped nothing: the test did not test"
    assert len(store.rows) + w.dropped_rows == added
    assert w.dropped > w.dropped_rows          # sticky mappings were dropped too, counted apart
    assert all(r.final_state == "FINISHED" for r in store.rows.values())
