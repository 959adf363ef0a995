"""The metrics page: every metric listed with value and help, a sampled history shared by two
workers that survives a restart, a chart, and CSV/JSON downloads; the pure parts too."""
from __future__ import annotations

import csv
import io
import json
import re
import sqlite3

from gateway.admin.charts import line_chart
from gateway.metrics import METRIC_NAMES
from gateway.metrics_history import rates, samples_from_text
from tests.conftest import gateway_config, wait_for

B = "/trino-gateway"
ROUTED = "trino_gateway_statements_routed_total"

TEXT = """# HELP x_seconds Time
# TYPE x_seconds histogram
x_seconds_bucket{le="0.1"} 1.0
x_seconds_bucket{le="+Inf"} 2.0
x_seconds_count 2.0
x_seconds_sum 0.3
# HELP y Gauge
# TYPE y gauge
y{backend="b"} NaN
y{backend="a"} 4.0
"""


def test_samples_keep_counts_and_sums_not_buckets_or_nan() -> None:
    assert samples_from_text(TEXT) == [("x_seconds_count", "{}", 2.0), ("x_seconds_sum", "{}", 0.3),
                                       ("y", '{"backend": "a"}', 4.0)]


def test_rates_per_second_and_counter_restarts() -> None:
    assert rates([(0, 10), (10, 30), (20, 5), (30, 5)]) == [(10, 2.0), (20, 0.5), (30, 0.0)]


def test_sampler_writes_the_rendered_metrics_once_per_interval_with_its_parts_alone() -> None:
    """The sampler needs no Gateway, only its parts: gauges refreshed first, the rendered
    samples stored at the interval boundary, a second worker's write of that time a no-op."""
    import asyncio

    from gateway.metrics import Metrics
    from gateway.metrics_history import MetricsSampler
    from gateway.store.writer import AsyncStore

    async def run() -> tuple[list[int], list[int], list[tuple[str, float, float]]]:
        store = await AsyncStore.open("sqlite:///:memory:")
        metrics = Metrics()
        refreshed: list[int] = []
        one = MetricsSampler(store, metrics, "host:8080", 30.0, 3600.0,
                             refresh_gauges=lambda: refreshed.append(1))
        two = MetricsSampler(store, metrics, "host:8080", 30.0, 3600.0, refresh_gauges=lambda: None)
        metrics.rule_reloads.labels("ok").inc(3)
        written = [await one.sample_once(now=1015.0), await two.sample_once(now=1019.0)]
        rows = await store.call("metric_series", "host:8080", "trino_gateway_rule_reloads_total", 0.0)
        await store.close()
        return refreshed, written, rows

    refreshed, written, rows = asyncio.run(run())
    assert refreshed == [1]
    assert written[0] > 0 and written[1] == 0
    assert rows == [('{"outcome": "ok"}', 990.0, 3.0)]


def test_line_chart_draws_one_line_per_series_and_escapes() -> None:
    svg = line_chart([("a<b", [(0, 1), (60, 2)]), ("c", [(30, 5)])], 0, 60, title="t&t")
    assert svg.count("<polyline") == 1 and svg.count("<circle") == 1
    assert "a&lt;b" in svg and "t&amp;t" in svg and "a<b" not in svg


def _series(gw, hours=1):
    return gw.api("GET", f"{B}/metrics/{ROUTED}.json", params={"hours": hours}).json()


def test_metrics_page_history_chart_and_downloads(fresh_clusters, gateway_factory, tmp_path):
    from tests.ops.support import free_port
    db = tmp_path / "gateway.db"
    cfg = gateway_config(tmp_path, fresh_clusters, server={"workers": 2, "port": free_port()},
                         store={"metricsInterval": "1s"})
    gw = gateway_factory(cfg)
    wait_for(lambda: gw.log().count("listening on") >= 2, message="two workers")
    cur = gw.connect().cursor()
    for _ in range(3):
        cur.execute("SELECT 1")
        cur.fetchall()

    page = gw.api("GET", f"{B}/metrics").text
    listed = set(re.findall(r'data-metric="([^"]+)"', page))
    assert set(METRIC_NAMES) <= listed, set(METRIC_NAMES) - listed      # the same names as /metrics
    assert "Statements routed, by routing group, backend and rule" in page
    assert f'href="{B}/metrics"' in page and 'aria-current="page"' in page   # in the navigation

    doc = wait_for(lambda: (lambda d: d if d["series"] and min(len(s["points"]) for s in d["series"]) >= 3
                            else None)(_series(gw)),
                   timeout=20, message="three samples of each routed counter")
    assert doc["metric"] == ROUTED and doc["intervalSeconds"] == 1.0
    # one sample per time although two workers sample: the store keeps the first writer's
    con = sqlite3.connect(db)
    dup = con.execute("SELECT count(*) FROM (SELECT name, labels, ts FROM metric_samples "
                      "GROUP BY instance, name, labels, ts HAVING count(*) > 1)").fetchone()[0]
    times = [r[0] for r in con.execute("SELECT DISTINCT ts FROM metric_samples ORDER BY ts")]
    con.close()
    assert dup == 0 and len(times) >= 3 and all(t == int(t) for t in times)
    assert sum(p[1] for s in doc["series"] for p in s["points"][-1:]) == 3    # all three counted

    detail = gw.api("GET", f"{B}/metrics/{ROUTED}", params={"hours": 6})
    assert detail.status_code == 200 and "<polyline" in detail.text and "per second" in detail.text
    assert "backend=adhoc-" in detail.text
    got = gw.api("GET", f"{B}/metrics/{ROUTED}.csv", params={"hours": 24})
    assert got.headers["Content-Type"].startswith("text/csv") and "attachment" in got.headers["Content-Disposition"]
    rows = list(csv.DictReader(io.StringIO(got.text)))
    assert rows and set(rows[0]) == {"time", "unix", "backend", "group", "rule", "value"}
    assert gw.api("GET", f"{B}/metrics/no_such_metric").status_code == 404

    # the history outlives the gateway: a new process on the same store still has it
    gw.stop()
    gw2 = gateway_factory(cfg)          # same host and port: the same gateway instance
    old = {(tuple(sorted(s["labels"].items())), p[0]) for s in doc["series"] for p in s["points"]}
    after = _series(gw2)
    assert "series" in after, after
    assert old <= {(tuple(sorted(s["labels"].items())), p[0]) for s in after["series"] for p in s["points"]}
    body = json.dumps(after)
    assert ROUTED in body
