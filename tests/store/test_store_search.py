"""History search (query id prefix, case-insensitive user/source, client tags, indexed text),
newer/older paging, capped counts, finish times, unresolved rows and metric samples, on both
databases."""
from __future__ import annotations

import json

from gateway.store import HistoryRow
from gateway.store.sqlite import SqliteStore


def _row(qid: str, at: float, **kw) -> HistoryRow:
    return HistoryRow(query_id=qid, submitted_at=at, **kw)


def _ids(rows: list[HistoryRow]) -> list[str]:
    return [r.query_id for r in rows]


QIDS = ["20250101_120000_00001_aaaaa", "20250101_120000_00002_bbbbb", "20250101_130000_00003_ccccc"]


def _fill(store) -> None:
    store.insert_history([
        _row(QIDS[0], 1.0, user="Alice", source="Airflow", client_tags=("etl", "nightly"),
             sql="SELECT * FROM Orders WHERE note = '50%_off'"),
        _row(QIDS[1], 2.0, user="bob", source="cli", client_tags=("etl-x",), sql="select 1"),
        _row(QIDS[2], 3.0, user="alice", source="airflow", sql="SELECT count(*) FROM orders"),
    ])


def test_query_id_full_or_prefix(store) -> None:
    _fill(store)
    assert _ids(store.query_history(query_id=QIDS[1])) == [QIDS[1]]
    assert _ids(store.query_history(query_id="20250101_1200")) == [QIDS[1], QIDS[0]]
    assert _ids(store.query_history(query_id="20250101_")) == QIDS[::-1]
    assert store.query_history(query_id="20250101%") == []     # wildcards match themselves
    assert store.query_history(query_id="2025010_") == []


def test_user_and_source_match_case_insensitively(store) -> None:
    _fill(store)
    assert _ids(store.query_history(user="ALICE")) == [QIDS[2], QIDS[0]]
    assert _ids(store.query_history(source="AIRFLOW", user="alice")) == [QIDS[2], QIDS[0]]


def test_tag_matches_one_whole_tag(store) -> None:
    _fill(store)
    assert _ids(store.query_history(tag="etl")) == [QIDS[0]]
    assert _ids(store.query_history(tag="etl-x")) == [QIDS[1]]
    assert store.query_history(tag="nigh") == []


def test_text_is_a_case_insensitive_substring_short_or_long(store) -> None:
    _fill(store)
    assert _ids(store.query_history(text="from orders")) == [QIDS[2], QIDS[0]]
    assert _ids(store.query_history(text="50%_o")) == [QIDS[0]]
    assert _ids(store.query_history(text="1")) == [QIDS[1]]            # shorter than a trigram
    assert _ids(store.query_history(text='"quoted"')) == []
    # rows inserted later and sql filled in by a duplicate are found too
    store.insert_history([_row("q-late", 4.0)])
    store.insert_history([_row("q-late", 4.0, sql="SELECT late_column")])
    assert _ids(store.query_history(text="LATE_COL")) == ["q-late"]
    assert store.delete_history_before(5.0) == 4
    assert store.query_history(text="late_col") == []


def test_newer_and_older_pages(store) -> None:
    store.insert_history([_row(f"q{i:02d}", float(i)) for i in range(10)])
    page1 = store.query_history(limit=3)
    assert _ids(page1) == ["q09", "q08", "q07"]
    page2 = store.query_history(limit=3, before=(page1[-1].submitted_at, page1[-1].query_id))
    assert _ids(page2) == ["q06", "q05", "q04"]
    back = store.query_history(limit=3, after=(page2[0].submitted_at, page2[0].query_id))
    assert _ids(back) == _ids(page1)                 # newest first, the page just newer


def test_count_with_a_cap(store) -> None:
    store.insert_history([_row(f"q{i:02d}", float(i), user="u") for i in range(12)])
    assert store.count_history(user="U") == 12
    assert store.count_history(cap=5, user="u") == 6          # "more than 5"
    assert store.count_history(cap=50) == 12


def test_finish_time_from_updates_or_the_queued_row(store) -> None:
    store.insert_history([_row("q1", 10.0), _row("q2", 10.0, final_state="FAILED", finished_at=11.0)])
    store.update_history_states([("q1", "FINISHED", None, 12.5), ("q2", "FAILED", "x")])
    got = {r.query_id: r for r in store.query_history()}
    assert (got["q1"].final_state, got["q1"].duration) == ("FINISHED", 2.5)
    assert (got["q2"].error, got["q2"].finished_at) == ("x", 11.0)   # no time given: kept


def test_unresolved_rows_oldest_first(store) -> None:
    store.insert_history([_row("a", 1.0), _row("b", 2.0, final_state="FINISHED"), _row("c", 3.0),
                          _row("d", 9.0)])
    assert _ids(store.unresolved_history(5.0, 10)) == ["a", "c"]
    assert _ids(store.unresolved_history(5.0, 1)) == ["a"]


def test_metric_samples_first_writer_wins_and_old_ones_go(store) -> None:
    lb = json.dumps({"backend": "b1"})
    assert store.insert_metric_samples("h:1", 60.0, [("m", lb, 1.0), ("m", "{}", 2.0)], 0.0) == 2
    # another worker of the same gateway sampled the same time: nothing is written
    assert store.insert_metric_samples("h:1", 60.0, [("m", lb, 9.0)], 0.0) == 0
    assert store.insert_metric_samples("h:2", 60.0, [("m", lb, 5.0)], 0.0) == 1
    assert store.insert_metric_samples("h:1", 120.0, [("m", lb, 3.0)], 100.0) == 1
    assert store.metric_series("h:1", "m", 0.0) == [(lb, 120.0, 3.0)]      # 60 was pruned
    assert store.metric_instances(0.0) == ["h:1"]


def test_sqlite_text_search_uses_the_fts_index(tmp_path) -> None:
    store = SqliteStore(f"sqlite:///{tmp_path}/h.db")
    store.migrate()
    from gateway.store.sql import history_filter_sql
    where, params = history_filter_sql(text="orders", like=store.LIKE, text_sql=store._text_sql)
    plan = " ".join(str(r[-1]) for r in store._read(
        f"EXPLAIN QUERY PLAN SELECT query_id FROM query_history WHERE {where}", params))
    assert "query_history_fts" in plan and "VIRTUAL TABLE INDEX" in plan, plan
    where, params = history_filter_sql(user="Alice", like=store.LIKE)
    plan = " ".join(str(r[-1]) for r in store._read(
        f"EXPLAIN QUERY PLAN SELECT query_id FROM query_history WHERE {where} "
        "ORDER BY submitted_at DESC, query_id DESC", params))
    assert "query_history_user_ci" in plan, plan
    store.close()


def test_a_cancel_is_final(store) -> None:
    store.insert_history([_row("q1", 1.0), _row("q2", 1.0)])
    store.update_history_states([("q1", "CANCELED", "by the client", 2.0)])
    store.update_history_states([("q1", "FAILED", "USER_CANCELED", 3.0),
                                 ("q2", "CANCELED", None, 2.0), ("q2", "FAILED", "x", 3.0)])
    got = {r.query_id: (r.final_state, r.error, r.finished_at) for r in store.query_history()}
    assert got == {"q1": ("CANCELED", "by the client", 2.0), "q2": ("CANCELED", None, 2.0)}


def test_queries_per_minute_and_backend(store) -> None:
    store.insert_history([_row("a", 60.0, backend="b1"), _row("b", 61.0, backend="b1"),
                          _row("c", 125.0, backend="b2"), _row("d", 130.0), _row("e", 10.0, backend="b1")])
    assert store.history_per_minute_by_backend(60.0) == [(60.0, "b1", 2), (120.0, "b2", 1)]


def test_unresolved_rows_page_on(store) -> None:
    store.insert_history([_row(f"q{i}", float(i)) for i in range(5)])
    assert _ids(store.unresolved_history(10.0, 2, after=(1.0, "q1"))) == ["q2", "q3"]
