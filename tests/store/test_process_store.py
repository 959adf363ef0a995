"""ProcessStore: the store in a child process, over real SQLite and PostgreSQL databases."""
from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
from typing import Awaitable, Callable

import pytest

from gateway.backends.state import Backend
from gateway.store import DuplicateBackend, HistoryRow, HistoryWriter, StoreError, open_store
from gateway.store.process import ProcessStore, _Priority
from tests.conftest import wait_for


def run(coro_fn: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(coro_fn())


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped by its parent) counts as gone.
    with open(f"/proc/{pid}/stat") as fh:
        return fh.read().rsplit(")", 1)[1].split()[0] != "Z"


def test_calls_results_and_errors_cross_the_pipe(store_url) -> None:
    async def main() -> None:
        ps = await ProcessStore.open(store_url)
        try:
            assert ps.pid is not None and ps.pid != os.getpid()
            b = Backend("b1", "http://trino-1:8080", None, "etl", True)
            await ps.add_backend(b)
            assert await ps.list_backends() == [b]
            with pytest.raises(DuplicateBackend) as exc:       # the subclass and its fields
                await ps.add_backend(b)
            assert exc.value.name == "b1" and "already exists" in str(exc.value)
            with pytest.raises(StoreError, match="history limit") as exc2:
                await ps.query_history(limit=0)
            rows = [HistoryRow(f"q{i}", 100.0 + i, user="u", client_tags=("a", "b"),
                               queued_ms=i) for i in range(250)]
            await ps.insert_history(rows)
            assert sorted(await ps.query_history(limit=1000), key=lambda r: r.query_id) == \
                sorted(rows, key=lambda r: r.query_id)
            with pytest.raises(AttributeError, match="no method '_write'"):
                await ps.call("_write", None)
        finally:
            await ps.close()
        # What the child wrote is in the database for anyone.
        direct = open_store(store_url)
        try:
            assert direct.count_history() == 250
        finally:
            direct.close()
    run(main)


def test_a_bad_url_fails_the_open_with_the_stores_message(tmp_path) -> None:
    async def main() -> None:
        with pytest.raises(StoreError, match="directory .*missing.* does not exist"):
            await ProcessStore.open(f"sqlite:///{tmp_path}/missing/x.db")
        with pytest.raises(StoreError, match="unsupported scheme 'mysql'"):
            await ProcessStore.open("mysql://x/y")
    run(main)


def test_a_killed_store_process_fails_calls_retryably_and_is_restarted(tmp_path, caplog) -> None:
    async def main() -> None:
        ps = await ProcessStore.open(f"sqlite:///{tmp_path}/s.db")
        try:
            await ps.put_sticky([("query", "q1", "b1", time.time() + 60)])
            first = ps.pid
            assert first is not None
            os.kill(first, signal.SIGKILL)
            with pytest.raises(StoreError, match="exited") as exc:
                await ps.ping()
            assert not exc.value.permanent             # the history writer retries it
            assert await ps.get_sticky("query", "q1", time.time()) == "b1"   # a new child
            assert ps.pid not in (None, first)
        finally:
            await ps.close()
    with caplog.at_level("ERROR", logger="gateway.store"):
        run(main)
    assert "the store process exited (code -9)" in caplog.text


def test_the_child_ignores_termination_signals_and_runs_at_idle_priority(tmp_path) -> None:
    async def main() -> None:
        ps = await ProcessStore.open(f"sqlite:///{tmp_path}/s.db")
        try:
            assert ps.pid is not None
            # Ctrl-C or a SIGTERM to the process group must not kill it before the gateway's
            # last history flush; the gateway closes it.
            os.kill(ps.pid, signal.SIGINT)
            os.kill(ps.pid, signal.SIGTERM)
            await ps.ping()
            assert os.sched_getscheduler(ps.pid) == os.SCHED_IDLE
        finally:
            pid = ps.pid
            await ps.close()
        assert pid is not None and not _alive(pid)
        with pytest.raises(StoreError, match="closed"):
            await ps.ping()
    run(main)


def test_the_child_exits_when_the_gateway_dies(tmp_path) -> None:
    script = textwrap.dedent(f"""
        import asyncio, os, sys
        from gateway.store.process import ProcessStore
        async def main():
            ps = await ProcessStore.open("sqlite:///{tmp_path}/s.db")
            print(ps.pid, flush=True)
            os._exit(0)          # no close, no cleanup: as if killed
        asyncio.run(main())
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=60, cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
    assert out.returncode == 0, out.stderr
    child = int(out.stdout.split()[0])
    wait_for(lambda: not _alive(child), timeout=10, message=f"store process {child} to exit")


def test_a_history_writer_writes_through_the_process(store_url) -> None:
    async def main() -> None:
        ps = await ProcessStore.open(store_url)
        writer = HistoryWriter(ps, flush_interval=0.02, batch_size=1000, retention=None)
        writer.start()
        now = time.time()
        for i in range(450):        # more than one store call's worth
            writer.add(HistoryRow(f"q{i:04d}", now + i, user="u"))
        writer.update_state("q0001", "FINISHED")
        deadline = time.monotonic() + 10
        while writer.written < 450:
            assert time.monotonic() < deadline, "rows not written"
            await asyncio.sleep(0.01)
        await writer.stop()
        assert await ps.count_history() == 450
        (row,) = await ps.query_history(user="u", state="FINISHED")
        assert row.query_id == "q0001"
        await ps.close()
    run(main)


@pytest.fixture
def priority_calls(monkeypatch) -> list[bool]:
    """``_Priority._set`` changes the calling process's scheduling, so it is recorded instead:
    the test runner itself must not become an idle-class process."""
    calls: list[bool] = []

    def fake_set(*, idle: bool) -> bool:
        calls.append(idle)
        return idle
    monkeypatch.setattr(_Priority, "_set", staticmethod(fake_set))
    monkeypatch.setattr(_Priority, "_reversible", staticmethod(lambda: True))
    return calls


def test_priority_steps_up_when_starved_and_back_down_when_caught_up(priority_calls) -> None:
    calls = priority_calls
    p = _Priority()
    assert p.idle and calls == [True]
    p.note_wait(0.5)                       # slow but not starved
    assert p.idle
    p.note_wait(1.5)
    assert not p.idle and calls == [True, False]
    for _ in range(99):
        p.note_wait(0.01)
    p.note_wait(0.5)                       # one slow request restarts the count
    for _ in range(99):
        p.note_wait(0.01)
    assert not p.idle
    p.note_wait(0.01)
    assert p.idle and calls == [True, False, True]


def test_an_argument_that_cannot_be_sent_fails_only_its_own_call(tmp_path) -> None:
    async def main() -> None:
        ps = await ProcessStore.open(f"sqlite:///{tmp_path}/s.db")
        try:
            with pytest.raises(Exception):
                await ps.call("get_sticky", "query", lambda: None, 0.0)   # not picklable
            # The replies that follow still reach the calls they answer.
            await ps.put_sticky([("query", "q1", "b1", time.time() + 60)])
            got = await asyncio.gather(ps.get_sticky("query", "q1", time.time()),
                                       ps.get_sticky("query", "nope", time.time()),
                                       ps.count_history())
            assert got == ["b1", None, 0]
        finally:
            await ps.close()
    run(main)


def test_without_a_way_back_from_the_idle_class_it_stays_at_nice_10(priority_calls, monkeypatch) -> None:
    monkeypatch.setattr(_Priority, "_reversible", staticmethod(lambda: False))
    p = _Priority()
    assert not p.idle and priority_calls == [False]


def test_the_reversibility_probe_leaves_the_calling_thread_alone() -> None:
    before = os.sched_getscheduler(0)
    _Priority._reversible()
    assert os.sched_getscheduler(0) == before


def test_a_gateway_gone_before_the_answer_leaves_no_traceback(tmp_path) -> None:
    # The gateway stopped (Ctrl-C, a failed start) while the child was still opening the store:
    # the child's answer meets a closed pipe. It exits quietly instead of printing a traceback.
    import pickle
    import struct
    proc = subprocess.Popen([sys.executable, "-m", "gateway.store.process"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()                     # nobody will read the answer
    data = pickle.dumps((time.monotonic(), ("open", f"sqlite:///{tmp_path / 's.db'}", {}, None)))
    proc.stdin.write(struct.pack("!I", len(data)) + data)
    proc.stdin.close()
    err = proc.stderr.read().decode()
    assert proc.wait(30) == 0, err
    assert "Traceback" not in err and "BrokenPipe" not in err, err
