"""What admission uses of the running gateway: ``AdmissionParts``, built by ``gateway.app``.

Admission never sees the ``Gateway`` (which holds it): it gets the parts it reads (configuration,
backend registry, balancer, metrics), the one forwarder it sends a held statement through, the
lifecycle it publishes a dispatched query's start on, and as callables the few behaviours of the
gateway it needs (route a statement again, record a refused one, learn what an answer taught).
The store and the routing-token keys exist only once the gateway has started, so they are
callables too.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Awaitable, Callable

if TYPE_CHECKING:
    from tornado.httputil import HTTPHeaders

    from gateway.backends.state import Registry
    from gateway.config import Config
    from gateway.lifecycle import Lifecycle
    from gateway.metrics import Metrics
    from gateway.proxy.client import BackendClient
    from gateway.proxy.forward import Forwarder
    from gateway.routing.balancer import Balancer
    from gateway.routing.router import Route
    from gateway.routing.tokens import TokenKeys
    from gateway.store.writer import StoreCalls

__all__ = ["AdmissionParts"]


@dataclass(frozen=True)
class AdmissionParts:
    config: Config
    registry: Registry                     # backends, their live state and counts
    balancer: Balancer                     # the first backend tried for a held statement
    metrics: Metrics
    client: BackendClient                  # cancels a dispatched query its client never saw
    forwarder: Forwarder                   # the one forwarding path (406 retry, failure notes)
    lifecycle: Lifecycle                   # a dispatched query started
    store: Callable[[], StoreCalls | None]     # leases and held rows (None before start)
    tokens: Callable[[], TokenKeys | None]     # signs held queries' slugs (None before start)
    # an adopted statement routed again (``Gateway.route_statement``)
    route_statement: Callable[[HTTPHeaders, bytes, str], Awaitable[Route]]
    # its history row: (route, query id, final state, message, submitted_at=)
    statement_refused: Callable[..., None]
    learn: Callable[[str, str, str], None]     # (kind, key, backend): who owns an id
    taught: Callable[[Any, str], None]         # what an answer's headers taught, from a backend
