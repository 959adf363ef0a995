"""Backend changes shared by the REST API and the clusters page: store first, then registry.

Other processes and replicas see a change when they next poll the store (``store.syncInterval``).
Each function gets the two parts it changes: the store and this process's backend registry.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from gateway.admin.errors import ApiError
from gateway.backends.state import Backend
from gateway.config import ConfigError, validate_name
from gateway.limits import mask_credentials
from gateway.store.base import DuplicateBackend

if TYPE_CHECKING:
    from gateway.backends.state import Registry
    from gateway.store.writer import StoreCalls

log = logging.getLogger("gateway.api")


async def add_backend(store: "StoreCalls | None", registry: "Registry", b: Backend, who: str) -> None:
    assert store is not None
    if registry.get(b.name) is not None:
        raise ApiError(409, f"Backend {b.name!r} already exists; use /gateway/backend/modify/update")
    try:
        await store.call("add_backend", b)
    except DuplicateBackend:
        raise ApiError(409, f"Backend {b.name!r} already exists") from None
    registry.put(b)
    log.info("backend %s added by %s: %s group=%s active=%s", b.name, who, b.proxyTo, b.routingGroup, b.active)


async def update_backend(store: "StoreCalls | None", registry: "Registry", b: Backend, who: str, *,
                         insert_missing: bool) -> None:
    """trino-gateway's update inserts a missing backend; the page refuses (it was deleted)."""
    assert store is not None
    current = registry.get(b.name)
    if not insert_missing and current is None:
        raise ApiError(404, f"Backend {b.name!r} does not exist (it may have been deleted)")
    if current is not None:   # a URL sent back as shown (password masked) keeps its password
        b = _keep_password(b, current)
    await store.call("upsert_backend", b)
    registry.put(b)
    log.info("backend %s updated by %s: %s group=%s active=%s", b.name, who, b.proxyTo, b.routingGroup, b.active)


def _known_name(name: str) -> str:
    """A name no backend can have (control characters, lone surrogates, ...) is simply
    unknown: it must not reach the store, whose encoders would raise."""
    try:
        return validate_name(name, "name")
    except ConfigError:
        raise ApiError(404, f"Backend {name!r} does not exist") from None


def _keep_password(b: Backend, current: Backend) -> Backend:
    proxy_to, external = b.proxyTo, b.externalUrl
    if ":***@" in proxy_to and proxy_to == mask_credentials(current.proxyTo):
        proxy_to = current.proxyTo
    if external and ":***@" in external and external == mask_credentials(current.externalUrl or ""):
        external = current.externalUrl
    return Backend(b.name, proxy_to, external, b.routingGroup, b.active)


async def delete_backend(store: "StoreCalls | None", registry: "Registry", name: str, who: str) -> None:
    assert store is not None
    _known_name(name)
    if not await store.call("delete_backend", name):
        raise ApiError(404, f"Backend {name!r} does not exist")
    registry.remove(name)
    log.info("backend %s deleted by %s", name, who)


async def set_active(store: "StoreCalls | None", registry: "Registry", name: str, active: bool,
                     who: str) -> Backend:
    """Activate, or deactivate (drain: no new queries; running ones finish where they are)."""
    assert store is not None
    _known_name(name)
    current = registry.get(name)
    if current is None or not await store.call("set_backend_active", name, active):
        raise ApiError(404, f"Backend {name!r} does not exist")
    b = Backend(current.name, current.proxyTo, current.externalUrl, current.routingGroup, active)
    registry.put(b)
    log.info("backend %s %s by %s", name, "activated" if active else "deactivated (draining)", who)
    return b
