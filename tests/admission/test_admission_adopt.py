"""Adoption of a held query whose holder stopped, without sockets: two real ``Gateway``
objects (two processes) share one SQLite store (gateway/admission/shared.py)."""
from __future__ import annotations

import asyncio
import time

from tornado.httputil import HTTPHeaders

from gateway.app import Gateway
from gateway.backends.state import Backend, Health
from gateway.config import config_from_dict
from gateway.routing.router import Route
from gateway.store import open_store


class DirectCalls:
    """The store interface the gateway uses (``await store.call(name, ...)``), in-process."""

    def __init__(self, store) -> None:
        self.store = store
        self.calls: list[str] = []

    async def call(self, name, *args, **kw):
        self.calls.append(name)
        return getattr(self.store, name)(*args, **kw)


def process(tmp_path, store) -> Gateway:
    cfg = config_from_dict({"store": {"url": f"sqlite:///{tmp_path / 'g.db'}"},
                            "routing": {"tokenKey": "k" * 32, "rules": [str(tmp_path)], "defaultGroup": "etl"},
                            "groups": {"etl": {"maxRunningQueries": 1}},
                            "monitor": {"type": "noop"}}, "<test>")
    gw = Gateway(cfg)
    gw.store = DirectCalls(store)  # type: ignore[assignment]
    gw.registry.replace([Backend("etl-1", "http://etl-1:8080", None, "etl", True)])
    gw.registry.state("etl-1").health = Health.HEALTHY
    return gw


def test_a_stopped_holders_query_is_adopted_once_and_the_old_holder_lets_go(tmp_path):
    store = open_store(f"sqlite:///{tmp_path / 'g.db'}")
    holder, other, third = process(tmp_path, store), process(tmp_path, store), process(tmp_path, store)
    headers = HTTPHeaders({"X-Trino-User": "alice"})
    route = Route("etl", holder.registry.available("etl"), user="alice")

    async def go() -> None:
        await holder.admission.hold(route, b"SELECT 'orphan'", headers, "10.0.0.1", "http://gw:8080")
        (h,) = holder.admission.held.values()
        # while the holder beats, another process only answers from the row
        row = await other.admission.shared.answer(h.id, h.slug, 1, 0)
        assert row is not None and row.state == "QUEUED" and row.holder == holder.admission.instance
        assert not other.admission.held
        # a made-up slug (the held URI is signed with the routing-token key) is refused
        # without a store call
        before = list(other.store.calls)
        assert await other.admission.shared.answer(h.id, "y-not-the-slug", 1, 0) is None
        assert await other.admission.shared.answer(h.id, "y" + "0" * 40, 1, 0) is None
        assert other.store.calls == before
        # the holder goes silent: the next process polled adopts the statement, once
        store.sync_held(holder.admission.instance, time.time() - 60)
        adopted = await other.admission.shared.answer(h.id, h.slug, 3, 0)
        assert adopted is other.admission.held[h.id] and adopted.state == "QUEUED"
        assert adopted.body == b"SELECT 'orphan'" and adopted.slug == h.slug and adopted.token == 3
        assert other.admission.queues["etl"].peek() is adopted
        row = await third.admission.shared.answer(h.id, h.slug, 3, 0)
        assert not third.admission.held and row.holder == other.admission.instance
        # the old holder was only slow: its heartbeat shows the query is gone, it lets go
        await holder.admission._heartbeat(time.time())
        assert h.id not in holder.admission.held and not holder.admission.queues["etl"]
        # and even if it had tried to send it first, its claim fails; the adopter's succeeds
        assert not await holder.admission._claim(h)
        assert await other.admission._claim(adopted)
    asyncio.run(go())
