"""Admin users, roles and password hashes for the admin pages and the REST API.

Roles: ``admin`` (everything), ``user`` (read pages), ``api`` (REST API). Passwords are stored
as PBKDF2-SHA256 hashes printed by ``trino-gateway hash-password``. With no users configured the
gateway is read-only except for callers on the loopback interface (a safe default for a first
start). The Trino client paths are never authenticated here: the clusters do that.

The access decisions (who may read or change what, whose SQL a viewer may see, whether a request
comes from another site) are plain functions here; the handlers in ``gateway/admin`` call them.
Cookie sessions, CSRF tokens and the login rate limit live in ``gateway/admin/session.py``.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
import secrets
import threading
import time
from dataclasses import dataclass
from typing import Mapping
from urllib.parse import urlsplit

from gateway.config import AuthConfig

ROLES = ("admin", "user", "api")

_ALGO = "pbkdf2_sha256"
_ITERATIONS = 260_000


def hash_password(password: str, *, iterations: int = _ITERATIONS) -> str:
    if not password:
        raise ValueError("the password is empty")
    salt = secrets.token_hex(16)
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt.encode(), iterations)
    return f"{_ALGO}${iterations}${salt}${base64.b64encode(digest).decode()}"


_MAX_ITERATIONS = 10_000_000   # beyond this one check would stall a thread for many seconds


def password_hash_problem(stored: str) -> str | None:
    """Why ``stored`` is not a hash ``hash_password`` could have made, or None when it is.

    A plaintext password or a placeholder loaded silently before and every login then failed.
    """
    parts = stored.split("$")
    if len(parts) != 4 or parts[0] != _ALGO:
        return f"not a {_ALGO}$ITERATIONS$SALT$DIGEST hash"
    _, iterations, salt, digest = parts
    if not iterations.isdigit() or not 1 <= int(iterations) <= _MAX_ITERATIONS:
        return f"the iteration count must be a number from 1 to {_MAX_ITERATIONS:,}"
    if not salt or not salt.isascii() or not salt.isprintable():
        return "the salt is missing or not printable ASCII"
    try:
        raw = base64.b64decode(digest, validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != hashlib.sha256().digest_size:
        return "the digest is not the base64 of a SHA-256 value"
    return None


def _iterations(stored: str) -> int:
    try:
        return max(1, min(_MAX_ITERATIONS, int(stored.split("$")[1])))
    except (IndexError, ValueError):
        return _ITERATIONS


def verify_password(password: str, stored: str) -> bool:
    try:
        algo, iterations, salt, expected = stored.split("$", 3)
        n = int(iterations)
    except ValueError:
        return False
    if algo != _ALGO or n < 1:
        return False
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt.encode(), n)
    return hmac.compare_digest(base64.b64encode(digest).decode(), expected)


def is_loopback(remote_ip: str | None) -> bool:
    if not remote_ip:
        return False
    try:
        return ipaddress.ip_address(remote_ip.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


def parse_basic(header: str | None) -> tuple[str, str] | None:
    """(user, password) from an ``Authorization: Basic`` header, or None."""
    if not header or not header[:6].lower() == "basic ":
        return None
    try:
        raw = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    user, sep, password = raw.partition(":")
    return (user, password) if sep else None


class Authenticator:
    """Checks credentials against the configured users (constant-time, no user enumeration).

    PBKDF2 is slow on purpose (~0.2 s); an API script sending Basic credentials on every call
    would pay that each time, on the event loop. Successful checks are therefore remembered for
    a few minutes, keyed by an HMAC (with a per-process random key) of user, password and stored
    hash: a changed password or hash misses the cache, and memory never holds the password.
    """

    _dummies: dict[int, str] = {}
    _CACHE_TTL = 300.0
    _CACHE_MAX = 1024
    _cache_key = secrets.token_bytes(32)
    _cache: dict[bytes, float] = {}
    _cache_lock = threading.Lock()

    def __init__(self, cfg: AuthConfig) -> None:
        self.cfg = cfg

    @property
    def enabled(self) -> bool:
        return bool(self.cfg.users)

    def check(self, user: str, password: str) -> list[str] | None:
        """The user's roles if the password is right, else None."""
        u = self.cfg.users.get(user)
        if u is None:
            verify_password(password, self._dummy())  # same work as for a configured user
            return None
        key = hmac.new(self._cache_key, b"\0".join(x.encode("utf-8", "surrogatepass") for x in
                                                    (user, password, u.password)), "sha256").digest()
        now = time.monotonic()
        with self._cache_lock:
            if self._cache.get(key, 0.0) > now:
                return list(u.roles)
        if not verify_password(password, u.password):
            return None
        with self._cache_lock:
            if len(self._cache) >= self._CACHE_MAX:
                self._cache.clear()
            self._cache[key] = now + self._CACHE_TTL
        return list(u.roles)

    def _dummy(self) -> str:
        """A hash no password matches, as costly to check as the configured users' hashes
        (with a cheaper one, an unknown user answered in 4 ms and a known one in 100 ms)."""
        rounds = max((_iterations(u.password) for u in self.cfg.users.values()), default=_ITERATIONS)
        dummy = self._dummies.get(rounds)
        if dummy is None:
            digest = base64.b64encode(secrets.token_bytes(32)).decode()
            dummy = self._dummies[rounds] = f"{_ALGO}${rounds}${secrets.token_hex(16)}${digest}"
        return dummy

    @staticmethod
    def allows(roles: list[str], need: str) -> bool:
        return "admin" in roles or need in roles


@dataclass(frozen=True)
class Access:
    """What a caller may do on the admin pages, and why not when they may not."""
    read: bool
    write: bool
    reason: str = ""


def page_access(auth_enabled: bool, roles: list[str] | None, loopback: bool) -> Access:
    """Admin pages: ``roles`` is None for a caller who is not logged in.

    Without configured users everyone may read and only loopback callers may change things.
    With users: ``admin`` reads and writes, ``user`` reads, ``api`` alone is for the REST API.
    """
    if not auth_enabled:
        return Access(True, loopback, "" if loopback else
                      "No admin users are configured: changes are accepted only from the "
                      "gateway's own host (loopback)")
    if roles is None:
        return Access(False, False, "Log in to see this page")
    if "admin" in roles:
        return Access(True, True)
    if "user" in roles:
        return Access(True, False, "Changes need the admin role")
    return Access(False, False, "The api role is for the REST API; the admin pages need the "
                                "user or admin role")


def sql_visible(row_user: str | None, viewer: str | None, roles: list[str] | None, *,
                auth_enabled: bool, show_all: bool) -> bool:
    """May this viewer see the SQL text of a query submitted by ``row_user``?"""
    if not auth_enabled or show_all:
        return True
    roles = roles or []
    if "admin" in roles:
        return True
    return viewer is not None and row_user == viewer


def is_cross_site(headers: Mapping[str, str], own_hosts: set[str]) -> bool:
    """True when a browser says the request comes from another site.

    Browsers attach cached Basic credentials (and, from the gateway's own host, nothing at
    all is needed in the no-users mode) to cross-site form posts, so state changes check this.
    ``Sec-Fetch-Site`` is authoritative when present; else ``Origin`` must name one of
    ``own_hosts`` (``host[:port]``). Scripts send neither header and pass.
    """
    site = (headers.get("Sec-Fetch-Site") or "").strip().lower()
    if site:
        return site not in ("same-origin", "none")
    origin = (headers.get("Origin") or "").strip()
    if not origin:
        return False
    if origin == "null":
        return True
    parts = urlsplit(origin)
    if not parts.netloc:
        return True
    hosts = {h.lower() for h in own_hosts if h}
    netloc = parts.netloc.lower()
    default = {"http": ":80", "https": ":443"}.get(parts.scheme, "")
    return netloc not in hosts and netloc + default not in hosts and \
        netloc.removesuffix(default) not in hosts
