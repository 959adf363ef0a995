"""The benchmark suite in one command: gateway vs direct vs nginx vs trino-gateway, then docs/benchmarks.md.

    python3 benchmarks/run.py                      # everything, ~10 minutes; writes docs/benchmarks.md
    python3 benchmarks/run.py --quick              # the guarded ratios only, under a minute
    python3 benchmarks/run.py --quick --check      # compare with benchmarks/baseline.json (exit 1 if worse)
    python3 benchmarks/run.py --only latency,routing --out /tmp/b.md

Needs wrk and nginx from the OS packages (``apt-get install wrk nginx-light``); without them it
says so and falls back to a pure-Python load generator / static backend, whose figures are only
comparable among themselves. PostgreSQL for the history figure: TRINO_GATEWAY_BENCH_PG_URL
(default postgresql://postgres@127.0.0.1:5432/postgres); a fresh database is created and dropped.
Nothing is installed. trino-gateway (the Java project) is one more target of the HTTP figures
(section ``javagw``, not in ``--quick``): tests/javagw/launcher.py fetches its jar through Maven
into ~/.m2 and needs a JDK 25; without them the suite says why and measures the rest.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import http_figures as H  # noqa: E402
import javagw as J  # noqa: E402
import load as L  # noqa: E402
import machine  # noqa: E402
import report  # noqa: E402
import routing_figures as R  # noqa: E402
import services as S  # noqa: E402

SECTIONS = ("latency", "throughput", "pages", "client", "routing", "history", "workers", "memory", "javagw")
QUICK_SECTIONS = ("latency", "throughput", "pages", "client")
BASELINE = HERE / "baseline.json"
TITLE = "Benchmarks"


def choose_tool(requested: str) -> tuple[str, list[str]]:
    notes = []
    have_wrk, have_nginx = L.wrk_available(), S.nginx_available()
    if not have_wrk:
        notes.append("wrk is not installed (apt-get install wrk): using the pure-Python load generator, "
                     "which is slower than the gateway's peers; figures are comparable only among themselves.")
    if not have_nginx:
        notes.append("nginx is not installed (apt-get install nginx-light): skipping the nginx comparison "
                     "and using the pure-Python static backend.")
    if requested == "auto":
        tool = "wrk" if have_wrk and have_nginx else "python"
    else:
        tool = requested
        if tool == "wrk" and not (have_wrk and have_nginx):
            raise SystemExit("benchmarks: --tool wrk needs both wrk and nginx installed")
    return tool, notes


def toolset(tool: str) -> str:
    return "wrk+nginx" if tool == "wrk" else "python"


def run_suite(*, quick: bool, sections: tuple[str, ...], tool: str, reps: int, seconds: float,
              queries: int, command: str, notes: list[str], log: Any = print) -> dict[str, Any]:
    tmp = S.new_tmp()
    bench = H.Bench(tmp, tool, reps, seconds, quick)
    res: dict[str, Any] = {
        "config": {"command": command, "date": dt.datetime.now().strftime("%Y-%m-%d %H:%M"),
                   "reps": reps, "seconds": seconds, "tool": tool, "quick": quick,
                   "backend": "nginx (return 200 from memory)" if tool == "wrk" else "asyncio (Python)",
                   "toolset": toolset(tool)},
        "machine": machine.describe(),
        "notes": list(notes),
    }
    http = [s for s in sections if s in ("latency", "throughput", "pages", "history", "workers", "javagw")]
    t_start = time.monotonic()
    if http:
        if "javagw" in sections:
            log("starting trino-gateway (Java) ...")
        stack = H.Stack(bench, java="javagw" in sections)
        res["notes"] += bench.notes
        bare = S.start_bare_tornado(tmp) if "throughput" in sections else None
        try:
            if "latency" in sections:
                log("latency at concurrency 1 ...")
                res["latency"] = H.latency(bench, stack)
            if "throughput" in sections:
                log("requests/s at concurrency 32 ...")
                res["throughput"] = H.throughput(bench, stack, bare)
            if "pages" in sections:
                log("result pages ...")
                res["pages"] = H.pages(bench, stack)
            if "history" in sections:
                log("history cost ...")
                res["history"] = H.history_cost(bench, stack, H.pg_url())
            if "workers" in sections:
                log("workers 2 vs 1 ...")
                res["workers"] = H.workers(bench, stack)
            if "javagw" in sections and stack.java is not None:
                log("trino-gateway: start time and memory ...")
                res["javagw"] = J.memory_and_start(bench, stack, H.POST)
        finally:
            if bare is not None:
                bare.stop()
            stack.stop()
    if "client" in sections:
        log(f"trino client, {queries} queries per run ...")
        res["client"] = H.trino_client(bench, queries)
    if "routing" in sections:
        log("routing decisions ...")
        res["routing"] = R.decision_figures(quick=quick)
    if "memory" in sections:
        log("memory per remembered query ...")
        res["memory"] = R.memory_per_query(100_000 if quick else 1_000_000)
    res["config"]["elapsed_s"] = round(time.monotonic() - t_start, 1)
    shutil.rmtree(tmp, ignore_errors=True)
    return res


# Ratios the quick run guards. Latency ratios are reported but not guarded: their denominators
# (tens of microseconds for nginx) move by half from one run to the next on a shared machine.
GUARDED = ("post_rps.gateway/bare-tornado", "post_rps.gateway/direct", "post_rps.gateway/nginx",
           "get_rps.gateway/direct", "get_rps.gateway/nginx", "page1mb.gateway/direct",
           "page1mb.gateway/nginx", "client.direct/gateway", "client.nginx/gateway")


def ratio_medians(res: dict[str, Any]) -> dict[str, float]:
    import statistics
    return {k: round(statistics.median(v), 4) for k, v in report.ratios(res).items()}


def check_against_baseline(got: dict[str, float], recorded: dict[str, float],
                           margin: float = 0.25) -> list[str]:
    """The guarded ratios more than ``margin`` below the recorded ones (empty: no regression)."""
    return [f"{k}: {got[k]:.3f} < {(1 - margin) * v:.3f} (recorded {v:.3f} - {margin:.0%})"
            for k, v in sorted(recorded.items()) if k in GUARDED and k in got and got[k] < (1 - margin) * v]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="only the guarded ratios, under a minute")
    ap.add_argument("--only", help=f"comma-separated sections: {','.join(SECTIONS)}")
    ap.add_argument("--out", help="Markdown report (default docs/benchmarks.md; none with --quick)")
    ap.add_argument("--json", help="raw results (default benchmarks/results/last[-quick].json)")
    ap.add_argument("--reps", type=int, help="alternating repetitions per figure (default 5, quick 3)")
    ap.add_argument("--seconds", type=float, help="seconds per run (default 3, quick 1)")
    ap.add_argument("--queries", type=int, help="trino client queries per run (default 1000, quick 60)")
    ap.add_argument("--tool", choices=("auto", "wrk", "python"), default="auto")
    ap.add_argument("--check", action="store_true", help="exit 1 if a ratio is >25%% below baseline.json")
    ap.add_argument("--record-baseline", action="store_true",
                    help="store the guarded ratios (median of three runs) in baseline.json")
    args = ap.parse_args(argv)
    # Stopping the run (Ctrl-C, kill) must still stop every process it started.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    tool, notes = choose_tool(args.tool)
    for n in notes:
        print(f"benchmarks: {n}")
    sections = tuple(args.only.split(",")) if args.only else (QUICK_SECTIONS if args.quick else SECTIONS)
    unknown = [s for s in sections if s not in SECTIONS]
    if unknown:
        ap.error(f"unknown section(s) {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")
    reps = args.reps or (3 if args.quick else 5)
    seconds = args.seconds or (1.0 if args.quick else 3.0)
    queries = args.queries or (60 if args.quick else 1000)
    command = "python3 benchmarks/run.py" + (" " + " ".join(argv if argv is not None else sys.argv[1:])).rstrip()
    res = run_suite(quick=args.quick, sections=sections, tool=tool, reps=reps, seconds=seconds,
                    queries=queries, command=command, notes=notes)

    json_path = Path(args.json) if args.json else HERE / "results" / ("last-quick.json" if args.quick else "last.json")
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(res, indent=1))
    out = args.out or (None if args.quick else str(HERE.parent / "docs" / "benchmarks.md"))
    if out:
        path = Path(out)
        existing = path.read_text() if path.exists() else None
        path.write_text(report.merge_into(existing, report.render(res), TITLE))
        print(f"benchmarks: wrote {path}")
    for name, limit, shown, ok in report.targets(res):
        if ok is not None:
            print(f"  {'ok  ' if ok else 'MISS'} {name}: {shown} (target {limit})")
    for k, v in sorted(ratio_medians(res).items()):
        print(f"  ratio {k} = {v:.3f}")
    print(f"benchmarks: raw results in {json_path} ({res['config']['elapsed_s']} s)")
    if args.record_baseline:
        # The median of three runs: one lucky or unlucky run must not set the bar.
        runs = [ratio_medians(res)] + [
            ratio_medians(run_suite(quick=args.quick, sections=sections, tool=tool, reps=reps, seconds=seconds,
                                    queries=queries, command=command, notes=notes)) for _ in range(2)]
        import statistics
        ratios = {k: round(statistics.median(r[k] for r in runs if k in r), 4)
                  for k in GUARDED if any(k in r for r in runs)}
        base = json.loads(BASELINE.read_text()) if BASELINE.exists() else {}
        base[res["config"]["toolset"]] = {
            "recorded": res["config"]["date"], "machine": f"{res['machine']['cpus']} x {res['machine']['cpu_model']}",
            "command": "python3 benchmarks/run.py --quick --record-baseline"
                       + (" --tool python" if tool == "python" else ""), "ratios": ratios}
        BASELINE.write_text(json.dumps(base, indent=1, sort_keys=True) + "\n")
        print(f"benchmarks: recorded the guarded ratios in {BASELINE}")
    if args.check:
        base = json.loads(BASELINE.read_text()) if BASELINE.exists() else {}
        recorded = base.get(res["config"]["toolset"], {}).get("ratios", {})
        if not recorded:
            print(f"benchmarks: no ratios recorded for {res['config']['toolset']} in {BASELINE}")
            return 2
        got = ratio_medians(res)
        worse = check_against_baseline(got, recorded)
        if worse:
            # One slow phase of a shared machine must not fail the build: measure again and keep
            # each ratio's better value; a real regression is below the line both times.
            print("benchmarks: " + "; ".join(worse) + " -- measuring once more to rule out noise")
            again = ratio_medians(run_suite(quick=args.quick, sections=sections, tool=tool, reps=reps,
                                            seconds=seconds, queries=queries, command=command, notes=notes))
            got = {k: max(v, again.get(k, v)) for k, v in got.items()}
            worse = check_against_baseline(got, recorded)
        for w in worse:
            print(f"benchmarks: REGRESSION {w}")
        if not worse:
            print(f"benchmarks: every guarded ratio is within 25% of {BASELINE.name}")
        return 1 if worse else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
