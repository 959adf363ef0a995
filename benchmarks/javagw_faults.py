"""Faults side by side with trino-gateway (Java): the store unavailable, a coordinator killed.

    python3 benchmarks/javagw_faults.py [--scenario store|coordinator|both] [--outage 30] [--clients 2]

Ours (store in a PostgreSQL database of its own) and trino-gateway (Java, tests/javagw/launcher.py,
its own database too, ``monitor.taskDelay`` 5 s like our ``monitor.interval``) run in front of the
same simulated coordinators. Clients keep submitting ``SELECT * FROM nation`` through each and
follow every ``nextUri`` to the end.

- ``store``: both databases are made unavailable at once (``ALTER DATABASE ... ALLOW_CONNECTIONS
  false`` and their sessions terminated: the shared server keeps running for everyone else) for
  ``--outage`` seconds, then restored.
- ``coordinator``: two coordinators in one routing group, small slow result pages so queries
  are in flight; one coordinator is killed (SIGKILL).

Printed per gateway: new queries and follow-up requests attempted and failed before, during and
after the fault, and how long after the fault ended (store back; coordinator killed) the last
failure happened.
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import shutil
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

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
    """Submits queries and follows them to the end; records (time the answer came, kind, ok) per
    request, so a request in flight when the fault starts counts as failing during it."""

    def __init__(self, url: str, stop: threading.Event, events: list[tuple[float, str, bool]],
                 user: str = "faults") -> None:
        super().__init__(daemon=True)
        self.url, self.stop, self.events, self.user = url, stop, events, user

    def run(self) -> None:
        s = requests.Session()
        headers = {"X-Trino-User": self.user, "X-Trino-Source": "faults"}
        while not self.stop.is_set():
            try:
                r = s.post(f"{self.url}/v1/statement", data=b"SELECT * FROM nation", headers=headers, timeout=10)
                ok = r.status_code == 200 and "error" not in r.json()
            except (requests.RequestException, ValueError):
                ok, r = False, None
            self.events.append((time.monotonic(), "new query", ok))
            if not ok:
                time.sleep(0.05)   # a failing gateway must not be hammered in a tight loop
                continue
            doc = r.json()
            while doc.get("nextUri") and not self.stop.is_set():
                try:
                    r = s.get(doc["nextUri"], headers=headers, timeout=10)
                    ok = r.status_code == 200
                    doc = r.json() if ok else {}
                    ok = ok and "error" not in doc
                except (requests.RequestException, ValueError):
                    ok, doc = False, {}
                self.events.append((time.monotonic(), "follow-up", ok))


def summarise(events: list[tuple[float, str, bool]], down: float, up: float) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for phase, lo, hi in (("before", 0.0, down), ("during", down, up), ("after", up, float("inf"))):
        for kind in ("new query", "follow-up"):
            sel = [ok for t, k, ok in events if k == kind and lo <= t < hi]
            out[f"{phase}: {kind}"] = f"{sum(not ok for ok in sel)} failed of {len(sel)}"
    late = [t for t, _, ok in events if not ok and t >= up]
    out["last failure after the fault ended"] = f"{(max(late) - up):.1f} s" if late else "none"
    return out


def run_clients(urls: dict[str, str], clients: int, before: float, fault: Callable[[], None],
                after: float) -> tuple[dict[str, list[tuple[float, str, bool]]], float, float]:
    """Traffic through every gateway; ``fault()`` after ``before`` seconds; (events, fault start, end)."""
    stop = threading.Event()
    events: dict[str, list[tuple[float, str, bool]]] = collections.defaultdict(list)
    threads = [Client(url, stop, events[name], f"via-{name}") for name, url in urls.items() for _ in range(clients)]
    for c in threads:
        c.start()
    time.sleep(before)
    down = time.monotonic()
    fault()
    up = time.monotonic()
    time.sleep(after)
    stop.set()
    for c in threads:
        c.join(30)
    return events, down, up


def report(title: str, events: dict[str, list[tuple[float, str, bool]]], down: float, up: float) -> None:
    print(f"\n== {title}")
    for name, ev in events.items():
        print(f"{name}:")
        for k, v in summarise(ev, down, up).items():
            print(f"  {k}: {v}")


@contextlib.contextmanager
def side_by_side(pg: str, sims: list[str], policy: str | None = None) -> Iterator[tuple[list[Any], Any, Any, str]]:
    """Simulated coordinators ``sims`` (group adhoc), ours and trino-gateway in front of them,
    each with a fresh PostgreSQL database: (coordinators, ours, trino-gateway, our database).
    Everything is stopped and dropped afterwards."""
    tmp = S.new_tmp("tgw-faults-")
    services: list[Any] = []
    drop = None
    try:
        coords = [S.start_cluster(tmp, n, "--process-forwarded") for n in sims]
        services += coords
        pairs = [(n, c.url) for n, c in zip(sims, coords)]
        db_url, drop = H._fresh_pg_database(pg)
        cfg = S.gateway_config(tmp, pairs, rules=0, store_url=db_url, name="gw-faults")
        if policy:
            cfg["routing"]["policy"] = policy
        ours = S.start_gateway(tmp, cfg, name="gw-faults")
        services.append(ours)
        java, why = J.start(tmp, pairs)
        if java is None:
            raise SystemExit(f"javagw_faults: {why}")
        services.append(java)
        yield coords, ours, java, db_url.rsplit("/", 1)[1]
    finally:
        for svc in reversed(services):
            svc.stop()
        if drop is not None:
            drop()
        shutil.rmtree(tmp, ignore_errors=True)


def coordinator_killed(pg: str, args: argparse.Namespace) -> None:
    # round-robin: both coordinators carry queries when one dies
    with side_by_side(pg, ["coord-a", "coord-b"], policy="round-robin") as (sims, ours, java, _):
        for sim in sims:   # ten pages of 3 rows, 50 ms each: queries are in flight when one dies
            requests.post(f"{sim.url}/_sim/control", json={"page_rows": 3, "slow": 0.05}, timeout=5)

        def kill() -> None:
            for sim in sims:
                users = collections.Counter(q.get("user") for q in
                                            requests.get(f"{sim.url}/_sim/queries", timeout=10).json())
                print(f"{sim.name} had served queries: {dict(users)}", flush=True)
            sims[0].proc.kill()
        events, down, up = run_clients({"ours": ours.url, J.NAME: java.url}, args.clients, args.before,
                                       kill, args.after)
        report("a coordinator killed (SIGKILL) under traffic; the other one stays", events, down, up)


def store_unavailable(pg: str, args: argparse.Namespace) -> None:
    with side_by_side(pg, ["faults"]) as (_, ours, java, our_db):
        databases = {"ours": our_db, J.NAME: java.database}

        def outage() -> None:
            for db in databases.values():
                set_connections(pg, db, False)
            print(f"databases unavailable for {args.outage:g} s ...", flush=True)
            time.sleep(args.outage)
            for db in databases.values():
                set_connections(pg, db, True)
        events, down, up = run_clients({"ours": ours.url, J.NAME: java.url}, args.clients, args.before,
                                       outage, args.after)
        report(f"each gateway's PostgreSQL database unavailable for {args.outage:g} s", events, down, up)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenario", choices=("store", "coordinator", "both"), default="both")
    ap.add_argument("--outage", type=float, default=30.0, help="seconds without the database (default 30)")
    ap.add_argument("--before", type=float, default=10.0, help="seconds of traffic before (default 10)")
    ap.add_argument("--after", type=float, default=30.0, help="seconds of traffic after (default 30)")
    ap.add_argument("--clients", type=int, default=2, help="clients per gateway (default 2)")
    args = ap.parse_args(argv)
    pg = H.pg_url()
    if pg is None:
        raise SystemExit("javagw_faults: PostgreSQL is not reachable (TRINO_GATEWAY_BENCH_PG_URL)")
    if args.scenario in ("coordinator", "both"):
        coordinator_killed(pg, args)
    if args.scenario in ("store", "both"):
        store_unavailable(pg, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
