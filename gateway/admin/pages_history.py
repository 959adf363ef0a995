"""Query history page: filters, keyset paging, a capped total, downloads, links to each query
on its cluster.

Paging is keyset ("older/newer than this row") through the store's ``before``/``after``
positions, so page 1000 of a million rows costs what page 1 costs; the total is counted up to
``COUNT_CAP`` ("more than 1000"). Text and tag search use the store's text index (SQLite FTS5,
PostgreSQL trigrams), and every search runs on the gateway's search store
(``AdminParts.search_store``), so slow searches never hold up other pages.
``/trino-gateway/history.csv`` and ``.json`` download the filtered rows (up to
``DOWNLOAD_LIMIT``).
A viewer with only the ``user`` role sees the SQL text of their own queries only (unless
``auth.showAllQueries``), and their text search covers only their own queries, so searching
cannot reveal other users' SQL either.
"""
from __future__ import annotations

import csv
import datetime as _dt
import io
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping
from urllib.parse import urlencode

from tornado.web import HTTPError

from gateway.admin.pages import BASE, PageHandler
from gateway.admin.auth import sql_visible
from gateway.store.base import HistoryRow

if TYPE_CHECKING:
    from gateway.admin.parts import AdminParts
    from gateway.backends.state import Registry

PAGE_SIZE = 50
COUNT_CAP = 1000
DOWNLOAD_LIMIT = 10_000
TEXT_FILTERS = ("text", "query_id", "user", "source", "tag", "group", "backend", "rule", "state")
# Every final state the gateway writes (gateway.app.query_finished, statement_refused and the
# resolver); "not finished" rows have none.
STATES = ("FINISHED", "FAILED", "CANCELED", "REJECTED", "QUEUED_TIMEOUT", "UNKNOWN")
# A Trino query id (YYYYMMDD_HHMMSS_NNNNN_xxxxx): pasted into the text box, it is an id search.
_QUERY_ID = re.compile(r"^\d{8}_\d{6}_\d{5}_[a-z0-9]{5}$")


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


def fmt_duration(seconds: float | None) -> str:
    """``850 ms``, ``12.3 s``, ``4 min 05 s``, ``2 h 03 min``; ``–`` when unknown."""
    if seconds is None:
        return "–"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{int(seconds // 60)} min {int(seconds % 60):02d} s"
    return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60):02d} min"


@dataclass
class HistoryQuery:
    filters: dict[str, Any]          # for the store: user, ..., text, since, until
    form: dict[str, str]             # what the form shows
    before: tuple[float, str] | None
    own_only: bool = False           # the text search was narrowed to the viewer's queries
    after: tuple[float, str] | None = None


def parse_history_args(args: Mapping[str, str], *, viewer: str | None, can_see_all: bool) -> HistoryQuery:
    form = {k: (args.get(k) or "").strip() for k in (*TEXT_FILTERS, "since", "until")}
    if _QUERY_ID.match(form["text"]) and not form["query_id"]:
        form["query_id"], form["text"] = form["text"], ""      # a pasted query id
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
    return HistoryQuery(filters, form, parse_cursor(args.get("before")), own_only,
                        after=parse_cursor(args.get("after")))


def query_link(registry: "Registry", row: HistoryRow) -> str | None:
    b = registry.get(row.backend) if row.backend else None
    return f"{b.external_url}/ui/query.html?{row.query_id}" if b is not None else None


class HistoryHandler(PageHandler):
    nav = "history"

    def viewer(self) -> tuple[bool, str | None, list[str] | None, bool, bool]:
        auth_on = self.sessions.enabled
        viewer = self.session.user if self.session else None
        roles = self.session.roles if self.session else None
        show_all = self.parts.config.auth.showAllQueries
        can_see_all = not auth_on or show_all or "admin" in (roles or [])
        return auth_on, viewer, roles, show_all, can_see_all

    def args(self) -> dict[str, str]:
        return {k: self.get_argument(k, "") for k in (*TEXT_FILTERS, "since", "until", "before", "after")}

    def sql_visible(self, row: HistoryRow) -> bool:
        auth_on, viewer, roles, show_all, _ = self.viewer()
        return sql_visible(row.user, viewer, roles, auth_enabled=auth_on, show_all=show_all)

    async def get(self) -> None:
        args = self.args()
        _, viewer, _, _, can_see_all = self.viewer()
        error = None
        rows: list[HistoryRow] = []
        more = False
        total: int | None = None
        try:
            q = parse_history_args(args, viewer=viewer, can_see_all=can_see_all)
        except FilterError as exc:
            q, error = HistoryQuery({}, {k: args.get(k, "") for k in (*TEXT_FILTERS, "since", "until")}, None), str(exc)
        if error is None and self.parts.store is not None:
            try:
                store = await self.parts.search_store()
                rows = await store.call("query_history", limit=PAGE_SIZE + 1, before=q.before,
                                        after=q.after, **q.filters)
                total = await store.call("count_history", cap=COUNT_CAP, **q.filters)
            except Exception as exc:  # noqa: BLE001 - show the store's message, keep the page
                error = f"Query history is unavailable: {exc}"
            more = len(rows) > PAGE_SIZE
            # newest first either way; paging newer, the extra row is the newest (the first)
            rows = rows[1:] if q.after is not None and more else rows[:PAGE_SIZE]
        view = [{"row": r, "link": query_link(self.parts.registry, r), "sql_visible": self.sql_visible(r),
                 "duration": fmt_duration(r.duration),
                 "queued": fmt_duration(None if r.queued_ms is None else r.queued_ms / 1000)}
                for r in rows]
        base_args = {k: v for k, v in q.form.items() if v}
        paged = q.before is not None or q.after is not None
        has_older = more if q.after is None else bool(rows)
        has_newer = (q.before is not None) or (q.after is not None and more)
        older = (f"{BASE}/history?" + urlencode({**base_args, "before": encode_cursor(rows[-1])})
                 if has_older and rows else None)
        newer = (f"{BASE}/history?" + urlencode({**base_args, "after": encode_cursor(rows[0])})
                 if has_newer and rows else None)
        newest = f"{BASE}/history?" + urlencode(base_args) if paged else None
        download = urlencode(base_args)
        self.render_page("history.html", status=400 if error and not rows else 200, rows=view,
                         form=q.form, error=error, older=older, newer=newer, newest=newest,
                         own_only=q.own_only, can_see_all=can_see_all, states=STATES,
                         total=total, count_cap=COUNT_CAP, download=download,
                         groups=sorted(self.parts.registry.groups()),
                         backends=sorted(b.name for b in self.parts.registry.all()),
                         page_size=PAGE_SIZE, download_limit=DOWNLOAD_LIMIT)


class HistoryDownloadHandler(HistoryHandler):
    """The filtered history as CSV or JSON (newest first, up to ``DOWNLOAD_LIMIT`` rows)."""

    def is_page(self) -> bool:
        return False

    async def get(self, fmt: str) -> None:  # type: ignore[override]
        args = self.args()
        _, viewer, _, _, can_see_all = self.viewer()
        try:
            q = parse_history_args(args, viewer=viewer, can_see_all=can_see_all)
        except FilterError as exc:
            raise HTTPError(400, reason=str(exc)) from None
        if self.parts.store is None:
            raise HTTPError(503, reason="no store")
        store = await self.parts.search_store()
        rows = await store.call("query_history", limit=DOWNLOAD_LIMIT, before=q.before, **q.filters)
        docs = []
        for r in rows:
            doc = r.to_json()
            if not self.sql_visible(r):
                doc["sql"] = None        # role `user` sees only its own queries' SQL
            docs.append(doc)
        self.send_download("query-history", fmt, docs, history_csv)


CSV_COLUMNS = ("queryId", "submittedAt", "finishedAt", "durationMs", "queuedMs", "user", "source",
               "clientTags", "routingGroup", "backend", "rule", "finalState", "error", "sql")


def history_csv(docs: list[dict[str, Any]]) -> str:
    """History rows as CSV: times in ISO 8601 UTC, tags joined with ``,``."""
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    for d in docs:
        dur = None if d["finishedAt"] is None else round((d["finishedAt"] - d["submittedAt"]) * 1000)
        vals = {**d, "durationMs": dur, "clientTags": ",".join(d["clientTags"]),
                "submittedAt": iso(d["submittedAt"]), "finishedAt": iso(d["finishedAt"])}
        w.writerow(["" if vals[c] is None else vals[c] for c in CSV_COLUMNS])
    return out.getvalue()


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return _dt.datetime.fromtimestamp(ts, _dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def routes(parts: "AdminParts") -> list[Any]:
    return [(BASE + r"/history", HistoryHandler, {"parts": parts}),
            (BASE + r"/history\.(csv|json)", HistoryDownloadHandler, {"parts": parts})]
