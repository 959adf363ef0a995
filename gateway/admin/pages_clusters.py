"""Clusters page: list, add, edit, delete, activate and deactivate (drain) backends.

Changes go through the same validation as the REST API (``api.parse_backend``) and the same
order: the store first, then this process's registry; other processes follow the store. A
deactivated backend takes no new queries but finishes what it runs; the page shows how many
queries it still has: the queries the gateway routed there and has not seen finish (from the
shared history, ``gateway.backends.unfinished``), and the monitor's running/queued counts when the
monitor reports them (``ui-api``, ``metrics``).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from gateway.admin import backend_ops
from gateway.admin.api import ApiError, parse_backend
from gateway.admin.pages import BASE, PageHandler
from gateway.admin.pages_dashboard import BackendView
from gateway.backends.state import Backend
from gateway.limits import mask_credentials

if TYPE_CHECKING:
    from gateway.admin.parts import AdminParts

log = logging.getLogger("gateway.admin")

ACTIONS = ("add", "update", "delete", "activate", "deactivate")
# Actions that take effect only once confirmed, and the question asked.
CONFIRM = {
    "deactivate": "Deactivate {name}? It takes no new queries and finishes those it runs.",
    "delete": "Delete {name}? Queries it still runs lose their route through the gateway.",
}


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


async def apply_action(parts: "AdminParts", action: str, form: dict[str, str], who: str) -> str:
    """Do one clusters-page action; the message to show. Raises ``ApiError`` when refused."""
    if action not in ACTIONS:
        raise ApiError(400, f"Unknown action {action!r}; one of {', '.join(ACTIONS)}")
    if action in ("add", "update"):
        b = backend_from_form(form, parts.config.routing.defaultGroup)
        if action == "add":
            try:
                await backend_ops.add_backend(parts.store, parts.registry, b, who)
            except ApiError as exc:
                if exc.code != 409:
                    raise
                # the REST API's message names its update path; here the page's own fields
                raise ApiError(409, f"A backend named {b.name!r} already exists. Choose another "
                                    f"Name, or use Edit on its row to change it.") from None
        else:
            await backend_ops.update_backend(parts.store, parts.registry, b, who, insert_missing=False)
        return f"Backend {b.name} {'added' if action == 'add' else 'saved'}."
    name = form.get("name", "")
    if action == "delete":
        await backend_ops.delete_backend(parts.store, parts.registry, name, who)
        return f"Backend {name} deleted."
    active = action == "activate"
    await backend_ops.set_active(parts.store, parts.registry, name, active, who)
    return (f"Backend {name} activated: it takes new queries." if active else
            f"Backend {name} deactivated: it takes no new queries and finishes those it runs.")


@dataclass
class ClusterRow(BackendView):
    @property
    def still_running(self) -> int | None:
        """Queries an inactive backend still has, by the best sources available: the queries
        the gateway routed there and has not seen finish, and the monitor's running + queued
        count when the monitor can count (ui-api, metrics). None: neither is known."""
        if self.backend.active:
            return None
        counts = [] if self.unfinished is None else [self.unfinished]
        if self.state.counts_known:
            counts.append(self.state.running + self.state.queued)
        return max(counts) if counts else None

    @property
    def drain_state(self) -> str | None:
        if self.backend.active:
            return None
        n = self.still_running
        if n is None:
            return "draining"        # nothing says it is empty: never claim "drained"
        return "draining" if n > 0 else "drained"


async def cluster_rows(parts: "AdminParts") -> list[ClusterRow]:
    if parts.store is not None and parts.config.store.historyEnabled:
        await parts.unfinished.refresh(parts.store, force=True)
    return [ClusterRow(b, parts.registry.state(b.name), parts.unfinished.of(b.name))
            for b in sorted(parts.registry.all(), key=lambda b: (b.routingGroup, b.name))]


class ClustersHandler(PageHandler):
    nav = "clusters"

    async def get(self) -> None:
        await self.show()

    async def show(self, status: int = 200, error: str | None = None,
                   form: dict[str, str] | None = None) -> None:
        rows = await cluster_rows(self.parts)
        self.render_page("clusters.html", status=status, rows=rows,
                         draining=any(r.drain_state == "draining" for r in rows),
                         groups=sorted(self.parts.registry.groups() | set(self.parts.config.groups)
                                       | {self.parts.config.routing.defaultGroup}),
                         default_group=self.parts.config.routing.defaultGroup,
                         error=error, form=form or {"active": "on"})

    async def post(self) -> None:
        if not self.access.write:
            return await self.show(403, self.access.reason)
        form = {k: self.get_body_argument(k, "") for k in
                ("name", "proxyTo", "externalUrl", "routingGroup", "active")}
        action = self.get_body_argument("action", "")
        if action in CONFIRM and self.get_body_argument("confirmed", "") != "yes":
            # Without script (the script asks in a dialog and sends confirmed=yes): a page
            # that asks, whose button sends the same action confirmed.
            return self.render_page("cluster_confirm.html", action=action, name=form["name"],
                                    question=CONFIRM[action].format(name=form["name"]))
        try:
            message = await apply_action(self.parts, action, form, self.who())
        except ApiError as exc:
            if action == "update":
                return self.render_page("cluster_edit.html", status=exc.code, error=str(exc), form=form,
                                        default_group=self.parts.config.routing.defaultGroup)
            return await self.show(exc.code, str(exc), form if action == "add" else None)
        self.flash(message)
        self.redirect(BASE + "/clusters")

    def who(self) -> str:
        return self.session.user if self.session else f"loopback caller {self.request.remote_ip}"


class ClusterEditHandler(ClustersHandler):
    need = "write"

    def get(self, name: str) -> None:  # type: ignore[override]
        b = self.parts.registry.get(name)
        if b is None:
            self.flash(f"Backend {name} does not exist.", "error")
            return self.redirect(BASE + "/clusters")
        form = {"name": b.name, "proxyTo": mask_credentials(b.proxyTo),
                "externalUrl": mask_credentials(b.externalUrl or ""),
                "routingGroup": b.routingGroup, "active": "on" if b.active else ""}
        self.render_page("cluster_edit.html", form=form, error=None,
                         default_group=self.parts.config.routing.defaultGroup)


def routes(parts: "AdminParts") -> list[Any]:
    a = {"parts": parts}
    return [
        (BASE + r"/clusters", ClustersHandler, a),
        (BASE + r"/clusters/([^/]+)/edit", ClusterEditHandler, a),
    ]
