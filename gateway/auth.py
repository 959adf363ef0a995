"""Admin users, roles and password hashes for the admin pages and the REST API.

Roles: ``admin`` (everything), ``user`` (read pages), ``api`` (REST API). Passwords are stored
as PBKDF2-SHA256 hashes printed by ``trino-gateway hash-password``. With no users configured the
gateway is read-only except for callers on the loopback interface (a safe default for a first
start). The Trino client paths are never authenticated here: the clusters do that.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
import secrets

from gateway.config import AuthConfig

_ALGO = "pbkdf2_sha256"
_ITERATIONS = 260_000


def hash_password(password: str, *, iterations: int = _ITERATIONS) -> str:
    if not password:
        raise ValueError("the password is empty")
    salt = secrets.token_hex(16)
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt.encode(), iterations)
    return f"{_ALGO}${iterations}${salt}${base64.b64encode(digest).decode()}"


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
    """Checks credentials against the configured users (constant-time, no user enumeration)."""

    _DUMMY = hash_password("not-a-real-password", iterations=1000)

    def __init__(self, cfg: AuthConfig) -> None:
        self.cfg = cfg

    @property
    def enabled(self) -> bool:
        return bool(self.cfg.users)

    def check(self, user: str, password: str) -> list[str] | None:
        """The user's roles if the password is right, else None."""
        u = self.cfg.users.get(user)
        if u is None:
            verify_password(password, self._DUMMY)  # same work either way
            return None
        return list(u.roles) if verify_password(password, u.password) else None

    @staticmethod
    def allows(roles: list[str], need: str) -> bool:
        return "admin" in roles or need in roles
