"""How many Python calls the gateway makes for one poll, counted rather than timed.

    python3 benchmarks/poll_calls.py                      # the tree on PYTHONPATH
    python3 benchmarks/poll_calls.py --list --callers     # ... every function called, with counts
    python3 benchmarks/poll_calls.py --what statement     # a new connection, a statement, its close
    python3 benchmarks/poll_calls.py --time 3000          # also CPU µs per poll, unprofiled

Under the in-flight load (``benchmarks/inflight.py``) a worker wakes for each request with its
caches cold: a poll then costs several times what the same code costs in a loop with hot
caches, and what it costs follows how much code and how many objects the poll goes through.
The in-flight figures move ±15 % from run to run; this one does not. It runs a gateway, a
minimal coordinator (answers every poll RUNNING with a 1.5 KB page and a real coordinator's
header lines) and a client that sends the Trino Python client's 13 header lines on one
keep-alive connection, all on one event loop in one process. After a few polls (the connection's
lines are parsed once, the backend connection is pooled) it counts, with ``sys.setprofile``,
every Python function call and every call of a C function made while the gateway's code is on
the stack, from the client's write until the client has read the answer. The coordinator's and
the client's own calls are not counted; the event loop's calls into the gateway are. Each of
``--polls`` iterations is counted on its own and the one with the fewest Python calls is shown:
the gateway's own timers may run during one and only ever add calls.
``--what statement`` counts instead a new client connection, one statement on it and its close
(what each query of the in-flight load costs besides its polls). ``--time N`` also runs N
iterations without the profiler and prints the process's CPU per iteration, client and
coordinator included: hot caches, one process, for comparing two trees only (on a shared
machine it moves by a factor of two between runs; take the least of several).
"""
from __future__ import annotations

import argparse
import asyncio
import collections
import json
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from inprocess import MinimalCoordinator, gateway_before  # noqa: E402

QID = "20261204_000000_00001_abcde"
# What the Trino Python client 0.340 sends with each request (benchmarks/inflight.py --client python).
CLIENT_LINES = ("user-agent: Trino Python Client/0.340.0\r\nAccept-Encoding: gzip, deflate\r\nAccept: */*\r\n"
                "Connection: keep-alive\r\nX-Trino-Catalog: tpch\r\nX-Trino-Schema: tiny\r\n"
                "X-Trino-Source: trino-python-client\r\nX-Trino-User: bench\r\nX-Trino-Time-Zone: Etc/UTC\r\n"
                "X-Trino-Query-Data-Encoding: json+zstd,json+lz4,json\r\n"
                "X-Trino-Client-Capabilities: NUMBER,PARAMETRIC_DATETIME,SESSION_AUTHORIZATION\r\n"
                "X-Trino-Session: \r\nX-Trino-Transaction-Id: NONE\r\n")


def _page(base: str, token: int) -> bytes:
    """A RUNNING page the shape of a coordinator's (no rows yet), ~1.5 KB."""
    doc = {"id": QID, "infoUri": f"{base}/ui/query.html?{QID}",
           "partialCancelUri": f"{base}/v1/statement/executing/partialCancel/{QID}/0/y/{token}",
           "nextUri": f"{base}/v1/statement/executing/{QID}/y/{token + 1}",
           "stats": {"state": "RUNNING", "queued": False, "scheduled": True, "progressPercentage": 12.5,
                     "runningPercentage": 3.0, "nodes": 1, "totalSplits": 21, "queuedSplits": 4,
                     "runningSplits": 2, "completedSplits": 15, "cpuTimeMillis": 120, "wallTimeMillis": 480,
                     "queuedTimeMillis": 1, "elapsedTimeMillis": 520, "processedRows": 1500,
                     "processedBytes": 48000, "physicalInputBytes": 48000, "peakMemoryBytes": 65536,
                     "spilledBytes": 0, "rootStage": {"stageId": "0", "state": "RUNNING", "done": False,
                                                      "nodes": 1, "totalSplits": 21, "queuedSplits": 4,
                                                      "runningSplits": 2, "completedSplits": 15,
                                                      "cpuTimeMillis": 120, "wallTimeMillis": 480,
                                                      "processedRows": 1500, "processedBytes": 48000,
                                                      "physicalInputBytes": 48000, "failedTasks": 0,
                                                      "coordinatorOnly": False, "subStages": []}},
           "warnings": []}
    return json.dumps(doc).encode()


class Coordinator(MinimalCoordinator):
    """Answers a statement QUEUED and a poll RUNNING at once, with a coordinator's lines."""

    def answer(self, method: str, target: str, base: str) -> bytes:
        if target.startswith("/v1/statement"):
            token = int(target.rsplit("/", 1)[1]) if target.startswith("/v1/statement/executing/") else 0
            body = _page(base, token)
        else:
            body = json.dumps({"starting": False, "nodeVersion": {"version": "470"}, "uptime": "1m"}).encode()
        return (b"HTTP/1.1 200 OK\r\nDate: Fri, 04 Dec 2026 17:00:00 GMT\r\n"
                b"Content-Type: application/json\r\nX-Content-Type-Options: nosniff\r\n"
                b"Vary: Accept-Encoding, User-Agent\r\n"
                b"Content-Length: %d\r\n\r\n%b" % (len(body), body))


async def _exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, port: int, method: str,
                    target: str, body: bytes = b"") -> dict[str, Any]:
    writer.write((f"{method} {target} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{CLIENT_LINES}"
                  f"Content-Length: {len(body)}\r\n\r\n").encode() + body
                 if method == "POST" else
                 f"{method} {target} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{CLIENT_LINES}\r\n".encode())
    head = await reader.readuntil(b"\r\n\r\n")
    length = int(next(h for h in head.split(b"\r\n") if h.lower().startswith(b"content-length")).split(b":")[1])
    doc: dict[str, Any] = json.loads(await reader.readexactly(length))
    assert b" 200 " in head.split(b"\r\n")[0], head
    return doc


class Counter:
    """``sys.setprofile``'s callback: counts the calls made while a gateway frame (or the event
    loop on the gateway's behalf) is on the stack, not the harness's own."""

    def __init__(self) -> None:
        self.calls: collections.Counter[str] = collections.Counter()
        self.cpu = 0.0   # process CPU seconds per iteration (--time), harness included
        self.callers: collections.defaultdict[str, collections.Counter[str]] = \
            collections.defaultdict(collections.Counter)

    def python(self) -> int:
        """How many Python function calls were counted."""
        return sum(c for k, c in self.calls.items() if not k.startswith("C "))

    def __call__(self, frame: Any, event: str, arg: Any) -> None:
        if event not in ("call", "c_call"):
            return
        f = frame
        while f is not None:
            if f.f_code in _HARNESS or f.f_code.co_filename == _STREAMS:
                return   # the harness (client or coordinator) is on the stack
            f = f.f_back
        if event == "call":
            code = frame.f_code
            name = f"{Path(code.co_filename).name}:{code.co_firstlineno} {code.co_name}"
            caller = frame.f_back
        else:
            name = f"C {getattr(arg, '__qualname__', repr(arg))}"
            caller = frame
        self.calls[name] += 1
        if caller is not None:
            code = caller.f_code
            self.callers[name][f"{Path(code.co_filename).name}:{code.co_firstlineno} {code.co_name}"] += 1


async def _iteration(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, port: int,
                     doc: dict[str, Any], what: str) -> dict[str, Any]:
    """One poll of ``doc``'s nextUri (its answer returned), or a new client connection with a
    statement on it, closed (``doc`` returned)."""
    if what == "poll":
        return await _exchange(reader, writer, port, "GET", doc["nextUri"].split(str(port), 1)[1])
    r2, w2 = await asyncio.open_connection("127.0.0.1", port)
    await _exchange(r2, w2, port, "POST", "/v1/statement", b"select 1")
    w2.close()
    await w2.wait_closed()
    for _ in range(3):   # the gateway's side of the close, and what follows it
        await asyncio.sleep(0)
    return doc


async def _measure(polls: int, what: str, timed: int = 0) -> Counter:
    async with gateway_before(Coordinator, "calls") as (_, port):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        doc = await _exchange(reader, writer, port, "POST", "/v1/statement", b"select 1")
        for _ in range(3):   # the lines kept, the backend connection pooled
            doc = await _exchange(reader, writer, port, "GET", doc["nextUri"].split(str(port), 1)[1])
        cpu = 0.0
        if timed:   # no profile: CPU time per iteration, for comparing two trees
            t0 = time.process_time()
            for _ in range(timed):
                doc = await _iteration(reader, writer, port, doc, what)
            cpu = (time.process_time() - t0) / timed
        # Each iteration counted on its own, the one with the fewest Python calls kept: the
        # gateway's timers (the loop-lag sampler every 50 ms, the store's writer, sweeps) may
        # run during an iteration and only ever add calls (as loop_turns.py keeps the fewest turns).
        best: Counter | None = None
        for _ in range(polls):
            counter = Counter()
            sys.setprofile(counter)
            try:
                doc = await _iteration(reader, writer, port, doc, what)
            finally:
                sys.setprofile(None)
            if best is None or counter.python() < best.python():
                best = counter
        assert best is not None
        best.cpu = cpu
        writer.close()
        return best


_STREAMS = asyncio.streams.__file__   # the client's stream reader, fed by the loop


# The harness's own code: calls made under these frames are not the gateway's.
_HARNESS = {MinimalCoordinator.connection_made.__code__, MinimalCoordinator.data_received.__code__,
            Coordinator.answer.__code__,
            _exchange.__code__, _iteration.__code__, _measure.__code__, _page.__code__}


def measure(polls: int = 5, loop: str = "uvloop", what: str = "poll", timed: int = 0) -> tuple[int, int, Counter]:
    """(Python calls, C calls, the counter: every call and its callers) of the one of ``polls``
    iterations with the fewest Python calls."""
    factory = asyncio.new_event_loop
    if loop == "uvloop":
        import uvloop
        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        counter = runner.run(_measure(polls, what, timed))
    return counter.python(), sum(c for k, c in counter.calls.items() if k.startswith("C ")), counter


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--polls", type=int, default=5, help="iterations counted; the one with the fewest calls is shown")
    p.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    p.add_argument("--what", choices=("poll", "statement"), default="poll",
                   help="poll: a poll on a keep-alive connection; statement: a new client connection, "
                        "a statement on it and its close")
    p.add_argument("--time", type=int, default=0, metavar="N",
                   help="also run N iterations unprofiled and print the process's CPU µs per "
                        "iteration (client and coordinator included: for comparing trees)")
    p.add_argument("--list", action="store_true", help="every function called, with its count")
    p.add_argument("--callers", action="store_true", help="with --list: who called each")
    args = p.parse_args()
    py, c, counter = measure(args.polls, args.loop, args.what, args.time)
    if args.list:
        for name, n in sorted(counter.calls.items(), key=lambda kv: (-kv[1], kv[0])):
            print(f"{n:4d}  {name}")
            if args.callers:
                for caller, k in counter.callers[name].most_common():
                    print(f"        {k:4d}  from {caller}")
    print(json.dumps({"what": args.what, "python_calls": round(py, 2), "c_calls": round(c, 2),
                      "loop": args.loop, **({"cpu_us": round(counter.cpu * 1e6, 1)} if args.time else {})}))


if __name__ == "__main__":
    main()
