"""HistoryWriter and AsyncStore over real stores, including real outages.

Outages are real: for SQLite another connection holds the write lock (the store's busy timeout
expires); for PostgreSQL the test database stops accepting connections and its sessions are
terminated. Nothing here mocks the database.
"""
from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from typing import Any, Awaitable, Callable, Iterator

import pytest

from gateway.store import AsyncStore, HistoryRow, HistoryWriter, StoreError, open_store
from gateway.store.sqlite import parse_sqlite_url


async def until(cond: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)


class SpyStore(AsyncStore):
    """A real AsyncStore that also records which methods were called with how many items."""

    def __init__(self, store: Any) -> None:
        super().__init__(store)
        self.calls: list[tuple[str, int]] = []

    async def call(self, fn_name: str, *args: Any, **kwargs: Any) -> Any:
        if args and isinstance(args[0], list):
            self.calls.append((fn_name, len(args[0])))
        return await super().call(fn_name, *args, **kwargs)

    def sizes(self, fn_name: str) -> list[int]:
        return [n for name, n in self.calls if name == fn_name]


def run(coro_fn: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(coro_fn())


def _rows(n: int, start: int = 0, at: float | None = None) -> list[HistoryRow]:
    now = time.time() if at is None else at
    return [HistoryRow(f"q{i:04d}", now + i * 0.001, user="u") for i in range(start, start + n)]


class Outage:
    """Break and heal a store's database for real."""

    def __init__(self, kind: str, url: str, request: pytest.FixtureRequest) -> None:
        self.kind, self.url, self._request = kind, url, request
        self._lock: sqlite3.Connection | None = None

    def break_(self) -> None:
        if self.kind == "sqlite":
            self._lock = sqlite3.connect(parse_sqlite_url(self.url), isolation_level=None)
            self._lock.execute("BEGIN IMMEDIATE")     # holds the write lock
        else:
            self._request.getfixturevalue("pg_databases").set_allow_connections(self.url, False)

    def heal(self) -> None:
        if self.kind == "sqlite":
            assert self._lock is not None
            self._lock.execute("ROLLBACK")
            self._lock.close()
            self._lock = None
        else:
            self._request.getfixturevalue("pg_databases").set_allow_connections(self.url, True)


@pytest.fixture
def outage_url(kind: str, fresh_url: str) -> str:
    open_store(fresh_url).close()       # migrated, own database: the outage touches nothing else
    return fresh_url


@pytest.fixture
def outage(kind: str, outage_url: str, request: pytest.FixtureRequest) -> Iterator[Outage]:
    o = Outage(kind, outage_url, request)
    yield o
    if o._lock is not None or kind == "postgres":
        try:
            o.heal()
        except Exception:
            pass


def _short_timeout_store(url: str, kind: str) -> SpyStore:
    # A short lock/connection timeout so each failed attempt is quick.
    return SpyStore(open_store(url, timeout=0.05 if kind == "sqlite" else 0.3))


def test_rows_reaching_batch_size_are_written_in_batches(store) -> None:
    async def main() -> None:
        astore = SpyStore(store)
        writer = HistoryWriter(astore, flush_interval=60, batch_size=10, retention=None)
        writer.start()
        for row in _rows(25):
            writer.add(row)
        await until(lambda: writer.written == 25, what="25 rows written")
        await writer.stop()
        assert astore.sizes("insert_history") == [10, 10, 5]
        assert len(store.query_history(limit=100)) == 25
    run(main)


def test_partial_batch_is_written_after_the_flush_interval(store) -> None:
    async def main() -> None:
        writer = HistoryWriter(AsyncStore(store), flush_interval=0.02, batch_size=100,
                               retention=None)
        writer.start()
        for row in _rows(3):
            writer.add(row)
        await until(lambda: writer.written == 3, what="3 rows written")
        await writer.stop()
        assert store.count_history() == 3
    run(main)


def test_update_of_a_queued_row_is_folded_into_its_insert(store) -> None:
    async def main() -> None:
        astore = SpyStore(store)
        writer = HistoryWriter(astore, retention=None)
        writer.add(HistoryRow("q1", 1.0))
        writer.update_state("q1", "FAILED", "boom")
        await writer.flush()
        assert astore.sizes("insert_history") == [1]
        assert astore.sizes("update_history_states") == []
        (row,) = store.query_history()
        assert (row.final_state, row.error) == ("FAILED", "boom")
    run(main)


def test_update_after_the_row_was_written_is_a_separate_write(store) -> None:
    async def main() -> None:
        astore = SpyStore(store)
        writer = HistoryWriter(astore, retention=None)
        writer.add(HistoryRow("q1", 1.0, error="queued"))
        await writer.flush()
        writer.update_state("q1", "FINISHED")
        await writer.flush()
        assert astore.sizes("update_history_states") == [1]
        (row,) = store.query_history()
        assert (row.final_state, row.error) == ("FINISHED", "queued")
    run(main)


def test_sticky_mappings_go_through_the_writer(store) -> None:
    async def main() -> None:
        writer = HistoryWriter(AsyncStore(store), retention=None)
        writer.add_sticky("query", "qid-1", "t1", time.time() + 60)
        with pytest.raises(ValueError, match="sticky kind 'nope'"):
            writer.add_sticky("nope", "k", "t1", 0.0)
        await writer.flush()
        assert store.get_sticky("query", "qid-1", time.time()) == "t1"
    run(main)


def test_stop_flushes_everything_queued(store) -> None:
    async def main() -> None:
        writer = HistoryWriter(AsyncStore(store), flush_interval=60, batch_size=1000,
                               retention=None)
        writer.start()
        for row in _rows(5):
            writer.add(row)
        writer.add_sticky("spool", "s1", "t2", time.time() + 60)
        await writer.stop()
        assert writer.pending == 0
        assert store.count_history() == 5
        assert store.get_sticky("spool", "s1", time.time()) == "t2"
    run(main)


def test_a_row_the_store_refuses_is_dropped_without_blocking_the_rest(store, caplog) -> None:
    async def main() -> None:
        writer = HistoryWriter(AsyncStore(store), retention=None)
        rows = _rows(5)
        rows[2].queued_ms = 2**70          # no database integer holds this
        for row in rows:
            writer.add(row)
        await writer.flush()
        assert (writer.rejected, writer.written, writer.pending) == (1, 4, 0)
        assert sorted(r.query_id for r in store.query_history()) == ["q0000", "q0001", "q0003", "q0004"]
    with caplog.at_level(logging.ERROR, logger="gateway.store"):
        run(main)
    assert "invalid history row 'q0002'" in caplog.text


def test_writer_survives_an_outage_and_writes_everything_after(kind, outage_url, outage) -> None:
    async def main() -> None:
        astore = _short_timeout_store(outage_url, kind)
        writer = HistoryWriter(astore, flush_interval=0.02, batch_size=5, max_backoff=0.1,
                               retention=None, log_interval=0)
        try:
            writer.add(HistoryRow("before", time.time()))
            await writer.flush()
            outage.break_()
            writer.start()
            writer.update_state("before", "FINISHED")   # its row is written: a queued update
            for row in _rows(12):
                writer.add(row)
            writer.add_sticky("transaction", "tx", "t1", time.time() + 60)
            await until(lambda: writer.write_failures >= 3, what="three failed flushes")
            assert writer.pending == 14 and writer.dropped == 0
            outage.heal()
            await until(lambda: writer.pending == 0, timeout=20, what="queue drained")
            await writer.stop()
            rows = await astore.query_history(limit=100)
            assert len(rows) == 13
            assert {r.query_id: r.final_state for r in rows}["before"] == "FINISHED"
            assert await astore.get_sticky("transaction", "tx", time.time()) == "t1"
        finally:
            await astore.close()
    run(main)


def test_update_queued_while_its_row_is_in_flight_lands_after_the_row(kind, outage_url,
                                                                      outage) -> None:
    async def main() -> None:
        astore = _short_timeout_store(outage_url, kind)
        writer = HistoryWriter(astore, retention=None)
        try:
            outage.break_()
            writer.add(HistoryRow("q1", time.time()))
            flushing = asyncio.create_task(writer.flush())
            await until(lambda: writer.pending == 0, what="row taken for writing")
            writer.update_state("q1", "FAILED", "boom")     # row in flight: queued as update
            with pytest.raises(StoreError):
                await flushing
            assert writer.pending == 2 and writer.write_failures == 1
            outage.heal()
            await until_flushed(writer)
            (row,) = await astore.query_history()
            assert (row.final_state, row.error) == ("FAILED", "boom")
        finally:
            await astore.close()
    run(main)


async def until_flushed(writer: HistoryWriter, timeout: float = 20.0) -> None:
    """Retry flush() until it succeeds (a healed PostgreSQL pool takes a moment to reconnect)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            await writer.flush()
            return
        except StoreError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)


def test_rows_beyond_max_pending_are_dropped_oldest_first_and_counted(kind, outage_url, outage,
                                                                      caplog) -> None:
    async def main() -> None:
        astore = _short_timeout_store(outage_url, kind)
        writer = HistoryWriter(astore, flush_interval=0.01, batch_size=20, max_pending=50,
                               max_backoff=0.02, retention=None)
        try:
            outage.break_()
            writer.start()
            for i, row in enumerate(_rows(80)):
                writer.add(row)
                if i % 10 == 9:
                    await asyncio.sleep(0.01)     # let failing flushes take and requeue batches
            await until(lambda: writer.write_failures >= 2, what="failed flushes")
            await until(lambda: writer.pending == 50, what="no batch in flight")
            assert writer.dropped == 30
            outage.heal()
            await until(lambda: writer.pending == 0, timeout=20, what="queue drained")
            await writer.stop()
            ids = sorted(r.query_id for r in await astore.query_history(limit=100))
            assert ids == [f"q{i:04d}" for i in range(30, 80)]
            assert writer.dropped == 30
        finally:
            await astore.close()
    with caplog.at_level(logging.WARNING, logger="gateway.store"):
        run(main)
    assert "dropped" in caplog.text and "more than 50 pending" in caplog.text


def test_stop_with_the_store_down_counts_the_lost_rows(kind, outage_url, outage, caplog) -> None:
    async def main() -> None:
        astore = _short_timeout_store(outage_url, kind)
        writer = HistoryWriter(astore, flush_interval=60, retention=None)
        try:
            outage.break_()
            writer.start()
            for row in _rows(7):
                writer.add(row)
            await writer.stop()
            assert (writer.pending, writer.dropped) == (0, 7)
        finally:
            outage.heal()
            await astore.close()
    with caplog.at_level(logging.ERROR, logger="gateway.store"):
        run(main)
    assert "7 queued items lost" in caplog.text


def test_retention_task_deletes_old_history_and_expired_sticky(store) -> None:
    now = time.time()
    store.insert_history(_rows(3, at=now - 7200) + _rows(2, start=10, at=now))
    store.put_sticky([("query", "old", "t1", now - 1), ("query", "new", "t1", now + 3600)])

    async def main() -> None:
        writer = HistoryWriter(AsyncStore(store), retention=3600, retention_interval=0.02)
        writer.start()
        await until(lambda: store.count_history() == 2, what="old history deleted")
        await until(lambda: store.delete_expired_sticky(time.time()) == 0
                    and store.get_sticky("query", "new", time.time()) == "t1",
                    what="expired sticky deleted")
        await writer.stop()
        assert sorted(r.query_id for r in store.query_history()) == ["q0010", "q0011"]
    run(main)


def test_run_retention_returns_the_counts(store) -> None:
    store.insert_history([HistoryRow("old", 100.0), HistoryRow("new", 5000.0)])
    store.put_sticky([("oauth", "o", "t1", 150.0)])

    async def main() -> None:
        writer = HistoryWriter(AsyncStore(store), retention=1000)
        assert await writer.run_retention(now=2000.0) == (1, 1)
        assert await HistoryWriter(AsyncStore(store), retention=None).run_retention(now=9e9) == (0, 0)
    run(main)


def test_async_store_refuses_unknown_methods_and_calls_after_close(tmp_path) -> None:
    async def main() -> None:
        astore = await AsyncStore.open(f"sqlite:///{tmp_path / 'a.db'}")
        assert await astore.schema_version() >= 1
        with pytest.raises(AttributeError, match="no method '_read'"):
            await astore.call("_read", "SELECT 1")
        with pytest.raises(AttributeError, match="no method 'drop_everything'"):
            await astore.call("drop_everything")
        await astore.close()
        with pytest.raises(StoreError, match="closed"):
            await astore.ping()
    run(main)


@pytest.mark.parametrize("kwargs, words", [
    ({"batch_size": 0}, "batch_size must be positive"),
    ({"max_pending": -1}, "max_pending must be positive"),
    ({"retention": 0}, "retention must be positive or None"),
])
def test_bad_writer_settings_are_refused(kwargs, words) -> None:
    with pytest.raises(ValueError, match=words):
        HistoryWriter(AsyncStore(open_store("sqlite:///:memory:")), **kwargs)
