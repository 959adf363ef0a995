"""The 1,500-row spooled query of issue 14, direct and through 1 and 2 gateway workers.

Two simulated clusters started with ``--spooling``; the official Python client with
``encoding='json'`` and ``session_properties={'sim_page_rows': '50'}`` (30 spooled segments per
query). Each client is a new ``trino.dbapi`` connection, so its requests spread over the
gateway's workers as a real client's do. Figures: wall time of one query (median of ``--runs``),
and failures when ``--concurrent`` such queries run at once, plus the gateway's owner-lookup
counters (every follow-up should be routed by its token).

    PYTHONPATH=$PWD python benchmarks/spooled_workers.py --runs 5 --concurrent 40
"""
from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
import services  # noqa: E402

SQL = "SELECT n FROM numbers WHERE n <= 1500 ORDER BY n"


def one_query(host: str, port: int) -> float:
    import trino
    t0 = time.perf_counter()
    conn = trino.dbapi.connect(host=host, port=port, user="bench", http_scheme="http", encoding="json",
                               session_properties={"sim_page_rows": "50"})
    cur = conn.cursor()
    cur.execute(SQL)
    rows = cur.fetchall()
    if len(rows) != 1500:
        raise AssertionError(f"{len(rows)} rows")
    return time.perf_counter() - t0


def measure(port: int, runs: int, concurrent: int) -> dict[str, Any]:
    one_query("127.0.0.1", port)   # warm-up
    times = [one_query("127.0.0.1", port) for _ in range(runs)]
    failures: list[str] = []

    def safe(_: int) -> float | None:
        try:
            return one_query("127.0.0.1", port)
        except Exception as exc:  # noqa: BLE001 - counted
            failures.append(str(exc)[:200])
            return None
    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrent) as pool:
        done = [t for t in pool.map(safe, range(concurrent)) if t is not None]
    return {"median_s": round(statistics.median(times), 3), "min_s": round(min(times), 3),
            "concurrent": concurrent, "failed": len(failures),
            "concurrent_wall_s": round(time.perf_counter() - t0, 2),
            "concurrent_median_s": round(statistics.median(done), 3) if done else None,
            "errors": sorted(set(failures))[:3]}


def owner_lookups(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    return {m.group(1): float(m.group(2)) for m in
            re.finditer(r'trino_gateway_owner_lookups_total\{source="(\w+)"\} (\S+)', text)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--concurrent", type=int, default=40)
    args = ap.parse_args()
    tmp = services.new_tmp("tgw-spool-")
    clusters = [services.start_cluster(tmp, f"spool-{i}", "--spooling") for i in (1, 2)]
    out: dict[str, Any] = {}
    try:
        out["direct"] = measure(clusters[0].port, args.runs, args.concurrent)
        for workers in (1, 2):
            cfg = services.gateway_config(tmp, [(c.name, c.url) for c in clusters], rules=0,
                                          workers=workers, name=f"gw{workers}")
            gw = services.start_gateway(tmp, cfg, name=f"gw{workers}")
            try:
                time.sleep(1.5)   # every worker's first monitor round
                res = measure(gw.port, args.runs, args.concurrent)
                res["owner_lookups"] = owner_lookups(gw.port)
                out[f"gateway_{workers}_worker{'s' if workers > 1 else ''}"] = res
            finally:
                gw.stop()
    finally:
        for c in clusters:
            c.stop()
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
