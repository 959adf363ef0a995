"""Sticky mappings (query / transaction / spool / oauth id -> backend) with expiry."""
from __future__ import annotations

import pytest

from gateway.store import STICKY_KINDS, StoreError


def test_put_get_and_overwrite(store) -> None:
    store.put_sticky([("query", "20240101_000000_00001_abcde", "t1", 100.0),
                      ("transaction", "tx-1", "t2", 100.0)])
    assert store.get_sticky("query", "20240101_000000_00001_abcde", 50.0) == "t1"
    assert store.get_sticky("transaction", "tx-1", 50.0) == "t2"
    assert store.get_sticky("spool", "tx-1", 50.0) is None          # kinds are separate
    store.put_sticky([("query", "20240101_000000_00001_abcde", "t3", 200.0)])
    assert store.get_sticky("query", "20240101_000000_00001_abcde", 150.0) == "t3"


def test_expired_mappings_are_invisible_and_deleted(store) -> None:
    store.put_sticky([(kind, f"k-{kind}", "t1", 100.0) for kind in STICKY_KINDS]
                     + [("query", "lives", "t2", 500.0)])
    assert store.get_sticky("oauth", "k-oauth", 99.9) == "t1"
    assert store.get_sticky("oauth", "k-oauth", 100.0) is None       # expires_at is exclusive
    assert store.delete_expired_sticky(100.0) == len(STICKY_KINDS)
    assert store.delete_expired_sticky(100.0) == 0
    assert store.get_sticky("query", "lives", 100.0) == "t2"


def test_unknown_kind_is_refused(store) -> None:
    with pytest.raises(StoreError, match="sticky kind 'cookie' is not one of query"):
        store.put_sticky([("cookie", "k", "t1", 1.0)])
    with pytest.raises(StoreError, match="sticky kind 'cookie'"):
        store.get_sticky("cookie", "k", 0.0)


def test_a_large_batch_keeps_the_last_mapping_of_each_key(store) -> None:
    rows = [("query", f"q{i % 300}", f"t{i}", 100.0 + i) for i in range(900)]
    store.put_sticky(rows)
    for k in (0, 150, 299):
        assert store.get_sticky("query", f"q{k}", 50.0) == f"t{600 + k}"


def test_a_shared_secret_is_created_once_and_then_only_read(store) -> None:
    # every worker and replica proposes its own random value; the first one stored wins
    assert store.shared_secret("routing-token-key", "first", 1.0) == "first"
    assert store.shared_secret("routing-token-key", "second", 2.0) == "first"
    assert store.shared_secret("oauth-cookie-key", "other", 3.0) == "other"   # names are separate
