"""Backends in the store: CRUD, duplicates, unknown names, and the change stamp."""
from __future__ import annotations

import pytest

from gateway.backends.state import Backend
from gateway.store import DuplicateBackend, StoreError


def _b(name: str, **kw) -> Backend:
    return Backend(name=name, proxyTo=kw.pop("proxyTo", f"http://{name}:8080"), **kw)


def test_add_and_list_backends_sorted_by_name(store) -> None:
    store.add_backend(_b("trino-2", routingGroup="etl", active=False,
                         externalUrl="https://trino-2.example.com"))
    store.add_backend(_b("trino-1"))
    assert store.list_backends() == [
        Backend("trino-1", "http://trino-1:8080", None, "adhoc", True),
        Backend("trino-2", "http://trino-2:8080", "https://trino-2.example.com", "etl", False),
    ]


def test_adding_an_existing_name_raises_duplicate_and_changes_nothing(store) -> None:
    store.add_backend(_b("trino-1"))
    with pytest.raises(DuplicateBackend, match="'trino-1' already exists") as info:
        store.add_backend(_b("trino-1", proxyTo="http://other:1"))
    assert isinstance(info.value, StoreError) and info.value.name == "trino-1"
    assert store.list_backends()[0].proxyTo == "http://trino-1:8080"


def test_upsert_inserts_then_updates(store) -> None:
    store.upsert_backend(_b("t"))
    store.upsert_backend(_b("t", proxyTo="http://new:9", routingGroup="etl",
                            externalUrl="https://x", active=False))
    assert store.list_backends() == [Backend("t", "http://new:9", "https://x", "etl", False)]
    store.upsert_backend(_b("t", proxyTo="http://new:9", routingGroup="etl"))   # externalUrl back to None
    assert store.list_backends() == [Backend("t", "http://new:9", None, "etl", True)]


def test_delete_and_activate_report_unknown_names(store) -> None:
    store.add_backend(_b("t"))
    assert store.set_backend_active("t", False) is True
    assert store.list_backends()[0].active is False
    assert store.set_backend_active("t", True) is True
    assert store.list_backends()[0].active is True
    assert store.set_backend_active("nope", False) is False
    assert store.delete_backend("nope") is False
    assert store.delete_backend("t") is True
    assert store.list_backends() == []
    assert store.delete_backend("t") is False


def test_stamp_changes_on_every_change_and_only_then(store) -> None:
    stamps = [store.backends_stamp()]

    def changed() -> bool:
        stamps.append(store.backends_stamp())
        return stamps[-1] != stamps[-2]

    assert not changed()
    store.add_backend(_b("t"))
    assert changed()
    store.upsert_backend(_b("t"))                       # identical: not a change
    assert not changed()
    store.upsert_backend(_b("t", routingGroup="etl"))
    assert changed()
    store.set_backend_active("t", False)
    assert changed()
    store.delete_backend("t")
    assert changed()
    store.delete_backend("t")                           # nothing to delete
    assert not changed()
    assert len(set(stamps)) == 5


def test_another_process_sees_the_change_through_the_stamp(store, store_url, make_store) -> None:
    other = make_store(store_url)
    seen = other.backends_stamp()
    store.add_backend(_b("t"))
    assert other.backends_stamp() != seen
    assert [b.name for b in other.list_backends()] == ["t"]
