"""Owner lookups for ids clients bring without a gateway-written URI (gateway/routing/owners.py)."""
from __future__ import annotations

import asyncio
import base64
from collections import Counter

from tornado.httputil import HTTPHeaders

from gateway.backends.state import Backend, Registry
from gateway.routing.owners import NOWHERE, BackendProbe, OwnerLookup
from gateway.routing.sticky import StickyMap

QID = "20240101_123456_00001_abcde"


def _registry(*names: str) -> Registry:
    r = Registry()
    r.replace([Backend(n, f"http://{n}:8080", None, "adhoc", True) for n in names])
    return r


class FakeStore:
    """``get_sticky`` answers None until ``appear_after`` calls, then the mapping."""

    def __init__(self, backend: str | None, appear_after: int = 0) -> None:
        self.backend = backend
        self.appear_after = appear_after
        self.calls = 0

    async def call(self, name: str, kind: str, key: str, now: float) -> str | None:
        assert name == "get_sticky"
        self.calls += 1
        await asyncio.sleep(0)
        return self.backend if self.calls > self.appear_after else None


def _lookup(probe_answer: str | None = None, *, store: FakeStore | None = None,
            names: tuple[str, ...] = ("b1", "b2")) -> tuple[OwnerLookup, Counter[str], list[str]]:
    counts: Counter[str] = Counter()
    probed: list[str] = []

    async def probe(qid: str, headers: HTTPHeaders) -> str | None:
        probed.append(qid)
        return probe_answer

    owners = OwnerLookup(StickyMap(ttl=60), _registry(*names), probe=probe,
                         count=lambda source: counts.update([source]), flush_interval=0.05)
    owners.store = store
    return owners, counts, probed


def test_memory_first_then_probe_then_store_each_counted_by_source():
    async def go() -> None:
        owners, counts, probed = _lookup("b2", store=FakeStore("b1"))
        assert await owners.owner("query", QID, HTTPHeaders()) == "b2"     # probe
        assert await owners.owner("query", QID, HTTPHeaders()) == "b2"     # now in memory
        assert probed == [QID]
        assert await owners.owner("transaction", "tx", HTTPHeaders()) == "b1"  # not probeable: store
        owners.learn("spool", "s1", "b1")
        assert await owners.owner("spool", "s1", HTTPHeaders()) == "b1"
        assert counts == Counter({"probe": 1, "memory": 2, "store": 1})
    asyncio.run(go())


def test_a_store_lookup_waits_for_a_mapping_another_process_is_about_to_write():
    async def go() -> None:
        store = FakeStore("b1", appear_after=3)
        owners, counts, _ = _lookup(None, store=store)
        assert await owners.owner("query", QID, HTTPHeaders()) == "b1"
        assert store.calls == 4 and counts == Counter({"store": 1})
    asyncio.run(go())


def test_concurrent_lookups_of_one_key_share_one_store_wait():
    async def go() -> None:
        store = FakeStore("b2", appear_after=2)
        owners, counts, _ = _lookup(None, store=store)
        got = await asyncio.gather(*(owners.owner("transaction", "tx", HTTPHeaders()) for _ in range(20)))
        assert got == ["b2"] * 20
        assert store.calls == 3          # one poll loop, not twenty
    asyncio.run(go())


def test_unknown_everywhere_is_none_after_the_wait():
    async def go() -> None:
        owners, counts, _ = _lookup(None, store=FakeStore(None))
        assert await owners.owner("query", QID, HTTPHeaders()) is None
        assert counts == Counter({"none": 1})
    asyncio.run(go())


def test_a_query_every_backend_denies_reads_the_store_once_without_waiting():
    """Every backend answered 404/410: no other process can be about to learn it. Waiting two
    flush intervals per made-up id would let pipelined unknown ids hold a connection for seconds."""
    async def go() -> None:
        store = FakeStore("b1", appear_after=3)
        owners, counts, _ = _lookup(NOWHERE, store=store)
        assert await owners.owner("query", QID, HTTPHeaders()) is None
        assert store.calls == 1 and counts == Counter({"none": 1})
    asyncio.run(go())


def test_a_mapping_to_a_removed_backend_is_not_an_owner():
    async def go() -> None:
        owners, counts, _ = _lookup(None, store=FakeStore("gone"))
        owners.sticky.put("transaction", "tx", "gone")
        assert await owners.owner("transaction", "tx", HTTPHeaders()) is None
    asyncio.run(go())


def test_the_probe_uses_credentials_that_work_when_a_browser_sends_none():
    """Finding 2 of issue 14: the probe forwarded only X-Trino-User and Authorization, so a
    browser's request (neither) made every backend answer 401 and the query looked unknown."""
    probe = BackendProbe(None, _registry("b1"), timeout=1.0)  # type: ignore[arg-type]
    assert dict(probe.headers(HTTPHeaders())) == {"X-Trino-User": "trino-gateway"}
    assert dict(probe.headers(HTTPHeaders({"X-Trino-User": "alice", "Authorization": "Bearer t"}))) == \
        {"X-Trino-User": "alice", "Authorization": "Bearer t"}
    probe = BackendProbe(None, _registry("b1"), timeout=1.0, username="mon", password="pw")  # type: ignore[arg-type]
    h = dict(probe.headers(HTTPHeaders()))
    assert h["X-Trino-User"] == "mon"
    assert h["Authorization"] == "Basic " + base64.b64encode(b"mon:pw").decode()
