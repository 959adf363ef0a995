"""Loop turns a request spends in the gateway (benchmarks/loop_turns.py), held exactly.

Under load a worker's loop turn is long (it relays every answer ready since the last one), so a
turn more on a request's way is latency however cheap the turn's own work (issue 19: the
``select 1`` tail during a ramp of new statements). Counting turns instead of timing them makes
the figure exact: a change that adds one fails here.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import loop_turns  # noqa: E402


def test_turns_to_the_backend_and_back_on_asyncio():
    assert loop_turns.measure("asyncio") == {
        # client write; the gateway reads, starts the request's task; the task connects
        # (create_connection: writable, transport made, its waiter) and writes; the backend reads.
        # It was 9 while the connect ran in a task of its own.
        "statement, new backend connection": (7, 3),
        # the gateway reads and writes to a pooled backend connection in the same callback (no
        # task: gateway/proxy/follow.py, a direct exchange); the backend reads. It was 3 with a task.
        "poll (follow-up fast path)": (2, 3),
        "statement, pooled backend connection": (3, 3),
        # accepted, its transport made, then read: two turns before the request's task starts
        "statement, new client connection": (5, 3),
    }


def test_turns_to_the_backend_and_back_on_uvloop():
    """uvloop (the default loop) runs what an I/O callback schedules in the same turn: the
    request's task starts with the read. A statement that must connect took 5 turns while the
    connect ran in a task of its own."""
    assert loop_turns.measure("uvloop") == {
        "statement, new backend connection": (3, 3),
        "poll (follow-up fast path)": (1, 3),
        "statement, pooled backend connection": (1, 3),
        "statement, new client connection": (3, 3),
    }
