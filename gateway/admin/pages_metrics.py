"""Metrics page: every gateway metric with its current value and help, and one metric's recent
history as a chart with CSV and JSON downloads.

Current values come from the same text ``/metrics`` serves (all workers); the history from the
samples ``gateway.metrics_history`` writes to the store, so the page works without Prometheus
and keeps its history across restarts.
"""
from __future__ import annotations

import csv
import datetime as _dt
import io
import time
from typing import TYPE_CHECKING, Any

from markupsafe import Markup
from tornado.web import HTTPError

from gateway.admin.charts import PALETTE, line_chart
from gateway.admin.pages import BASE, PageHandler
from gateway.metrics_history import Family, families, is_cumulative, rates, series_doc

if TYPE_CHECKING:
    from gateway.admin.parts import AdminParts

HOURS_CHOICES = (1, 6, 24)
MAX_LINES = len(PALETTE)        # label sets drawn; the downloads have all of them
_NAME = r"([a-zA-Z_:][a-zA-Z0-9_:]*)"


def parse_hours(value: str | None) -> int:
    try:
        h = int(value) if value else 1
    except ValueError:
        return 1
    return h if h in HOURS_CHOICES else 1


def label_text(labels: dict[str, str]) -> str:
    """``backend=trino-1, group=adhoc``, or ``(no labels)``."""
    return ", ".join(f"{k}={v}" for k, v in sorted(labels.items())) or "(no labels)"


def current_families(parts: "AdminParts") -> list[Any]:
    """Every metric the gateway defines, with the samples ``/metrics`` has for it now (a
    labelled metric nothing has touched yet has none, and is listed all the same)."""
    parts.refresh_gauges()
    body, _ = parts.metrics.render()
    found = {f.name: f for f in families(body.decode("utf-8"))}
    for name, kind, doc in parts.metrics.described():
        found.setdefault(name, Family(name, kind, doc))
    return sorted(found.values(), key=lambda f: f.name)


def series_csv(doc: dict[str, Any]) -> str:
    """One row per sample: UTC time, unix time, a column per label, the value."""
    keys = sorted({k for s in doc["series"] for k in s["labels"]})
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(["time", "unix", *keys, "value"])
    rows = [(ts, s["labels"], v) for s in doc["series"] for ts, v in s["points"]]
    for ts, labels, v in sorted(rows, key=lambda r: (r[0], sorted(r[1].items()))):
        when = _dt.datetime.fromtimestamp(ts, _dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        w.writerow([when, f"{ts:.0f}", *[labels.get(k, "") for k in keys], repr(v)])
    return out.getvalue()


class MetricsHandler(PageHandler):
    nav = "metrics"

    def get(self) -> None:
        fams = current_families(self.parts)
        self.render_page("metrics.html", families=fams, label_text=label_text,
                         interval=self.parts.config.store.metricsInterval)


class MetricHandler(PageHandler):
    nav = "metrics"

    async def series(self, name: str, hours: int) -> dict[str, Any]:
        p = self.parts
        if p.store is None:
            raise HTTPError(503, reason="no store")
        since = time.time() - hours * 3600
        rows = await p.store.call("metric_series", p.metrics_instance, name, since)
        return series_doc(name, p.metrics_instance, hours, p.config.store.metricsInterval, rows)

    def family_of(self, name: str) -> Any:
        for f in current_families(self.parts):
            if name in (f.name, f.display_name) or name in f.sample_names:
                return f
        raise HTTPError(404, reason=f"No gateway metric is named {name!r}")

    async def get(self, name: str) -> None:
        fam = self.family_of(name)
        if fam.type == "histogram" and name == fam.name:
            # a histogram's family name: its count is the series to watch
            return self.redirect(f"{BASE}/metrics/{name}_count")
        hours = parse_hours(self.get_argument("hours", None))
        doc = await self.series(name, hours)
        cumulative = is_cumulative(name, fam.type)
        now = time.time()
        lines = []
        for s in doc["series"][:MAX_LINES]:
            pts = [(p[0], p[1]) for p in s["points"]]
            lines.append((label_text(s["labels"]), rates(pts) if cumulative else pts))
        unit = "per second (increase between samples)" if cumulative else "value"
        chart = line_chart(lines, now - hours * 3600, now, title=f"{name}, {unit}, last {hours} h",
                           width=1300, height=260) if any(p for _, p in lines) else ""
        current = [(label_text(lb), v) for n, lb, v in fam.samples if n == name]
        self.render_page("metric.html", name=name, family=fam, hours=hours,
                         hours_choices=HOURS_CHOICES, chart=Markup(chart), unit=unit,
                         legend=[(lbl, PALETTE[i % len(PALETTE)]) for i, (lbl, _) in enumerate(lines)],
                         more=max(0, len(doc["series"]) - MAX_LINES), current=current,
                         samples=sum(len(s["points"]) for s in doc["series"]),
                         interval=self.parts.config.store.metricsInterval)


class MetricDownloadHandler(MetricHandler):
    def is_page(self) -> bool:
        return False

    async def get(self, name: str, fmt: str) -> None:  # type: ignore[override]
        self.family_of(name)
        hours = parse_hours(self.get_argument("hours", None))
        doc = await self.series(name, hours)
        self.send_download(f"{name}-{hours}h", fmt, doc, series_csv)


def routes(parts: "AdminParts") -> list[Any]:
    a = {"parts": parts}
    return [
        (BASE + r"/metrics", MetricsHandler, a),
        (BASE + r"/metrics/" + _NAME + r"\.(csv|json)", MetricDownloadHandler, a),
        (BASE + r"/metrics/" + _NAME, MetricHandler, a),
    ]
