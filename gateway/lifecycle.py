"""Query lifecycle events: a query started on a backend, was seen again, ended.

The request path publishes; history, metrics, the balancer's counts and admission control
subscribe (``Gateway`` wires them). Publishers do not know who listens, so the proxy handler,
the gateway queue and the forwarder stay free of history and metrics code, and a test can
subscribe a list and check exactly which events one exchange produced.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable

__all__ = ["Started", "Lifecycle"]

log = logging.getLogger("gateway.lifecycle")


@dataclass(frozen=True, slots=True)
class Started:
    """A query now exists on ``backend``: what routing decided for it and when."""
    query_id: str
    backend: Any              # gateway.backends.state.Backend
    route: Any                # gateway.routing.router.Route
    submitted_at: float
    queued_ms: int | None     # time held in the gateway queue (None: never held)


class Lifecycle:
    def __init__(self) -> None:
        self._started: list[Callable[[Started], None]] = []
        self._seen: list[Callable[[str], None]] = []
        self._finished: list[Callable[[str, str, str | None], None]] = []

    def on_started(self, fn: Callable[[Started], None]) -> None:
        self._started.append(fn)

    def on_seen(self, fn: Callable[[str], None]) -> None:
        self._seen.append(fn)

    def on_finished(self, fn: Callable[[str, str, str | None], None]) -> None:
        self._finished.append(fn)

    def started(self, event: Started) -> None:
        for fn in self._started:
            _safely(fn, event)

    def seen(self, query_id: str) -> None:
        """A follow-up of a query went through: it is still in flight."""
        for fn in self._seen:
            fn(query_id)

    def finished(self, query_id: str, state: str, error: str | None) -> None:
        for fn in self._finished:
            _safely(fn, query_id, state, error)


def _safely(fn: Callable[..., None], *args: Any) -> None:
    # One subscriber failing (a full history queue, a metrics bug) must not stop the others or
    # the request that published the event.
    try:
        fn(*args)
    except Exception:  # noqa: BLE001
        log.exception("lifecycle subscriber %s failed", getattr(fn, "__qualname__", fn))
