"""Dashboard: every routing group and backend with health and load, queries per minute, and
how queries spread over the backends. ``/trino-gateway/dashboard/fragment`` renders the same
body alone; the page's script fetches it every few seconds (without script: meta refresh).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from markupsafe import Markup

from gateway.admin.charts import (PALETTE, bucket_counts, bucket_seconds, distribution_chart,
                                  line_chart, queries_chart)
from gateway.admin.pages import BASE, PageHandler
from gateway.backends.state import Backend, BackendState, Health

if TYPE_CHECKING:
    from gateway.admin.parts import AdminParts

HOURS_CHOICES = (1, 3, 6, 24)
COUNTS_TITLE = {"info-api": "The info-api monitor cannot count a cluster's queries",
                "noop": "The noop monitor does not probe clusters"}
DEFAULT_HOURS = 3


@dataclass
class BackendView:
    backend: Backend
    state: BackendState
    unfinished: int | None = None   # routed by the gateway, not seen finishing (None: unknown)

    @property
    def status(self) -> str:
        """What an operator reads first: drained/draining, or the health."""
        if not self.backend.active:
            return "inactive"
        return self.state.health.value

    @property
    def css(self) -> str:
        if not self.backend.active:
            return "inactive"
        return {Health.HEALTHY: "ok", Health.UNHEALTHY: "bad"}.get(self.state.health, "pending")


@dataclass
class GroupView:
    name: str
    backends: list[BackendView]
    is_default: bool = False
    held: int | None = None   # queries waiting in the gateway queue (None: the group has no cap)

    @property
    def healthy(self) -> int:
        return sum(1 for b in self.backends if b.backend.active and b.state.health is Health.HEALTHY)

    @property
    def queued(self) -> int | None:
        """The monitor's count; None when it cannot count some backend (info-api, noop)."""
        return _sum_known([b.state.known_queued for b in self.backends])

    @property
    def running(self) -> int | None:
        return _sum_known([b.state.known_running for b in self.backends])

    @property
    def unfinished(self) -> int | None:
        return _sum_known([b.unfinished for b in self.backends])

    @property
    def css(self) -> str:
        if not self.backends:
            return "bad"
        h = self.healthy
        return "ok" if h == len(self.backends) else ("bad" if h == 0 else "warn")


def _sum_known(values: list[int | None]) -> int | None:
    """The sum, or None if any part is unknown (a partial sum would read as the total)."""
    if any(v is None for v in values):
        return None
    return sum(v for v in values if v is not None)


def backend_view(parts: "AdminParts", b: Backend) -> BackendView:
    return BackendView(b, parts.registry.state(b.name), parts.unfinished.of(b.name))


def group_views(parts: "AdminParts") -> list[GroupView]:
    """Groups with backends, plus the default group and configured groups even when empty."""
    default = parts.config.routing.defaultGroup
    names = parts.registry.groups() | set(parts.config.groups) | {default}
    out = []
    for name in sorted(names, key=lambda n: (n != default, n)):
        bs = sorted(parts.registry.in_group(name), key=lambda b: b.name)
        queue = parts.queue.queues.get(name)
        held = len(queue) if queue is not None else (0 if parts.queue.capped(name) else None)
        out.append(GroupView(name, [backend_view(parts, b) for b in bs], is_default=name == default,
                             held=held))
    return out


def parse_hours(value: str | None) -> int:
    try:
        h = int(value) if value else DEFAULT_HOURS
    except ValueError:
        return DEFAULT_HOURS
    return h if h in HOURS_CHOICES else DEFAULT_HOURS


def parse_refresh(value: str | None) -> int:
    """Seconds between refreshes (1..300, default 5)."""
    try:
        r = int(value) if value else 5
    except ValueError:
        return 5
    return min(300, max(1, r))


@dataclass
class Summary:
    """The dashboard's first row: backends by status, queries per hour and per minute now."""
    healthy: int
    unhealthy: int
    pending: int
    inactive: int
    last_hour: int | None          # queries submitted in the last hour (None: no history)
    per_minute: float | None       # average over the last 5 minutes


def summarize(groups: list[GroupView], per_minute: list[tuple[float, int]] | None,
              now: float) -> Summary:
    views = [v for g in groups for v in g.backends]
    active = [v for v in views if v.backend.active]
    last_hour = per_minute_now = None
    if per_minute is not None:
        last_hour = sum(c for ts, c in per_minute if ts >= now - 3600)
        # whole minutes: the current one has only just started
        start = (now // 60) * 60 - 5 * 60
        per_minute_now = round(sum(c for ts, c in per_minute if start <= ts < start + 300) / 5, 1)
    return Summary(healthy=sum(1 for v in active if v.state.health is Health.HEALTHY),
                   unhealthy=sum(1 for v in active if v.state.health is Health.UNHEALTHY),
                   pending=sum(1 for v in active if v.state.health not in (Health.HEALTHY, Health.UNHEALTHY)),
                   inactive=len(views) - len(active), last_hour=last_hour, per_minute=per_minute_now)


def backend_series(rows: list[tuple[float, str, int]], since: float, now: float,
                   bucket: int) -> list[tuple[str, list[tuple[float, float]]]]:
    """Per backend, its queries per bucket (gaps as 0), for the line chart."""
    names = sorted({b for _, b, _ in rows})
    out = []
    for name in names:
        buckets = bucket_counts([(m, c) for m, b, c in rows if b == name], since, now, bucket)
        out.append((name, [(ts + bucket / 2, float(c)) for ts, c in buckets]))
    return out


async def dashboard_context(parts: "AdminParts", hours: int) -> dict[str, Any]:
    now = time.time()
    since = now - hours * 3600
    store = parts.store
    error = None
    per_minute: list[tuple[float, int]] | None = None
    per_backend: list[tuple[float, str, int]] = []
    if store is not None and parts.config.store.historyEnabled:
        await parts.unfinished.refresh(store, force=True)
    if store is not None:
        try:
            per_minute = await store.call("history_per_minute", since)
            per_backend = await store.call("history_per_minute_by_backend", since)
        except Exception as exc:  # the store may be down; the live part still shows
            error = f"Query history is unavailable: {exc}"
    by_backend: dict[str, int] = {}
    for _, b, c in per_backend:
        by_backend[b] = by_backend.get(b, 0) + c
    bucket = bucket_seconds(hours)
    buckets = bucket_counts(per_minute or [], since, now, bucket)
    series = backend_series(per_backend, since, now, bucket)
    per = f"{bucket // 60} min" if bucket < 3600 else f"{bucket // 3600} h"
    rules = parts.rules.current
    groups = group_views(parts)
    return {
        "groups": groups,
        "summary": summarize(groups, per_minute, now),
        "hours": hours,
        "hours_choices": HOURS_CHOICES,
        "chart": Markup(queries_chart(buckets, bucket)),
        "backend_chart": Markup(line_chart(series, since, now, title=f"Queries per {per} and backend",
                                           width=1300, height=220))
        if series else None,
        "backend_legend": [(name, PALETTE[i % len(PALETTE)]) for i, (name, _) in enumerate(series)],
        "bucket_label": per,
        "distribution": Markup(distribution_chart(by_backend)),
        "total": sum(by_backend.values()),
        "history_error": error,
        "monitor_type": parts.config.monitor.type,
        "counts_title": COUNTS_TITLE.get(parts.config.monitor.type, ""),
        "monitor_rounds": getattr(parts.monitor, "rounds", None),
        "rules_version": rules.version if rules else None,
        "rules_error": parts.rules.last_error,
        "updated": now,
    }


class DashboardHandler(PageHandler):
    nav = "dashboard"

    async def get(self) -> None:
        hours = parse_hours(self.get_argument("hours", None))
        refresh = parse_refresh(self.get_argument("refresh", None))
        ctx = await dashboard_context(self.parts, hours)
        given = self.get_argument("refresh", None)
        self.render_page("dashboard.html", refresh=refresh,
                         period_suffix=f"&refresh={refresh}" if given else "",
                         fragment_url=f"{BASE}/dashboard/fragment?hours={hours}", **ctx)


class DashboardFragmentHandler(PageHandler):
    nav = "dashboard"

    def is_page(self) -> bool:
        return False

    async def get(self) -> None:
        hours = parse_hours(self.get_argument("hours", None))
        ctx = await dashboard_context(self.parts, hours)
        self.render_page("_dashboard_body.html", **ctx)


class IndexRedirect(PageHandler):
    need = "none"

    def get(self) -> None:
        self.redirect(BASE + "/")


def routes(parts: "AdminParts") -> list[Any]:
    a = {"parts": parts}
    return [
        (BASE, IndexRedirect, a),
        (BASE + r"/", DashboardHandler, a),
        (BASE + r"/dashboard/fragment", DashboardFragmentHandler, a),
    ]
