"""trino-gateway (the Java project) as one more benchmark target, and the side-by-side figures.

The process is started by tests/javagw/launcher.py (Maven fetch into ~/.m2, a JDK 25, its own
PostgreSQL database, loopback only) with its default settings except where a figure needs
otherwise: the port, the database, ``monitor.taskDelay: 5s`` (its default is one minute, ours
is 5 s: a backend added at run time must be probed before it takes traffic) and one backend,
the same static backend the other targets use. Without Maven, Java 25 or PostgreSQL the suite
says what is missing and measures the others.
"""
from __future__ import annotations

import sys
import threading
from pathlib import Path
from typing import Any, Callable

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from tests.javagw import launcher  # noqa: E402

NAME = "trino-gateway"
SETTINGS = ("trino-gateway defaults (JVM ergonomics for the heap, query history in PostgreSQL, "
            "no rules) except monitor.taskDelay 5s")


def start(tmp: Path, backends: str | list[tuple[str, str]]) -> tuple[Any, str | None]:
    """(the running trino-gateway or None, the reason it is not measured); ``backends`` is one
    URL or (name, URL) pairs, all in routing group adhoc."""
    pairs = [("b1", backends)] if isinstance(backends, str) else backends
    try:
        gw = launcher.start(tmp / "trino-gateway-java", backends=[launcher.Backend(n, u) for n, u in pairs],
                            monitor_interval="5s", analyze_sql=False)
    except launcher.JavaGatewayUnavailable as exc:
        return None, f"trino-gateway (Java) is not measured: {exc}"
    return gw, None


def tree_pids(pid: int) -> list[int]:
    """The process and all its descendants (ours runs the store in a child process)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            todo += [int(c) for c in Path(f"/proc/{p}/task/{p}/children").read_text().split()]
        except OSError:
            pass
    return out


def tree_rss_mb(pid: int) -> float:
    total = 0
    for p in tree_pids(pid):
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


def peak_rss_during(pid: int, work: Callable[[], Any]) -> tuple[float, Any]:
    """Run ``work`` while sampling the tree's RSS every 50 ms; (peak MB, work's result)."""
    peak = [tree_rss_mb(pid)]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], tree_rss_mb(pid))
            stop.wait(0.05)
    t = threading.Thread(target=sample, daemon=True)
    t.start()
    try:
        result = work()
    finally:
        stop.set()
        t.join()
    return peak[0], result


def memory_and_start(bench: Any, stack: Any, load_spec: Any) -> dict[str, Any]:
    """Start-to-ready time, RSS at rest (measured by the stack right after start and warm-up)
    and peak RSS under POST load at concurrency 32, per gateway."""
    targets = {"gateway": stack.gateway, NAME: stack.java}
    out: dict[str, Any] = {"settings": SETTINGS, "version": stack.java.version,
                           "ready_s": {"gateway": [stack.gateway.extra["ready_s"]],
                                       NAME: [stack.java.ready_after_s]},
                           "rss_rest_mb": {n: [v] for n, v in stack.rss_at_rest.items()}, "rss_load_mb": {}}
    for name, svc in targets.items():
        peak, _ = peak_rss_during(svc.pid, lambda s=svc: bench.load(load_spec, s, 32))
        out["rss_load_mb"][name] = [peak]
    return out
