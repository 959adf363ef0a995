"""One query's SQL on SQLite, page by page, in worker threads.

`Runner.fetch(page_rows)` runs in the cluster's thread pool (never on the event loop). The
first call executes the statement; each call returns one page of rows already encoded as
JSON, plus whether more rows follow (one row is read ahead to know). Column types are
inferred from the values of the first page and from the SELECT list (booleans, `_colN`).
"""

from __future__ import annotations

import sqlite3
import threading
from dataclasses import dataclass
from typing import Any

from . import protocol as proto
from .data import Database, FunctionContext, QueryInterrupted
from .planner import SqlPlan, projections

ROWS_COLUMNS = [proto.column("rows", "bigint")]


@dataclass
class Batch:
    columns: list[dict[str, Any]] | None
    data: bytes | None          # the JSON array of rows, None when there are no rows
    count: int
    more: bool
    update_count: int | None = None


class Runner:
    """Runs one SqlPlan on its own connection; `fetch` is called in worker threads, one call
    at a time, and returns one page of rows."""

    def __init__(self, db: Database, ctx: FunctionContext, sql_plan: SqlPlan) -> None:
        self._db, self._ctx, self._plan = db, ctx, sql_plan
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._cursor: sqlite3.Cursor | None = None
        self._lookahead: list[tuple[Any, ...]] = []
        self._columns: list[dict[str, Any]] | None = None
        self._names: list[str] = []
        self._projections: tuple[tuple[bool, str | None], ...] = ()
        self._closed = False

    def fetch(self, page_rows: int) -> Batch:
        with self._lock:
            if self._closed:
                raise QueryInterrupted("query closed")
            if self._conn is None:
                done = self._start()
                if done is not None:
                    return done
            assert self._cursor is not None
            rows = self._lookahead + self._cursor.fetchmany(page_rows + 1 - len(self._lookahead))
            more = len(rows) > page_rows
            self._lookahead = rows[page_rows:]
            rows = rows[:page_rows]
            if not more:
                self._close_locked()
            if self._columns is None and (rows or not more):
                self._columns = self._infer_columns(rows)
            out = [list(r) for r in rows]
            for i, col in enumerate(self._columns or ()):
                if col["type"] == "boolean":
                    for row in out:
                        if row[i] is not None:
                            row[i] = bool(row[i])
            return Batch(self._columns, proto.encode_rows(out) if out else None, len(out), more)

    def _start(self) -> Batch | None:
        conn = self._conn = self._db.connect(self._ctx)
        cursor = conn.execute(self._plan.sql)
        if cursor.description is not None:
            self._cursor = cursor
            self._names = [d[0] for d in cursor.description]
            if self._plan.kind == "query":
                self._projections = projections(self._plan.original)
                if len(self._projections) != len(self._names):
                    self._projections = ()
            return None
        kind = self._plan.kind
        if kind == "ddl":
            batch = Batch([proto.column("result", "boolean")], b"[[true]]", 1, False)
        else:
            if kind == "ctas" and self._plan.table:
                name = self._plan.table.replace('"', '""')
                count = conn.execute(f'SELECT count(*) FROM "{name}"').fetchone()[0]
            else:
                count = max(cursor.rowcount, 0)
            batch = Batch(ROWS_COLUMNS, proto.encode_rows([[count]]), 1, False, count)
        self._close_locked()
        return batch

    def _infer_columns(self, rows: list[tuple[Any, ...]]) -> list[dict[str, Any]]:
        columns = []
        for i, name in enumerate(self._names):
            trino_type = next((t for t in (proto.type_of_value(r[i]) for r in rows) if t), None)
            if self._projections:
                is_boolean, trino_name = self._projections[i]
                name = trino_name or name
                if is_boolean and trino_type in ("bigint", None):
                    trino_type = "boolean"
            columns.append(proto.column(name, trino_type or "unknown"))
        return columns

    def interrupt(self) -> None:
        conn = self._conn
        if conn is not None:
            try:
                conn.interrupt()
            except sqlite3.Error:
                pass

    def close(self) -> None:
        with self._lock:
            self._close_locked()

    def _close_locked(self) -> None:
        self._closed = True
        if self._conn is not None:
            try:
                self._conn.close()
            except sqlite3.Error:
                pass
        self._cursor = None
