"""Backends (Trino coordinators behind the gateway) and what the monitor knows about them.

A *backend* is configuration: name, where to forward (``proxyTo``), the URL people open in a
browser (``externalUrl``), its routing group and whether it takes new queries (``active``).
A *backend state* is what the monitor and the proxy learned: health and load. The registry holds
both in memory so the request path never waits on the store.
"""
from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field
from typing import Any, Iterable

from gateway.limits import mask_credentials


class Health(str, enum.Enum):
    PENDING = "PENDING"
    HEALTHY = "HEALTHY"
    UNHEALTHY = "UNHEALTHY"
    UNKNOWN = "UNKNOWN"


@dataclass
class Backend:
    name: str
    proxyTo: str
    externalUrl: str | None = None
    routingGroup: str = "adhoc"
    active: bool = True

    @property
    def external_url(self) -> str:
        return self.externalUrl or self.proxyTo

    def to_json(self) -> dict[str, Any]:
        """The trino-gateway-compatible JSON shape of a backend, with any password in its URLs
        masked (``/api/public/backends`` needs no login)."""
        return {
            "name": self.name,
            "proxyTo": mask_credentials(self.proxyTo),
            "externalUrl": mask_credentials(self.external_url),
            "routingGroup": self.routingGroup,
            "active": self.active,
        }


@dataclass
class BackendState:
    """Live facts about one backend; owned by the monitor, adjusted by the proxy."""
    health: Health = Health.PENDING
    queued: int = 0
    running: int = 0
    workers: int | None = None
    user_queued: dict[str, int] = field(default_factory=dict)
    last_probe: float | None = None      # unix time of the last completed probe
    error: str | None = None             # the last probe's or forward's error
    # Counts of queries this process routed since the last probe, so a burst between two
    # probes spreads out instead of piling onto the backend the probe said was emptiest.
    routed_since_probe: int = 0
    user_routed_since_probe: dict[str, int] = field(default_factory=dict)
    consecutive_ok: int = 0
    consecutive_bad: int = 0
    # True once a probe reported queued/running counts (ui-api, metrics). The info-api and
    # noop monitors never do: their ``queued``/``running`` stay 0 for the balancer, but no
    # page or API may show that 0 as a fact (``known_queued``/``known_running`` are None).
    counts_known: bool = False

    @property
    def known_queued(self) -> int | None:
        return self.queued if self.counts_known else None

    @property
    def known_running(self) -> int | None:
        return self.running if self.counts_known else None

    def to_json(self) -> dict[str, Any]:
        return {
            "health": self.health.value,
            "queued": self.known_queued,
            "running": self.known_running,
            "workers": self.workers,
            "userQueued": dict(self.user_queued),
            "lastProbe": self.last_probe,
            "error": mask_credentials(self.error) if self.error else self.error,
        }


class Registry:
    """Backends and their states, in memory, shared by the proxy, the monitor and the API."""

    def __init__(self, backends: Iterable[Backend] = ()) -> None:
        self._backends: dict[str, Backend] = {}
        self.states: dict[str, BackendState] = {}
        self.version = 0
        self.replace(backends)

    def replace(self, backends: Iterable[Backend]) -> None:
        """Swap in a new backend list (from the store); states of known names are kept."""
        new = {b.name: b for b in backends}
        for name in new:
            self.states.setdefault(name, BackendState())
        for name in list(self.states):
            if name not in new:
                del self.states[name]
        if new != self._backends:
            self.version += 1
        self._backends = new

    def put(self, backend: Backend) -> None:
        self._backends = {**self._backends, backend.name: backend}
        self.states.setdefault(backend.name, BackendState())
        self.version += 1

    def remove(self, name: str) -> bool:
        if name not in self._backends:
            return False
        self._backends = {k: v for k, v in self._backends.items() if k != name}
        self.states.pop(name, None)
        self.version += 1
        return True

    def get(self, name: str) -> Backend | None:
        return self._backends.get(name)

    def all(self) -> list[Backend]:
        return list(self._backends.values())

    def state(self, name: str) -> BackendState:
        st = self.states.get(name)
        if st is None:
            st = self.states[name] = BackendState()
        return st

    def groups(self) -> set[str]:
        return {b.routingGroup for b in self._backends.values()}

    def in_group(self, group: str) -> list[Backend]:
        return [b for b in self._backends.values() if b.routingGroup == group]

    def available(self, group: str) -> list[Backend]:
        """Backends that may take a new query: active and HEALTHY."""
        return [b for b in self._backends.values()
                if b.routingGroup == group and b.active
                and self.state(b.name).health is Health.HEALTHY]

    def mark_unhealthy(self, name: str, error: str) -> None:
        """Passive health: a forward failed to connect or timed out. The monitor restores it."""
        st = self.state(name)
        st.health = Health.UNHEALTHY
        st.error = error
        st.consecutive_ok = 0
        st.last_probe = st.last_probe or time.time()
