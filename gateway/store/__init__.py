"""The gateway's store: SQLite (embedded default) or PostgreSQL, behind one interface.

``open_store(url)`` gives a synchronous ``Store``; the gateway runs it in a child process
(``ProcessStore``) or on one thread (``AsyncStore``) and writes history and sticky mappings
through ``HistoryWriter`` so the request path never waits on the database. See docs/store.md.

The scheme of the URL names the store kind: ``sqlite``, ``postgresql`` (``postgres``), or one a
plugin adds (entry-point group ``trino_gateway.store_kinds``: a factory called as
``factory(url, pool_size=..., timeout=...)`` that returns a ``Store``; docs/extending.md).
"""
from __future__ import annotations

from .base import STICKY_KINDS, DuplicateBackend, HeldRow, HistoryRow, Store, StoreError, redact_url
from .writer import AsyncStore, HistoryWriter
from gateway.plugins import PluginError, Plugins

__all__ = ["open_store", "Store", "StoreError", "DuplicateBackend", "HistoryRow", "HeldRow", "AsyncStore",
           "HistoryWriter", "STICKY_KINDS", "STORE_KINDS", "store_kind"]


def _sqlite(url: str, *, pool_size: int, timeout: float) -> Store:
    from .sqlite import SqliteStore
    return SqliteStore(url, timeout=timeout)


def _postgres(url: str, *, pool_size: int, timeout: float) -> Store:
    from .postgres import PostgresStore
    return PostgresStore(url, pool_size=pool_size, timeout=timeout)


# The scheme of store.url -> a factory(url, *, pool_size, timeout) returning a Store.
STORE_KINDS: Plugins = Plugins("trino_gateway.store_kinds", "store kind",
                               {"sqlite": _sqlite, "postgresql": _postgres, "postgres": _postgres})


def store_kind(url: str) -> str:
    """The store kind a URL names: its scheme, lower-case ("" when there is none)."""
    return url.split(":", 1)[0].lower() if isinstance(url, str) and ":" in url else ""


def open_store(url: str, *, migrate: bool = True, pool_size: int = 4,
               timeout: float = 5.0) -> Store:
    """Open the store named by ``url`` and (by default) apply pending migrations.

    ``sqlite:///relative.db``, ``sqlite:////absolute.db``, ``sqlite:///:memory:`` or
    ``postgresql://user:pass@host:5432/db`` (``postgres://`` too). ``timeout`` is seconds to
    wait for a connection (PostgreSQL) or a lock (SQLite busy timeout).
    """
    if not isinstance(url, str) or not url:
        raise StoreError(f"store.url: expected sqlite:///path or postgresql://..., got {url!r}")
    kind = store_kind(url)
    if kind not in STORE_KINDS:
        raise StoreError(f"store.url {redact_url(url)!r}: unsupported scheme {kind!r}; expected "
                         f"sqlite:///path or postgresql://user@host:5432/db (store kinds: "
                         f"{STORE_KINDS.describe()})")
    try:
        factory = STORE_KINDS.get(kind)
    except PluginError as exc:
        raise StoreError(f"store.url {redact_url(url)!r}: {exc}") from None
    store = factory(url, pool_size=pool_size, timeout=timeout)
    if not isinstance(store, Store):
        raise StoreError(f"store.url {redact_url(url)!r}: the store kind {store_kind(url)!r} "
                         f"made a {type(store).__name__}, not a gateway.store.Store")
    if migrate:
        try:
            store.migrate()
        except BaseException:
            store.close()
            raise
    return store
