"""What one in-flight query costs the cyclic garbage collector, counted inside a gateway worker.

    python3 benchmarks/gc_inflight.py --inflight 1000            # ~20 s
    python3 benchmarks/gc_inflight.py --inflight 1000,5000 --json /tmp/gc.json

Runs one gateway worker in this process (``gateway.runtime.serve.serve``, no rules, history in SQLite)
in front of the long-polling fake coordinator (benchmarks/longpoll_backend.py, polls held for
45 s). A client subprocess starts ``N`` queries, each on its own connection, and leaves each one
parked on a long poll (POST, first poll, second poll held by the backend). With all ``N`` parked,
the worker counts what the collector tracks (``gc.get_objects()``, all generations, frozen
start-up objects excluded) and times full collections (``gc.collect()``), then subtracts the
same figures taken at rest. These are counts, not timings of a shared machine: they do not move
between runs, which is why issue 19's object budget is measured here rather than under load.

Per size it prints: tracked objects per parked query, the types that grew most, and the time of a
full collection per 1,000 parked queries (median of 5).
"""
from __future__ import annotations

import argparse
import asyncio
import collections
import gc
import json
import os
import resource
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import services as S  # noqa: E402

CLIENT = r"""
import asyncio, json, sys
port, n = int(sys.argv[1]), int(sys.argv[2])
async def req(r, w, method, target, body=b""):
    w.write((f"{method} {target} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nX-Trino-User: bench\r\n"
             f"Content-Length: {len(body)}\r\n\r\n").encode() + body)
    status = await r.readline()
    length, chunked = 0, False
    while True:
        line = await r.readline()
        if line in (b"\r\n", b""):
            break
        k, _, v = line.decode().partition(":")
        if k.strip().lower() == "content-length":
            length = int(v)
        chunked = chunked or (k.strip().lower() == "transfer-encoding" and "chunked" in v)
    if not chunked:
        return json.loads(await r.readexactly(length))
    body = b""
    while True:
        size = int((await r.readline()).strip(), 16)
        body += await r.readexactly(size + 2)
        if size == 0:
            return json.loads(body)
async def one(sem, parked):
    async with sem:
        r, w = await asyncio.open_connection("127.0.0.1", port)
        doc = await req(r, w, "POST", "/v1/statement", b"SELECT * FROM big")
        doc = await req(r, w, "GET", "/" + doc["nextUri"].split("/", 3)[3])
        nxt = "/" + doc["nextUri"].split("/", 3)[3]
        w.write((f"GET {nxt} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nX-Trino-User: bench\r\n\r\n").encode())
    parked.append((r, w))
async def main():
    parked = []
    sem = asyncio.Semaphore(200)
    await asyncio.gather(*(one(sem, parked) for _ in range(n)))
    print("PARKED", flush=True)
    await asyncio.sleep(3600)
asyncio.run(main())
"""


def _kind(o: Any) -> str:
    """The type, and for bound methods and coroutines what they are (where the count goes)."""
    t = type(o).__qualname__
    if t == "method":
        return f"method {type(o.__self__).__qualname__}.{o.__func__.__name__}"
    if t == "coroutine":
        return f"coroutine {o.__qualname__}"
    return t


def _tracked() -> tuple[int, collections.Counter[str]]:
    objs = gc.get_objects()
    return len(objs), collections.Counter(_kind(o) for o in objs)


def _full_collection_seconds(repeat: int = 5) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        gc.collect()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


async def _measure(gw: Any, port: int, sizes: list[int], out: list[dict[str, Any]]) -> None:
    loop = asyncio.get_running_loop()
    for n in sizes:
        gc.collect()
        base_n, base_types = _tracked()
        base_t = _full_collection_seconds()
        client = await asyncio.create_subprocess_exec(sys.executable, "-c", CLIENT, str(port), str(n),
                                                      stdout=subprocess.PIPE)
        assert client.stdout is not None
        line = await client.stdout.readline()
        if line.strip() != b"PARKED":
            raise RuntimeError(f"client did not park its queries: {line!r}")
        deadline = loop.time() + 30
        while gw.in_flight < n and loop.time() < deadline:   # the last polls reach the worker
            await asyncio.sleep(0.05)
        if gw.in_flight < n:
            raise RuntimeError(f"only {gw.in_flight} of {n} polls parked in the gateway")
        gc.collect()
        now_n, now_types = _tracked()
        now_t = _full_collection_seconds()
        grew = now_types.copy()
        grew.subtract(base_types)
        row = {"inflight": n, "objects_per_query": round((now_n - base_n) / n, 1),
               "full_gc_ms_per_1000": round((now_t - base_t) * 1000 / n * 1000, 2),
               "full_gc_ms": round(now_t * 1000, 1),
               "top_types": {k: round(v / n, 2) for k, v in grew.most_common(40) if v > 0}}
        out.append(row)
        print(json.dumps(row), flush=True)
        client.kill()
        await client.wait()
        deadline = loop.time() + 30
        while gw.in_flight and loop.time() < deadline:
            await asyncio.sleep(0.05)
        await asyncio.sleep(1.0)   # closed backend connections leave the idle pool
    os.kill(os.getpid(), signal.SIGINT)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--inflight", default="1000")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    sizes = [int(x) for x in args.inflight.split(",")]
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    tmp = S.new_tmp("tgw-gcinflight-")
    backend = S._spawn_ready("longpoll", [sys.executable, str(HERE / "longpoll_backend.py"), "--port", "0",
                                          "--query-seconds", "300", "--poll-seconds", "45"],
                             tmp, tmp / "longpoll.log")
    from gateway.config import config_from_dict
    from gateway.runtime.serve import serve
    cfg = S.gateway_config(tmp, [("bench", backend.url)], rules=0, name="gc")
    cfg["server"]["port"] = S.free_port()
    cfg["server"]["maxConnectionsPerAddress"] = 0   # every client connection comes from 127.0.0.1
    cfg["logging"] = {"level": "ERROR"}
    rows: list[dict[str, Any]] = []

    def ready(gw: Any, port: int) -> None:
        # A warm-up of 50 first: objects made on first use (metric children, caches) are not per query.
        asyncio.get_running_loop().create_task(_measure(gw, port, [50] + sizes, rows))

    try:
        serve(config_from_dict(cfg, base_dir=str(tmp)), ready_callback=ready)
    finally:
        backend.stop()
    rows = rows[1:]
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0 if len(rows) == len(sizes) else 1


if __name__ == "__main__":
    sys.exit(main())
