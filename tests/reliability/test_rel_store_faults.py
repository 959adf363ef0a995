"""Store faults under load: PostgreSQL unavailable for a while, SQLite on a full disk.

No query may fail; the history rows written meanwhile arrive once the store is back, and the
ones that do not are exactly the ones ``trino_gateway_history_rows_dropped_total`` counts.

PostgreSQL: only this test's database becomes unavailable (``ALLOW_CONNECTIONS false`` and its
sessions terminated); the shared server keeps running. SQLite: the database lives on a small
tmpfs that the test fills up, so SQLite really answers SQLITE_FULL; where mounting is not
permitted, the gateway's file-size limit is lowered to 1 byte instead (``prlimit``), which
makes every write fail with EFBIG (SQLite: disk I/O error).
"""
from __future__ import annotations

import os
import resource
import sqlite3
import subprocess
import time
from contextlib import closing
from pathlib import Path
from typing import Any, Callable

import pytest
import trino

from tests.conftest import gateway_config, pg_url_for, wait_for
from tests.reliability.helpers import ClientThreads, metric, sizes

ALL_ADHOC = {"adhoc-1": "adhoc", "adhoc-2": "adhoc", "etl-1": "adhoc"}


class Load(ClientThreads):
    """A few official clients running small queries until stopped; counts and failures."""

    def __init__(self, port: int, clients: int = 4) -> None:
        super().__init__(clients)
        self.port = port
        self.ok = 0

    def setup(self, c: int) -> Any:
        return trino.dbapi.connect(host="127.0.0.1", port=self.port, user=f"store-{c}", http_scheme="http")

    def step(self, conn: Any, c: int, i: int) -> None:
        k = 1 + (c + i) % 7
        cur = conn.cursor()
        cur.execute(f"SELECT n FROM numbers WHERE n <= {k} ORDER BY n")
        assert cur.fetchall() == [[n] for n in range(1, k + 1)]
        with self._lock:
            self.ok += 1

    def teardown(self, conn: Any) -> None:
        conn.close()

    def run_for(self, seconds: float) -> int:
        """Keep the load on for ``seconds`` (this is the fault's duration, not a wait); return
        the queries completed meanwhile."""
        before = self.ok
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            time.sleep(0.1)
        return self.ok - before


def _check_history(gw: Any, load: Load, record_property: Callable[[str, Any], None], label: str,
                   outage: float, during: int, expect_drops: bool, count_rows: Callable[[], int]) -> None:
    """Every routed query is in the history, or counted as dropped: exactly."""
    assert not load.errors, f"{len(load.errors)} queries failed: {load.errors[:5]}"
    routed = int(metric(gw.api("GET", "/metrics").text, "trino_gateway_statements_routed_total"))
    assert routed == load.ok

    last: list[tuple[int, int]] = []

    def settled() -> tuple[int, int] | None:
        stored = count_rows()
        dropped = int(metric(gw.api("GET", "/metrics").text, "trino_gateway_history_rows_dropped_total"))
        last[:] = [(stored, dropped)]
        return (stored, dropped) if stored + dropped == routed else None

    # The writer backs off up to 30 s between attempts while the store is down.
    try:
        stored, dropped = wait_for(settled, timeout=45, interval=0.5,
                                   message="history rows stored + dropped == queries routed")
    except AssertionError as exc:
        raise AssertionError(f"{exc}: {routed} routed, (stored, dropped) = {last}") from None
    failures = metric(gw.api("GET", "/metrics").text, "trino_gateway_store_write_failures_total")
    record_property("outage_s", outage)
    record_property("queries", routed)
    record_property("queries_during_outage", during)
    record_property("rows_stored", stored)
    record_property("rows_dropped", dropped)
    record_property("failed_store_writes", int(failures))
    print(f"\n{label}: {outage:g}s outage, {routed} queries ({during} during), 0 failed; "
          f"history {stored} stored + {dropped} dropped; {failures:g} failed store writes")
    assert during > 0
    if expect_drops:
        assert dropped > 0
    else:
        assert dropped == 0 and stored == routed


# ---------------------------------------------------------------------------------------------
# PostgreSQL unavailable

@pytest.mark.postgres
@pytest.mark.parametrize("outage,max_pending", sizes((5.0, 40), (30.0, 100_000)))
def test_postgres_unavailable_under_load(outage, max_pending, pg_database, fresh_clusters,
                                         gateway_factory, tmp_path, record_property):
    import psycopg
    name = pg_database.rsplit("/", 1)[1]
    cfg = gateway_config(tmp_path, fresh_clusters, groups=ALL_ADHOC, store_url=pg_database,
                         store={"historyMaxPending": max_pending})
    gw = gateway_factory(cfg)
    admin = psycopg.connect(pg_url_for("postgres"), autocommit=True)
    try:
        with Load(gw.port) as load:
            load.run_for(1.0)
            admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))
            try:
                with pytest.raises(psycopg.OperationalError):
                    psycopg.connect(pg_database, connect_timeout=3).close()
                during = load.run_for(outage)
            finally:
                admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
            load.run_for(1.0)
        def count_rows() -> int:
            with psycopg.connect(pg_database) as conn:
                return conn.execute("SELECT count(*) FROM query_history").fetchone()[0]
        _check_history(gw, load, record_property, "POSTGRES", outage, during,
                       expect_drops=max_pending < 1000, count_rows=count_rows)
    finally:
        admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        admin.close()


# ---------------------------------------------------------------------------------------------
# SQLite on a full disk

def _try_mount(path: Path, size: str) -> bool:
    if os.environ.get("TRINO_GATEWAY_TEST_NO_MOUNT") == "1":
        return False
    path.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                       capture_output=True, timeout=10)
    return r.returncode == 0


def _fill(path: Path) -> Path:
    """Write a file until the file system is full."""
    filler = path / "filler"
    chunk = b"\0" * 65536
    with open(filler, "wb", buffering=0) as fh:
        try:
            while True:
                fh.write(chunk)
        except OSError:
            pass
    # the last partial block too
    with open(filler, "ab", buffering=0) as fh:
        try:
            while True:
                fh.write(b"\0" * 512)
        except OSError:
            pass
    return filler


@pytest.mark.parametrize("outage,max_pending", sizes((5.0, 100_000), (30.0, 40)))
def test_sqlite_disk_full_under_load(outage, max_pending, fresh_clusters, gateway_factory, tmp_path,
                                     record_property):
    disk = tmp_path / "disk"
    mounted = _try_mount(disk, "4m")
    if not mounted:
        disk.mkdir(exist_ok=True)
    cfg = gateway_config(tmp_path, fresh_clusters, groups=ALL_ADHOC,
                         store_url=f"sqlite:///{disk / 'gateway.db'}",
                         store={"historyMaxPending": max_pending})
    gw = gateway_factory(cfg)
    pid = gw.proc.pid
    limits = resource.prlimit(pid, resource.RLIMIT_FSIZE)
    try:
        with Load(gw.port) as load:
            load.run_for(1.0)
            if mounted:
                filler = _fill(disk)
            else:
                resource.prlimit(pid, resource.RLIMIT_FSIZE, (1, limits[1]))
            try:
                during = load.run_for(outage)
            finally:
                if mounted:
                    filler.unlink()
                else:
                    resource.prlimit(pid, resource.RLIMIT_FSIZE, limits)
            load.run_for(1.0)
        if mounted:  # SQLITE_FULL, in SQLite's words
            assert "database or disk is full" in gw.log()
        else:        # the log file cannot grow either; the failed writes are counted
            assert metric(gw.api("GET", "/metrics").text, "trino_gateway_store_write_failures_total") > 0
        def count_rows() -> int:
            with closing(sqlite3.connect(disk / "gateway.db", timeout=5)) as conn:
                return conn.execute("SELECT count(*) FROM query_history").fetchone()[0]
        _check_history(gw, load, record_property, "SQLITE " + ("SQLITE_FULL" if mounted else "EFBIG"),
                       outage, during, expect_drops=max_pending < 1000, count_rows=count_rows)
    finally:
        gw.stop()
        if mounted:
            subprocess.run(["umount", "-l", str(disk)], capture_output=True, timeout=10)
