"""Many queries in flight at once: direct, nginx and the gateway (1 and 2 workers) in one run.

    python3 benchmarks/inflight.py --inflight 1000,5000,10000      # ~2 min per size and target
    python3 benchmarks/inflight.py --inflight 200 --query-seconds 5-8 --targets direct,gateway1
    python3 benchmarks/inflight.py --inflight 1000 --client python   # a real client's 13 header lines

The fake coordinator (benchmarks/longpoll_backend.py) runs queries of ``--query-seconds`` made of
long polls of ``--poll-seconds``. The client is one asyncio process that follows ``nextUri`` like
a Trino client: one keep-alive connection per query (as separate clients have), every query
started within ``--ramp`` seconds, each until FINISHED. A statement the gateway sheds (429) is
sent again after its ``Retry-After``, at most 3 attempts in all, as the Trino Python client does
(``max_attempts`` 3); only the last refusal counts as a failure. While they run, a probe process
of its own (so that the load client's event loop does not delay it) submits ``select 1`` on a
new connection every 0.25 s and times it to FINISHED: connect, POST and each poll.

Per target and size it reports: failed queries (any error, non-200 answer or a last state other
than FINISHED) and failed probes, probe latency p50/p99 and the phases of the three slowest
probes, the depth of the proxy's accept queue (``ss`` Recv-Q every 0.1 s: max and p90) and the
kernel's count of connections dropped on a full accept queue (``ListenOverflows``, every
listener of the host), the proxy's resident memory per
in-flight query (peak minus at rest), and the proxy's CPU time per request it forwarded (all its
processes: nginx workers, gateway workers). For the gateway also its own view of the overload
(gateway/runtime/overload.py): the longest gap between two monitor probes as the fake coordinator saw
them arrive (``monitor.interval`` is 2 s; with one worker the gap shows whether rounds keep
their interval), state-API samples that were not HEALTHY, statements shed, failures excused
because the loop stalled, and the p99 event-loop lag (upper bucket bound). The descriptor limit of every process is raised to
its hard limit (printed), since each query holds two descriptors in a proxy.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import resource
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import machine  # noqa: E402
import services as S  # noqa: E402

TARGETS = ("direct", "nginx", "gateway1", "gateway2")
SUBMIT_ATTEMPTS = 3   # the Trino Python client's max_attempts: a 429 is retried after Retry-After


@dataclass
class Outcome:
    started: int = 0
    finished: int = 0
    failed: int = 0
    requests: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    probe_ms: list[float] = field(default_factory=list)
    probe_failed: int = 0
    shed_retries: int = 0

    def fail(self, why: str) -> None:
        self.failed += 1
        self.errors[why] = self.errors.get(why, 0) + 1


# The header lines of each request of the load (``--client``): ``bench`` sends only what a
# request needs; ``python`` what the Trino Python client 0.340 sends with every request (captured
# from it), which is what a proxy parses and forwards for each poll of a real client.
CLIENT_LINES = {
    "bench": "X-Trino-User: bench\r\n",
    "python": ("user-agent: Trino Python Client/0.340.0\r\nAccept-Encoding: gzip, deflate\r\nAccept: */*\r\n"
               "Connection: keep-alive\r\nX-Trino-Catalog: tpch\r\nX-Trino-Schema: tiny\r\n"
               "X-Trino-Source: trino-python-client\r\nX-Trino-User: bench\r\nX-Trino-Time-Zone: Etc/UTC\r\n"
               "X-Trino-Query-Data-Encoding: json+zstd,json+lz4,json\r\n"
               "X-Trino-Client-Capabilities: NUMBER,PARAMETRIC_DATETIME,SESSION_AUTHORIZATION\r\n"
               "X-Trino-Session: \r\nX-Trino-Transaction-Id: NONE\r\n"),
}
_client_lines = CLIENT_LINES["bench"]


async def _exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, method: str, target: str,
                    host: str, body: bytes = b"", retry_after: list[float] | None = None) -> tuple[int, bytes]:
    head = (f"{method} {target} HTTP/1.1\r\nHost: {host}\r\n{_client_lines}"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    writer.write(head + body)
    status_line = await reader.readline()
    if not status_line:
        raise ConnectionError("closed before answering")
    code = int(status_line.split()[1])
    length = 0
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b""):
            break
        name, _, value = line.decode("latin-1").partition(":")
        if name.strip().lower() == "content-length":
            length = int(value)
        elif name.strip().lower() == "retry-after" and retry_after is not None:
            retry_after.append(float(value))
    return code, await reader.readexactly(length)


async def run_query(port: int, sql: str, out: Outcome, timeout: float,
                    phases: list[float] | None = None) -> float | None:
    """One query to its end on one connection; the seconds it took, or None when it failed.
    ``phases`` gets the milliseconds since the start when the connect, the POST and each poll
    ended (the probe's breakdown)."""
    t0 = time.monotonic()
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), timeout)
    except Exception as exc:  # noqa: BLE001 - counted by kind
        out.fail(f"connect: {type(exc).__name__}")
        return None
    if phases is not None:
        phases.append(round((time.monotonic() - t0) * 1000, 1))
    host = f"127.0.0.1:{port}"
    try:
        for attempt in range(1, SUBMIT_ATTEMPTS + 1):
            wait: list[float] = []
            code, body = await asyncio.wait_for(
                _exchange(reader, writer, "POST", "/v1/statement", host, sql.encode(), wait), timeout)
            out.requests += 1
            if phases is not None:
                phases.append(round((time.monotonic() - t0) * 1000, 1))
            if code != 429 or attempt == SUBMIT_ATTEMPTS:
                break
            out.shed_retries += 1
            await asyncio.sleep(wait[0] if wait else 1.0)
        while True:
            if code != 200:
                out.fail(f"http {code}")
                return None
            doc = json.loads(body)
            if doc.get("error"):
                out.fail(f"error {doc['error'].get('errorName')}")
                return None
            nxt = doc.get("nextUri")
            if not nxt:
                if doc["stats"]["state"] != "FINISHED":
                    out.fail(f"state {doc['stats']['state']}")
                    return None
                return time.monotonic() - t0
            path = nxt.split("/", 3)[3]
            code, body = await asyncio.wait_for(_exchange(reader, writer, "GET", "/" + path, host), timeout)
            out.requests += 1
            if phases is not None:
                phases.append(round((time.monotonic() - t0) * 1000, 1))
    except Exception as exc:  # noqa: BLE001 - counted by kind
        out.fail(type(exc).__name__)
        return None
    finally:
        writer.close()


def _p99(values: list[float]) -> float | None:
    v = sorted(values)
    return round(v[min(len(v) - 1, int(len(v) * 0.99))], 1) if v else None


async def probe_main(port: int, timeout: float) -> None:
    """The ``--probe`` process: a ``select 1`` every 0.25 s until stdin closes; one JSON line
    each: [ms or null, phases, requests]."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    closed = asyncio.ensure_future(reader.read())
    while not closed.done():
        phases: list[float] = []
        t = await run_query(port, "select 1", probe_out := Outcome(), timeout, phases)
        print(json.dumps([None if t is None else round(t * 1000, 1), phases, probe_out.requests]),
              flush=True)
        await asyncio.wait([closed], timeout=0.25)


def accept_queue(port: int) -> int | None:
    """Connections waiting to be accepted on the socket listening on ``port`` (Recv-Q of ``ss``)."""
    import subprocess
    try:
        text = subprocess.run(["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True,
                              timeout=5).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    depths = [int(line.split()[1]) for line in text.splitlines() if line.split()[:1] == ["LISTEN"]]
    return sum(depths) if depths else None


def listen_overflows() -> int:
    """The kernel's count of connections dropped because an accept queue was full (all
    listeners: the proxy's and the fake coordinator's), TcpExt ListenOverflows."""
    lines = [line.split() for line in Path("/proc/net/netstat").read_text().splitlines()
             if line.startswith("TcpExt:")]
    return int(dict(zip(lines[0], lines[1])).get("ListenOverflows", 0)) if len(lines) >= 2 else 0


def _rss_kb(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            total += S.proc_status_kb(pid, "VmRSS")
        except (OSError, KeyError):
            pass
    return total


async def _admin_get(port: int, path: str, timeout: float = 10.0) -> tuple[int, bytes]:
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), timeout)
    try:
        return await asyncio.wait_for(_exchange(reader, writer, "GET", path, f"127.0.0.1:{port}"), timeout)
    finally:
        writer.close()


def _metric_sum(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        head, _, value = line.rpartition(" ")
        if all(f'{k}="{v}"' in head for k, v in labels.items()):
            total += float(value)
    return total


def _histogram_p99(text: str, name: str, **labels: str) -> float | None:
    buckets: dict[float, float] = {}
    for line in text.splitlines():
        if line.startswith(name + "_bucket{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            le = line.split('le="', 1)[1].split('"', 1)[0]
            buckets[float(le)] = buckets.get(float(le), 0.0) + float(line.rpartition(" ")[2])
    if not buckets or not buckets.get(float("inf")):
        return None
    total = buckets[float("inf")]
    return next(le for le, count in sorted(buckets.items()) if count >= 0.99 * total)


async def watch_gateway(port: int, backend_port: int, done: asyncio.Event) -> dict[str, Any]:
    """The gateway's view while the load runs: health from its state API, probe gaps from the
    fake coordinator (not from the gateway's API, whose answers wait behind the load)."""
    t0 = time.time()
    not_healthy = samples = 0
    while not done.is_set():
        try:
            code, body = await _admin_get(port, "/api/public/backends/bench/state")
            if code == 200:
                doc = json.loads(body)
                samples += 1
                not_healthy += doc["health"] != "HEALTHY"
        except (OSError, asyncio.TimeoutError, ValueError):
            pass
        await asyncio.sleep(0.5)
    code, body = await _admin_get(backend_port, "/_probes")
    times = sorted(t for t in json.loads(body) if t >= t0) if code == 200 else []
    gaps = [b - a for a, b in zip(times, times[1:])]
    code, body = await _admin_get(port, "/metrics")
    text = body.decode() if code == 200 else ""
    return {"monitor_probe_gap_max_s": round(max(gaps), 2) if gaps else None,
            "monitor_probes_seen": len(times), "state_not_healthy": f"{not_healthy}/{samples}",
            "shed": _metric_sum(text, "trino_gateway_shed_total"),
            "excused": _metric_sum(text, "trino_gateway_health_hints_total", verdict="excused"),
            "loop_lag_p99_s": _histogram_p99(text, "trino_gateway_event_loop_lag_seconds"),
            # the gateway's own view of a new statement, from its request to its answer's end
            # (compare with the probe's POST phase: the rest is before the handler started)
            "statement_p99_s": _histogram_p99(text, "trino_gateway_request_seconds", kind="statement"),
            "statement_overhead_p99_s": _histogram_p99(text, "trino_gateway_proxy_overhead_seconds",
                                                       kind="statement")}


async def load(port: int, pids: list[int], n: int, ramp: float, timeout: float,
               backend_port: int | None = None, gateway: bool = False) -> dict[str, Any]:
    """``backend_port``: the fake coordinator behind a gateway (for the gateway's figures)."""
    out = Outcome()
    counters = await asyncio.to_thread(gateway_counters, port) if gateway else {}
    rest_rss = _rss_kb(pids)
    user0, sys0 = S.cpu_split(pids)
    peak = [rest_rss]
    done = asyncio.Event()

    async def sampler() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _rss_kb(pids))
            await asyncio.sleep(0.5)

    slowest: list[tuple[float, list[float], float]] = []   # (ms, phases, start s) of every probe
    began = [time.monotonic()]   # reset when the load starts

    async def prober() -> None:
        """``select 1`` timed by a process of its own (``--probe``): in this one, the load's
        5,000-10,000 connections delay the probe's own reads (this loop's lag, seconds on a busy
        machine, was counted as the proxy's latency: nginx's p99 read 5.9 s once)."""
        child = await asyncio.create_subprocess_exec(
            sys.executable, __file__, "--probe", str(port), "--timeout", str(timeout),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
        assert child.stdout is not None and child.stdin is not None
        stopping = asyncio.ensure_future(done.wait())
        while True:
            line = asyncio.ensure_future(child.stdout.readline())
            await asyncio.wait([line, stopping], return_when=asyncio.FIRST_COMPLETED)
            if not line.done():
                line.cancel()
                break
            if not line.result():
                break
            t, phases, requests = json.loads(line.result())
            if t is None:
                out.probe_failed += 1
            else:
                out.probe_ms.append(t)
                slowest.append((t, phases, round(time.monotonic() - began[0] - t / 1000, 1)))
            out.requests += requests
        child.stdin.close()   # the child ends its current probe and exits
        await child.wait()

    listen_q: list[int] = []

    async def listen_queue() -> None:
        """The accept queue of the proxy's listening socket (``ss`` Recv-Q), every 0.1 s."""
        while not done.is_set():
            depth = await asyncio.to_thread(accept_queue, port)
            if depth is not None:
                listen_q.append(depth)
            await asyncio.sleep(0.1)

    async def one(delay: float) -> None:
        await asyncio.sleep(delay)
        out.started += 1
        if await run_query(port, "SELECT * FROM big", out, timeout) is not None:
            out.finished += 1

    overflows0 = listen_overflows()
    bg = [asyncio.ensure_future(sampler()), asyncio.ensure_future(prober()),
          asyncio.ensure_future(listen_queue())]
    watcher = asyncio.ensure_future(watch_gateway(port, backend_port, done)) if backend_port else None
    t0 = began[0] = time.monotonic()
    await asyncio.gather(*(one(random.uniform(0, ramp)) for _ in range(n)))
    elapsed = time.monotonic() - t0
    done.set()
    await asyncio.gather(*bg)
    seen = await watcher if watcher is not None else {}
    user1, sys1 = S.cpu_split(pids)
    cpu = user1 - user0 + sys1 - sys0
    probes = sorted(out.probe_ms)
    extra = gateway_figures(counters, await asyncio.to_thread(gateway_counters, port), elapsed,
                            n + len(probes) + out.probe_failed) if gateway else {}
    return {
        "inflight": n, "finished": out.finished, "failed": out.failed, "errors": out.errors,
        "requests": out.requests, "seconds": round(elapsed, 1),
        "probe_p50_ms": round(statistics.median(probes), 1) if probes else None,
        "probe_p99_ms": round(probes[min(len(probes) - 1, int(len(probes) * 0.99))], 1) if probes else None,
        "probes": len(probes), "probe_failed": out.probe_failed, "shed_retries": out.shed_retries,
        # the three slowest probes: ms when connect, POST and each poll ended
        "probe_slowest_phases_ms": [ph for _, ph, _ in sorted(slowest, key=lambda x: -x[0])[:3]],
        # when they started (s since the load began; the ramp is the first ``ramp`` s), and the
        # p99 of the probes started during the ramp and after it
        "probe_slowest_at_s": [at for _, _, at in sorted(slowest, key=lambda x: -x[0])[:3]],
        "probe_p99_ms_ramp_after": [_p99([ms for ms, _, at in slowest if at < ramp]),
                                    _p99([ms for ms, _, at in slowest if at >= ramp])],
        "accept_queue_max": max(listen_q) if listen_q else None,
        "accept_queue_p90": sorted(listen_q)[int(len(listen_q) * 0.9)] if listen_q else None,
        "listen_overflows": listen_overflows() - overflows0,
        "kb_per_query": round((peak[0] - rest_rss) / n, 1) if pids else None,
        "cpu_us_per_request": round(cpu / max(1, out.requests) * 1e6, 1) if pids else None,
        "cpu_system_share": round((sys1 - sys0) / cpu, 3) if pids and cpu > 0 else None,
        **seen,
        **extra,
    }


def gateway_counters(port: int) -> dict[tuple[str, ...], float]:
    """The gateway's GC pause histogram and backend connects from /metrics (since it started)."""
    import urllib.request
    from prometheus_client.parser import text_string_to_metric_families
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30).read().decode()
    out: dict[tuple[str, ...], float] = {}
    for fam in text_string_to_metric_families(text):
        for smp in fam.samples:
            if smp.name.startswith("trino_gateway_gc_pause_seconds") or \
                    smp.name == "trino_gateway_backend_connects_total":
                key = (smp.name, smp.labels.get("generation", ""), smp.labels.get("le", ""))
                out[key] = out.get(key, 0.0) + smp.value
    return out


def gateway_figures(before: dict[tuple[str, ...], float], after: dict[tuple[str, ...], float],
                    seconds: float, statements: int) -> dict[str, Any]:
    """GC share of the run's wall time, full collections, the longest pause (as the upper bound
    of its histogram bucket) and backend connects per statement, between two readings."""
    d = {k: v - before.get(k, 0.0) for k, v in after.items()}
    gc_s = sum(v for k, v in d.items() if k[0].endswith("_sum"))
    longest = 0.0
    for gen in {k[1] for k in d if k[0].endswith("_bucket")}:
        total = d.get(("trino_gateway_gc_pause_seconds_bucket", gen, "+Inf"), 0.0)
        les = sorted(float(k[2]) for k in d if k[0].endswith("_bucket") and k[1] == gen
                     and d[k] >= total > 0)
        if les:
            longest = max(longest, les[0])
    return {"gc_share_pct": round(100 * gc_s / seconds, 2),
            "gc_full": int(d.get(("trino_gateway_gc_pause_seconds_count", "2", ""), 0)),
            "gc_longest_pause_le_s": longest,
            "connects_per_query": round(d.get(("trino_gateway_backend_connects_total", "", ""), 0.0)
                                        / max(1, statements), 3)}


def start_target(name: str, tmp: Path, backend: S.Service,
                 server: dict[str, Any] | None = None) -> tuple[S.Service | None, int, list[int]]:
    if name == "direct":
        return None, backend.port, []
    if name == "nginx":
        port = S.free_port()
        conf = S.nginx_proxy_conf(tmp, port, backend.port).replace(
            "worker_connections 4096;", "worker_connections 40000;").replace(
            "worker_processes 1;", "worker_processes 1;\nworker_rlimit_nofile 65536;")
        svc = S.start_nginx("inflight-nginx", tmp, conf, port)
        return svc, port, S.worker_pids(svc)
    if name in ("pyfloor", "pyfloor+"):   # the floor of a pure-Python proxy (benchmarks/floor_proxy.py)
        svc = S._spawn_ready(name, [sys.executable, str(HERE / "floor_proxy.py"), "--port", "0",
                                    "--upstream", f"127.0.0.1:{backend.port}",
                                    *(["--features"] if name == "pyfloor+" else [])],
                             tmp, tmp / f"{name}.log")
        return svc, svc.port, [svc.pid]
    workers = int(name.removeprefix("gateway"))
    cfg = S.gateway_config(tmp, [("bench", backend.url)], rules=0, workers=workers, name=name)
    cfg["monitor"]["interval"] = "2s"
    # Every query comes from 127.0.0.1 (one client process, like a load balancer in front).
    cfg["server"]["maxConnectionsPerAddress"] = 0
    cfg["server"].update(server or {})   # --server KEY=VALUE
    svc = S.start_gateway(tmp, cfg, name=name)
    return svc, svc.port, S.worker_pids(svc, workers)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--inflight", default="1000,5000,10000", help="comma-separated sizes")
    p.add_argument("--targets", default=",".join(TARGETS))
    p.add_argument("--query-seconds", default="20-30")
    p.add_argument("--poll-seconds", default="1-5")
    p.add_argument("--ramp", type=float, default=10.0, help="seconds over which the queries start")
    p.add_argument("--timeout", type=float, default=60.0, help="per request, as a client would allow")
    p.add_argument("--json", type=Path, help="also write the figures here")
    p.add_argument("--server", action="append", default=[], metavar="KEY=VALUE",
                   help="a gateway server.* setting for this run (YAML value), e.g. shedLoopLag=0")
    p.add_argument("--client", choices=sorted(CLIENT_LINES), default="bench",
                   help="the header lines of the load's requests: bench (one), python (the Trino "
                        "Python client's 13)")
    p.add_argument("--probe", type=int, metavar="PORT", help=argparse.SUPPRESS)   # the probe process
    args = p.parse_args(argv)
    global _client_lines
    _client_lines = CLIENT_LINES[args.client]
    if args.probe:
        asyncio.run(probe_main(args.probe, args.timeout))
        return 0
    import yaml
    server: dict[str, Any] = {}
    for item in args.server:
        key, sep, value = item.partition("=")
        if not sep or not key:
            p.error(f"--server {item!r}: expected KEY=VALUE")
        server[key] = yaml.safe_load(value)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))   # inherited by everything started here
    print(f"# machine: {machine.describe() if hasattr(machine, 'describe') else os.uname().nodename}; "
          f"descriptor limit {hard} (was {soft})", flush=True)
    tmp = S.new_tmp("tgw-inflight-")
    backend = S._spawn_ready("longpoll", [sys.executable, str(HERE / "longpoll_backend.py"), "--port", "0",
                                          "--query-seconds", args.query_seconds, "--poll-seconds", args.poll_seconds],
                             tmp, tmp / "longpoll.log")
    rows = []
    try:
        for target in args.targets.split(","):
            if target == "nginx" and not S.nginx_available():
                print("# nginx not installed: skipped", flush=True)
                continue
            svc, port, pids = start_target(target, tmp, backend, server)
            try:
                for n in (int(x) for x in args.inflight.split(",")):
                    watched = backend.port if target.startswith("gateway") else None
                    row = {"target": target, **asyncio.run(load(port, pids, n, args.ramp, args.timeout,
                                                                 backend_port=watched,
                                                                 gateway=watched is not None))}
                    rows.append(row)
                    print(json.dumps(row), flush=True)
            finally:
                if svc is not None:
                    svc.stop()
    finally:
        backend.stop()
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
