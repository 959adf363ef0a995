"""Admin surface: the REST API (``api.py``, ``api_rules.py``) and the admin pages (``pages*.py``).

``routes(parts)`` lists the API routes first, then the pages under ``/trino-gateway/``; every
handler gets the same ``AdminParts`` (``gateway/admin/parts.py``), never the ``Gateway``.
``log_auth_mode(config)`` writes the start-up line saying how the admin surface is protected.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gateway.admin.parts import AdminParts
    from gateway.config import Config

log = logging.getLogger("gateway.admin")


def routes(parts: "AdminParts") -> list[Any]:
    from gateway.admin import api, api_rules, pages
    return api.routes(parts) + api_rules.routes(parts) + pages.routes(parts)


def auth_mode_message(config: "Config") -> str:
    """One line: who may do what on the admin pages and the REST API (never a credential)."""
    auth = config.auth
    if not auth.users:
        return ("admin auth: no users configured (auth.users): admin pages are read-only for "
                "everyone and state-changing endpoints accept only loopback callers")
    by_role: dict[str, list[str]] = {}
    for name, u in sorted(auth.users.items()):
        for role in u.roles:
            by_role.setdefault(role, []).append(name)
    roles = "; ".join(f"{role}: {', '.join(names)}" for role, names in sorted(by_role.items()))
    secret = ("auth.sessionSecret" if auth.sessionSecret else
              "a random secret made at start (sessions end at restart; set auth.sessionSecret "
              "when running several workers or replicas)")
    return (f"admin auth: {len(auth.users)} user(s) ({roles}); sessions last "
            f"{auth.sessionTtl:.0f}s, signed with {secret}")


def log_auth_mode(config: "Config") -> None:
    """Call once at start (``Gateway.start``)."""
    auth = config.auth
    if not auth.users:
        log.warning(auth_mode_message(config))
    elif auth.sessionSecret is None and config.server.workers > 1:
        log.warning(auth_mode_message(config))
    else:
        log.info(auth_mode_message(config))
