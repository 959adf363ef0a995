"""The gateway's store: SQLite (embedded default) or PostgreSQL, behind one interface.

``open_store(url)`` gives a synchronous ``Store``; the gateway runs it in a child process
(``ProcessStore``) or on one thread (``AsyncStore``) and writes history and sticky mappings
through ``HistoryWriter`` so the request path never waits on the database. See docs/store.md.
"""
from __future__ import annotations

from .base import STICKY_KINDS, DuplicateBackend, HeldRow, HistoryRow, Store, StoreError, redact_url
from .writer import AsyncStore, HistoryWriter

__all__ = ["open_store", "Store", "StoreError", "DuplicateBackend", "HistoryRow", "HeldRow", "AsyncStore",
           "HistoryWriter", "STICKY_KINDS"]


def open_store(url: str, *, migrate: bool = True, pool_size: int = 4,
               timeout: float = 5.0) -> Store:
    """Open the store named by ``url`` and (by default) apply pending migrations.

    ``sqlite:///relative.db``, ``sqlite:////absolute.db``, ``sqlite:///:memory:`` or
    ``postgresql://user:pass@host:5432/db`` (``postgres://`` too). ``timeout`` is seconds to
    wait for a connection (PostgreSQL) or a lock (SQLite busy timeout).
    """
    if not isinstance(url, str) or not url:
        raise StoreError(f"store.url: expected sqlite:///path or postgresql://..., got {url!r}")
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    store: Store
    if scheme == "sqlite":
        from .sqlite import SqliteStore
        store = SqliteStore(url, timeout=timeout)
    elif scheme in ("postgresql", "postgres"):
        from .postgres import PostgresStore
        store = PostgresStore(url, pool_size=pool_size, timeout=timeout)
    else:
        raise StoreError(f"store.url {redact_url(url)!r}: unsupported scheme {scheme!r}; "
                         "expected sqlite:///path or postgresql://user@host:5432/db")
    if migrate:
        try:
            store.migrate()
        except BaseException:
            store.close()
            raise
    return store
