"""Clusters page: list, add, edit, delete, activate and deactivate (drain) backends.

Changes go through the same validation as the REST API (``api.parse_backend``) and the same
order: the store first, then this process's registry; other processes follow the store. A
deactivated backend takes no new queries but finishes what it runs; the page shows how many
queries it still has: the monitor's running/queued counts when the monitor reports them
(``ui-api``, ``metrics``), and the queries this gateway routed there in the last hour and has
not yet seen finish.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from gateway.admin import backend_ops
from gateway.admin.api import ApiError, parse_backend
from gateway.admin.pages import BASE, PageHandler
from gateway.admin.pages_dashboard import BackendView
from gateway.backends import Backend
from gateway.limits import mask_credentials

if TYPE_CHECKING:
    from gateway.app import Gateway

log = logging.getLogger("gateway.admin")

ACTIONS = ("add", "update", "delete", "activate", "deactivate")
UNFINISHED_WINDOW = 3600.0
_COUNTING_MONITORS = ("ui-api", "metrics")


def backend_from_form(form: dict[str, str], default_group: str) -> Backend:
    """A backend from the add/edit form (text fields; a checkbox for active)."""
    data: dict[str, Any] = {
        "name": form.get("name", "").strip(),
        "proxyTo": form.get("proxyTo", "").strip(),
        "externalUrl": form.get("externalUrl", "").strip() or None,
        "routingGroup": form.get("routingGroup", "").strip() or default_group,
        "active": form.get("active") in ("on", "true", "1"),
    }
    return parse_backend(data, default_group)


async def apply_action(gw: "Gateway", action: str, form: dict[str, str], who: str) -> str:
    """Do one clusters-page action; the message to show. Raises ``ApiError`` when refused."""
    if action not in ACTIONS:
        raise ApiError(400, f"Unknown action {action!r}; one of {', '.join(ACTIONS)}")
    if action in ("add", "update"):
        b = backend_from_form(form, gw.config.routing.defaultGroup)
        if action == "add":
            await backend_ops.add_backend(gw, b, who)
        else:
            await backend_ops.update_backend(gw, b, who, insert_missing=False)
        return f"Backend {b.name} {'added' if action == 'add' else 'saved'}."
    name = form.get("name", "")
    if action == "delete":
        await backend_ops.delete_backend(gw, name, who)
        return f"Backend {name} deleted."
    active = action == "activate"
    await backend_ops.set_active(gw, name, active, who)
    return (f"Backend {name} activated: it takes new queries." if active else
            f"Backend {name} deactivated: it takes no new queries and finishes those it runs.")


@dataclass
class ClusterRow(BackendView):
    unfinished: int | None = None     # routed here, not seen finishing (inactive backends only)
    counting: bool = False            # the monitor reports running/queued counts

    @property
    def still_running(self) -> int | None:
        """Queries an inactive backend still has, by the best source available."""
        if self.backend.active:
            return None
        counts = [self.unfinished or 0]
        if self.counting:
            counts.append(self.state.running + self.state.queued)
        return max(counts)

    @property
    def drain_state(self) -> str | None:
        n = self.still_running
        return None if n is None else ("draining" if n > 0 else "drained")


async def cluster_rows(gw: "Gateway") -> list[ClusterRow]:
    counting = gw.config.monitor.type in _COUNTING_MONITORS
    rows = [ClusterRow(b, gw.registry.state(b.name), counting=counting)
            for b in sorted(gw.registry.all(), key=lambda b: (b.routingGroup, b.name))]
    if gw.store is None:
        return rows
    since = time.time() - UNFINISHED_WINDOW
    for r in rows:
        if r.backend.active:
            continue
        try:
            recent = await gw.store.call("query_history", backend=r.backend.name, since=since, limit=1000)
        except Exception:  # noqa: BLE001 - history is a nice-to-have here
            continue
        r.unfinished = sum(1 for q in recent if q.final_state is None)
    return rows


class ClustersHandler(PageHandler):
    nav = "clusters"

    async def get(self) -> None:
        await self.show()

    async def show(self, status: int = 200, error: str | None = None,
                   form: dict[str, str] | None = None) -> None:
        self.render_page("clusters.html", status=status, rows=await cluster_rows(self.gw),
                         groups=sorted(self.gw.registry.groups() | set(self.gw.config.groups)
                                       | {self.gw.config.routing.defaultGroup}),
                         default_group=self.gw.config.routing.defaultGroup,
                         counting=self.gw.config.monitor.type in _COUNTING_MONITORS,
                         error=error, form=form or {"active": "on"})

    async def post(self) -> None:
        if not self.access.write:
            return await self.show(403, self.access.reason)
        form = {k: self.get_body_argument(k, "") for k in
                ("name", "proxyTo", "externalUrl", "routingGroup", "active")}
        action = self.get_body_argument("action", "")
        try:
            message = await apply_action(self.gw, action, form, self.who())
        except ApiError as exc:
            if action == "update":
                return self.render_page("cluster_edit.html", status=exc.code, error=str(exc), form=form,
                                        default_group=self.gw.config.routing.defaultGroup)
            return await self.show(exc.code, str(exc), form if action == "add" else None)
        self.flash(message)
        self.redirect(BASE + "/clusters")

    def who(self) -> str:
        return self.session.user if self.session else f"loopback caller {self.request.remote_ip}"


class ClusterEditHandler(ClustersHandler):
    need = "write"

    def get(self, name: str) -> None:  # type: ignore[override]
        b = self.gw.registry.get(name)
        if b is None:
            self.flash(f"Backend {name} does not exist.", "error")
            return self.redirect(BASE + "/clusters")
        form = {"name": b.name, "proxyTo": mask_credentials(b.proxyTo),
                "externalUrl": mask_credentials(b.externalUrl or ""),
                "routingGroup": b.routingGroup, "active": "on" if b.active else ""}
        self.render_page("cluster_edit.html", form=form, error=None,
                         default_group=self.gw.config.routing.defaultGroup)


def routes(gw: "Gateway") -> list[Any]:
    a = {"gateway": gw}
    return [
        (BASE + r"/clusters", ClustersHandler, a),
        (BASE + r"/clusters/([^/]+)/edit", ClusterEditHandler, a),
    ]
