"""The gateway queue's order: priority, then users taking turns, then arrival."""
from __future__ import annotations

from gateway.admission.fair_queue import FairQueue


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


def test_push_front_gives_an_item_its_place_back() -> None:
    q: FairQueue[str] = FairQueue()
    for item, user in (("a1", "a"), ("b1", "b"), ("a2", "a"), ("c1", "c")):
        q.push(item, priority=0, user=user)
    q.push("hi", priority=5, user="z")
    assert q.pop() == "hi"
    first = q.pop()
    assert first == "a1"
    # its dispatch failed: it goes back first, and the others keep their order behind it
    q.push_front(first, priority=0, user="a")
    assert list(q) == ["a1", "b1", "c1", "a2"]
    assert q.position("a1") == 1 and len(q) == 4
    # a user with nothing queued at that priority is put first too
    q2: FairQueue[str] = FairQueue()
    q2.push("x1", priority=1, user="x")
    q2.push_front("y1", priority=1, user="y")
    assert [q2.pop(), q2.pop(), q2.pop()] == ["y1", "x1", None]
