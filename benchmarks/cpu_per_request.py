"""CPU per request of one gateway worker next to nginx (and bare Tornado), in one run.

    python3 benchmarks/cpu_per_request.py [--request poll|post] [--seconds 8] [--reps 3]

``poll``: a poll is the gateway's most frequent request (issue 19 item 3). The same
``GET /v1/statement/executing/...`` page goes through nginx (upstream keep-alive) and through
one gateway worker; the gateway is polled the way a client polls it, with the ``nextUri`` it
wrote (routing token included). ``post``: the benchmark's statement (``POST /v1/statement``,
100 rules) through the gateway and through nginx, and answered by a bare Tornado server (the
"POST/s vs bare Tornado" target of docs/benchmarks.md is the inverse of this CPU ratio when
both run CPU-bound on one core).

Each target is driven by wrk at a fixed concurrency over keep-alive connections against the
static backend (nginx serving fixed Trino pages); the figure is the process's CPU time (user +
system, all its worker processes) per request: robust to a busy machine, unlike requests/s.
Targets alternate within each repetition. ``--spy FILE`` also samples the gateway worker with
py-spy and prints the components (benchmarks/profile_worker.py).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import http_figures as H  # noqa: E402
import load as L  # noqa: E402
import machine as M  # noqa: E402
import services as S  # noqa: E402

def token_poll(gw: S.Service) -> L.RequestSpec:
    """The nextUri the gateway writes into a result page: what clients poll."""
    req = urllib.request.Request(gw.url + H.GET.path, headers=H.GET.headers)
    with urllib.request.urlopen(req, timeout=10) as r:
        doc = json.load(r)
    path = urlsplit(doc["nextUri"]).path
    return L.RequestSpec("GET", path, dict(H.GET.headers))


def measure(bench: H.Bench, spec: L.RequestSpec, svc: S.Service, pids: list[int],
            connections: int) -> dict[str, float]:
    u0, s0 = S.cpu_split(pids)
    r = bench.load(spec, svc, connections)
    u1, s1 = S.cpu_split(pids)
    n = max(1, r.requests)
    return {"rps": r.rps, "cpu_us": (u1 - u0 + s1 - s0) / n * 1e6, "requests": r.requests,
            "user_us": (u1 - u0) / n * 1e6, "sys_us": (s1 - s0) / n * 1e6}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--request", choices=("poll", "post"), default="poll")
    ap.add_argument("--seconds", type=float, default=8)
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--spy", help="also sample the gateway worker with py-spy into this file "
                                  "(collapsed stacks; summarise with profile_worker.summarize)")
    args = ap.parse_args()
    if not (L.wrk_available() and S.nginx_available()):
        print("cpu_per_request: needs wrk and nginx", file=sys.stderr)
        return 2
    bench = H.Bench(S.new_tmp(), "wrk", args.reps, args.seconds, False)
    stack = H.Stack(bench)
    try:
        assert stack.nginx is not None
        if args.request == "poll":
            gw_spec, ng_spec = token_poll(stack.gateway), H.GET
        else:
            gw_spec = ng_spec = H.POST
            bare = S.start_bare_tornado(bench.tmp)
            stack.services.append(bare)
        gw_pids = S.worker_pids(stack.gateway)
        ng_pids = S.worker_pids(stack.nginx)
        bench.load(gw_spec, stack.gateway, args.connections, 1)
        bench.load(ng_spec, stack.nginx, args.connections, 1)
        rows = []
        if args.spy:
            import subprocess
            spy = subprocess.Popen(["py-spy", "record", "-p", str(gw_pids[0]), "-d", str(int(args.seconds)),
                                    "-r", "500", "-f", "raw", "-o", args.spy],
                                   stdout=subprocess.DEVNULL)
            bench.load(gw_spec, stack.gateway, args.connections)
            spy.wait()
            import profile_worker
            print(profile_worker.summarize(Path(args.spy), top=60))
        for rep in range(args.reps):
            ng = measure(bench, ng_spec, stack.nginx, ng_pids, args.connections)
            gw = measure(bench, gw_spec, stack.gateway, gw_pids, args.connections)
            line = (f"rep {rep + 1}: nginx {ng['cpu_us']:.1f} µs/request (user {ng['user_us']:.0f}, "
                    f"system {ng['sys_us']:.0f}; {ng['rps']:,.0f}/s), gateway {gw['cpu_us']:.1f} µs/request "
                    f"(user {gw['user_us']:.0f}, system {gw['sys_us']:.0f}; {gw['rps']:,.0f}/s)")
            if args.request == "poll":
                rows.append(gw["cpu_us"] / ng["cpu_us"])
                line += f": {rows[-1]:.2f}× nginx"
            else:
                bt = measure(bench, H.POST, bare, [bare.pid], args.connections)
                rows.append(bt["cpu_us"] / gw["cpu_us"])
                line += (f", bare Tornado {bt['cpu_us']:.1f} µs/request ({bt['rps']:,.0f}/s): "
                         f"gateway at {rows[-1]:.0%} of bare Tornado's requests per CPU second")
            print(line, flush=True)
        if args.request == "poll":
            print(f"median: gateway CPU per poll {statistics.median(rows):.2f}× nginx's (target ≤ 3×)")
        else:
            print(f"median: gateway POST per CPU second {statistics.median(rows):.0%} of bare Tornado's "
                  f"(target ≥ 70 %)")
        print(f"machine: {M.describe()}")
    finally:
        stack.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
