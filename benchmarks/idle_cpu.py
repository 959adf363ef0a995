"""CPU a proxy spends with no traffic at all: the gateway (1 and 2 workers) and nginx, one run.

    python3 benchmarks/idle_cpu.py                        # 30 s per target, three rounds
    python3 benchmarks/idle_cpu.py --seconds 60 --rounds 5 --targets gateway1,nginx

What a proxy does on its own (timers, probes, sweeps, store syncs) is paid whatever the traffic,
and at a few hundred requests per second per worker it is part of each request's CPU in
``benchmarks/inflight.py``: 6 ms of CPU per second is 18 µs per request at 333 requests per
second. Each target is started as ``inflight.py`` starts it (the same fake coordinator, monitor
interval 2 s, the same store and history settings), left alone for 5 s, and then its processes'
CPU time is read from ``/proc/<pid>/task/*/schedstat`` (nanoseconds, every thread) before and
after ``--seconds`` of nothing. Targets take turns for ``--rounds`` rounds, so a busy moment of
the machine does not land on one target only. Linux only.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import inflight  # noqa: E402
import machine  # noqa: E402
import services as S  # noqa: E402


def cpu_seconds(pids: list[int]) -> float:
    """CPU time of every thread of ``pids`` so far."""
    total = 0
    for pid in pids:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
    return total / 1e9


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--targets", default="gateway1,gateway2,nginx")
    p.add_argument("--seconds", type=float, default=30.0, help="measured per target and round")
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args(argv)
    print(f"# machine: {machine.describe() if hasattr(machine, 'describe') else os.uname().nodename}",
          flush=True)
    tmp = S.new_tmp("tgw-idle-")
    backend = S._spawn_ready("longpoll", [sys.executable, str(HERE / "longpoll_backend.py"), "--port", "0"],
                             tmp, tmp / "longpoll.log")
    seen: dict[str, list[float]] = {}
    try:
        for _ in range(args.rounds):
            for target in args.targets.split(","):
                if target == "nginx" and not S.nginx_available():
                    continue
                svc, _port, pids = inflight.start_target(target, tmp, backend)
                try:
                    time.sleep(5.0)   # start-up done, the first monitor round too
                    c0, t0 = cpu_seconds(pids), time.monotonic()
                    time.sleep(args.seconds)
                    c1, t1 = cpu_seconds(pids), time.monotonic()
                finally:
                    if svc is not None:
                        svc.stop()
                seen.setdefault(target, []).append(1000 * (c1 - c0) / (t1 - t0))
    finally:
        backend.stop()
    for target, ms in seen.items():
        print(json.dumps({"target": target, "idle_cpu_ms_per_s": round(statistics.median(ms), 2),
                          "runs": [round(x, 2) for x in ms]}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
