"""Faults side by side: each gateway's PostgreSQL database unavailable for a while, under traffic.

    python3 benchmarks/javagw_faults.py [--outage 30] [--clients 2] [--after 30]

Ours (store in a PostgreSQL database of its own) and trino-gateway (Java, tests/javagw/launcher.py,
its own database too) run in front of the same simulated coordinator. Clients keep submitting
``SELECT * FROM nation`` through each and follow every ``nextUri`` to the end. Then both
databases are made unavailable at once (``ALTER DATABASE ... ALLOW_CONNECTIONS false`` and
their sessions terminated: the shared server keeps running for everyone else) for ``--outage``
seconds, and restored. Printed per gateway: new queries and follow-up requests attempted and
failed before, during and after the outage, and how long after the database returned the last
failure happened (0: none after it returned).
"""
from __future__ import annotations

import argparse
import collections
import sys
import threading
import time
from pathlib import Path
from typing import Any

import requests

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import http_figures as H  # noqa: E402
import javagw as J  # noqa: E402
import services as S  # noqa: E402


def set_connections(admin_url: str, database: str, allow: bool) -> None:
    import psycopg
    with psycopg.connect(admin_url, autocommit=True) as c:
        c.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS {"true" if allow else "false"}')
        if not allow:
            c.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (database,))


class Client(threading.Thread):
    """Submits queries and follows them to the end; records (time, kind, ok) per request."""

    def __init__(self, url: str, stop: threading.Event, events: list[tuple[float, str, bool]]) -> None:
        super().__init__(daemon=True)
        self.url, self.stop, self.events = url, stop, events

    def run(self) -> None:
        s = requests.Session()
        headers = {"X-Trino-User": "faults", "X-Trino-Source": "faults"}
        while not self.stop.is_set():
            t = time.monotonic()
            try:
                r = s.post(f"{self.url}/v1/statement", data=b"SELECT * FROM nation", headers=headers, timeout=10)
                ok = r.status_code == 200 and "error" not in r.json()
            except (requests.RequestException, ValueError):
                ok, r = False, None
            self.events.append((t, "new query", ok))
            if not ok:
                time.sleep(0.05)   # a failing gateway must not be hammered in a tight loop
                continue
            doc = r.json()
            while doc.get("nextUri") and not self.stop.is_set():
                t = time.monotonic()
                try:
                    r = s.get(doc["nextUri"], headers=headers, timeout=10)
                    ok = r.status_code == 200
                    doc = r.json() if ok else {}
                    ok = ok and "error" not in doc
                except (requests.RequestException, ValueError):
                    ok, doc = False, {}
                self.events.append((t, "follow-up", ok))


def summarise(events: list[tuple[float, str, bool]], down: float, up: float) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for phase, lo, hi in (("before", 0.0, down), ("during", down, up), ("after", up, float("inf"))):
        for kind in ("new query", "follow-up"):
            sel = [ok for t, k, ok in events if k == kind and lo <= t < hi]
            out[f"{phase}: {kind}"] = f"{sum(not ok for ok in sel)} failed of {len(sel)}"
    late = [t for t, _, ok in events if not ok and t >= up]
    out["last failure after the database returned"] = f"{(max(late) - up):.1f} s" if late else "none"
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--outage", type=float, default=30.0, help="seconds without the database (default 30)")
    ap.add_argument("--before", type=float, default=10.0, help="seconds of traffic before (default 10)")
    ap.add_argument("--after", type=float, default=30.0, help="seconds of traffic after (default 30)")
    ap.add_argument("--clients", type=int, default=2, help="clients per gateway (default 2)")
    args = ap.parse_args(argv)
    pg = H.pg_url()
    if pg is None:
        raise SystemExit("javagw_faults: PostgreSQL is not reachable (TRINO_GATEWAY_BENCH_PG_URL)")
    tmp = S.new_tmp("tgw-faults-")
    services: list[Any] = []
    drop = None
    try:
        sim = S.start_cluster(tmp, "faults", "--process-forwarded")
        services.append(sim)
        db_url, drop = H._fresh_pg_database(pg)
        cfg = S.gateway_config(tmp, [("sim", sim.url)], rules=0, store_url=db_url, name="gw-faults")
        ours = S.start_gateway(tmp, cfg, name="gw-faults")
        services.append(ours)
        java, why = J.start(tmp, sim.url)
        if java is None:
            raise SystemExit(f"javagw_faults: {why}")
        services.append(java)
        databases = {"ours": db_url.rsplit("/", 1)[1], J.NAME: java.database}
        stop = threading.Event()
        events: dict[str, list[tuple[float, str, bool]]] = collections.defaultdict(list)
        clients = [Client(url, stop, events[name]) for name, url in (("ours", ours.url), (J.NAME, java.url))
                   for _ in range(args.clients)]
        for c in clients:
            c.start()
        time.sleep(args.before)
        down = time.monotonic()
        for db in databases.values():
            set_connections(pg, db, False)
        print(f"databases unavailable for {args.outage:g} s ...", flush=True)
        time.sleep(args.outage)
        for db in databases.values():
            set_connections(pg, db, True)
        up = time.monotonic()
        print("databases back", flush=True)
        time.sleep(args.after)
        stop.set()
        for c in clients:
            c.join(30)
        for name in ("ours", J.NAME):
            print(f"\n{name}:")
            for k, v in summarise(events[name], down, up).items():
                print(f"  {k}: {v}")
    finally:
        for svc in reversed(services):
            svc.stop()
        if drop is not None:
            drop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
