"""A million history rows in SQLite: filtered, keyset-paged queries stay fast (--runslow)."""
from __future__ import annotations

import random
import time

import pytest

from gateway.store import HistoryRow, open_store

ROWS = 1_000_000
STATES = ("FINISHED", "FAILED", "CANCELED", None)


@pytest.mark.slow
def test_million_rows_filtered_keyset_pages_are_fast(tmp_path) -> None:
    store = open_store(f"sqlite:///{tmp_path / 'big.db'}")
    try:
        rnd = random.Random(7)
        start = 1_700_000_000.0
        rows = [HistoryRow(f"20240101_{i:09d}_{rnd.randrange(10**5):05d}", start + i * 2.5,
                           user=f"user{rnd.randrange(200)}", source=rnd.choice(("cli", "airflow", "dbt")),
                           client_tags=("a", "b"), sql=f"SELECT * FROM t{i % 977} WHERE x = {i}",
                           routing_group=f"group{rnd.randrange(5)}", backend=f"trino-{rnd.randrange(10)}",
                           rule=f"rule{rnd.randrange(20)}", final_state=rnd.choice(STATES))
                for i in range(ROWS)]
        t0 = time.perf_counter()
        store.insert_history(rows)          # one executemany, one transaction
        insert_s = time.perf_counter() - t0
        assert store.count_history() == ROWS
        middle = rows[ROWS // 2]
        cases = [
            {"user": "user17"},
            {"user": "user17", "before": (middle.submitted_at, middle.query_id)},
            {"backend": "trino-3", "state": "FAILED", "before": (middle.submitted_at, middle.query_id)},
            {"group": "group2", "since": start + ROWS, "until": start + 2 * ROWS},
            {"rule": "rule5", "source": "dbt"},
            {"before": (rows[1000].submitted_at, rows[1000].query_id)},   # last pages of the table
        ]
        for filters in cases:
            t0 = time.perf_counter()
            page = store.query_history(limit=100, **filters)
            took = time.perf_counter() - t0
            assert page, filters
            keys = [(r.submitted_at, r.query_id) for r in page]
            assert keys == sorted(keys, reverse=True)
            if "before" in filters:
                assert keys[0] < filters["before"]
            assert took < 0.5, f"{filters}: {took:.3f}s (insert took {insert_s:.1f}s)"
    finally:
        store.close()
