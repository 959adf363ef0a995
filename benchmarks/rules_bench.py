"""Micro-benchmark of the rules engine: µs per routing decision for 10, 100 and 1,000 rules.

    python3 benchmarks/rules_bench.py [--decisions N] [--sql]

The rules are a realistic mix without SQL symbols (unless --sql): 70 % per-user rules
(`user == "..."`, served by the index), 10 % source-and-tag rules, 10 % regexes on the source and
10 % tag-or-header rules (not indexable, evaluated for every query). Contexts mix users that
match a rule with users that match none (the worst case: every non-indexed rule is evaluated).
Targets: p50 <= 50 µs for 100 rules and <= 500 µs for 1,000 rules.
"""
from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from gateway.routing.context import build_context  # noqa: E402
from gateway.routing.decision import decide  # noqa: E402
from gateway.routing.rules import parse_ruleset  # noqa: E402


def make_rules(n: int, sql: bool) -> str:
    docs = []
    for i in range(n):
        kind = i % 10
        if kind < 7:
            cond = f'user == "user_{i}"'
        elif kind == 7:
            cond = f'source == "tool_{i}" and "tag_{i}" in clientTags'
        elif kind == 8:
            cond = f'source =~ "prefix_{i}.*"'
        else:
            cond = f'"tag_{i}" in clientTags or routingGroupHeader == "g_{i}"'
        if sql and i % 5 == 0:
            cond = f'({cond}) or "hive.raw.t_{i}" in tables'
        docs.append(f"name: r{i}\npriority: {i % 7}\ncondition: '{cond}'\nroutingGroup: g{i % 4}\n")
    return "---\n".join(docs)


def make_contexts(n_rules: int, count: int) -> list[dict]:
    rnd = random.Random(42)
    out = []
    for k in range(count):
        if k % 2:
            user = f"user_{rnd.randrange(n_rules)}"      # may hit a per-user rule
        else:
            user = f"nobody_{k}"                          # matches nothing: worst case
        headers = {"X-Trino-User": user, "X-Trino-Source": "trino-python-client",
                   "X-Trino-Client-Tags": "nightly,team-a", "X-Trino-Catalog": "hive", "X-Trino-Schema": "raw"}
        out.append(build_context(headers, b"SELECT * FROM t JOIN u ON t.a = u.a", "10.0.0.1", analyze_sql=True))
    return out


def bench(n_rules: int, decisions: int, sql: bool, remembered: bool = False) -> tuple[float, float, float]:
    ruleset = parse_ruleset([("bench.yaml", make_rules(n_rules, sql).encode())])
    contexts = make_contexts(n_rules, 200)
    groups = {"g0", "g1", "g2", "g3", "adhoc"}
    timings = []
    for i in range(decisions):
        ctx = contexts[i % len(contexts)]
        if not remembered:
            ruleset._decisions.clear()    # every decision evaluates the rules
        t0 = time.perf_counter()
        decide(ruleset, ctx, groups_with_backends=groups, default_group="adhoc", allow_group_header=True)
        timings.append((time.perf_counter() - t0) * 1e6)
    timings.sort()
    return statistics.median(timings), timings[int(len(timings) * 0.99)], statistics.fmean(timings)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--decisions", type=int, default=20000)
    ap.add_argument("--sql", action="store_true", help="make 20 % of the rules use the tables symbol")
    args = ap.parse_args()
    print(f"{'rules':>6} {'p50 µs':>9} {'p99 µs':>9} {'mean µs':>9}   (remembered context: p50 µs)")
    for n in (10, 100, 1000):
        p50, p99, mean = bench(n, args.decisions, args.sql)
        again = bench(n, args.decisions, args.sql, remembered=True)[0]
        print(f"{n:>6} {p50:>9.1f} {p99:>9.1f} {mean:>9.1f}   {again:>9.1f}")


if __name__ == "__main__":
    main()
