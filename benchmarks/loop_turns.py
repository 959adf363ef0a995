"""How many event-loop turns a request spends in the gateway, counted rather than timed.

    python3 benchmarks/loop_turns.py

Under load every turn of a worker's loop is long: it relays every answer that became ready
since the last one (25-250 ms per turn during the ramp of the 5,000-in-flight benchmark). A
request that needs a turn more waits that much longer, whatever its own CPU cost; the
``select 1`` tail of issue 19 is statements waiting for turns. This counts them: a gateway, a
minimal coordinator (answers statements QUEUED and polls RUNNING at once) and a client, all
on one event loop whose every turn is counted (a callback that reschedules itself), in one
process. Nothing is timed, so the figures are exact and do not depend on the machine. Both
loops are counted: asyncio's and uvloop (the default), which runs the callbacks an I/O callback
schedules in the same turn, so it counts fewer.

For each request: turns from the client's write until the coordinator has the request ("to
the backend") and from the coordinator's answer until the client has read it ("back"). A
proxy cannot do better than 2 each way: its own read (and write onward) in one turn, the
other end's read in the next, on asyncio's loop; the client here reads with a stream reader,
which costs a turn more on the way back. Printed for a statement that must open a backend
connection, a poll (the follow-up fast path), a statement on open connections and one on a
client connection not accepted yet: the fewest turns of five tries each (the gateway's own
timers may wake the loop during a request, adding a turn).
"""
from __future__ import annotations

import asyncio
import json
import socket
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from inprocess import MinimalCoordinator, gateway_before  # noqa: E402


class _Turns:
    n = 0


def _tick() -> None:
    """Counts a turn and asks to run again in the next one: on any loop (asyncio's, uvloop),
    callbacks scheduled during a turn run in the next, so this counts turns. It also keeps the
    loop from sleeping, which changes no count here: on loopback a write is readable, and a
    connect complete, by the next turn."""
    _Turns.n += 1
    asyncio.get_running_loop().call_soon(_tick)


def _turns() -> int:
    return _Turns.n


class Coordinator(MinimalCoordinator):
    """Answers at once: a statement QUEUED, a poll RUNNING, /v1/info ready. Notes the turn at
    which each statement or poll arrived."""

    arrivals: list[int] = []

    def answer(self, method: str, target: str, base: str) -> bytes:
        if target.startswith("/v1/statement"):
            Coordinator.arrivals.append(_turns())
            qid = target.split("/")[4] if method == "GET" else f"20261204_000000_{len(self.arrivals):05d}_abcde"
            doc: dict[str, Any] = {
                "id": qid, "infoUri": f"{base}/ui/query.html?{qid}",
                "nextUri": f"{base}/v1/statement/executing/{qid}/y/{len(self.arrivals)}",
                "stats": {"state": "QUEUED" if method == "POST" else "RUNNING"}}
        elif target.startswith("/v1/info"):
            doc = {"starting": False, "nodeVersion": {"version": "470"}, "uptime": "1m"}
        else:
            doc = {}
        body = json.dumps(doc).encode()
        return b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%b" % (len(body), body)


async def _answer(reader: asyncio.StreamReader, sent: int, before: int) -> tuple[int, int, dict[str, Any]]:
    """Read the gateway's answer to a request written at turn ``sent``, the coordinator's
    ``before``-th arrival: (turns to the backend, turns back, the answer)."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = int(next(h for h in head.split(b"\r\n") if h.lower().startswith(b"content-length")).split(b":")[1])
    doc = json.loads(await reader.readexactly(length))
    assert b" 200 " in head.split(b"\r\n")[0], head
    arrived = Coordinator.arrivals[before]
    return arrived - sent, _turns() - arrived, doc


def _request(method: str, target: str, port: int, body: bytes = b"") -> bytes:
    return (f"{method} {target} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nX-Trino-User: turns\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


async def _exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, port: int, method: str,
                    target: str, body: bytes = b"") -> tuple[int, int, dict[str, Any]]:
    """(turns to the backend, turns back, the answer) on an open client connection."""
    sent, before = _turns(), len(Coordinator.arrivals)
    writer.write(_request(method, target, port, body))
    return await _answer(reader, sent, before)


REPEAT = 5


async def _fresh_client(port: int) -> tuple[int, int]:
    """(turns, turns) for a statement sent on a connection the gateway has not accepted yet:
    connected and written without waiting for the loop (on loopback the handshake completes in
    ``connect``; the listener's queue holds the connection until the gateway accepts it)."""
    sock = socket.create_connection(("127.0.0.1", port))
    sent, before = _turns(), len(Coordinator.arrivals)
    sock.sendall(_request("POST", "/v1/statement", port, b"select 1"))
    sock.setblocking(False)
    reader, writer = await asyncio.open_connection(sock=sock)
    try:
        to, back, _ = await _answer(reader, sent, before)
        return to, back
    finally:
        writer.close()


def _drop_idle(client: Any) -> None:
    """Close the backend connections idle in ``client``'s pool (gateway/proxy/client.py)."""
    for idle in client._pools.values():
        while idle:
            idle.pop().close()


async def _measure() -> dict[str, tuple[int, int]]:
    asyncio.get_running_loop().call_soon(_tick)
    async with gateway_before(Coordinator, "turns") as (gw, port):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        runs: dict[str, list[tuple[int, int]]] = {}
        for _ in range(REPEAT):
            _drop_idle(gw.client)   # the next statement connects
            to, back, doc = await _exchange(reader, writer, port, "POST", "/v1/statement", b"select 1")
            runs.setdefault("statement, new backend connection", []).append((to, back))
            to, back, doc = await _exchange(reader, writer, port, "GET", doc["nextUri"].split(str(port), 1)[1])
            runs.setdefault("poll (follow-up fast path)", []).append((to, back))
            to, back, _ = await _exchange(reader, writer, port, "POST", "/v1/statement", b"select 1")
            runs.setdefault("statement, pooled backend connection", []).append((to, back))
            # a client that connects and sends its statement at once (the benchmark's probe):
            # the gateway's accept is on the statement's way
            runs.setdefault("statement, new client connection", []).append(await _fresh_client(port))
        # The gateway's own timers (the loop-lag sampler every 50 ms, the monitor) may wake
        # the loop during an exchange: a turn more, never less. The fewest is the request's.
        out = {what: min(seen) for what, seen in runs.items()}
        writer.close()
        return out


def measure(loop: str = "asyncio") -> dict[str, tuple[int, int]]:
    """Turns (to the backend, back) per request kind, on ``loop`` (``asyncio`` or ``uvloop``)."""
    Coordinator.arrivals = []
    factory = asyncio.new_event_loop
    if loop == "uvloop":
        import uvloop
        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(_measure())


def main() -> None:
    for loop in ("asyncio", "uvloop"):
        try:
            counts = measure(loop)
        except ImportError:
            print(f"{loop}: not installed")
            continue
        for what, (to, back) in counts.items():
            print(f"{loop:8} {what:40} to the backend {to} turns, back {back} turns")


if __name__ == "__main__":
    main()
