"""CI guard for performance: the quick benchmark's ratios stay within 25 % of the recorded ones.

Runs ``python3 benchmarks/run.py --quick --check`` (under a minute): the gateway, the backend
directly, nginx (when installed) and a bare Tornado server, alternating, with medians of paired
runs. Only ratios are compared (gateway vs direct, vs nginx, vs bare Tornado, trino client wall
time), never absolute numbers, since CI machines differ. Below the line once, the suite measures
again and keeps each ratio's better value, so a slow moment of a shared machine does not fail
the build. The recorded values are in ``benchmarks/baseline.json`` (one set per tool set: wrk
and nginx, or the pure-Python fallback); re-record them with
``python3 benchmarks/run.py --quick --record-baseline`` after a deliberate change.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_quick_benchmark_ratios_stay_within_25_percent_of_the_baseline(tmp_path: Path) -> None:
    if (os.cpu_count() or 1) < 2:
        pytest.skip("needs 2 CPUs: load generator, gateway and backend run side by side")
    out = tmp_path / "quick.json"
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "run.py"), "--quick", "--check",
                           "--json", str(out)], capture_output=True, text=True, timeout=280, cwd=REPO)
    report = proc.stdout[-4000:] + proc.stderr[-3000:]
    assert proc.returncode == 0, f"quick benchmark failed or regressed:\n{report}"
    res = json.loads(out.read_text())
    # the guard measured something real: every target answered, the gateway included
    assert res["throughput"]["POST"]["gateway"] and min(res["throughput"]["POST"]["gateway"]) > 0
    baseline = json.loads((REPO / "benchmarks" / "baseline.json").read_text())
    assert baseline[res["config"]["toolset"]]["ratios"], "no recorded ratios for this tool set"
