"""Query history page: filters, keyset paging, links to each query on its cluster.

Paging is keyset ("older than this row") through the store's ``before=(submitted_at,
query_id)``, so page 1000 of a million rows costs what page 1 costs; there is no total count.
A viewer with only the ``user`` role sees the SQL text of their own queries only (unless
``auth.showAllQueries``), and their text search covers only their own queries, so searching
cannot reveal other users' SQL either.
"""
from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping
from urllib.parse import urlencode

from gateway.admin.pages import BASE, PageHandler
from gateway.auth import sql_visible
from gateway.store.base import HistoryRow

if TYPE_CHECKING:
    from gateway.app import Gateway

PAGE_SIZE = 50
TEXT_FILTERS = ("user", "source", "group", "backend", "rule", "state", "text")
STATES = ("FINISHED", "FAILED", "CANCELED", "QUEUED_TIMEOUT", "REJECTED")


class FilterError(ValueError):
    pass


def parse_time(value: str, name: str) -> float | None:
    """Unix seconds from a ``datetime-local`` value (taken as UTC), ISO 8601, or unix seconds."""
    value = value.strip()
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        pass
    try:
        t = _dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise FilterError(f"{name}: expected a date and time such as 2024-05-01T13:30 (UTC), "
                          f"got {value!r}") from None
    if t.tzinfo is None:
        t = t.replace(tzinfo=_dt.timezone.utc)
    return t.timestamp()


def format_time_input(ts: float | None) -> str:
    if ts is None:
        return ""
    return _dt.datetime.fromtimestamp(ts, _dt.timezone.utc).strftime("%Y-%m-%dT%H:%M")


def parse_cursor(value: str | None) -> tuple[float, str] | None:
    """``before`` is ``<submitted_at>~<query_id>`` of the last row of the previous page."""
    if not value:
        return None
    at, sep, qid = value.partition("~")
    try:
        if not sep or not qid:
            raise ValueError
        return float(at), qid
    except ValueError:
        raise FilterError(f"before: not a paging position: {value!r}") from None


def encode_cursor(row: HistoryRow) -> str:
    return f"{row.submitted_at!r}~{row.query_id}"


@dataclass
class HistoryQuery:
    filters: dict[str, Any]          # for the store: user, ..., text, since, until
    form: dict[str, str]             # what the form shows
    before: tuple[float, str] | None
    own_only: bool = False           # the text search was narrowed to the viewer's queries


def parse_history_args(args: Mapping[str, str], *, viewer: str | None, can_see_all: bool) -> HistoryQuery:
    form = {k: (args.get(k) or "").strip() for k in (*TEXT_FILTERS, "since", "until")}
    filters: dict[str, Any] = {k: form[k] for k in TEXT_FILTERS if form[k]}
    since = parse_time(form["since"], "since")
    until = parse_time(form["until"], "until")
    if since is not None and until is not None and since >= until:
        raise FilterError("since must be before until")
    if since is not None:
        filters["since"] = since
    if until is not None:
        filters["until"] = until
    own_only = False
    if "text" in filters and not can_see_all:
        if viewer is None:
            raise FilterError("text search needs a login")
        if filters.get("user") not in (None, viewer):
            raise FilterError("text search covers only your own queries; clear the user filter")
        filters["user"] = viewer
        own_only = True
    return HistoryQuery(filters, form, parse_cursor(args.get("before")), own_only)


def query_link(gw: "Gateway", row: HistoryRow) -> str | None:
    b = gw.registry.get(row.backend) if row.backend else None
    return f"{b.external_url}/ui/query.html?{row.query_id}" if b is not None else None


class HistoryHandler(PageHandler):
    nav = "history"

    async def get(self) -> None:
        args = {k: self.get_argument(k, "") for k in (*TEXT_FILTERS, "since", "until", "before")}
        auth_on = self.sessions.enabled
        viewer = self.session.user if self.session else None
        roles = self.session.roles if self.session else None
        show_all = self.gw.config.auth.showAllQueries
        can_see_all = not auth_on or show_all or "admin" in (roles or [])
        error = None
        rows: list[HistoryRow] = []
        more = False
        try:
            q = parse_history_args(args, viewer=viewer, can_see_all=can_see_all)
        except FilterError as exc:
            q, error = HistoryQuery({}, {k: args.get(k, "") for k in (*TEXT_FILTERS, "since", "until")}, None), str(exc)
        if error is None and self.gw.store is not None:
            try:
                rows = await self.gw.store.call("query_history", limit=PAGE_SIZE + 1, before=q.before, **q.filters)
            except Exception as exc:  # noqa: BLE001 - show the store's message, keep the page
                error = f"Query history is unavailable: {exc}"
            more = len(rows) > PAGE_SIZE
            rows = rows[:PAGE_SIZE]
        view = [{
            "row": r,
            "link": query_link(self.gw, r),
            "sql_visible": sql_visible(r.user, viewer, roles, auth_enabled=auth_on, show_all=show_all),
        } for r in rows]
        base_args = {k: v for k, v in q.form.items() if v}
        older = (f"{BASE}/history?" + urlencode({**base_args, "before": encode_cursor(rows[-1])})
                 if more and rows else None)
        newest = f"{BASE}/history?" + urlencode(base_args) if q.before else None
        self.render_page("history.html", status=400 if error and not rows else 200, rows=view,
                         form=q.form, error=error, older=older, newest=newest, own_only=q.own_only,
                         can_see_all=can_see_all, states=STATES,
                         groups=sorted(self.gw.registry.groups()),
                         backends=sorted(b.name for b in self.gw.registry.all()),
                         page_size=PAGE_SIZE)


def routes(gw: "Gateway") -> list[Any]:
    return [(BASE + r"/history", HistoryHandler, {"gateway": gw})]
