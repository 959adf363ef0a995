"""Migrations apply once, are recorded, and are safe when several processes start together."""
from __future__ import annotations

import threading
import time

from gateway.store import open_store
from gateway.store.sql import load_migrations, migrations_dir


def _expected_versions(kind: str) -> list[int]:
    dialect = "sqlite" if kind == "sqlite" else "postgresql"
    return [m.version for m in load_migrations(migrations_dir(dialect))]


def test_migrations_apply_once_and_are_recorded(kind, fresh_url, make_store) -> None:
    expected = _expected_versions(kind)
    s = make_store(fresh_url, migrate=False)
    assert s.schema_version() == 0
    before = time.time()
    assert s.migrate() == expected
    assert s.schema_version() == expected[-1]
    recorded = s._read("SELECT version, applied_at FROM schema_version ORDER BY version")
    assert [v for v, _ in recorded] == expected
    assert all(before - 1 <= at <= time.time() + 1 for _, at in recorded)
    # The tables exist and work.
    assert s.list_backends() == [] and s.query_history() == []


def test_rerunning_migrations_is_a_no_op(kind, fresh_url, make_store) -> None:
    first = make_store(fresh_url)             # open_store migrates
    stamp = first.schema_version()
    again = make_store(fresh_url)
    assert again.migrate() == []
    assert again.schema_version() == stamp
    count = again._read("SELECT count(*) FROM schema_version")[0][0]
    assert count == len(_expected_versions(kind))


def test_concurrent_starts_apply_each_migration_once(kind, fresh_url) -> None:
    n = 4
    barrier = threading.Barrier(n)
    results: list[object] = [None] * n

    def start(i: int) -> None:
        try:
            s = open_store(fresh_url, migrate=False, timeout=10.0)
            try:
                barrier.wait(timeout=10)
                results[i] = s.migrate()
            finally:
                s.close()
        except Exception as exc:   # reported below, with the thread's index
            results[i] = exc

    threads = [threading.Thread(target=start, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    errors = [r for r in results if isinstance(r, Exception)]
    assert not errors, errors
    expected = _expected_versions(kind)
    # Exactly one starter applied everything; the others found it done.
    assert sorted(results, key=len) == [[]] * (n - 1) + [expected]  # type: ignore[arg-type]
    s = open_store(fresh_url, migrate=False)
    try:
        assert [v for (v,) in s._read("SELECT version FROM schema_version ORDER BY version")] == expected
    finally:
        s.close()


def test_a_database_migrated_by_a_newer_gateway_still_opens(kind, fresh_url, make_store,
                                                            caplog) -> None:
    s = make_store(fresh_url)
    s._write(lambda cur: cur.execute(s._sql("INSERT INTO schema_version (version, applied_at) "
                                            "VALUES (?, ?)"), (9999, time.time())))
    with caplog.at_level("WARNING", logger="gateway.store"):
        assert make_store(fresh_url).migrate() == []
    assert "migrations [9999] that this gateway does not know" in caplog.text
    assert s.schema_version() == 9999


def test_many_processes_opening_a_new_sqlite_file_together_all_succeed(tmp_path) -> None:
    # Switching a new file to WAL reports "database is locked" at once (no busy wait) when two
    # connections switch it at the same moment; that happened to workers starting together.
    # One round rarely hits the window, so run many; each round is a new file.
    n, rounds = 8, 25
    for r in range(rounds):
        url = f"sqlite:///{tmp_path / f'round{r}.db'}"
        barrier = threading.Barrier(n)
        errors: list[Exception] = []

        def start() -> None:
            try:
                barrier.wait(timeout=10)
                open_store(url, timeout=10.0).close()
            except Exception as exc:   # collected and reported with the round
                errors.append(exc)

        threads = [threading.Thread(target=start) for _ in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
        assert not errors, f"round {r}: {errors}"
