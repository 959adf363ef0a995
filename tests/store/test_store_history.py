"""Query history: insert, dedupe, state updates, filters, keyset paging, stats, retention."""
from __future__ import annotations

import pytest

from gateway.store import HistoryRow, StoreError


def _row(qid: str, at: float, **kw) -> HistoryRow:
    return HistoryRow(query_id=qid, submitted_at=at, **kw)


def _ids(rows: list[HistoryRow]) -> list[str]:
    return [r.query_id for r in rows]


def test_insert_and_read_back_every_field(store) -> None:
    row = _row("q1", 1000.25, user="alice", source="cli", client_tags=("a", "b c"),
               sql="SELECT 1", routing_group="adhoc", backend="trino-1", rule="r1",
               final_state="FINISHED", error=None, queued_ms=12)
    store.insert_history([row])
    assert store.query_history() == [row]
    bare = _row("q0", 999.0)
    store.insert_history([bare])
    assert store.query_history(before=(1000.25, "q1")) == [bare]


def test_duplicate_query_id_keeps_first_values_and_fills_missing_ones(store) -> None:
    store.insert_history([_row("q1", 10.0, user="alice", backend="b1")])
    store.insert_history([_row("q1", 20.0, user="mallory", backend="b2", final_state="FAILED",
                               error="boom", sql="SELECT 2")])
    (got,) = store.query_history()
    assert (got.submitted_at, got.user, got.backend) == (10.0, "alice", "b1")
    assert (got.final_state, got.error, got.sql) == ("FAILED", "boom", "SELECT 2")


def test_duplicates_inside_one_batch_are_merged(store) -> None:
    store.insert_history([_row("q1", 10.0, user="alice"), _row("q1", 10.0, final_state="FINISHED")])
    assert [(r.user, r.final_state) for r in store.query_history()] == [("alice", "FINISHED")]


def test_update_states_sets_state_and_keeps_an_earlier_error(store) -> None:
    store.insert_history([_row("q1", 1.0), _row("q2", 2.0, error="queued too long")])
    store.update_history_states([("q1", "FAILED", "syntax error"), ("q2", "FINISHED", None),
                                 ("unknown", "FINISHED", None)])
    got = {r.query_id: (r.final_state, r.error) for r in store.query_history()}
    assert got == {"q1": ("FAILED", "syntax error"), "q2": ("FINISHED", "queued too long")}


@pytest.fixture
def sample(store):
    rows = [
        _row("q1", 100.0, user="alice", source="cli", routing_group="adhoc", backend="t1",
             rule="r-adhoc", final_state="FINISHED", sql="SELECT * FROM orders"),
        _row("q2", 200.0, user="bob", source="airflow", routing_group="etl", backend="t2",
             rule="r-etl", final_state="FAILED", sql="insert into facts select 1"),
        _row("q3", 300.0, user="alice", source="airflow", routing_group="etl", backend="t2",
             rule=None, final_state=None, sql="select '100%_done' from Orders"),
        _row("q4", 400.0, user="carol", source="cli", routing_group="adhoc", backend="t1",
             rule="r-adhoc", final_state="FINISHED", sql="SHOW CATALOGS"),
    ]
    store.insert_history(rows)
    return store


@pytest.mark.parametrize("filters, expected", [
    ({}, ["q4", "q3", "q2", "q1"]),
    ({"user": "alice"}, ["q3", "q1"]),
    ({"source": "airflow"}, ["q3", "q2"]),
    ({"group": "adhoc"}, ["q4", "q1"]),
    ({"backend": "t2"}, ["q3", "q2"]),
    ({"rule": "r-adhoc"}, ["q4", "q1"]),
    ({"state": "FINISHED"}, ["q4", "q1"]),
    ({"state": "FAILED"}, ["q2"]),
    ({"since": 200.0}, ["q4", "q3", "q2"]),
    ({"until": 300.0}, ["q2", "q1"]),
    ({"since": 200.0, "until": 300.0}, ["q2"]),
    ({"text": "orders"}, ["q3", "q1"]),            # case-insensitive substring
    ({"text": "100%_"}, ["q3"]),                   # wildcards match themselves
    ({"text": "%"}, ["q3"]),
    ({"user": "alice", "backend": "t2"}, ["q3"]),
    ({"user": "nobody"}, []),
])
def test_filters(sample, filters: dict, expected: list[str]) -> None:
    assert _ids(sample.query_history(**filters)) == expected
    assert sample.count_history(**filters) == len(expected)


def test_keyset_paging_walks_every_row_once_newest_first(store) -> None:
    # Equal timestamps force the query_id tie-break.
    rows = [_row(f"q{i:03d}", float(i // 3), user="u" if i % 2 else "v") for i in range(40)]
    store.insert_history(rows)
    expected = sorted(rows, key=lambda r: (r.submitted_at, r.query_id), reverse=True)
    for filters in ({}, {"user": "u"}):
        want = [r.query_id for r in expected if filters.get("user") in (None, r.user)]
        got: list[str] = []
        before = None
        while True:
            page = store.query_history(limit=7, before=before, **filters)
            if not page:
                break
            assert len(page) <= 7
            got += _ids(page)
            before = (page[-1].submitted_at, page[-1].query_id)
        assert got == want


@pytest.mark.parametrize("bad", [0, -1, 10_001, "10", True])
def test_bad_limits_are_refused(store, bad) -> None:
    with pytest.raises(StoreError, match="history limit must be an integer"):
        store.query_history(limit=bad)


def test_bad_keyset_cursor_and_times_are_refused(store) -> None:
    with pytest.raises(StoreError, match="'before' must be"):
        store.query_history(before=("yesterday", "q1"))
    with pytest.raises(StoreError, match="'since' must be unix seconds, got 'yesterday'"):
        store.query_history(since="yesterday")
    with pytest.raises(StoreError, match="'until' must be unix seconds"):
        store.count_history(until=[1])


def test_per_minute_and_per_backend_counts(store) -> None:
    store.insert_history([
        _row("a", 600.0, backend="t1"), _row("b", 659.9, backend="t1"),
        _row("c", 660.0, backend="t2"), _row("d", 780.5, backend=None),
        _row("old", 10.0, backend="t1"),
    ])
    assert store.history_per_minute(600.0) == [(600.0, 2), (660.0, 1), (780.0, 1)]
    assert store.history_by_backend(600.0) == {"t1": 2, "t2": 1}
    assert store.history_by_backend(10_000.0) == {}


def test_retention_deletes_only_older_rows(store) -> None:
    store.insert_history([_row(f"q{i}", float(i)) for i in range(25_000)])
    assert store.delete_history_before(20_500.0) == 20_500     # more than one internal batch
    assert store.count_history() == 4_500
    assert _ids(store.query_history(limit=1, before=(20_500.0, "q20500"))) == []
    assert store.delete_history_before(20_500.0) == 0


def test_text_the_databases_cannot_store_is_cleaned(store) -> None:
    store.insert_history([_row("q1", 1.0, sql="SELECT 1\x00 -- nul", user="bad\udcffuser")])
    (got,) = store.query_history()
    assert got.sql == "SELECT 1 -- nul"
    assert got.user == "bad?user"


def test_a_large_batch_with_duplicates_equals_writing_one_row_at_a_time(store, make_store, tmp_path) -> None:
    # Batches are written as multi-row statements of a few hundred rows each; the result must
    # be what inserting and updating one item at a time gives (checked against SQLite doing so).
    import random
    rnd = random.Random(7)
    rows = []
    for i in range(700):
        qid = f"q{rnd.randrange(400):04d}"      # many ids appear several times
        rows.append(_row(qid, float(i), user=rnd.choice([None, "alice", "bob"]),
                         backend=rnd.choice([None, "b1", "b2"]),
                         final_state=rnd.choice([None, None, "FINISHED"]),
                         error=rnd.choice([None, "boom"]), queued_ms=rnd.choice([None, i])))
    updates = [(f"q{rnd.randrange(450):04d}", rnd.choice(["FINISHED", "FAILED"]),
                rnd.choice([None, None, f"err{i}"])) for i in range(600)]
    store.insert_history(rows)
    store.update_history_states(updates)
    one_by_one = make_store(f"sqlite:///{tmp_path / 'reference.db'}")
    for r in rows:
        one_by_one.insert_history([r])
    for u in updates:
        one_by_one.update_history_states([u])
    want = one_by_one.query_history(limit=1000)
    assert len(want) == len({r.query_id for r in rows})
    assert sorted(store.query_history(limit=1000), key=lambda r: r.query_id) == \
        sorted(want, key=lambda r: r.query_id)
