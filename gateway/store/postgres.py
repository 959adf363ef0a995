"""The PostgreSQL store (psycopg 3 with a small connection pool).

Several gateway processes or hosts share one database. Migrations run under an advisory lock so
two processes starting together apply each migration once. Connections are checked when taken
from the pool, so a restarted server or a killed connection costs one failed batch at most.
"""
from __future__ import annotations

import math
import time
from typing import Any, Callable, Sequence, TypeVar

import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import ConnectionPool, PoolTimeout

from .base import StoreError, redact_url
from .sql import Cursor, SqlStore, load_migrations, migrations_dir

__all__ = ["PostgresStore"]

T = TypeVar("T")

# Any fixed number works; advisory locks are per database, so only gateways sharing this
# database contend for it.
MIGRATION_LOCK_KEY = 0x7467770001
STATEMENT_TIMEOUT = "30s"   # no store call may hold the store's only worker thread for long


def _is_permanent(exc: psycopg.Error) -> bool:
    # Only errors about the data itself; connection loss, timeouts, shutdown, a read-only
    # standby after failover and even missing tables may be fixed without us.
    return isinstance(exc, (psycopg.DataError, psycopg.IntegrityError))


class PostgresStore(SqlStore):
    LIKE = "ILIKE"
    REAL = "double precision"
    DIFFERS = "IS DISTINCT FROM"
    MINUTE = "floor(submitted_at / 60) * 60"
    # By row address (a TID scan): the plan cannot turn into a nested loop over the table when
    # its statistics are stale (a 10,000-row batch once ran past the 30 s statement timeout
    # as `query_id IN (SELECT ...)` on a freshly filled table).
    RETENTION_DELETE = ("DELETE FROM query_history WHERE ctid = ANY(ARRAY(SELECT ctid FROM query_history "
                        "WHERE submitted_at < ? LIMIT ?))")

    def __init__(self, url: str, *, pool_size: int = 4, timeout: float = 5.0) -> None:
        self.url = url
        self._where = redact_url(url)
        try:
            params = conninfo_to_dict(url)
        except psycopg.Error as exc:
            raise StoreError(f"store.url {self._where}: not a valid PostgreSQL URL: {exc}") from None
        if pool_size < 1:
            raise StoreError(f"store pool size must be at least 1, got {pool_size}")
        kwargs: dict[str, Any] = {"autocommit": True}
        if "connect_timeout" not in params:
            kwargs["connect_timeout"] = max(1, math.ceil(timeout))
        # One plain connection first: its error says why (no such database, bad password,
        # refused), where a pool that cannot fill only says it timed out.
        try:
            psycopg.connect(url, **kwargs).close()
        except psycopg.Error as exc:
            raise StoreError(f"cannot connect to PostgreSQL at {self._where}: "
                             f"{str(exc).strip()}") from None
        self._pool = ConnectionPool(url, min_size=1, max_size=pool_size, kwargs=kwargs,
                                    configure=self._configure,
                                    check=ConnectionPool.check_connection, timeout=timeout,
                                    name="trino-gateway-store", open=False)
        try:
            self._pool.open(wait=True, timeout=timeout)
        except psycopg.Error as exc:
            self._pool.close()
            raise StoreError(f"cannot connect to PostgreSQL at {self._where}: {exc}") from None

    @staticmethod
    def _configure(conn: psycopg.Connection[Any]) -> None:
        conn.execute(f"SET statement_timeout = '{STATEMENT_TIMEOUT}'")

    def _sql(self, sql: str) -> str:
        return sql.replace("?", "%s")

    def _error(self, exc: psycopg.Error) -> StoreError:
        message = f"PostgreSQL {self._where}: {str(exc).strip()}"
        if isinstance(exc, PoolTimeout):
            message += " (no connection could be made or freed in time; is the server up?)"
        return StoreError(message, permanent=_is_permanent(exc))

    def _write(self, fn: Callable[[Cursor], T]) -> T:
        try:
            with self._pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
                return fn(cur)
        except psycopg.Error as exc:   # includes the pool's PoolTimeout and PoolClosed
            raise self._error(exc) from exc

    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        try:
            with self._pool.connection() as conn:
                return conn.execute(self._sql(sql), tuple(params)).fetchall()
        except psycopg.Error as exc:
            raise self._error(exc) from exc

    def _id_prefix_sql(self, prefix: str) -> tuple[str, list[Any]]:
        # LIKE 'prefix%' (case-sensitive) uses the text_pattern_ops index of migration 0004.
        from .sql import escape_like
        return "query_id LIKE ?", [escape_like(prefix) + "%"]

    def _lock_group(self, cur: Cursor, group: str) -> None:
        # count-then-insert must not interleave across replicas: one lock per routing group
        cur.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", ("admission:" + group,))

    def _has_schema_table(self) -> bool:
        return bool(self._read("SELECT to_regclass('schema_version') IS NOT NULL")[0][0])

    def migrate(self) -> list[int]:
        migrations = load_migrations(migrations_dir("postgresql"))

        def run(cur: Cursor) -> list[int]:
            cur.execute("SET LOCAL statement_timeout = 0")   # an index build may take a while
            # Held until COMMIT: a second process waits here, then finds everything applied.
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK_KEY,))
            cur.execute("CREATE TABLE IF NOT EXISTS schema_version "
                        "(version integer PRIMARY KEY, applied_at double precision NOT NULL)")
            cur.execute("SELECT version FROM schema_version")
            applied = {r[0] for r in cur.fetchall()}
            done: list[int] = []
            for m in self._pending(migrations, applied):
                try:
                    cur.execute(m.sql)   # no parameters: the whole file runs as one script
                except psycopg.Error as exc:
                    raise StoreError(f"migration {m.name} failed: {str(exc).strip()}") from exc
                cur.execute("INSERT INTO schema_version (version, applied_at) VALUES (%s, %s)",
                            (m.version, time.time()))
                done.append(m.version)
            return done
        return self._write(run)

    def close(self) -> None:
        self._pool.close()

    def __repr__(self) -> str:
        return f"PostgresStore({self._where!r})"
