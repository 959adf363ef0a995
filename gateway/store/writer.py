"""Using the synchronous store from the event loop without ever waiting on it.

``AsyncStore`` runs every store call on one dedicated thread (a single-worker executor), so the
store sees one caller at a time and the event loop only awaits a future.

``HistoryWriter`` is what the request path talks to: ``add``, ``update_state`` and
``add_sticky`` only append to in-memory queues and return at once. A background task writes
the queues in batches every ``flush_interval`` seconds (sooner when ``batch_size`` items are
waiting). When the store fails, items stay queued and are retried with backoff; past
``max_pending`` items per queue the oldest are dropped, counted in ``dropped`` and logged. A
second task applies retention: old history and expired sticky rows are deleted periodically.

All ``HistoryWriter`` methods must be called from the event loop's thread.
"""
from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Sequence

from gateway.backends.state import Backend

from .base import STICKY_KINDS, HistoryRow, Store, StoreError

__all__ = ["AsyncStore", "HistoryWriter", "StoreCalls"]

log = logging.getLogger("gateway.store")

# Items per store call (one transaction each). Handing a batch over costs the event loop about
# 1 µs per row (dequeue, pickling for the store process); 100 rows keep each step near 0.1 ms,
# so a flush never holds up the requests in between (POST p99 latency, docs/benchmarks.md).
_ITEMS_PER_CALL = 100


class StoreCalls:
    """The store's methods as coroutines, over ``call``: shared by ``AsyncStore`` (a thread)
    and ``ProcessStore`` (a child process, gateway/store/process.py)."""

    async def call(self, fn_name: str, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError

    @staticmethod
    def _check_method(fn_name: str) -> None:
        """Only the public ``Store`` methods may be called by name."""
        if fn_name.startswith("_") or not callable(getattr(Store, fn_name, None)):
            raise AttributeError(f"the store has no method {fn_name!r}")

    async def list_backends(self) -> list[Backend]:
        return await self.call("list_backends")

    async def add_backend(self, b: Backend) -> None:
        await self.call("add_backend", b)

    async def upsert_backend(self, b: Backend) -> None:
        await self.call("upsert_backend", b)

    async def delete_backend(self, name: str) -> bool:
        return await self.call("delete_backend", name)

    async def set_backend_active(self, name: str, active: bool) -> bool:
        return await self.call("set_backend_active", name, active)

    async def backends_stamp(self) -> str:
        return await self.call("backends_stamp")

    async def insert_history(self, rows: Sequence[HistoryRow]) -> None:
        await self.call("insert_history", rows)

    async def update_history_states(self, updates: Sequence[tuple[Any, ...]]) -> None:
        await self.call("update_history_states", updates)

    async def query_history(self, **filters: Any) -> list[HistoryRow]:
        return await self.call("query_history", **filters)

    async def count_history(self, **filters: Any) -> int:
        return await self.call("count_history", **filters)

    async def history_per_minute(self, since: float) -> list[tuple[float, int]]:
        return await self.call("history_per_minute", since)

    async def history_by_backend(self, since: float) -> dict[str, int]:
        return await self.call("history_by_backend", since)

    async def delete_history_before(self, ts: float) -> int:
        return await self.call("delete_history_before", ts)

    async def put_sticky(self, rows: Sequence[tuple[str, str, str, float]]) -> None:
        await self.call("put_sticky", rows)

    async def get_sticky(self, kind: str, key: str, now: float) -> str | None:
        return await self.call("get_sticky", kind, key, now)

    async def delete_expired_sticky(self, now: float) -> int:
        return await self.call("delete_expired_sticky", now)

    async def shared_secret(self, name: str, candidate: str, now: float) -> str:
        return await self.call("shared_secret", name, candidate, now)

    async def ping(self) -> None:
        await self.call("ping")

    async def migrate(self) -> list[int]:
        return await self.call("migrate")

    async def schema_version(self) -> int:
        return await self.call("schema_version")


class AsyncStore(StoreCalls):
    """A ``Store`` whose calls run on one worker thread and are awaited from the event loop."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gateway-store")

    @classmethod
    async def open(cls, url: str, **kwargs: Any) -> "AsyncStore":
        """``open_store(url, **kwargs)`` (migrations included) without blocking the loop."""
        from . import open_store
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gateway-store")
        try:
            store = await asyncio.get_running_loop().run_in_executor(
                executor, functools.partial(open_store, url, **kwargs))
        finally:
            executor.shutdown(wait=False)
        return cls(store)

    async def call(self, fn_name: str, *args: Any, **kwargs: Any) -> Any:
        """``await store.<fn_name>(*args, **kwargs)`` on the store thread."""
        self._check_method(fn_name)
        fn = functools.partial(getattr(self.store, fn_name), *args, **kwargs)
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, fn)
        except RuntimeError as exc:
            if "shutdown" in str(exc):
                raise StoreError("the store is closed") from None
            raise

    async def close(self) -> None:
        """Close the store on its thread, then stop the thread."""
        try:
            await self.call("close")
        finally:
            self._executor.shutdown(wait=False)


class HistoryWriter:
    """Queue history rows, state updates and sticky mappings; write them in the background."""

    def __init__(self, astore: AsyncStore, *, flush_interval: float = 0.5,
                 batch_size: int = 500, max_pending: int = 100_000,
                 retention: float | None = 86400.0, retention_interval: float = 300.0,
                 max_backoff: float = 30.0, log_interval: float = 10.0) -> None:
        for name, value in (("flush_interval", flush_interval), ("batch_size", batch_size),
                            ("max_pending", max_pending), ("retention_interval", retention_interval),
                            ("max_backoff", max_backoff)):
            if value <= 0:
                raise ValueError(f"HistoryWriter {name} must be positive, got {value!r}")
        if retention is not None and retention <= 0:
            raise ValueError(f"HistoryWriter retention must be positive or None, got {retention!r}")
        self._astore = astore
        self.flush_interval = flush_interval
        self.batch_size = batch_size
        self.max_pending = max_pending
        self.retention = retention
        self.retention_interval = retention_interval
        self.max_backoff = max_backoff
        self.log_interval = log_interval
        self._rows: deque[HistoryRow] = deque()
        self._pending_by_id: dict[str, HistoryRow] = {}   # queued rows, for folding updates in
        self._updates: deque[tuple[str, str, str | None, float | None]] = deque()
        self._sticky: deque[tuple[str, str, str, float]] = deque()
        self.dropped = 0          # items dropped because max_pending was reached (or at stop)
        self.rejected = 0         # items the database refused as invalid (never retried)
        # Of those, history rows only (what trino_gateway_history_rows_dropped_total counts;
        # sticky mappings and state updates are dropped alongside them in an outage).
        self.dropped_rows = 0
        self.rejected_rows = 0
        self.write_failures = 0   # failed flush attempts
        self.written = 0          # history rows written
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._unlogged_drops = 0
        self._last_drop_log = float("-inf")
        self._last_failure_log = float("-inf")

    # the request path: never blocks, never awaits -----------------------------------------
    def add(self, row: HistoryRow) -> None:
        """Queue a history row. The writer owns ``row`` from now on (updates fold into it)."""
        self._push(self._rows, row)
        self._pending_by_id[row.query_id] = row

    def update_state(self, query_id: str, state: str, error: str | None = None,
                     finished_at: float | None = None) -> None:
        """Queue a query's final state; folded into its row if that is still queued."""
        row = self._pending_by_id.get(query_id)
        if row is not None:
            if row.final_state == "CANCELED":
                return          # a cancel is final (SqlStore.update_history_states)
            row.final_state = state
            if error is not None:
                row.error = error
            if finished_at is not None:
                row.finished_at = finished_at
            return
        # Its row is written or being written; the flush writes rows before updates, so the
        # update never reaches the database ahead of its row.
        self._push(self._updates, (query_id, state, error, finished_at))

    def add_sticky(self, kind: str, key: str, backend: str, expires_at: float) -> None:
        if kind not in STICKY_KINDS:
            raise ValueError(f"sticky kind {kind!r} is not one of {', '.join(STICKY_KINDS)}")
        self._push(self._sticky, (kind, key, backend, expires_at))

    @property
    def pending(self) -> int:
        return len(self._rows) + len(self._updates) + len(self._sticky)

    def _push(self, queue: deque[Any], item: Any) -> None:
        if len(queue) >= self.max_pending:
            self._forget(queue.popleft())
            self._note_drops(1, rows=queue is self._rows)
        queue.append(item)
        if len(queue) >= self.batch_size:
            self._wake.set()

    def _forget(self, item: Any) -> None:
        if isinstance(item, HistoryRow) and self._pending_by_id.get(item.query_id) is item:
            del self._pending_by_id[item.query_id]

    def _note_drops(self, n: int, *, rows: bool = False) -> None:
        self.dropped += n
        if rows:
            self.dropped_rows += n
        self._unlogged_drops += n
        self._log_drops()

    def _log_drops(self, force: bool = False) -> None:
        now = time.monotonic()
        if self._unlogged_drops and (force or now - self._last_drop_log >= self.log_interval):
            log.warning("store writer dropped %d queued items (more than %d pending: the store "
                        "is down or too slow); %d dropped since start",
                        self._unlogged_drops, self.max_pending, self.dropped)
            self._unlogged_drops = 0
            self._last_drop_log = now

    # flushing -----------------------------------------------------------------------------
    async def flush(self) -> None:
        """Write everything queued now; raises ``StoreError`` (items stay queued) on failure."""
        async with self._lock:
            try:
                await self._flush_queues()
            except Exception:
                self.write_failures += 1
                raise

    async def _flush_queues(self) -> None:
        # Rows first: an update is only queued when its row is no longer queued (see
        # update_state), so after this phase every queued update's row is in the database.
        # Each phase takes what was queued when it started, so a busy gateway cannot starve
        # the later phases.
        self.written += await self._drain(self._rows, "insert_history")
        await self._drain(self._updates, "update_history_states")
        await self._drain(self._sticky, "put_sticky")

    async def _drain(self, queue: deque[Any], method: str) -> int:
        todo = len(queue)
        done = 0
        while todo > 0 and queue:
            batch = [queue.popleft() for _ in range(min(todo, self.batch_size, _ITEMS_PER_CALL, len(queue)))]
            for item in batch:
                self._forget(item)
            todo -= len(batch)
            done += await self._write(queue, method, batch)
        return done

    async def _write(self, queue: deque[Any], method: str, batch: list[Any]) -> int:
        """Write one batch; returns how many items were stored. Requeues on a store outage."""
        try:
            await self._astore.call(method, batch)
            return len(batch)
        except Exception as exc:
            if not _is_permanent(exc):
                self._requeue(queue, batch)
                raise
            # The database refused something in this batch: find the bad items one by one
            # instead of retrying (and blocking the queue behind) them forever.
            stored = 0
            for i, item in enumerate(batch):
                try:
                    await self._astore.call(method, [item])
                    stored += 1
                except Exception as one_exc:
                    if not _is_permanent(one_exc):
                        self._requeue(queue, batch[i:])
                        raise
                    self.rejected += 1
                    if isinstance(item, HistoryRow):
                        self.rejected_rows += 1
                    log.error("store refused a %s item, dropped it: %s", method, one_exc)
                except BaseException:
                    self._requeue(queue, batch[i:])
                    raise
            return stored
        except BaseException:   # cancelled mid-write (stop): keep the batch for the final flush
            self._requeue(queue, batch)
            raise

    def _requeue(self, queue: deque[Any], batch: list[Any]) -> None:
        queue.extendleft(reversed(batch))
        for item in batch:
            if isinstance(item, HistoryRow):
                self._pending_by_id.setdefault(item.query_id, item)
        overflow = len(queue) - self.max_pending
        if overflow > 0:
            for _ in range(overflow):
                self._forget(queue.popleft())
            self._note_drops(overflow, rows=queue is self._rows)

    async def _run(self) -> None:
        delay = self.flush_interval
        failing = False
        while True:
            if failing:
                await asyncio.sleep(delay)    # backing off: a full queue does not wake us
            else:
                try:
                    await asyncio.wait_for(self._wake.wait(), delay)
                except asyncio.TimeoutError:
                    pass
            self._wake.clear()
            self._log_drops()
            if not self.pending:
                continue
            try:
                await self.flush()
            except Exception as exc:
                delay = min(self.max_backoff, delay * 2 if failing else self.flush_interval * 2)
                failing = True
                now = time.monotonic()
                if now - self._last_failure_log >= self.log_interval:
                    self._last_failure_log = now
                    log.warning("store write failed (%s); %d items queued, retrying in %.1fs",
                                exc, self.pending, delay)
                continue
            if failing:
                log.info("store writes recovered after %d failed attempts in total",
                         self.write_failures)
            failing = False
            delay = self.flush_interval

    # retention ----------------------------------------------------------------------------
    async def run_retention(self, now: float | None = None) -> tuple[int, int]:
        """Delete history older than ``retention`` and expired sticky rows; return the counts."""
        now = time.time() if now is None else now
        history = 0
        if self.retention is not None:
            history = await self._astore.delete_history_before(now - self.retention)
        sticky = await self._astore.delete_expired_sticky(now)
        return history, sticky

    async def _retention_loop(self) -> None:
        while True:
            try:
                history, sticky = await self.run_retention()
                if history or sticky:
                    log.info("retention deleted %d history rows and %d expired sticky rows",
                             history, sticky)
            except Exception as exc:
                log.warning("store retention failed (%s); will retry in %.0fs", exc,
                            self.retention_interval)
            await asyncio.sleep(self.retention_interval)

    # lifecycle ----------------------------------------------------------------------------
    def start(self) -> None:
        """Start the flush and retention tasks on the running loop (idempotent)."""
        if self._tasks:
            return
        self._tasks = [asyncio.create_task(self._run(), name="store-writer"),
                       asyncio.create_task(self._retention_loop(), name="store-retention")]

    async def stop(self) -> None:
        """Stop the tasks and write what is queued; what cannot be written is counted lost."""
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        try:
            await self.flush()
        except Exception as exc:
            lost = self.pending
            self.dropped_rows += len(self._rows)
            self._rows.clear()
            self._pending_by_id.clear()
            self._updates.clear()
            self._sticky.clear()
            self.dropped += lost
            log.error("store unavailable at shutdown (%s); %d queued items lost", exc, lost)
        self._log_drops(force=True)


def _is_permanent(exc: BaseException) -> bool:
    if isinstance(exc, StoreError):
        return exc.permanent
    # Outages always arrive as StoreError; anything else is a bad value or a bug, which
    # retrying cannot fix either.
    return True
