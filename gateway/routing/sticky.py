"""Which backend owns a query, transaction, spooled segment or OAuth2 exchange, in memory.

Every follow-up request of a query must reach the backend that created it. Lookups here are a
dict access on the request path; entries expire after a TTL and the map is bounded so a busy
gateway cannot grow without limit (oldest entries go first). What one process learns is also
written to the store by the history writer, so other processes and a restarted gateway can
find it there (see docs/sticky-routing.md).
"""
from __future__ import annotations

import time
from collections import deque


class StickyMap:
    """Maps (kind, key) → backend name with expiry; kinds are the protocol request kinds."""

    def __init__(self, ttl: float = 86400.0, max_entries: int = 2_000_000) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self._maps: dict[str, dict[str, str]] = {}
        # (expires_at, kind, key) in insertion order; TTL is constant so this is also expiry order
        self._order: deque[tuple[float, str, str]] = deque()
        self._names: dict[str, str] = {}   # interned backend names: one string per backend

    def __len__(self) -> int:
        return sum(len(m) for m in self._maps.values())

    def put(self, kind: str, key: str, backend: str, now: float | None = None) -> None:
        now = time.time() if now is None else now
        backend = self._names.setdefault(backend, backend)
        m = self._maps.get(kind)
        if m is None:
            m = self._maps[kind] = {}
        if key not in m:
            self._order.append((now + self.ttl, kind, key))
        m[key] = backend
        if len(self._order) > self.max_entries:
            self._evict_one()

    def get(self, kind: str, key: str) -> str | None:
        m = self._maps.get(kind)
        return m.get(key) if m else None

    def discard(self, kind: str, key: str) -> None:
        m = self._maps.get(kind)
        if m:
            m.pop(key, None)

    def forget_backend(self, backend: str) -> int:
        """Drop every mapping to a deleted backend; returns how many went."""
        n = 0
        for m in self._maps.values():
            dead = [k for k, v in m.items() if v == backend]
            for k in dead:
                del m[k]
            n += len(dead)
        return n

    def _evict_one(self) -> None:
        _, kind, key = self._order.popleft()
        m = self._maps.get(kind)
        if m:
            m.pop(key, None)

    def expire(self, now: float | None = None) -> int:
        """Remove expired entries; call periodically (cheap: stops at the first live one)."""
        now = time.time() if now is None else now
        n = 0
        while self._order and self._order[0][0] <= now:
            self._evict_one()
            n += 1
        return n
