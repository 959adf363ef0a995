"""Opening a store from a URL, migration files, and the store's pure helpers."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from gateway.store import HistoryRow, StoreError, open_store
from gateway.store.base import redact_url
from gateway.store.sql import history_filter_sql, load_migrations, migrations_dir
from gateway.store.sqlite import parse_sqlite_url, split_script


@pytest.mark.parametrize("url, path", [
    ("sqlite:///relative/path.db", "relative/path.db"),
    ("sqlite:////abs/path.db", "/abs/path.db"),
    ("sqlite:///:memory:", ":memory:"),
    ("SQLITE:///x.db", "x.db"),
])
def test_sqlite_url_gives_the_file_path(url: str, path: str) -> None:
    assert parse_sqlite_url(url) == path


@pytest.mark.parametrize("url, words", [
    ("", "expected sqlite:///path"),
    ("mysql://u@h/db", "unsupported scheme 'mysql'"),
    ("trino-gateway.db", "unsupported scheme"),
    ("sqlite://host/x.db", "sqlite:///relative/path.db"),
    ("sqlite:///", "names no file"),
    ("sqlite:///x.db?mode=ro", "no ?options"),
    ("sqlite:////nonexistent-dir-tgw/x.db", "does not exist"),
    ("postgresql://postgres@127.0.0.1:1/x", "cannot connect to PostgreSQL"),
    ("postgresql://postgres@127.0.0.1:5432/x?bogus_option=1", "not a valid PostgreSQL URL"),
])
def test_bad_urls_raise_a_clear_store_error(url: str, words: str) -> None:
    with pytest.raises(StoreError) as info:
        open_store(url, timeout=1.0)
    assert words in str(info.value)


def test_errors_never_show_the_password() -> None:
    with pytest.raises(StoreError) as info:
        open_store("postgresql://postgres:s3cret@127.0.0.1:1/x", timeout=1.0)
    assert "s3cret" not in str(info.value)
    assert "***" in str(info.value)
    assert redact_url("postgres://a:b@h/db") == "postgres://a:***@h/db"
    assert redact_url("postgres://a@h/db") == "postgres://a@h/db"


def test_in_memory_sqlite_is_migrated_and_usable() -> None:
    s = open_store("sqlite:///:memory:")
    try:
        assert s.schema_version() >= 1
        s.insert_history([HistoryRow("q1", 1.0)])
        assert [r.query_id for r in s.query_history()] == ["q1"]
    finally:
        s.close()


def test_relative_sqlite_path_is_relative_to_the_working_directory(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    open_store("sqlite:///rel.db").close()
    assert (tmp_path / "rel.db").is_file()


def test_both_dialects_have_the_same_migration_versions() -> None:
    sqlite = [m.version for m in load_migrations(migrations_dir("sqlite"))]
    pg = [m.version for m in load_migrations(migrations_dir("postgresql"))]
    assert sqlite == pg
    # Versions may have gaps (parallel changes reserve numbers); the runner applies every
    # version not yet recorded, in order, so a lower number merged later is applied too.
    assert sqlite[0] == 1 and sqlite == sorted(set(sqlite))


def test_migration_files_load_in_version_order(tmp_path) -> None:
    (tmp_path / "0002_b.sql").write_text("B")
    (tmp_path / "0010_c.sql").write_text("C")
    (tmp_path / "0001_a.sql").write_text("A")
    (tmp_path / "README.txt").write_text("not a migration")
    assert [(m.version, m.sql) for m in load_migrations(tmp_path)] == [(1, "A"), (2, "B"), (10, "C")]


@pytest.mark.parametrize("files, words", [
    (["1_init.sql"], "named NNNN_description.sql"),
    (["0001_a.sql", "0001_b.sql"], "version 1 also in"),
])
def test_bad_migration_files_are_named_in_the_error(tmp_path, files: list[str], words: str) -> None:
    for name in files:
        (tmp_path / name).write_text("SELECT 1;")
    with pytest.raises(StoreError, match=words):
        load_migrations(tmp_path)


def test_sql_script_splits_into_statements_keeping_triggers_whole() -> None:
    script = """
    -- a comment; with a semicolon
    CREATE TABLE t (a TEXT DEFAULT 'x;y');
    CREATE TRIGGER tr AFTER INSERT ON t BEGIN
        UPDATE t SET a = 'z'; DELETE FROM t WHERE 0;
    END;
    INSERT INTO t VALUES ('1');
    -- trailing comment
    """
    statements = split_script(script)
    assert len(statements) == 3
    assert statements[0].endswith("DEFAULT 'x;y');")
    assert statements[1].startswith("CREATE TRIGGER") and statements[1].endswith("END;")


def test_history_filter_sql_escapes_like_wildcards() -> None:
    where, params = history_filter_sql(user="bob", text="50%_off\\x", since=1, until=2)
    assert where == ("lower(user_name) = lower(?) AND submitted_at >= ? AND submitted_at < ? "
                     "AND sql_text LIKE ? ESCAPE '\\'")
    assert params == ["bob", 1.0, 2.0, "%50\\%\\_off\\\\x%"]
    assert history_filter_sql() == ("1=1", [])


def test_history_row_json_uses_camel_case() -> None:
    row = HistoryRow("q", 12.5, user="u", source="s", client_tags=("a", "b"), sql="SELECT 1",
                     routing_group="g", backend="b", rule="r", final_state="FINISHED",
                     error=None, queued_ms=7, finished_at=14.0)
    assert row.to_json() == {
        "queryId": "q", "user": "u", "source": "s", "clientTags": ["a", "b"],
        "sql": "SELECT 1", "routingGroup": "g", "backend": "b", "rule": "r",
        "submittedAt": 12.5, "finalState": "FINISHED", "error": None, "queuedMs": 7,
        "finishedAt": 14.0,
    }
    assert row.duration == 1.5


def test_migrations_dir_is_the_repository_sql_folder() -> None:
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert migrations_dir("sqlite") == Path(root, "sql", "sqlite")
