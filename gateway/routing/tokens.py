"""Routing tokens: the owning backend, written into every URI the gateway hands out.

A follow-up request (the next result page, a cancel, a spooled segment, an OAuth2 token poll)
must reach the backend that owns its query. Instead of remembering ``query id → backend`` and
sharing that between workers and replicas, the gateway writes the answer into the URI itself:

    {gateway}/_r/<token>/v1/statement/executing/<qid>/<slug>/<n>

and any worker or replica routes the follow-up from the token alone (no memory, no store, no
probe). A token is

    <key id>.<backend name, base64url>.<MAC, base64url>

where the MAC is HMAC-SHA256 (truncated to 96 bits) over the backend name and the *scope* of
the request: its kind and key as ``gateway.protocol.classify`` reads them from the path behind
the token (the query id, the spooled segment id, the OAuth2 auth id). So a token only routes
requests about the resource it was written for: a client cannot take the token of one query and
point another query, or a new statement, at a backend of its choosing, and a changed byte makes
the token invalid (refused, never routed).

Keys come from configuration or from the store (created once per deployment, never per worker;
see ``docs/sticky-routing.md``). The key id names which key signed a token, so the gateway can
accept the previous keys during a rotation while it signs with the current one.

Pure code: no sockets, no clock, no store.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import itertools
import hmac
from typing import Any, Sequence

__all__ = ["PREFIX", "TokenError", "TokenKeys", "split_path", "key_id", "remember"]

PREFIX = "/_r/"            # path prefix that carries a token: /_r/<token>/<the backend's path>
_MAC_BYTES = 12            # 96-bit MAC: forging one takes ~2^96 tries, each a request to us
_SEP = "."
_CACHE_MAX = 32768         # tokens remembered per direction: a poll repeats its query's token
_BLOCK = 64                # SHA-256's block size, for HMAC's key pads (RFC 2104)
_IPAD = bytes(b ^ 0x36 for b in range(256))
_OPAD = bytes(b ^ 0x5C for b in range(256))


class TokenError(ValueError):
    """A token that is malformed, signed with an unknown key, or not valid for this request."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise TokenError("routing token is not valid base64url") from None


def _hmac_pads(key: bytes) -> tuple["hashlib._Hash", "hashlib._Hash"]:
    """HMAC-SHA256's inner and outer hash states after the key's pads (RFC 2104), computed once
    per key. ``hmac.digest`` sets them up again for every MAC; copying them costs half as much
    (tests/routing/test_tokens_fast.py holds the MACs to ``hmac.digest``'s)."""
    if len(key) > _BLOCK:
        key = hashlib.sha256(key).digest()
    key = key.ljust(_BLOCK, b"\0")
    return hashlib.sha256(key.translate(_IPAD)), hashlib.sha256(key.translate(_OPAD))


def key_id(key: bytes) -> str:
    """A short public name of a key (4 characters), so a token says which key signed it."""
    return _b64(hashlib.sha256(b"trino-gateway routing key id\x00" + key).digest()[:3])


class TokenKeys:
    """The current key (signs new tokens) and previous ones (still accepted)."""

    __slots__ = ("current", "previous", "_by_id", "_current_id", "_encoded", "_verified", "_pads")

    def __init__(self, current: bytes, previous: Sequence[bytes] = ()) -> None:
        if len(current) < 16 or any(len(p) < 16 for p in previous):
            raise ValueError("a routing token key must be at least 16 bytes")
        keys = (current, *previous)
        ids = [key_id(k) for k in keys]
        if len(set(ids)) != len(ids):
            raise ValueError("routing token keys must differ from each other")
        self.current = current
        self.previous = tuple(previous)
        self._by_id = dict(zip(ids, keys))   # key id -> key; read for every follow-up
        self._current_id = ids[0]
        self._pads = {k: _hmac_pads(k) for k in keys}
        # Every poll of a query writes and brings back the same token: remember the last few
        # thousand answers (plain strings as keys, so the garbage collector never walks them).
        self._encoded: dict[str, str] = {}
        self._verified: dict[str, str] = {}

    def __reduce__(self) -> tuple[type, tuple[bytes, tuple[bytes, ...]]]:
        # The hash states cannot be pickled or copied as such: rebuild from the keys.
        return TokenKeys, (self.current, self.previous)

    @classmethod
    def from_text(cls, current: str, previous: Sequence[str] = ()) -> "TokenKeys":
        return cls(current.encode(), tuple(p.encode() for p in previous))

    def _mac(self, key: bytes, backend: str, kind: str, scope: str) -> str:
        """HMAC-SHA256(key, backend NUL kind NUL scope), truncated, in base64url."""
        inner, outer = self._pads[key]
        h = inner.copy()
        h.update(f"{backend}\x00{kind}\x00{scope}".encode())
        o = outer.copy()
        o.update(h.digest())
        return _b64(o.digest()[:_MAC_BYTES])

    def encode(self, backend: str, kind: str, scope: str) -> str:
        """The token routing requests of ``kind`` about ``scope`` (a query id, a segment id,
        an auth id) to ``backend``."""
        memo = f"{backend}\x00{kind}\x00{scope}"
        token = self._encoded.get(memo)
        if token is None:
            mac = self._mac(self.current, backend, kind, scope)
            token = _SEP.join((self._current_id, _b64(backend.encode()), mac))
            remember(self._encoded, memo, token)
        return token

    def verify(self, token: str, kind: str, scope: str) -> str:
        """The backend a token names, if it is valid for a request of ``kind`` about ``scope``;
        ``TokenError`` otherwise."""
        memo = f"{token}\x00{kind}\x00{scope}"
        backend = self._verified.get(memo)
        if backend is not None:
            return backend
        backend = self._verify(token, kind, scope)
        remember(self._verified, memo, backend)
        return backend

    def _verify(self, token: str, kind: str, scope: str) -> str:
        parts = token.split(_SEP)
        if len(parts) != 3:
            raise TokenError("routing token is malformed")
        kid, name_b64, mac = parts
        key = self._by_id.get(kid)
        if key is None:
            raise TokenError("routing token was signed with a key this gateway does not have "
                             "(rotated out of routing.previousTokenKeys?)")
        try:
            backend = _unb64(name_b64).decode("utf-8")
        except UnicodeDecodeError:
            raise TokenError("routing token is malformed") from None
        if _b64(backend.encode()) != name_b64:   # one spelling only: no padding-bit variants
            raise TokenError("routing token is malformed")
        if not hmac.compare_digest(mac, self._mac(key, backend, kind, scope)):
            raise TokenError("routing token is not valid for this request")
        return backend


def remember(cache: dict[Any, Any], key: Any, value: Any, limit: int | None = None) -> None:
    """Keep ``key`` in a cache bounded to ``limit`` entries (``_CACHE_MAX``). When full, the
    older half goes (insertion order): a query still polled is inserted again at its next miss,
    while clearing the whole cache (as before) made every in-flight query pay an HMAC at once
    beyond 8,192 of them (issue 19)."""
    if limit is None:
        limit = _CACHE_MAX
    if len(cache) >= limit:
        for old in list(itertools.islice(cache, limit // 2)):
            del cache[old]
    cache[key] = value


def split_path(path: str) -> tuple[str, str] | None:
    """``/_r/<token>/rest`` → (token, ``/rest``); None for a path without a token."""
    if not path.startswith(PREFIX):
        return None
    token, slash, rest = path[len(PREFIX):].partition("/")
    if not token or not slash:
        return None
    return token, "/" + rest
