"""The embedded SQLite store (the default).

One connection, in WAL mode so readers in other processes (``server.workers``) never block the
writer, with a busy timeout so concurrent writers wait instead of failing. The connection is
used from the store's worker thread; a lock makes accidental use from another thread safe.
"""
from __future__ import annotations

import logging
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Callable, Sequence, TypeVar

from .base import StoreError
from .sql import Cursor, SqlStore, load_migrations, migrations_dir

log = logging.getLogger("gateway.store")

__all__ = ["SqliteStore", "parse_sqlite_url", "split_script"]

T = TypeVar("T")


def parse_sqlite_url(url: str) -> str:
    """``sqlite:///rel.db`` → ``rel.db``, ``sqlite:////abs.db`` → ``/abs.db``, ``:memory:``."""
    prefix = "sqlite:///"
    if not url.lower().startswith(prefix):
        raise StoreError(f"store.url {url!r}: an SQLite URL is sqlite:///relative/path.db, "
                         "sqlite:////absolute/path.db or sqlite:///:memory:")
    path = url[len(prefix):]
    if not path:
        raise StoreError(f"store.url {url!r}: the SQLite URL names no file")
    if "?" in path or "#" in path:
        raise StoreError(f"store.url {url!r}: SQLite URLs take no ?options or #fragment")
    return path


def split_script(script: str) -> list[str]:
    """Split SQL text into complete statements (semicolons inside triggers and strings kept)."""
    statements: list[str] = []
    buf = ""
    for piece in script.split(";"):
        buf += piece + ";"
        if sqlite3.complete_statement(buf):
            if _has_code(buf):
                statements.append(buf.strip())
            buf = ""
    if _has_code(buf[:-1]):
        raise StoreError(f"incomplete SQL statement at the end of the script: {buf[:-1].strip()[:80]!r}")
    return statements


def _has_code(sql: str) -> bool:
    lines = [ln.split("--", 1)[0].strip() for ln in sql.splitlines()]
    return any(ln and ln != ";" for ln in lines)


def _is_permanent(exc: sqlite3.Error) -> bool:
    # OperationalError is "locked", "disk I/O", "readonly", "no such table": the database may
    # recover. The others mean these values or this statement will never be accepted.
    return not isinstance(exc, sqlite3.OperationalError)


class SqliteStore(SqlStore):
    def __init__(self, url: str, *, timeout: float = 5.0) -> None:
        self.url = url
        self.path = parse_sqlite_url(url)
        if self.path != ":memory:":
            parent = Path(self.path).expanduser().resolve().parent
            if not parent.is_dir():
                raise StoreError(f"store.url {url!r}: directory {parent} does not exist")
        self._lock = threading.RLock()
        try:
            # isolation_level=None: we issue BEGIN/COMMIT ourselves, so a transaction is
            # exactly what _write says it is.
            self._conn = sqlite3.connect(self.path, timeout=timeout, isolation_level=None,
                                         check_same_thread=False)
            self._conn.execute(f"PRAGMA busy_timeout = {int(timeout * 1000)}")
            if self.path != ":memory:":
                self._enable_wal(timeout)
                # With WAL, NORMAL loses at most the last transactions on power loss, never
                # corrupts; history is not worth an fsync per batch.
                self._conn.execute("PRAGMA synchronous = NORMAL")
                # Checkpoint every ~1 MB of WAL instead of 4 MB and shrink the WAL file back
                # to 1 MB afterwards: the database plus its WAL stay small on a small disk,
                # and a disk that fills up leaves room to checkpoint (see _checkpoint).
                self._conn.execute("PRAGMA wal_autocheckpoint = 256")
                self._conn.execute("PRAGMA journal_size_limit = 1048576")
        except sqlite3.Error as exc:
            if hasattr(self, "_conn"):
                self._conn.close()
            raise StoreError(f"cannot open SQLite database {self.path}: {exc}") from exc

    def _enable_wal(self, timeout: float) -> None:
        # Switching a new database to WAL takes an exclusive lock, and SQLite reports
        # "database is locked" at once, without its busy handler, when another process or
        # thread is switching the same file at the same moment (several workers or gateways
        # starting together). Retry until the busy timeout instead of failing the start.
        deadline = time.monotonic() + timeout
        delay = 0.005
        while True:
            try:
                self._conn.execute("PRAGMA journal_mode = WAL")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) and "busy" not in str(exc):
                    raise
                if time.monotonic() + delay > deadline:
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 0.1)

    def _write(self, fn: Callable[[Cursor], T]) -> T:
        with self._lock:
            cur = self._conn.cursor()
            try:
                # IMMEDIATE takes the write lock now, so a busy database waits here (busy
                # timeout) instead of failing half-way through the transaction.
                cur.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise StoreError(f"SQLite {self.path}: {exc}") from exc
            try:
                result = fn(cur)
                cur.execute("COMMIT")
                return result
            except BaseException as exc:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                if isinstance(exc, sqlite3.Error):
                    if "full" in str(exc):
                        self._checkpoint()
                    raise StoreError(f"SQLite {self.path}: {exc}",
                                     permanent=_is_permanent(exc)) from exc
                raise
            finally:
                cur.close()

    def _checkpoint(self) -> None:
        # The disk filled up. Committed transactions wait in the WAL file until a checkpoint
        # copies them into the database, and the automatic one only runs after a commit that
        # grows the WAL further, which a full disk refuses: without this, a store on a disk
        # that was full stays "full" after space is freed. TRUNCATE also gives the WAL's
        # space back for the next attempt.
        try:
            self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error as exc:
            log.debug("checkpoint after a full disk failed: %s", exc)

    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            try:
                return self._conn.execute(sql, tuple(params)).fetchall()
            except sqlite3.Error as exc:
                raise StoreError(f"SQLite {self.path}: {exc}",
                                 permanent=_is_permanent(exc)) from exc

    def _text_sql(self, column: str, text: str) -> tuple[str, list[Any]]:
        # The FTS5 trigram index (migration 0004) finds rows containing any 3+ character
        # substring, case-insensitively; the LIKE beside it keeps the exact meaning. Shorter
        # texts have no trigram and are matched by LIKE alone.
        if len(text) < 3:
            return "1=1", []
        phrase = '"' + text.replace('"', '""') + '"'
        return ("query_history.rowid IN (SELECT rowid FROM query_history_fts "
                "WHERE query_history_fts MATCH ?)", [f"{{{column}}} : {phrase}"])

    def _id_prefix_sql(self, prefix: str) -> tuple[str, list[Any]]:
        # A range of the primary key (BINARY order): LIKE is case-insensitive here and
        # could not use the index.
        return "query_id >= ? AND query_id < ?", [prefix, prefix + "\U0010ffff"]

    def _has_schema_table(self) -> bool:
        return bool(self._read("SELECT 1 FROM sqlite_master WHERE type = 'table' "
                               "AND name = 'schema_version'"))

    def migrate(self) -> list[int]:
        migrations = load_migrations(migrations_dir("sqlite"))

        def run(cur: Cursor) -> list[int]:
            # Inside BEGIN IMMEDIATE: a second process starting at the same time waits for
            # the lock, then finds every version recorded and applies nothing.
            cur.execute("CREATE TABLE IF NOT EXISTS schema_version "
                        "(version INTEGER PRIMARY KEY, applied_at REAL NOT NULL)")
            applied = {r[0] for r in cur.execute("SELECT version FROM schema_version")}
            done: list[int] = []
            for m in self._pending(migrations, applied):
                for statement in split_script(m.sql):
                    try:
                        cur.execute(statement)
                    except sqlite3.Error as exc:
                        raise StoreError(f"migration {m.name} failed: {exc}") from exc
                cur.execute("INSERT INTO schema_version (version, applied_at) VALUES (?, ?)",
                            (m.version, time.time()))
                done.append(m.version)
            return done
        return self._write(run)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __repr__(self) -> str:
        return f"SqliteStore({self.path!r})"

