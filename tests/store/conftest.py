"""Fixtures that run every store test against SQLite and PostgreSQL.

PostgreSQL: ``TRINO_GATEWAY_TEST_PG_URL`` (default ``postgresql://postgres@127.0.0.1:5432/test``)
names the server (the database in it need not exist). Each test session creates its own
databases ``tgw_test_<random>`` through the server's ``postgres`` database and drops them at
the end, so parallel runs never share data. Without a server (or with one that refuses the
connection, said apart in the reason) the PostgreSQL tests skip, unless
``TRINO_GATEWAY_REQUIRE_PG=1`` (CI), which makes them fail.
"""
from __future__ import annotations

import uuid
from typing import Callable, Iterator
from urllib.parse import urlsplit

import psycopg
import pytest

from gateway.store import Store, open_store
from tests.conftest import pg_admin, pg_url_for

class PgDatabases:
    """Creates throw-away databases on the test server; drops them all at the end."""

    def __init__(self, admin: psycopg.Connection) -> None:
        self.admin = admin
        self.names: list[str] = []

    def create(self) -> str:
        name = f"tgw_test_{uuid.uuid4().hex[:12]}"
        self.admin.execute(f'CREATE DATABASE "{name}"')
        self.names.append(name)
        return pg_url_for(name)

    def set_allow_connections(self, url: str, allow: bool) -> None:
        """Simulate an outage of one database: refuse new sessions, kill the current ones."""
        name = urlsplit(url).path.lstrip("/")
        self.admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS {str(allow).lower()}')
        if not allow:
            self.admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                               "WHERE datname = %s AND pid <> pg_backend_pid()", [name])

    def drop_all(self) -> None:
        for name in self.names:
            self.admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def pg_databases() -> Iterator[PgDatabases]:
    admin = pg_admin()
    dbs = PgDatabases(admin)
    try:
        yield dbs
    finally:
        dbs.drop_all()
        admin.close()


@pytest.fixture(scope="session")
def pg_shared_url(pg_databases: PgDatabases) -> str:
    """One migrated database for tests that only need empty tables."""
    url = pg_databases.create()
    open_store(url).close()
    return url


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def kind(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def fresh_url(kind: str, tmp_path, request: pytest.FixtureRequest) -> str:
    """A URL of an empty database (nothing migrated yet)."""
    if kind == "sqlite":
        return f"sqlite:///{tmp_path / 'store.db'}"
    return request.getfixturevalue("pg_databases").create()


@pytest.fixture
def store_url(kind: str, tmp_path, request: pytest.FixtureRequest) -> str:
    """A URL of a migrated database with empty tables."""
    if kind == "sqlite":
        url = f"sqlite:///{tmp_path / 'store.db'}"
        open_store(url).close()
        return url
    url = request.getfixturevalue("pg_shared_url")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("TRUNCATE backends, query_history, sticky, admission_leases")
    return url


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    s = open_store(store_url)
    try:
        yield s
    finally:
        s.close()


@pytest.fixture
def make_store(kind: str) -> Iterator[Callable[..., Store]]:
    """``make_store(url, **kw)``: open stores that are closed after the test."""
    opened: list[Store] = []

    def make(url: str, **kwargs) -> Store:
        s = open_store(url, **kwargs)
        opened.append(s)
        return s
    yield make
    for s in opened:
        s.close()
