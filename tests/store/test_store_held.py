"""The shared rows of held queries (gateway/admission/shared.py), on SQLite and PostgreSQL."""
from __future__ import annotations

import uuid

import pytest

from gateway.store import HeldRow


@pytest.fixture
def ids() -> list[str]:
    """Held ids of one test (the PostgreSQL database is shared by the session's tests)."""
    n = uuid.uuid4().int % 10**5
    return [f"20261203_12{i:04d}_{n:05d}_gtw01" for i in range(3)]


def row(qid: str, holder: str = "p1", seen: float = 100.0) -> HeldRow:
    return HeldRow(qid, "yslug", holder, seen, "etl", 100.0, 100.0, "QUEUED", False, '{"body": ""}')


def test_polls_are_recorded_and_need_the_slug(store, ids) -> None:
    QID = ids[0]
    store.put_held(row(QID))
    assert store.poll_held(QID, "ywrong", 110.0) is None
    assert store.poll_held(ids[1], "yslug", 110.0) is None
    got = store.poll_held(QID, "yslug", 110.0)
    assert got is not None and got.last_poll == 110.0 and got.state == "QUEUED" and not got.cancel_requested
    assert store.poll_held(QID, "yslug", 105.0).last_poll == 110.0     # never goes back
    assert store.poll_held(QID, "yslug", 111.0, cancel=True).cancel_requested
    # the holder's heartbeat returns what others saw
    assert (QID, 111.0, True) in store.sync_held("p1", 112.0)
    assert QID not in [r[0] for r in store.sync_held("p2", 112.0)]
    assert store.poll_held(QID, "yslug", 113.0).holder_seen == 112.0


def test_answers_reach_every_reader(store, ids) -> None:
    QID = ids[0]
    store.put_held(row(QID))
    store.answer_held(QID, "DISPATCHED", '{"backend": "etl-1"}')
    got = store.poll_held(QID, "yslug", 101.0)
    assert got.state == "DISPATCHED" and got.answer == '{"backend": "etl-1"}'


def test_adoption_only_from_a_stale_holder_and_never_after_a_claim(store, ids) -> None:
    QID = ids[0]
    store.put_held(row(QID, seen=100.0))
    assert not store.adopt_held(QID, "p2", 99.0, 104.0)        # the holder was seen recently
    assert store.adopt_held(QID, "p2", 105.0, 106.0)           # stale: p2 takes it
    assert not store.adopt_held(QID, "p3", 105.0, 106.0)       # once: p2 beat recently
    assert not store.claim_held(QID, "p1")                     # the old holder must not send it
    assert store.claim_held(QID, "p2")
    assert store.poll_held(QID, "yslug", 107.0).state == "DISPATCHING"
    assert not store.adopt_held(QID, "p3", 1e9, 1e9)           # being sent: never adopted
    assert store.claim_held(ids[2], "p1")   # no row (its write failed)


def test_delete_by_id_and_stale_holders(store, ids) -> None:
    QID = ids[0]
    store.put_held(row(QID, seen=1e9))
    other = HeldRow(ids[1], "y2", "dead", 10.0, "etl", 10.0, 10.0, "QUEUED", False, "{}")
    store.put_held(other)
    store.delete_held([], 50.0)                                 # the dead holder's row
    assert store.poll_held(ids[1], "y2", 200.0) is None
    assert store.poll_held(QID, "yslug", 200.0) is not None
    assert store.delete_held([QID], 50.0) == 1
    assert store.poll_held(QID, "yslug", 200.0) is None
