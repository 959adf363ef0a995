"""``SqlStore``: the store over SQL, shared by SQLite and PostgreSQL, and its migrations.

``SqlStore`` implements every ``Store`` method once over a tiny set of primitives (run a write
transaction, run a read); ``sqlite.py`` and ``postgres.py`` supply those primitives plus the few
places where the two SQL dialects differ. SQL here is written with ``?`` placeholders; the
PostgreSQL store rewrites them to ``%s``.
"""
from __future__ import annotations

import abc
import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence, TypeVar

from gateway.backends.state import Backend

from .base import STICKY_KINDS, DuplicateBackend, HeldRow, HistoryRow, Store, StoreError, redact_url

__all__ = ["SqlStore", "Migration", "Cursor", "load_migrations", "migrations_dir", "history_filter_sql",
           "escape_like", "MAX_HISTORY_LIMIT"]

T = TypeVar("T")
log = logging.getLogger("gateway.store")

_MIGRATION_NAME = re.compile(r"^(\d{4})_[A-Za-z0-9_]+\.sql$")
MAX_HISTORY_LIMIT = 10_000


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str



def migrations_dir(dialect: str) -> Path:
    """``sql/<dialect>`` at the repository root, else ``gateway/sql/<dialect>`` (installed)."""
    from gateway.resources import resource_dir
    try:
        path = resource_dir("sql") / dialect
    except FileNotFoundError as exc:
        raise StoreError(f"migrations for {dialect} not found: {exc}") from None
    if not path.is_dir():
        raise StoreError(f"migrations for {dialect} not found in {path}")
    return path


def load_migrations(directory: Path) -> list[Migration]:
    """Numbered ``NNNN_name.sql`` files in version order; other names are errors."""
    found: dict[int, Migration] = {}
    for path in sorted(directory.iterdir()):
        if path.suffix != ".sql":
            continue
        m = _MIGRATION_NAME.match(path.name)
        if not m:
            raise StoreError(f"{path}: a migration file is named NNNN_description.sql")
        version = int(m.group(1))
        if version in found:
            raise StoreError(f"{path}: migration version {version} also in {found[version].name}")
        found[version] = Migration(version, path.name, path.read_text(encoding="utf-8"))
    return [found[v] for v in sorted(found)]


def escape_like(text: str) -> str:
    """``text`` as a LIKE pattern that matches itself (``\\`` is the escape character)."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def history_filter_sql(*, user: str | None = None, source: str | None = None,
                       group: str | None = None, backend: str | None = None,
                       rule: str | None = None, state: str | None = None,
                       since: float | None = None, until: float | None = None,
                       text: str | None = None, query_id: str | None = None,
                       tag: str | None = None, like: str = "LIKE",
                       text_sql: Callable[[str, str], tuple[str, list[Any]]] | None = None,
                       id_prefix_sql: Callable[[str], tuple[str, list[Any]]] | None = None,
                       ) -> tuple[str, list[Any]]:
    """The WHERE clause (``?`` placeholders) and parameters for a history filter.

    ``user`` and ``source`` match case-insensitively (through the ``lower(...)`` indexes);
    the other equality filters are exact; ``since`` is inclusive and ``until`` exclusive;
    ``text`` is a case-insensitive substring of the SQL and ``tag`` one of the client tags
    (``%`` and ``_`` in them match themselves); ``query_id`` is a full id or a prefix.
    ``text_sql(column, text)`` and ``id_prefix_sql(prefix)`` let a dialect use its own index
    for those (default: LIKE alone).
    """
    clauses: list[str] = []
    params: list[Any] = []
    for column, value in (("user_name", user), ("source", source)):
        if value is not None:
            clauses.append(f"lower({column}) = lower(?)")
            params.append(value)
    for column, value in (("routing_group", group), ("backend", backend), ("rule", rule),
                          ("final_state", state)):
        if value is not None:
            clauses.append(f"{column} = ?")
            params.append(value)
    for name, value, op in (("since", since, ">="), ("until", until, "<")):
        if value is not None:
            try:
                params.append(float(value))
            except (TypeError, ValueError):
                raise StoreError(f"history '{name}' must be unix seconds, got {value!r}") from None
            clauses.append(f"submitted_at {op} ?")
    if query_id:
        sql, p = (id_prefix_sql or _like_prefix)(query_id)
        clauses.append(sql)
        params += p
    for column, value, whole in (("sql_text", text, False), ("client_tags", tag, True)):
        if not value:
            continue
        if text_sql is not None:
            sql, p = text_sql(column, value)
            if p:
                clauses.append(sql)
                params += p
        if whole:   # one whole tag of the comma-joined list
            clauses.append(f"(',' || {column} || ',') {like} ? ESCAPE '\\'")
            params.append(f"%,{escape_like(value)},%")
        else:
            clauses.append(f"{column} {like} ? ESCAPE '\\'")
            params.append(f"%{escape_like(value)}%")
    return (" AND ".join(clauses) or "1=1"), params


def _like_prefix(prefix: str) -> tuple[str, list[Any]]:
    return "query_id LIKE ? ESCAPE '\\'", [escape_like(prefix) + "%"]


def _clean(value: str | None) -> str | None:
    """Text both databases accept: no NUL (PostgreSQL refuses it), no lone surrogates."""
    if value is None:
        return None
    if "\x00" in value:
        value = value.replace("\x00", "")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        value = value.encode("utf-8", "replace").decode("utf-8")
    return value


def _history_params(r: HistoryRow) -> tuple[Any, ...]:
    try:
        queued_ms = None if r.queued_ms is None else int(r.queued_ms)
        if queued_ms is not None and not -2**63 <= queued_ms < 2**63:
            raise ValueError(f"queued_ms {queued_ms} is out of range")
        if not isinstance(r.query_id, str) or not r.query_id:
            raise ValueError("query_id must be a non-empty string")
        return (_clean(r.query_id), _clean(r.user), _clean(r.source),
                _clean(",".join(r.client_tags)) if r.client_tags else None, _clean(r.sql),
                _clean(r.routing_group), _clean(r.backend), _clean(r.rule),
                float(r.submitted_at), _clean(r.final_state), _clean(r.error), queued_ms,
                None if r.finished_at is None else float(r.finished_at))
    except (TypeError, ValueError, OverflowError) as exc:
        raise StoreError(f"invalid history row {r.query_id!r}: {exc}", permanent=True) from None


def _check_kind(kind: str) -> None:
    if kind not in STICKY_KINDS:
        raise StoreError(f"sticky kind {kind!r} is not one of {', '.join(STICKY_KINDS)}",
                         permanent=True)



Cursor = Any  # a DB-API cursor (sqlite3.Cursor or psycopg.Cursor)

_HELD_COLUMNS = ("query_id", "slug", "holder", "holder_seen", "routing_group", "enqueued_at",
                 "last_poll", "state", "cancel_requested", "statement", "answer")
_HELD_SELECT = "SELECT " + ", ".join(_HELD_COLUMNS) + " FROM held_queries"

_HISTORY_COLUMNS = ("query_id", "user_name", "source", "client_tags", "sql_text",
                    "routing_group", "backend", "rule", "submitted_at", "final_state",
                    "error", "queued_ms", "finished_at")
_HISTORY_SELECT = "SELECT " + ", ".join(_HISTORY_COLUMNS) + " FROM query_history"
# A duplicate query id keeps the first row's values and only fills what it lacked.
_HISTORY_INSERT_HEAD = "INSERT INTO query_history (" + ", ".join(_HISTORY_COLUMNS) + ") VALUES "
_HISTORY_UPSERT = (" ON CONFLICT (query_id) DO UPDATE SET "
                   + ", ".join(f"{c} = COALESCE(query_history.{c}, excluded.{c})"
                               for c in _HISTORY_COLUMNS if c not in ("query_id", "submitted_at")))
_KEEP_FIRST = frozenset(i for i, c in enumerate(_HISTORY_COLUMNS) if c in ("query_id", "submitted_at"))
# Rows per multi-row statement: 13 history columns x 250 stays far below both databases'
# limits on bound parameters (SQLite 32,766, PostgreSQL 65,535).
_ROWS_PER_STATEMENT = 250


def _coalesce_history(first: tuple[Any, ...], later: tuple[Any, ...]) -> tuple[Any, ...]:
    """What the upsert makes of ``later`` arriving after ``first``: the first row's values,
    with what it lacked filled in from the later one."""
    return tuple(a if i in _KEEP_FIRST or a is not None else b
                 for i, (a, b) in enumerate(zip(first, later)))


def _chunks(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    for i in range(0, len(items), size):
        yield items[i:i + size]
_RETENTION_BATCH = 10_000   # rows per DELETE, so retention never holds a lock for long


class SqlStore(Store):
    """All ``Store`` methods over ``_write`` / ``_read``; subclasses supply the dialect."""

    LIKE = "LIKE"                      # the case-insensitive LIKE operator
    REAL = "REAL"                      # the floating-point type's name
    DIFFERS = "IS NOT"                 # null-safe inequality
    MINUTE = "CAST(submitted_at / 60 AS INTEGER) * 60"
    # One batch of retention: rows older than ?, at most ? of them.
    RETENTION_DELETE = ("DELETE FROM query_history WHERE rowid IN (SELECT rowid FROM query_history "
                        "WHERE submitted_at < ? LIMIT ?)")

    @abc.abstractmethod
    def _write(self, fn: Callable[[Cursor], T]) -> T:
        """Run ``fn(cursor)`` in one write transaction; raise ``StoreError`` on failure."""

    @abc.abstractmethod
    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Rows of one query; raise ``StoreError`` on failure."""

    def _sql(self, sql: str) -> str:
        """Adapt ``?``-placeholder SQL to the driver (identity for SQLite)."""
        return sql

    def _rows_statements(self, cur: Cursor, head: str, tail: str, width: int,
                         params: Sequence[tuple[Any, ...]]) -> None:
        """``head (...), (...) tail``: many rows per statement, as ``INSERT ... VALUES`` or
        ``UPDATE ... FROM (VALUES ...)``.

        Not ``executemany``: that runs one statement per row, and SQLite's driver releases and
        retakes the GIL around each, which slows the event loop beside it by ~15 % under load
        (docs/benchmarks.md). Rows must have distinct keys (PostgreSQL refuses to upsert one
        row twice in a statement).
        """
        row = "(" + ", ".join(["?"] * width) + ")"
        for chunk in _chunks(params, _ROWS_PER_STATEMENT):
            cur.execute(self._sql(head + ", ".join([row] * len(chunk)) + tail),
                        [x for p in chunk for x in p])

    # backends -----------------------------------------------------------------------------
    def list_backends(self) -> list[Backend]:
        rows = self._read("SELECT name, proxy_to, external_url, routing_group, active "
                          "FROM backends ORDER BY name")
        return [Backend(name=r[0], proxyTo=r[1], externalUrl=r[2], routingGroup=r[3],
                        active=bool(r[4])) for r in rows]

    def _backend_params(self, b: Backend) -> tuple[Any, ...]:
        return (b.name, b.proxyTo, b.externalUrl, b.routingGroup, bool(b.active), time.time())

    def add_backend(self, b: Backend) -> None:
        sql = self._sql("INSERT INTO backends (name, proxy_to, external_url, routing_group, "
                        "active, updated_at) VALUES (?, ?, ?, ?, ?, ?) "
                        "ON CONFLICT (name) DO NOTHING")

        def run(cur: Cursor) -> int:
            cur.execute(sql, self._backend_params(b))
            return cur.rowcount
        if self._write(run) == 0:
            raise DuplicateBackend(b.name)

    def upsert_backend(self, b: Backend) -> None:
        # The WHERE keeps an unchanged backend untouched, so the version trigger (and every
        # process that polls backends_stamp) sees only real changes.
        d = self.DIFFERS
        sql = self._sql(
            "INSERT INTO backends (name, proxy_to, external_url, routing_group, active, "
            "updated_at) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (name) DO UPDATE SET "
            "proxy_to = excluded.proxy_to, external_url = excluded.external_url, "
            "routing_group = excluded.routing_group, active = excluded.active, "
            "updated_at = excluded.updated_at WHERE "
            f"backends.proxy_to {d} excluded.proxy_to OR backends.external_url {d} "
            f"excluded.external_url OR backends.routing_group {d} excluded.routing_group "
            f"OR backends.active {d} excluded.active")
        self._write(lambda cur: cur.execute(sql, self._backend_params(b)))

    def delete_backend(self, name: str) -> bool:
        sql = self._sql("DELETE FROM backends WHERE name = ?")

        def run(cur: Cursor) -> int:
            cur.execute(sql, (name,))
            return cur.rowcount
        return self._write(run) > 0

    def set_backend_active(self, name: str, active: bool) -> bool:
        sql = self._sql("UPDATE backends SET active = ?, updated_at = ? WHERE name = ?")

        def run(cur: Cursor) -> int:
            cur.execute(sql, (bool(active), time.time(), name))
            return cur.rowcount
        return self._write(run) > 0

    def backends_stamp(self) -> str:
        rows = self._read("SELECT version FROM backends_version WHERE id = 1")
        return str(rows[0][0]) if rows else "0"

    # history ------------------------------------------------------------------------------
    def insert_history(self, rows: Sequence[HistoryRow]) -> None:
        if not rows:
            return
        # Sorted by key (stable, so duplicates keep their order): concurrent writers from
        # several processes then lock rows in the same order and cannot deadlock.
        params = sorted((_history_params(r) for r in rows), key=lambda p: p[0])
        merged: dict[str, tuple[Any, ...]] = {}
        for p in params:   # one row per id, as if inserted one after the other
            first = merged.get(p[0])
            merged[p[0]] = p if first is None else _coalesce_history(first, p)
        self._write(lambda cur: self._rows_statements(cur, _HISTORY_INSERT_HEAD, _HISTORY_UPSERT,
                                                  len(_HISTORY_COLUMNS), list(merged.values())))

    def update_history_states(self, updates: Sequence[tuple[Any, ...]]) -> None:
        if not updates:
            return
        # One (id, state, error, finished_at) per query as if applied in order: the last
        # state, the last error and time given (a later update without one keeps the earlier).
        latest: dict[str, tuple[Any, ...]] = {}
        for u in updates:
            qid, state, error = _clean(u[0]), _clean(u[1]), _clean(u[2])
            at = float(u[3]) if len(u) > 3 and u[3] is not None else None
            before = latest.get(qid)
            if before is not None:
                if before[1] == "CANCELED":
                    continue       # a cancel is final (see the UPDATE below)
                error = error if error is not None else before[2]
                at = at if at is not None else before[3]
            latest[qid] = (qid, state, error, at)
        params = [latest[k] for k in sorted(latest)]
        # VALUES columns are named column1.. in both databases; the CAST because PostgreSQL
        # cannot type a VALUES column of NULLs.
        # A query recorded CANCELED stays so: after a client's cancel the cluster's last page
        # says FAILED (USER_CANCELED), which must not replace it.
        self._write(lambda cur: self._rows_statements(
            cur, "UPDATE query_history SET final_state = v.column2, "
                 "error = COALESCE(v.column3, query_history.error), "
                 f"finished_at = COALESCE(CAST(v.column4 AS {self.REAL}), query_history.finished_at) "
                 "FROM (VALUES ",
            ") AS v WHERE query_history.query_id = v.column1 AND "
            "(query_history.final_state IS NULL OR query_history.final_state <> 'CANCELED')", 4, params))

    def _filter(self, filters: dict[str, Any]) -> tuple[str, list[Any]]:
        known = {"user", "source", "group", "backend", "rule", "state", "since", "until", "text",
                 "query_id", "tag"}
        unknown = sorted(set(filters) - known)
        if unknown:
            raise StoreError(f"unknown history filter(s) {', '.join(unknown)}", permanent=True)
        return history_filter_sql(like=self.LIKE, text_sql=self._text_sql,
                                  id_prefix_sql=self._id_prefix_sql, **filters)

    def _text_sql(self, column: str, text: str) -> tuple[str, list[Any]]:
        """An indexed pre-filter for a substring of ``column`` (SQLite: FTS5; PostgreSQL needs
        none, its trigram index serves ILIKE). No parameters: no pre-filter."""
        return "1=1", []

    def _id_prefix_sql(self, prefix: str) -> tuple[str, list[Any]]:
        return _like_prefix(prefix)

    def query_history(self, *, limit: int = 100, before: tuple[float, str] | None = None,
                      after: tuple[float, str] | None = None,
                      **filters: Any) -> list[HistoryRow]:
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_HISTORY_LIMIT:
            raise StoreError(f"history limit must be an integer from 1 to {MAX_HISTORY_LIMIT}, "
                             f"got {limit!r}")
        where, params = self._filter(filters)
        order = "DESC"
        for position, op, name in ((before, "<", "before"), (after, ">", "after")):
            if position is None:
                continue
            try:
                at, qid = float(position[0]), str(position[1])
            except (TypeError, ValueError, IndexError):
                raise StoreError(f"history '{name}' must be (submittedAt, queryId), got {position!r}") from None
            # Keyset pagination: the index on (…, submitted_at, query_id) serves this directly,
            # so page 1000 costs what page 1 costs.
            where += f" AND (submitted_at, query_id) {op} (?, ?)"
            params += [at, qid]
            if name == "after":
                order = "ASC"   # the page just newer than the position, then reversed
        rows = self._read(f"{_HISTORY_SELECT} WHERE {where} "
                          f"ORDER BY submitted_at {order}, query_id {order} LIMIT ?", [*params, limit])
        out = [self._history_row(r) for r in rows]
        return out[::-1] if order == "ASC" else out

    @staticmethod
    def _history_row(r: Sequence[Any]) -> HistoryRow:
        tags = tuple(t for t in (r[3] or "").split(",") if t)
        return HistoryRow(query_id=r[0], user=r[1], source=r[2], client_tags=tags, sql=r[4],
                          routing_group=r[5], backend=r[6], rule=r[7],
                          submitted_at=float(r[8]), final_state=r[9], error=r[10],
                          queued_ms=None if r[11] is None else int(r[11]),
                          finished_at=None if r[12] is None else float(r[12]))

    def count_history(self, *, cap: int | None = None, **filters: Any) -> int:
        where, params = self._filter(filters)
        if cap is None:
            return int(self._read(f"SELECT count(*) FROM query_history WHERE {where}", params)[0][0])
        # Stop after cap + 1 rows: "more than cap" costs at most that many index entries.
        return int(self._read(f"SELECT count(*) FROM (SELECT 1 FROM query_history WHERE {where} "
                              "LIMIT ?) AS c", [*params, int(cap) + 1])[0][0])

    def unresolved_history(self, before: float, limit: int,
                           after: tuple[float, str] | None = None) -> list[HistoryRow]:
        where, params = "final_state IS NULL AND submitted_at < ?", [float(before)]
        if after is not None:
            where += " AND (submitted_at, query_id) > (?, ?)"
            params += [float(after[0]), str(after[1])]
        rows = self._read(f"{_HISTORY_SELECT} WHERE {where} ORDER BY submitted_at, query_id LIMIT ?",
                          [*params, int(limit)])
        return [self._history_row(r) for r in rows]

    # metric samples -----------------------------------------------------------------------
    def insert_metric_samples(self, instance: str, ts: float,
                              samples: Sequence[tuple[str, str, float]], keep_after: float) -> int:
        rows = sorted({(instance, n, float(ts), lb, float(v)) for n, lb, v in samples},
                      key=lambda r: (r[1], r[3]))
        have = self._sql("SELECT 1 FROM metric_samples WHERE instance = ? AND ts = ? LIMIT 1")
        prune = self._sql("DELETE FROM metric_samples WHERE ts < ?")

        def run(cur: Cursor) -> int:
            cur.execute(have, (instance, float(ts)))
            if cur.fetchone() is not None:
                return 0          # another worker of this gateway sampled this time already
            self._rows_statements(cur, "INSERT INTO metric_samples (instance, name, ts, labels, "
                                  "value) VALUES ", " ON CONFLICT DO NOTHING", 5, rows)
            cur.execute(prune, (float(keep_after),))
            return len(rows)
        return self._write(run)

    def metric_series(self, instance: str, name: str, since: float) -> list[tuple[str, float, float]]:
        rows = self._read("SELECT labels, ts, value FROM metric_samples WHERE instance = ? "
                          "AND name = ? AND ts >= ? ORDER BY ts, labels",
                          [instance, name, float(since)])
        return [(r[0], float(r[1]), float(r[2])) for r in rows]

    def metric_instances(self, since: float) -> list[str]:
        rows = self._read("SELECT DISTINCT instance FROM metric_samples WHERE ts >= ? "
                          "ORDER BY instance", [float(since)])
        return [r[0] for r in rows]

    def history_per_minute(self, since: float) -> list[tuple[float, int]]:
        rows = self._read(f"SELECT {self.MINUTE} AS minute, count(*) FROM query_history "
                          "WHERE submitted_at >= ? GROUP BY 1 ORDER BY 1", [float(since)])
        return [(float(m), int(c)) for m, c in rows]

    def history_by_backend(self, since: float) -> dict[str, int]:
        rows = self._read("SELECT backend, count(*) FROM query_history WHERE submitted_at >= ? "
                          "AND backend IS NOT NULL GROUP BY backend", [float(since)])
        return {b: int(c) for b, c in rows}

    def history_per_minute_by_backend(self, since: float) -> list[tuple[float, str, int]]:
        rows = self._read(f"SELECT {self.MINUTE} AS minute, backend, count(*) FROM query_history "
                          "WHERE submitted_at >= ? AND backend IS NOT NULL GROUP BY 1, 2 ORDER BY 1, 2",
                          [float(since)])
        return [(float(m), b, int(c)) for m, b, c in rows]

    def unfinished_by_backend(self, since: float) -> dict[str, int]:
        # The index on (final_state, submitted_at, ...) serves this: only unfinished rows are read.
        rows = self._read("SELECT backend, count(*) FROM query_history WHERE final_state IS NULL "
                          "AND submitted_at >= ? AND backend IS NOT NULL GROUP BY backend",
                          [float(since)])
        return {b: int(c) for b, c in rows}

    def delete_history_before(self, ts: float) -> int:
        sql = self._sql(self.RETENTION_DELETE)

        def run(cur: Cursor) -> int:
            cur.execute(sql, (float(ts), _RETENTION_BATCH))
            return cur.rowcount
        total = 0
        while True:
            n = self._write(run)
            total += n
            if n < _RETENTION_BATCH:
                return total

    # sticky -------------------------------------------------------------------------------
    def put_sticky(self, rows: Sequence[tuple[str, str, str, float]]) -> None:
        if not rows:
            return
        for kind, *_ in rows:
            _check_kind(kind)
        params = sorted(((k, _clean(key), _clean(b), float(exp)) for k, key, b, exp in rows),
                        key=lambda p: (p[0], p[1]))
        latest = {(p[0], p[1]): p for p in params}   # the last mapping of a key wins
        self._write(lambda cur: self._rows_statements(
            cur, "INSERT INTO sticky (kind, key, backend, expires_at) VALUES ",
            " ON CONFLICT (kind, key) DO UPDATE SET backend = excluded.backend, "
            "expires_at = excluded.expires_at", 4, list(latest.values())))

    def get_sticky(self, kind: str, key: str, now: float) -> str | None:
        _check_kind(kind)
        rows = self._read("SELECT backend FROM sticky WHERE kind = ? AND key = ? "
                          "AND expires_at > ?", [kind, key, float(now)])
        return rows[0][0] if rows else None

    def delete_expired_sticky(self, now: float) -> int:
        sql = self._sql("DELETE FROM sticky WHERE expires_at <= ?")

        def run(cur: Cursor) -> int:
            cur.execute(sql, (float(now),))
            return cur.rowcount
        return self._write(run)

    # held queries -------------------------------------------------------------------------
    def put_held(self, row: HeldRow) -> None:
        sql = self._sql("INSERT INTO held_queries (" + ", ".join(_HELD_COLUMNS) + ") VALUES ("
                        + ", ".join(["?"] * len(_HELD_COLUMNS)) + ")")
        self._write(lambda cur: cur.execute(sql, row.params()))

    def poll_held(self, query_id: str, slug: str, now: float, *, cancel: bool = False) -> HeldRow | None:
        update = self._sql("UPDATE held_queries SET last_poll = CASE WHEN last_poll < ? THEN ? "
                           "ELSE last_poll END" + (", cancel_requested = 1" if cancel else "")
                           + " WHERE query_id = ? AND slug = ?")
        select = self._sql(_HELD_SELECT + " WHERE query_id = ?")

        def run(cur: Cursor) -> HeldRow | None:
            cur.execute(update, (float(now), float(now), query_id, slug))
            if cur.rowcount != 1:
                return None
            cur.execute(select, (query_id,))
            return HeldRow.of(cur.fetchone())
        return self._write(run)

    def sync_held(self, holder: str, now: float) -> list[tuple[str, float, bool]]:
        update = self._sql("UPDATE held_queries SET holder_seen = ? WHERE holder = ?")
        select = self._sql("SELECT query_id, last_poll, cancel_requested FROM held_queries "
                           "WHERE holder = ?")

        def run(cur: Cursor) -> list[tuple[str, float, bool]]:
            cur.execute(update, (float(now), holder))
            cur.execute(select, (holder,))
            return [(q, float(p), bool(c)) for q, p, c in cur.fetchall()]
        return self._write(run)

    def answer_held(self, query_id: str, state: str, answer: str) -> None:
        sql = self._sql("UPDATE held_queries SET state = ?, answer = ? WHERE query_id = ?")
        self._write(lambda cur: cur.execute(sql, (state, answer, query_id)))

    def claim_held(self, query_id: str, holder: str) -> bool:
        claim = self._sql("UPDATE held_queries SET state = 'DISPATCHING' WHERE query_id = ? "
                          "AND holder = ? AND state = 'QUEUED'")
        owner = self._sql("SELECT holder FROM held_queries WHERE query_id = ?")

        def run(cur: Cursor) -> bool:
            cur.execute(claim, (query_id, holder))
            if cur.rowcount == 1:
                return True
            cur.execute(owner, (query_id,))
            row = cur.fetchone()
            return row is None or row[0] == holder   # no row (its write failed): nobody else has it
        return self._write(run)

    def adopt_held(self, query_id: str, holder: str, stale_before: float, now: float) -> bool:
        sql = self._sql("UPDATE held_queries SET holder = ?, holder_seen = ? WHERE query_id = ? "
                        "AND state = 'QUEUED' AND holder_seen < ?")

        def run(cur: Cursor) -> bool:
            cur.execute(sql, (holder, float(now), query_id, float(stale_before)))
            return bool(cur.rowcount == 1)
        return self._write(run)

    def delete_held(self, query_ids: Sequence[str], stale_before: float) -> int:
        by_id = self._sql("DELETE FROM held_queries WHERE query_id = ?")
        stale = self._sql("DELETE FROM held_queries WHERE holder_seen < ?")

        def run(cur: Cursor) -> int:
            n = 0
            for q in query_ids:
                cur.execute(by_id, (q,))
                n += cur.rowcount
            cur.execute(stale, (float(stale_before),))
            return n + cur.rowcount
        return self._write(run)

    # shared secrets -----------------------------------------------------------------------
    def shared_secret(self, name: str, candidate: str, now: float) -> str:
        insert = self._sql("INSERT INTO shared_secrets (name, value, created_at) VALUES (?, ?, ?) "
                           "ON CONFLICT (name) DO NOTHING")
        self._write(lambda cur: cur.execute(insert, (name, candidate, float(now))))
        return str(self._read("SELECT value FROM shared_secrets WHERE name = ?", [name])[0][0])

    # admission leases ---------------------------------------------------------------------
    def _lock_group(self, cur: Cursor, group: str) -> None:
        """Serialize lease decisions of one group across processes (SQLite: BEGIN IMMEDIATE
        already does; PostgreSQL overrides this with an advisory lock)."""

    def acquire_lease(self, lease_id: str, group: str, user: str | None,
                      candidates: Sequence[tuple[str, int]], cap: int | None,
                      user_cap: int | None, now: float, ttl: float) -> str | None:
        """Atomically take a slot on the first candidate backend below ``cap``.

        ``candidates`` are (backend, floor) in preference order; ``floor`` is what the monitor
        saw running there (queries started around the gateway count too). Returns the backend,
        or None when every candidate is full or the user is at ``user_cap`` in this group.
        """
        q_expire = self._sql("DELETE FROM admission_leases WHERE routing_group = ? AND expires_at <= ?")
        q_user = self._sql("SELECT COUNT(*) FROM admission_leases WHERE routing_group = ? AND user_name = ?")
        q_count = self._sql("SELECT COUNT(*) FROM admission_leases WHERE backend = ?")
        q_insert = self._sql("INSERT INTO admission_leases (lease_id, backend, routing_group, user_name, "
                             "query_id, expires_at) VALUES (?, ?, ?, ?, NULL, ?)")

        def run(cur: Cursor) -> str | None:
            self._lock_group(cur, group)
            cur.execute(q_expire, (group, float(now)))
            if user_cap is not None and user is not None:
                cur.execute(q_user, (group, user))
                if cur.fetchone()[0] >= user_cap:
                    return None
            for backend, floor in candidates:
                if cap is not None:
                    cur.execute(q_count, (backend,))
                    if max(cur.fetchone()[0], floor) >= cap:
                        continue
                cur.execute(q_insert, (lease_id, backend, group, user, float(now + ttl)))
                return backend
            return None
        return self._write(run)

    def bind_lease(self, lease_id: str, query_id: str) -> None:
        sql = self._sql("UPDATE admission_leases SET query_id = ? WHERE lease_id = ?")
        self._write(lambda cur: cur.execute(sql, (query_id, lease_id)))

    def renew_leases(self, query_ids: Sequence[str], expires_at: float) -> None:
        if not query_ids:
            return
        sql = self._sql("UPDATE admission_leases SET expires_at = ? WHERE query_id = ? OR lease_id = ?")
        self._write(lambda cur: cur.executemany(sql, [(float(expires_at), q, q) for q in sorted(query_ids)]))

    def release_leases(self, ids: Sequence[str]) -> None:
        """Free the slots of finished queries (by query id or, before it is known, lease id)."""
        if not ids:
            return
        sql = self._sql("DELETE FROM admission_leases WHERE query_id = ? OR lease_id = ?")
        self._write(lambda cur: cur.executemany(sql, [(q, q) for q in sorted(ids)]))

    def lease_counts(self, now: float) -> dict[str, int]:
        rows = self._read("SELECT backend, COUNT(*) FROM admission_leases WHERE expires_at > ? "
                          "GROUP BY backend", [float(now)])
        return {r[0]: int(r[1]) for r in rows}

    def ping(self) -> None:
        self._read("SELECT 1")

    # migrations ---------------------------------------------------------------------------
    def _pending(self, migrations: Sequence[Migration], applied: set[int]) -> list[Migration]:
        known = {m.version for m in migrations}
        newer = sorted(v for v in applied if v not in known)
        if newer:
            # A newer gateway migrated this database; migrations only add, so keep going.
            log.warning("store %s has migrations %s that this gateway does not know",
                        redact_url(self.url), newer)
        return [m for m in migrations if m.version not in applied]

    def schema_version(self) -> int:
        try:
            rows = self._read("SELECT max(version) FROM schema_version")
        except StoreError:
            if self._has_schema_table():
                raise
            return 0
        return int(rows[0][0] or 0)

    @abc.abstractmethod
    def _has_schema_table(self) -> bool: ...
