"""HTTP figures: each measured directly, through the gateway and through nginx, alternating.

Every function takes a ``Bench`` (the tools, repetitions and run length) and returns plain
lists of samples (one per repetition) keyed by target, so ``report.py`` can show medians,
ranges and paired ratios. Targets run one after the other inside each repetition, so a
machine that slows down for a while slows all of them alike.
"""
from __future__ import annotations

import os
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import javagw as J  # noqa: E402
import load as L  # noqa: E402
import payloads as P  # noqa: E402
import services as S  # noqa: E402

POST = L.RequestSpec("POST", "/v1/statement", dict(P.CLIENT_HEADERS), P.SQL_200.encode())
GET = L.RequestSpec("GET", f"/v1/statement/executing/{P.FIXED_QID}/y2a9c4e6f8b1d3/2",
                    {"X-Trino-User": "alice", "User-Agent": "trino-python-client/0.340.0"})


def page_spec(mb: int) -> L.RequestSpec:
    return L.RequestSpec("GET", f"/v1/statement/executing/{P.PAGE_QID[mb]}/y9/1", {"X-Trino-User": "alice"})


@dataclass
class Bench:
    tmp: Path
    tool: str                 # "wrk" or "python"
    reps: int
    seconds: float
    quick: bool
    notes: list[str] = field(default_factory=list)

    def load(self, spec: L.RequestSpec, svc: S.Service, connections: int,
             seconds: float | None = None) -> L.LoadResult:
        r = L.run_load(spec, svc.url, connections, seconds or self.seconds, self.tool)
        if r.errors:
            raise L.LoadError(f"{r.errors} failed request(s) via {svc.name} for {spec.method} {spec.path}"
                              f" ({r.error_kinds or 'no detail'}):\n{svc.log()[-2000:]}")
        return r


def _alternate(bench: Bench, targets: dict[str, Callable[[], Any]]) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {name: [] for name in targets}
    for _ in range(bench.reps):
        for name, run in targets.items():
            out[name].append(run())
    return out


def _warm(svc: S.Service, *specs: L.RequestSpec) -> None:
    """A few requests first: the gateway learns the fixed query's owner, pools connect."""
    for spec in specs:
        L.run_pyload(spec, svc.url, 2, 0.3)


class Stack:
    """Static backend, nginx in front of it (if installed), one gateway (100 rules, history)."""

    def __init__(self, bench: Bench, *, rules: int = 100, java: bool = False) -> None:
        self.bench = bench
        self.services: list[Any] = []
        self.backend = self._keep(S.start_static_backend(bench.tmp, prefer_nginx=bench.tool == "wrk"))
        self.nginx = None
        if S.nginx_available() and self.backend.extra.get("kind") == "nginx":
            self.nginx = self._keep(S.start_nginx_proxy(bench.tmp, self.backend))
        self.gateway = self.start_gateway("gw", rules=rules)
        # trino-gateway (Java) as a peer: same backend, measured in the same repetitions.
        self.java = None
        self.rss_at_rest: dict[str, float] = {}
        if java:
            self.java, why = J.start(bench.tmp, self.backend.url)
            if why:
                bench.notes.append(why)
            else:
                self._keep(self.java)
                _warm(self.java, POST, GET)
                self.rss_at_rest = {"gateway": J.tree_rss_mb(self.gateway.pid),
                                    J.NAME: J.tree_rss_mb(self.java.pid)}

    def _keep(self, svc: S.Service) -> S.Service:
        self.services.append(svc)
        return svc

    def start_gateway(self, name: str, **kw: Any) -> S.Service:
        cfg = S.gateway_config(self.bench.tmp, [("b1", self.backend.url)], name=name, **kw)
        gw = self._keep(S.start_gateway(self.bench.tmp, cfg, name=name))
        _warm(gw, POST, GET)
        return gw

    def targets(self) -> dict[str, Any]:
        t: dict[str, Any] = {"direct": self.backend, "gateway": self.gateway}
        if self.nginx is not None:
            t["nginx"] = self.nginx
        if self.java is not None:
            t[J.NAME] = self.java
        return t

    def stop(self) -> None:
        for svc in reversed(self.services):
            svc.stop()


def latency(bench: Bench, stack: Stack) -> dict[str, Any]:
    """Concurrency 1: p50 and p99 (µs) of a statement POST and a follow-up GET (quick: POST)."""
    out: dict[str, Any] = {}
    for label, spec in (("POST", POST),) if bench.quick else (("POST", POST), ("GET", GET)):
        runs = _alternate(bench, {n: (lambda s=s: bench.load(spec, s, 1)) for n, s in stack.targets().items()})
        out[label] = {n: {"p50_us": [r.p50_us for r in rs], "p99_us": [r.p99_us for r in rs]}
                      for n, rs in runs.items()}
    return out


def throughput(bench: Bench, stack: Stack, bare: S.Service | None) -> dict[str, Any]:
    """Concurrency 32: requests/s of the POST and the GET; the POST also on a bare Tornado."""
    out: dict[str, Any] = {}
    for label, spec in (("POST", POST), ("GET", GET)):
        targets = dict(stack.targets())
        if label == "POST" and bare is not None:
            targets["bare-tornado"] = bare
        runs = _alternate(bench, {n: (lambda s=s: bench.load(spec, s, 32)) for n, s in targets.items()})
        out[label] = {n: [r.rps for r in rs] for n, rs in runs.items()}
    return out


def pages(bench: Bench, stack: Stack) -> dict[str, Any]:
    """1 MB and 16 MB result pages, one client: MB/s, and the gateway's peak memory growth."""
    gw = stack.start_gateway("gw-pages")
    _warm(gw, page_spec(1))
    pid = S.worker_pids(gw)[0]
    before = S.proc_status_kb(pid, "VmHWM")
    targets: dict[str, Any] = {"direct": stack.backend, "gateway": gw}
    if stack.nginx is not None:
        targets["nginx"] = stack.nginx
    if stack.java is not None:
        _warm(stack.java, page_spec(1))
        targets[J.NAME] = stack.java
    out: dict[str, Any] = {}
    for mb in (1,) if bench.quick else (1, 16):
        runs = _alternate(bench, {n: (lambda s=s: bench.load(page_spec(mb), s, 1))
                                  for n, s in targets.items()})
        out[f"{mb}MB"] = {n: [r.mb_per_s for r in rs] for n, rs in runs.items()}
    out["gateway_peak_growth_mb"] = (S.proc_status_kb(pid, "VmHWM") - before) / 1024
    gw.stop()
    return out


def history_cost(bench: Bench, stack: Stack, pg_url: str | None) -> dict[str, Any]:
    """POST requests/s with history in PostgreSQL vs history off (same rules, one worker)."""
    if pg_url is None:
        return {"skipped": "PostgreSQL is not reachable (set TRINO_GATEWAY_BENCH_PG_URL)"}
    db_url, drop = _fresh_pg_database(pg_url)
    try:
        on = stack.start_gateway("gw-pg", store_url=db_url)
        off = stack.start_gateway("gw-nohistory", history=False)
        runs = _alternate(bench, {"history off": lambda: bench.load(POST, off, 32),
                                  "postgresql": lambda: bench.load(POST, on, 32)})
        on.stop()
        off.stop()
        return {"POST": {n: [r.rps for r in rs] for n, rs in runs.items()}}
    finally:
        drop()


def workers(bench: Bench, stack: Stack) -> dict[str, Any]:
    """POST requests/s with ``server.workers: 2`` vs 1."""
    two = stack.start_gateway("gw-2workers", workers=2)
    runs = _alternate(bench, {"1 worker": lambda: bench.load(POST, stack.gateway, 32),
                              "2 workers": lambda: bench.load(POST, two, 32)})
    two.stop()
    return {"POST": {n: [r.rps for r in rs] for n, rs in runs.items()}}


def pg_url() -> str | None:
    url = os.environ.get("TRINO_GATEWAY_BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    try:
        import psycopg
        with psycopg.connect(url, connect_timeout=3) as c:
            c.execute("SELECT 1")
        return url
    except Exception:  # noqa: BLE001 - any failure means: skip with a clear line
        return None


def _fresh_pg_database(url: str) -> tuple[str, Callable[[], None]]:
    import psycopg
    name = f"tgw_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(url, autocommit=True) as c:
        c.execute(f'CREATE DATABASE "{name}"')

    def drop() -> None:
        with psycopg.connect(url, autocommit=True) as c:
            c.execute(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'")
            c.execute(f'DROP DATABASE IF EXISTS "{name}"')
    return url.rsplit("/", 1)[0] + "/" + name, drop


# ---------------------------------------------------------------------------------------------
# The official client against a simulated cluster

def trino_client(bench: Bench, queries: int) -> dict[str, Any]:
    """Wall time of ``queries`` small queries (``SELECT * FROM nation``) with the trino client."""
    import trino
    cluster = S.start_cluster(bench.tmp, "bench", "--process-forwarded")
    services = [cluster]
    try:
        cfg = S.gateway_config(bench.tmp, [("sim", cluster.url)], name="gw-client")
        gw = S.start_gateway(bench.tmp, cfg, name="gw-client")
        services.append(gw)
        targets = {"direct": cluster.port, "gateway": gw.port}
        if S.nginx_available() and bench.tool == "wrk":
            px = S.start_nginx_proxy(bench.tmp, cluster)
            services.append(px)
            targets["nginx"] = px.port

        def run(port: int, n: int = queries) -> float:
            conn = trino.dbapi.connect(host="127.0.0.1", port=port, user="alice", http_scheme="http",
                                       source="bench")
            cur = conn.cursor()
            t0 = time.perf_counter()
            for _ in range(n):
                cur.execute("SELECT * FROM nation")
                if len(cur.fetchall()) != 25:
                    raise RuntimeError(f"wrong result through port {port}")
            return time.perf_counter() - t0
        for port in targets.values():
            run(port, 10)   # warm up: connections, caches, the gateway's first routes
        runs = _alternate(bench, {n: (lambda p=p: run(p)) for n, p in targets.items()})
        return {"queries": queries, "seconds": runs}
    finally:
        for svc in reversed(services):
            svc.stop()
