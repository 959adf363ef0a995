"""The gateway queue's order: priority, then users taking turns, then arrival."""
from __future__ import annotations

from gateway.admission_queue import FairQueue


def drain(q: FairQueue) -> list:
    out = []
    while (x := q.pop()) is not None:
        out.append(x)
    return out


def test_fifo_for_one_user():
    q = FairQueue()
    for i in range(5):
        q.push(i, priority=0, user="a")
    assert list(q) == [0, 1, 2, 3, 4]
    assert drain(q) == [0, 1, 2, 3, 4] and len(q) == 0


def test_users_take_turns_so_one_users_500_do_not_starve_another():
    q = FairQueue()
    for i in range(500):
        q.push(("a", i), priority=0, user="a")
    q.push(("b", 0), priority=0, user="b")
    assert q.position(next(x for x in q if x[0] == "b")) == 2
    out = drain(q)
    assert out[:3] == [("a", 0), ("b", 0), ("a", 1)]
    assert [x for x in out if x[0] == "a"] == [("a", i) for i in range(500)]


def test_higher_priority_goes_first_and_keeps_fairness_inside():
    q = FairQueue()
    q.push("low-a", priority=0, user="a")
    q.push("high-b1", priority=5, user="b")
    q.push("high-b2", priority=5, user="b")
    q.push("high-c", priority=5, user="c")
    q.push("low-d", priority=0, user="d")
    assert q.peek() == "high-b1"
    assert drain(q) == ["high-b1", "high-c", "high-b2", "low-a", "low-d"]


def test_remove_and_positions_follow_changes():
    q = FairQueue()
    items = [object() for _ in range(4)]
    for i, it in enumerate(items):
        q.push(it, priority=0, user=f"u{i % 2}")
    assert [q.position(it) for it in items] == [1, 2, 3, 4]
    assert q.remove(items[0]) and not q.remove(items[0])
    assert q.position(items[0]) is None
    assert len(q) == 3
    assert q.pop() is items[2]  # u0 keeps its turn with its next query
    assert [q.position(it) for it in (items[1], items[3])] == [1, 2]
