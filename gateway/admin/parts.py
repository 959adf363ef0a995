"""What the admin surface (REST API and pages) may use of the running gateway: ``AdminParts``.

``gateway.app.make_app`` builds it once, after the gateway has started (the store is open), and
hands it to every admin handler; no admin module sees the ``Gateway``. Parts are the objects of
one concept each (backend registry, store, rules watcher, router, monitor, metrics, ...); where
the admin surface needs a behaviour of the gateway (is it shutting down, the search store, SQL
facts off the event loop, refreshing the gauges) it gets that one callable.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Awaitable, Callable, Mapping, Protocol, Sized

if TYPE_CHECKING:
    from tornado.httputil import HTTPHeaders

    from gateway.admin.session import SessionManager
    from gateway.backends.state import Registry
    from gateway.backends.unfinished import UnfinishedQueries
    from gateway.config import Config
    from gateway.metrics import Metrics
    from gateway.routing.reload import RulesWatcher
    from gateway.routing.router import Router
    from gateway.routing.sql import SqlFacts
    from gateway.runtime.offload import Offload, PasswordChecks
    from gateway.store.writer import StoreCalls

    # SQL facts of a statement (headers, body), found off the event loop; the note says why
    # they are unknown when the time budget ran out (gateway.app.Gateway.sql_facts).
    SqlFactsOf = Callable[[HTTPHeaders, bytes], Awaitable[tuple[SqlFacts, str | None]]]

__all__ = ["AdminParts", "GatewayQueue", "MonitorView"]


class GatewayQueue(Protocol):
    """What the dashboard reads of admission: the queue of each capped routing group."""

    @property
    def queues(self) -> Mapping[str, Sized]: ...

    def capped(self, group: str | None) -> bool: ...


class MonitorView(Protocol):
    """What the admin surface reads of the monitor (readiness, the dashboard's round count)."""

    first_round_done: bool
    rounds: int


@dataclass(frozen=True)
class AdminParts:
    config: Config
    registry: Registry                      # backends and their live state
    store: StoreCalls | None                # the gateway's store (None only before start)
    search_store: Callable[[], Awaitable[StoreCalls]]   # history searches: a store process of their own
    unfinished: UnfinishedQueries           # routed and not seen finishing, per backend
    rules: RulesWatcher                     # the ruleset in force, its files, reload status
    router: Router                          # explain: a dry run of routing
    sql_facts: SqlFactsOf
    offload: Offload                        # rules checks and saves, within a time budget
    passwords: PasswordChecks               # PBKDF2 off the event loop
    monitor: MonitorView
    queue: GatewayQueue                     # admission's gateway queue, per routing group
    metrics: Metrics
    refresh_gauges: Callable[[], None]      # copy live state into the gauges before rendering
    metrics_instance: str                   # this gateway in the stored metric samples
    shutting_down: Callable[[], bool]
    sessions: SessionManager                # admin page sessions, CSRF, login rate limit
