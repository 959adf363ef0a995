"""Where a gateway worker spends its time under load: py-spy samples grouped by component.

    python3 benchmarks/profile_worker.py [--request post|get] [--seconds 8] [--raw out.txt]

Starts the benchmark stack (static backend, one gateway worker with 100 rules and history on),
drives it with wrk at concurrency 32 and samples the worker with py-spy (``pip install
py-spy``; not installed by this script). Prints the share of samples per component (self time)
and the hottest functions. ``PYTHONPATH=/some/checkout`` profiles another version of the
gateway (the gateway runs from the first ``gateway`` package on the path).
"""
from __future__ import annotations

import argparse
import collections
import re
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import http_figures as H  # noqa: E402
import load as L  # noqa: E402
import services as S  # noqa: E402

# Leaves where a thread waits (thread pool, condition, watchdog's inotify): not work, left out.
IDLE = r"_worker \(concurrent/futures/thread\.py:8\d\)|Condition\.wait|_check_inotify_fd|Event\.wait|_do_waitpid"
# First match wins: (component, pattern on "function (file:line)").
COMPONENTS = (
    ("epoll_wait (idle or busy polling)", r"EpollSelector\.select"),
    ("socket writes (send syscalls)", r"Transport\.write \(|write_to_fd|_SelectorSocketTransport\._write"),
    ("socket reads, event loop, selector", r"asyncio/|uvloop|selectors\.py|tornado/platform/|_read_to_buffer"),
    ("Tornado HTTP/1.1 layer (parse, IOStream)", r"tornado/(http1connection|iostream|httputil|tcpclient|netutil|ioloop|concurrent)"),
    ("Tornado RequestHandler and routing", r"tornado/(web|routing|gen|escape)"),
    ("gateway HTTP layer (server, client, lean handler)", r"gateway/proxy/(client|lean)|gateway/runtime/(http_server|http1)"),
    ("proxy handler and protocol (rewriting, headers)", r"gateway/proxy/handler|gateway/protocol"),
    ("routing: context, rules, balancer", r"gateway/routing/|rule_engine/"),
    ("logging", r"logging/|gateway/logs"),
    ("metrics (prometheus-client)", r"prometheus_client/|gateway/metrics"),
    ("history and store (writer thread)", r"gateway/store/|sqlite3|psycopg|concurrent/futures|threading\.py"),
    ("gateway wiring (app, admission)", r"gateway/(app|admission)"),
)


def classify(frame: str) -> str:
    for name, pattern in COMPONENTS:
        if re.search(pattern, frame):
            return name
    return "other"


def summarize(raw_path: Path, top: int = 25) -> str:
    by_comp: collections.Counter[str] = collections.Counter()
    by_func: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw_path.read_text(errors="replace").splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        frames = [f for f in stack.split(";") if f]
        if not frames:
            continue
        leaf = re.sub(r"\(/\S*?/(site-packages|lib/python3\.\d+|main)/", "(", frames[-1])
        if re.search(IDLE, frames[-1]):
            continue
        total += int(n)
        by_comp[classify(frames[-1])] += int(n)
        by_func[leaf] += int(n)
    out = [f"{total} samples (self time of busy threads)", "", "| component | share |", "|---|---|"]
    out += [f"| {c} | {100 * k / total:.1f} % |" for c, k in by_comp.most_common()]
    out += ["", "hottest functions:"] + [f"  {100 * k / total:5.1f} %  {f}" for f, k in by_func.most_common(top)]
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--request", choices=("post", "get"), default="post")
    ap.add_argument("--seconds", type=int, default=8)
    ap.add_argument("--raw", help="keep py-spy's collapsed stacks here")
    args = ap.parse_args()
    if shutil.which("py-spy") is None:
        print("profile: py-spy is not installed (pip install py-spy)", file=sys.stderr)
        return 2
    tool = "wrk" if L.wrk_available() and S.nginx_available() else "python"
    bench = H.Bench(S.new_tmp(), tool, 1, args.seconds, False)
    stack = H.Stack(bench)
    raw = Path(args.raw) if args.raw else bench.tmp / "profile.txt"
    spec = H.POST if args.request == "post" else H.GET
    try:
        pid = S.worker_pids(stack.gateway)[0]
        bench.load(spec, stack.gateway, 32, 1)
        spy = subprocess.Popen(["py-spy", "record", "-p", str(pid), "-d", str(args.seconds), "-r", "250",
                                "-f", "raw", "-o", str(raw)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        result = bench.load(spec, stack.gateway, 32, args.seconds)
        _, err = spy.communicate(timeout=args.seconds + 60)
        if spy.returncode:
            print(f"profile: py-spy failed: {err.decode(errors='replace')[-500:]}", file=sys.stderr)
            return 1
    finally:
        stack.stop()
    print(f"{args.request.upper()} at concurrency 32 under py-spy: {result.rps:,.0f} requests/s")
    print(summarize(raw))
    return 0


if __name__ == "__main__":
    sys.exit(main())
