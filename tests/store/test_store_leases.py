"""Admission leases: caps hold across connections and processes; leases expire and are freed."""
from __future__ import annotations

import threading
import time
import uuid

import pytest


def lid() -> str:
    return uuid.uuid4().hex


def test_cap_per_backend_and_preference_order(store):
    now = time.time()
    got = [store.acquire_lease(lid(), "etl", "u", [("a", 0), ("b", 0)], 2, None, now, 60) for _ in range(5)]
    assert got == ["a", "a", "b", "b", None]
    assert store.lease_counts(now) == {"a": 2, "b": 2}


def test_floor_from_the_monitor_counts(store):
    now = time.time()
    assert store.acquire_lease(lid(), "etl", "u", [("a", 2)], 3, None, now, 60) == "a"
    assert store.acquire_lease(lid(), "etl", "u", [("a", 3)], 3, None, now, 60) is None


def test_user_cap_in_a_group(store):
    now = time.time()
    assert store.acquire_lease(lid(), "etl", "alice", [("a", 0)], None, 2, now, 60) == "a"
    assert store.acquire_lease(lid(), "etl", "alice", [("a", 0)], None, 2, now, 60) == "a"
    assert store.acquire_lease(lid(), "etl", "alice", [("a", 0)], None, 2, now, 60) is None
    assert store.acquire_lease(lid(), "etl", "bob", [("a", 0)], None, 2, now, 60) == "a"
    assert store.acquire_lease(lid(), "adhoc", "alice", [("x", 0)], None, 2, now, 60) == "x"


def test_release_bind_renew_and_expiry(store):
    now = time.time()
    l1, l2 = lid(), lid()
    assert store.acquire_lease(l1, "g", None, [("a", 0)], 2, None, now, 10) == "a"
    assert store.acquire_lease(l2, "g", None, [("a", 0)], 2, None, now, 10) == "a"
    store.bind_lease(l1, "20240101_000000_00001_abcde")
    store.release_leases(["20240101_000000_00001_abcde"])  # by query id
    assert store.lease_counts(now) == {"a": 1}
    store.renew_leases([l2], now + 100)
    # l2 is renewed: still counted after the first TTL
    assert store.acquire_lease(lid(), "g", None, [("a", 0)], 2, None, now + 50, 10) == "a"
    assert store.acquire_lease(lid(), "g", None, [("a", 0)], 2, None, now + 50, 10) is None
    # everything has expired later: a crashed gateway cannot hold capacity forever
    assert store.acquire_lease(lid(), "g", None, [("a", 0)], 2, None, now + 1000, 10) == "a"
    store.release_leases([l2])  # by lease id
    assert store.lease_counts(now + 1000) == {"a": 1}


def test_concurrent_acquires_never_exceed_the_cap(store, store_url, make_store):
    stores = [make_store(store_url) for _ in range(4)]
    got: list[str | None] = []
    lock = threading.Lock()

    def grab(s) -> None:
        for _ in range(10):
            r = s.acquire_lease(lid(), "burst", None, [("a", 0), ("b", 0)], 3, None, time.time(), 60)
            with lock:
                got.append(r)

    threads = [threading.Thread(target=grab, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(x for x in got if x) == ["a"] * 3 + ["b"] * 3
