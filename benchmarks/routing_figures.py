"""In-process figures: routing decision time, SQL analysis time, memory per remembered query.

Decision time is ``Gateway.route()`` of a real ``Gateway`` (context → rules → group →
balancer), timed per statement with ``perf_counter``; the rules are the rules engineer's
benchmark mix (``rules_bench.make_rules``). "New" statements differ in one literal so the SQL
cache misses; "repeated" ones hit it, as a dashboard's do.
"""
from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
import payloads  # noqa: E402
from rules_bench import make_rules  # noqa: E402


_TEMP_DIRS: list[Path] = []


def _gateway(rules_yaml: str) -> Any:
    from tornado.httputil import HTTPHeaders  # noqa: F401  (imported for side effects of types)
    from gateway.app import Gateway
    from gateway.backends.state import Backend, Health
    from gateway.config import config_from_dict
    from gateway.routing.rules import parse_ruleset
    tmp = Path(tempfile.mkdtemp(prefix="tgw-route-"))
    _TEMP_DIRS.append(tmp)
    cfg = config_from_dict({"store": {"url": f"sqlite:///{tmp / 'r.db'}"},
                            "routing": {"defaultGroup": "adhoc", "rules": [str(tmp)]},
                            "monitor": {"type": "noop"}}, "<bench>")
    gw = Gateway(cfg)
    gw.rules.current = parse_ruleset([("bench.yaml", rules_yaml.encode())])
    backends = [Backend(f"b{i}", f"http://127.0.0.1:{9000 + i}", None, g, True)
                for i, g in enumerate(("adhoc", "adhoc", "g0", "g1", "g2", "g3"))]
    gw.registry.replace(backends)
    for b in backends:
        gw.registry.state(b.name).health = Health.HEALTHY
    return gw


def _headers(user: str) -> Any:
    from tornado.httputil import HTTPHeaders
    h = HTTPHeaders()
    for k, v in payloads.CLIENT_HEADERS.items():
        h.add(k, v)
    h["X-Trino-User"] = user
    return h


def _variant(sql: str, i: int) -> bytes:
    """The same statement with one literal changed: a cache miss, same size and shape."""
    if "LIMIT 1000" in sql:
        return sql.replace("LIMIT 1000", f"LIMIT {1000 + i}").encode()
    return sql.replace("DATE '2024-01-01'", f"DATE '2024-01-01' + INTERVAL '{i}' DAY").encode()


def _time_routes(gw: Any, bodies: list[bytes], users: list[Any], remembered: bool = False) -> list[float]:
    """µs per ``route()``. Unless ``remembered``, the ruleset's remembered decisions are
    forgotten before each call, so every decision evaluates the rules (the cost of a context
    seen for the first time)."""
    out = []
    for i, body in enumerate(bodies):
        h = users[i % len(users)]
        if not remembered:
            gw.rules.current._decisions.clear()
        t0 = time.perf_counter()
        gw.route(h, body, "10.0.0.1")
        out.append((time.perf_counter() - t0) * 1e6)
    return out


def _summary(us: list[float]) -> dict[str, float]:
    s = sorted(us)
    return {"p50_us": statistics.median(s), "p99_us": s[min(len(s) - 1, int(len(s) * 0.99))],
            "n": len(s)}


def decision_figures(quick: bool = False) -> dict[str, Any]:
    """``{"rules=N": {"plain-200B": {...}, "plain-20KB": ..., "sql-200B-new": ..., ...}}``."""
    import gateway.routing.context as context_mod
    from gateway.routing import sql as sql_mod
    calls = {"n": 0}
    real_analyze = context_mod.analyze

    def counting(*a: Any, **kw: Any) -> Any:
        calls["n"] += 1
        return real_analyze(*a, **kw)
    context_mod.analyze = counting
    sql_small, sql_big = payloads.SQL_200, payloads.sql_20k()
    users = [_headers(f"user_{i}") for i in range(0, 1000, 3)] + [_headers(f"nobody_{i}") for i in range(300)]
    n_plain = 300 if quick else 3000
    n_new = {"200B": 50 if quick else 400, "20KB": 5 if quick else 25}
    result: dict[str, Any] = {"sizes": {"200B": len(sql_small), "20KB": len(sql_big)}}
    counter = 0
    try:
        for n_rules in ((100,) if quick else (10, 100, 1000)):
            row: dict[str, Any] = {}
            gw = _gateway(make_rules(n_rules, sql=False))
            calls["n"] = 0
            for label, sql in (("200B", sql_small), ("20KB", sql_big)):
                bodies = [sql.encode()] * n_plain
                _time_routes(gw, bodies[:200], users)   # warm up
                row[f"plain-{label}"] = _summary(_time_routes(gw, bodies, users))
            row["plain-200B-remembered"] = _summary(_time_routes(gw, [sql_small.encode()] * n_plain, users,
                                                                 remembered=True))
            row["analyses_without_sql_symbols"] = calls["n"]
            gw = _gateway(make_rules(n_rules, sql=True))
            for label, sql in (("200B", sql_small), ("20KB", sql_big)):
                counter += 1000
                bodies = [_variant(sql, counter + i) for i in range(n_new[label])]
                row[f"sql-{label}-new"] = _summary(_time_routes(gw, bodies, users))
                row[f"sql-{label}-repeated"] = _summary(_time_routes(gw, [bodies[0]] * n_plain, users))
            result[f"rules={n_rules}"] = row
        result["analysis"] = _analysis_figures(sql_small, sql_big, n_new, n_plain, counter + 10_000)
    finally:
        context_mod.analyze = real_analyze
        sql_mod.cache_clear()
        while _TEMP_DIRS:
            shutil.rmtree(_TEMP_DIRS.pop(), ignore_errors=True)
    return result


def _analysis_figures(sql_small: str, sql_big: str, n_new: dict[str, int], n_rep: int,
                      seed: int) -> dict[str, Any]:
    """``analyze()`` alone: a statement never seen, and one seen before."""
    from gateway.routing.sql import analyze
    out: dict[str, Any] = {}
    for label, sql in (("200B", sql_small), ("20KB", sql_big)):
        texts = [_variant(sql, seed + i).decode() for i in range(n_new[label] + 2)]
        analyze(texts[-1], "hive", "sales")   # warm sqlglot up
        new = []
        for t in texts[:-2]:
            t0 = time.perf_counter()
            analyze(t, "hive", "sales")
            new.append((time.perf_counter() - t0) * 1e6)
        rep = []
        for _ in range(n_rep):
            t0 = time.perf_counter()
            analyze(texts[0], "hive", "sales")
            rep.append((time.perf_counter() - t0) * 1e6)
        out[f"{label}-new"] = _summary(new)
        out[f"{label}-repeated"] = _summary(rep)
    return out


_STICKY_SCRIPT = r"""
import gc, json, sys
sys.path.insert(0, sys.argv[1])
from gateway.routing.sticky import StickyMap
def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
n = int(sys.argv[2])
m = StickyMap(ttl=86400)
names = [f"trino-{i}" for i in range(8)]
ids = None
gc.collect()
before = rss()
for i in range(n):
    m.put("query", f"20240101_{i // 100000 % 1000000:06d}_{i % 100000:05d}_abcde", names[i % 8], now=1e9 + i)
gc.collect()
after = rss()
print(json.dumps({"entries": len(m), "bytes": after - before}))
"""


def memory_per_query(entries: int = 1_000_000) -> dict[str, Any]:
    """RSS growth of a fresh process after ``entries`` ``StickyMap.put`` calls, per entry."""
    out = subprocess.run([sys.executable, "-c", _STICKY_SCRIPT, str(HERE.parent), str(entries)],
                         capture_output=True, text=True, timeout=300)
    if out.returncode:
        raise RuntimeError(f"sticky map memory script failed: {out.stderr[-1000:]}")
    doc = json.loads(out.stdout)
    doc["bytes_per_entry"] = doc["bytes"] / max(1, doc["entries"])
    return doc
