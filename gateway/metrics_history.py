"""The gateway's own metrics over time, for the metrics page (no Prometheus needed).

Every ``store.metricsInterval`` each worker process renders ``/metrics`` (with several workers
that text already covers all of them, see ``gateway.metrics``) and writes every sample to the
store's ``metric_samples`` table, keyed by this gateway's instance (``host:port``) and the
sampling time rounded down to the interval. The first worker to write a time wins; the others'
writes of the same time are no-ops, so the table holds one sample per interval however many
workers there are, and it outlives restarts. Samples older than ``store.metricsRetention`` are
deleted as new ones arrive, so the table stays bounded (about 2,900 rows per series a day at the
default 30 s). Histogram buckets are not kept (``_count`` and ``_sum`` are).

Parsing uses prometheus-client's own parser of the text format.
"""
from __future__ import annotations

import json
import logging
import math
import socket
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from prometheus_client.parser import text_string_to_metric_families

from gateway.runtime.periodic import Periodic

if TYPE_CHECKING:
    from gateway.metrics import Metrics
    from gateway.store.writer import StoreCalls

log = logging.getLogger("gateway.metrics")

__all__ = ["Family", "families", "samples_from_text", "rates", "instance_name", "MetricsSampler",
           "is_cumulative"]


@dataclass
class Family:
    """One metric as ``/metrics`` shows it: its samples without histogram buckets."""
    name: str
    type: str
    help: str
    samples: list[tuple[str, dict[str, str], float]] = field(default_factory=list)

    @property
    def display_name(self) -> str:
        """The name as ``/metrics`` writes it (counters end in ``_total`` there)."""
        return self.name + "_total" if self.type == "counter" else self.name

    @property
    def sample_names(self) -> list[str]:
        return sorted({s[0] for s in self.samples})


def _kept(sample_name: str) -> bool:
    return not sample_name.endswith(("_bucket", "_created"))


def families(text: str) -> list[Family]:
    """The metric families of an exposition text, by name."""
    out = []
    for fam in text_string_to_metric_families(text):
        f = Family(fam.name, fam.type, fam.documentation)
        f.samples = [(s.name, dict(s.labels), float(s.value)) for s in fam.samples if _kept(s.name)]
        out.append(f)
    return sorted(out, key=lambda f: f.name)


def samples_from_text(text: str) -> list[tuple[str, str, float]]:
    """(sample name, labels as sorted JSON, value) for the store; NaN values are left out."""
    out = []
    for fam in families(text):
        for name, labels, value in fam.samples:
            if not math.isnan(value):
                out.append((name, json.dumps(labels, sort_keys=True), value))
    return out


def is_cumulative(sample_name: str, family_type: str | None = None) -> bool:
    """Counters and histogram sums/counts only grow: their chart shows the rate."""
    if family_type in ("counter",):
        return True
    return sample_name.endswith(("_total", "_count", "_sum"))


def rates(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Per-second increase between consecutive samples of a cumulative series; a drop (the
    counter restarted with its process) starts again from the new value."""
    out = []
    for (t0, v0), (t1, v1) in zip(points, points[1:]):
        if t1 <= t0:
            continue
        inc = v1 - v0 if v1 >= v0 else v1
        out.append((t1, inc / (t1 - t0)))
    return out


def instance_name(port: int) -> str:
    """This gateway in the samples table: its host and port (``server.port``, shared by its
    workers)."""
    return f"{socket.gethostname()}:{port}"


class MetricsSampler(Periodic):
    """Writes the gateway's metrics to ``store`` every ``interval`` seconds, as ``instance``;
    ``refresh_gauges`` brings the gauges up to date before each sample."""

    what = "metrics sampling"

    def __init__(self, store: "StoreCalls", metrics: "Metrics", instance: str, interval: float,
                 retention: float, *, refresh_gauges: Callable[[], None]) -> None:
        self.store = store
        self.metrics = metrics
        self.refresh_gauges = refresh_gauges
        self.interval = self.every = interval
        self.retention = retention
        self.instance = instance
        self.written = 0

    async def sample_once(self, now: float | None = None) -> int:
        """Sample now (rounded down to the interval); the rows written (0: another worker did)."""
        now = time.time() if now is None else now
        ts = math.floor(now / self.interval) * self.interval
        self.refresh_gauges()
        body, _ = self.metrics.render()
        samples = samples_from_text(body.decode("utf-8"))
        n = await self.store.call("insert_metric_samples", self.instance, ts, samples,
                                  now - self.retention)
        self.written += n
        return n

    async def tick(self) -> int:
        return await self.sample_once()

    def delay(self) -> float:
        # just after the next interval boundary, so every worker samples the same time
        return self.interval - time.time() % self.interval + 0.05


def series_doc(name: str, instance: str, hours: int, interval: float,
               rows: list[tuple[str, float, float]]) -> dict[str, Any]:
    """The JSON download: one entry per label set with its [time, value] points."""
    by_labels: dict[str, list[list[float]]] = {}
    for labels, ts, value in rows:
        by_labels.setdefault(labels, []).append([ts, value])
    return {"metric": name, "instance": instance, "hours": hours, "intervalSeconds": interval,
            "series": [{"labels": json.loads(lb), "points": pts} for lb, pts in sorted(by_labels.items())]}
