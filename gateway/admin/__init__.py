"""Admin surface: the REST API (api.py) and, later, the admin pages."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gateway.app import Gateway


def routes(gw: "Gateway") -> list[Any]:
    from gateway.admin import api
    return api.routes(gw)
