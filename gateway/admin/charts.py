"""Server-rendered SVG charts for the dashboard (pure functions: numbers in, markup out).

No chart library and no script: the dashboard stays readable without JavaScript and the
markup is easy to test. Every text that goes into the SVG is escaped here.
"""
from __future__ import annotations

import datetime as _dt
import math
from html import escape
from typing import Iterable

__all__ = ["bucket_counts", "bucket_seconds", "queries_chart", "distribution_chart", "line_chart", "PALETTE"]


def bucket_seconds(hours: float, max_bars: int = 180) -> int:
    """A bucket width (a whole number of minutes) giving at most ``max_bars`` bars."""
    minutes = max(1, math.ceil(hours * 60 / max_bars))
    for nice in (1, 2, 5, 10, 15, 30, 60, 120, 240):
        if nice >= minutes:
            return nice * 60
    return minutes * 60


def bucket_counts(per_minute: Iterable[tuple[float, int]], since: float, now: float,
                  bucket: int) -> list[tuple[float, int]]:
    """Per-minute counts summed into ``bucket``-second buckets from ``since`` to ``now``, gaps as 0."""
    start = math.floor(since / bucket) * bucket
    n = max(1, math.floor((now - start) / bucket) + 1)
    counts = [0] * n
    for ts, c in per_minute:
        i = math.floor((ts - start) / bucket)
        if 0 <= i < n:
            counts[i] += int(c)
    return [(start + i * bucket, counts[i]) for i in range(n)]


def _nice_max(v: int) -> int:
    """The axis top: a round, even number at least ``v`` (so the middle label is whole)."""
    if v <= 4:
        return 4
    mag = 10 ** math.floor(math.log10(v))
    for m in (1, 2, 4, 6, 8, 10):
        top = int(m * mag)
        if v <= top and top % 2 == 0:
            return top
    return 10 * mag  # pragma: no cover


def _hhmm(ts: float) -> str:
    return _dt.datetime.fromtimestamp(ts, _dt.timezone.utc).strftime("%H:%M")


def queries_chart(buckets: list[tuple[float, int]], bucket: int, *, width: int = 760,
                  height: int = 180) -> str:
    """A bar chart of queries per bucket with a time axis (UTC) and a count axis."""
    left, right, top, bottom = 44, 8, 10, 24
    plot_w, plot_h = width - left - right, height - top - bottom
    top_value = _nice_max(max((c for _, c in buckets), default=0))
    n = len(buckets)
    step = plot_w / max(n, 1)
    bar_w = max(step * 0.8, 0.6)
    total = sum(c for _, c in buckets)
    per = f"{bucket // 60} min" if bucket < 3600 else f"{bucket // 3600} h"
    title = f"Queries per {per}: {total} in total"
    out = [f'<svg class="chart" viewBox="0 0 {width} {height}" width="100%" role="img" '
           f'aria-label="{escape(title)}" xmlns="http://www.w3.org/2000/svg">',
           f'<title>{escape(title)}</title>']
    for frac in (0, 0.5, 1):
        y = top + plot_h * (1 - frac)
        out.append(f'<line class="grid" x1="{left}" x2="{width - right}" y1="{y:.1f}" y2="{y:.1f}"/>')
        out.append(f'<text class="axis" x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">'
                   f'{int(top_value * frac)}</text>')
    for i, (ts, c) in enumerate(buckets):
        if c <= 0:
            continue
        h = plot_h * c / top_value
        x = left + i * step + (step - bar_w) / 2
        out.append(f'<rect class="bar" x="{x:.2f}" y="{top + plot_h - h:.2f}" width="{bar_w:.2f}" '
                   f'height="{h:.2f}"><title>{_hhmm(ts)} UTC: {c}</title></rect>')
    # about six time labels, on bucket boundaries
    every = max(1, round(n / 6))
    for i in range(0, n, every):
        x = left + i * step
        if x > width - right - 30:
            break   # a label this close to the edge would be cut off
        out.append(f'<text class="axis" x="{x:.1f}" y="{height - 6}" text-anchor="start">'
                   f'{_hhmm(buckets[i][0])}</text>')
    out.append("</svg>")
    return "".join(out)


def distribution_chart(counts: dict[str, int], *, width: int = 760, row: int = 22) -> str:
    """Horizontal bars: how many queries each backend received, with share in percent."""
    items = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    total = sum(counts.values())
    if not items:
        return '<p class="muted">No queries in this period.</p>'
    label_w, value_w = 170, 110
    plot_w = width - label_w - value_w
    height = row * len(items) + 4
    top_value = max(c for _, c in items) or 1
    out = [f'<svg class="chart dist" viewBox="0 0 {width} {height}" width="100%" role="img" '
           f'aria-label="Queries per backend" xmlns="http://www.w3.org/2000/svg">']
    for i, (name, c) in enumerate(items):
        y = i * row + 2
        w = max(plot_w * c / top_value, 1)
        pct = 100 * c / total if total else 0
        out.append(f'<text class="label" x="{label_w - 8}" y="{y + row * 0.68:.1f}" text-anchor="end">'
                   f'{escape(name)}</text>')
        out.append(f'<rect class="bar" x="{label_w}" y="{y + 3}" width="{w:.1f}" height="{row - 6}">'
                   f'<title>{escape(name)}: {c}</title></rect>')
        out.append(f'<text class="value" x="{label_w + w + 6:.1f}" y="{y + row * 0.68:.1f}">'
                   f'{c} ({pct:.0f}%)</text>')
    out.append("</svg>")
    return "".join(out)


# Colours for line charts: distinguishable, and at least 3:1 against white.
PALETTE = ("#1f4fd1", "#c4320a", "#16794c", "#7a2ec2", "#a15c07", "#0e7490", "#be185d",
           "#4d5b7c", "#65730d", "#9f1239", "#1e6091", "#6b4f1d")


def _fmt_value(v: float) -> str:
    if v == 0:
        return "0"
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    if abs(v) >= 10:
        return f"{v:.0f}"
    if abs(v) >= 0.01:
        return f"{v:.2f}".rstrip("0").rstrip(".")
    return f"{v:.2g}"


def line_chart(series: list[tuple[str, list[tuple[float, float]]]], since: float, now: float, *,
               title: str, width: int = 760, height: int = 220) -> str:
    """One line per series (label, [(ts, value)]) over [since, now], UTC time axis."""
    left, right, top, bottom = 56, 10, 10, 24
    plot_w, plot_h = width - left - right, height - top - bottom
    values = [v for _, pts in series for _, v in pts]
    lo = min(0.0, min(values, default=0.0))
    hi = max(values, default=0.0)
    if hi <= lo:
        hi = lo + 1
    span = max(now - since, 1.0)

    def x(ts: float) -> float:
        return left + plot_w * (ts - since) / span

    def y(v: float) -> float:
        return top + plot_h * (1 - (v - lo) / (hi - lo))

    out = [f'<svg class="chart lines" viewBox="0 0 {width} {height}" width="100%" role="img" '
           f'aria-label="{escape(title)}" xmlns="http://www.w3.org/2000/svg">',
           f'<title>{escape(title)}</title>']
    for frac in (0, 0.5, 1):
        v = lo + (hi - lo) * frac
        out.append(f'<line class="grid" x1="{left}" x2="{width - right}" y1="{y(v):.1f}" y2="{y(v):.1f}"/>')
        out.append(f'<text class="axis" x="{left - 6}" y="{y(v) + 4:.1f}" text-anchor="end">'
                   f'{_fmt_value(v)}</text>')
    for i in range(6):
        ts = since + span * i / 6
        out.append(f'<text class="axis" x="{x(ts):.1f}" y="{height - 6}" text-anchor="start">'
                   f'{_hhmm(ts)}</text>')
    for i, (label, pts) in enumerate(series):
        colour = PALETTE[i % len(PALETTE)]
        if len(pts) == 1:
            ts, v = pts[0]
            out.append(f'<circle cx="{x(ts):.1f}" cy="{y(v):.1f}" r="2.5" fill="{colour}">'
                       f'<title>{escape(label)}: {_fmt_value(v)}</title></circle>')
            continue
        path = " ".join(f"{x(ts):.1f},{y(v):.1f}" for ts, v in pts)
        out.append(f'<polyline class="line" stroke="{colour}" points="{path}">'
                   f'<title>{escape(label)}</title></polyline>')
    out.append("</svg>")
    return "".join(out)
