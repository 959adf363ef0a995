"""Cookie sessions, CSRF tokens and the login rate limit of the admin pages.

A session is stateless: a cookie signed with Tornado's ``create_signed_value`` holding the user
name, an expiry time, a CSRF token and a fingerprint of the user's password hash. Roles are read
from the configuration on every request, so removing a user or changing a password (and
restarting) ends their sessions. The signing secret is ``auth.sessionSecret``; without it a
random secret is made per process start, so sessions end at restart and do not work across
several worker processes or replicas (configure the secret there).

The session cookie is HttpOnly, ``SameSite=Strict``, ``Secure`` on HTTPS, and scoped to
``/trino-gateway/`` so the gateway never forwards it to a cluster (``/ui/`` and ``/v1/`` are
proxied, and browsers do not separate cookies by port).

CSRF: every state-changing form carries ``_csrf`` and every cookie-authenticated call the header
``X-CSRF-Token``; the expected value is the session's token, or for callers without a session
(the login form, the no-users mode) the token in a separate signed ``tgw_csrf`` cookie.
"""
from __future__ import annotations

import functools
import hashlib
import hmac
import json
import secrets
import time
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from tornado.web import create_signed_value, decode_signed_value

from gateway.admin.auth import Authenticator
from gateway.config import AuthConfig, ServerConfig
from gateway.limits import cap_user

if TYPE_CHECKING:
    from tornado.httputil import HTTPServerRequest

__all__ = ["Session", "SessionManager", "LoginLimiter", "tokens_equal",
           "SESSION_COOKIE", "CSRF_COOKIE", "FLASH_COOKIE", "COOKIE_PATH", "CSRF_HEADER",
           "CSRF_FIELD", "own_hosts"]

SESSION_COOKIE = "tgw_session"
CSRF_COOKIE = "tgw_csrf"
FLASH_COOKIE = "tgw_flash"
COOKIE_PATH = "/trino-gateway/"
CSRF_HEADER = "X-CSRF-Token"
CSRF_FIELD = "_csrf"
_CSRF_COOKIE_DAYS = 7.0
_FLASH_DAYS = 1 / 1440   # a flash message lives a minute at most


@dataclass(frozen=True)
class Session:
    user: str
    roles: list[str]
    csrf: str
    issued_at: float
    expires_at: float


def tokens_equal(a: str | None, b: str | None) -> bool:
    return bool(a) and bool(b) and hmac.compare_digest(str(a), str(b))


class LoginLimiter:
    """Failed logins per (user, address) and per address in a sliding window.

    ``retry_after(user, ip)`` is the seconds to wait (0 when a try is allowed). Counts live in
    this process's memory: several workers each allow the limit, which still turns a password
    guesser from thousands of tries a second into a few a minute.

    Bounded, since anyone can fail a login: user names are cut to ``MAX_USER_CHARS`` before
    they become keys, each key keeps at most its limit of timestamps, expired keys are pruned
    every ``window`` (not only when the table is full), and at ``max_keys`` the oldest keys go.
    """

    def __init__(self, *, per_user: int = 5, per_address: int = 20, window: float = 60.0,
                 clock: Callable[[], float] = time.monotonic, max_keys: int = 10_000) -> None:
        self.per_user = per_user
        self.per_address = per_address
        self.window = window
        self.clock = clock
        self.max_keys = max_keys
        # insertion order = order of first failure; a key that fails again moves to the end
        self._fails: dict[tuple[str, str], deque[float]] = {}
        self._pruned_at = clock()

    @staticmethod
    def _user_key(user: str, ip: str) -> tuple[str, str]:
        return ((cap_user(user) or "").lower(), ip)

    def _recent(self, key: tuple[str, str], now: float) -> deque[float]:
        q = self._fails.get(key)
        if q is None:
            return deque()
        while q and q[0] <= now - self.window:
            q.popleft()
        if not q:
            del self._fails[key]
        return q

    def _prune(self, now: float) -> None:
        self._pruned_at = now
        for key in list(self._fails):
            self._recent(key, now)
        while len(self._fails) >= self.max_keys:   # a flood of distinct keys: oldest go first
            del self._fails[next(iter(self._fails))]

    def retry_after(self, user: str, ip: str) -> float:
        now = self.clock()
        waits = [0.0]
        for key, limit in ((self._user_key(user, ip), self.per_user), (("", ip), self.per_address)):
            q = self._recent(key, now)
            if len(q) >= limit:
                waits.append(q[len(q) - limit] + self.window - now)
        return max(waits)

    def failed(self, user: str, ip: str) -> int:
        """Record a failure; the failures of this user and address in the window."""
        now = self.clock()
        if len(self._fails) >= self.max_keys or now - self._pruned_at >= self.window:
            self._prune(now)
        ukey = self._user_key(user, ip)
        for key, limit in ((ukey, self.per_user), (("", ip), self.per_address)):
            q = self._fails.pop(key, None)
            if q is None:
                q = deque(maxlen=limit)   # only the last `limit` failures decide a wait
            q.append(now)
            self._fails[key] = q
        return len(self._fails[ukey])

    def succeeded(self, user: str, ip: str) -> None:
        self._fails.pop(self._user_key(user, ip), None)

    def __len__(self) -> int:
        return len(self._fails)


class SessionManager:
    """Issues and reads session cookies and CSRF cookies for one gateway process (one instance,
    in ``gateway.admin.parts.AdminParts``: its login limiter and random secret are per process)."""

    def __init__(self, auth: AuthConfig, *, clock: Callable[[], float] = time.time,
                 limiter: LoginLimiter | None = None) -> None:
        self.auth = auth
        self.secret = auth.sessionSecret or secrets.token_hex(32)
        self.secret_is_random = not auth.sessionSecret
        self.ttl = float(auth.sessionTtl)
        self.clock = clock
        self.limiter = limiter or LoginLimiter()
        self.authenticator = Authenticator(auth)

    @property
    def enabled(self) -> bool:
        return bool(self.auth.users)

    # -- signing -----------------------------------------------------------------------------

    def sign(self, name: str, text: str) -> str:
        return create_signed_value(self.secret, name, text, clock=self.clock).decode()

    def unsign(self, name: str, value: str | None, max_age_days: float) -> str | None:
        if not value:
            return None
        raw = decode_signed_value(self.secret, name, value, max_age_days=max_age_days, clock=self.clock)
        if raw is None:
            return None
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return None

    def _password_mark(self, user: str) -> str:
        u = self.auth.users.get(user)
        return hashlib.sha256((u.password if u else "").encode()).hexdigest()[:16]

    # -- sessions ----------------------------------------------------------------------------

    def issue(self, user: str) -> tuple[str, Session]:
        """A signed cookie value for a user who just logged in, and the session it holds."""
        now = self.clock()
        session = Session(user, list(self.auth.users[user].roles), secrets.token_urlsafe(24),
                          now, now + self.ttl)
        payload = json.dumps({"u": user, "iat": now, "exp": session.expires_at,
                              "csrf": session.csrf, "pw": self._password_mark(user)},
                             separators=(",", ":"))
        return self.sign(SESSION_COOKIE, payload), session

    def read(self, value: str | None) -> Session | None:
        """The session in a cookie value; None when missing, forged, expired or stale."""
        text = self.unsign(SESSION_COOKIE, value, self.ttl / 86400 + 1)
        if text is None:
            return None
        try:
            data = json.loads(text)
            user, exp, iat, csrf, mark = data["u"], float(data["exp"]), float(data["iat"]), \
                str(data["csrf"]), str(data["pw"])
        except (ValueError, KeyError, TypeError):
            return None
        u = self.auth.users.get(user) if isinstance(user, str) else None
        if u is None or self.clock() >= exp or not hmac.compare_digest(mark, self._password_mark(user)):
            return None
        return Session(user, list(u.roles), csrf, iat, exp)

    # -- CSRF for callers without a session --------------------------------------------------

    def new_csrf_cookie(self) -> tuple[str, str]:
        token = secrets.token_urlsafe(24)
        return self.sign(CSRF_COOKIE, token), token

    def read_csrf_cookie(self, value: str | None) -> str | None:
        return self.unsign(CSRF_COOKIE, value, _CSRF_COOKIE_DAYS)

    # -- one-shot messages shown after a redirect --------------------------------------------

    def flash(self, message: str, kind: str = "ok") -> str:
        return self.sign(FLASH_COOKIE, json.dumps([kind, message]))

    def read_flash(self, value: str | None) -> tuple[str, str] | None:
        text = self.unsign(FLASH_COOKIE, value, _FLASH_DAYS)
        try:
            kind, message = json.loads(text) if text else (None, None)
        except (ValueError, TypeError):
            return None
        return (str(kind), str(message)) if message else None


@functools.lru_cache(maxsize=1)
def _machine_names() -> tuple[str, ...]:
    """This machine's names (looked up once: getfqdn may ask DNS)."""
    import socket
    return tuple({socket.gethostname().lower(), socket.getfqdn().lower()})


def host_is_ours(server: ServerConfig, request: "HTTPServerRequest") -> bool:
    """Whether the ``Host`` a request names can only be this gateway: an IP address, a
    ``localhost`` name, this machine's host name, ``server.host`` or the ``publicUrl`` host.

    In the no-users mode a loopback caller may change things; a web page whose name the
    attacker re-points at 127.0.0.1 (DNS rebinding) is such a caller, with a matching Origin,
    but its requests name the attacker's host.
    """
    import ipaddress
    from urllib.parse import urlsplit
    host = urlsplit("//" + (request.host or "")).hostname or ""
    host = host.rstrip(".").lower()
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        pass
    names = {"localhost", server.host.lower(), *_machine_names()}
    if server.publicUrl:
        names.add((urlsplit(server.publicUrl).hostname or "").lower())
    return host in names or host.endswith(".localhost")


def own_hosts(server: ServerConfig, request: "HTTPServerRequest") -> set[str]:
    """The ``host[:port]`` names this gateway answers as, for same-origin checks."""
    from urllib.parse import urlsplit
    hosts = {request.host.lower()}
    if server.trustForwardedHeaders:
        fwd = request.headers.get("X-Forwarded-Host")
        if fwd:
            hosts.add(fwd.split(",")[0].strip().lower())
    if server.publicUrl:
        hosts.add(urlsplit(server.publicUrl).netloc.lower())
    return hosts
