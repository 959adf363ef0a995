"""CPU per call of the code every poll runs, before and after a change, in one invocation.

    python3 benchmarks/hot_path.py                              # the tree on PYTHONPATH
    python3 benchmarks/hot_path.py --compare /work/main,$PWD    # each tree in its own process

A poll (the gateway's most frequent request) cannot go without: parsing and checking the
request head (``gateway/runtime/http1.py``), verifying its routing token
(``exchange.resolve_token``), building the backend's header lines
(``protocol.forward_header_pairs``), parsing the response head, translating its header lines
(``exchange.translate_response_headers``) and rewriting every URI of the page with a routing
token (``protocol.UriRewriter`` + ``exchange.TokenMinter``). This times each of them on
realistic inputs: the head the Trino Python client sends for a poll (routing token included),
a coordinator's response head, a 1-2 KB RUNNING page with ``nextUri``/``infoUri``/
``partialCancelUri`` and a 64 KB data page. Figures are µs of process CPU per call, the best of
``--reps`` repetitions of ``--number`` calls (the best is the least disturbed by other
processes on a shared machine). ``poll (sum)`` is the whole per-poll work as
``benchmarks/floor_proxy.py --features`` (the ``pyfloor+`` target) does it.

The script imports ``gateway`` from ``PYTHONPATH`` only (never from its own checkout), so
``--compare`` can run it against any tree, e.g. the main branch before a change.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from typing import Callable

QID = "20261203_180512_04711_abcde"
SLUG = "y7c1f0b5e2d94a3b8c6f1e0d2a4b6c8e9f1a3b5c7"
BACKEND_BASE = "http://trino-adhoc-1.internal:8080"
GATEWAY_BASE = "https://trino.example.com:8443"


def _page(rows: int) -> bytes:
    """A coordinator's RUNNING page with ``rows`` data rows (the shape of a real one)."""
    cols = [{"name": n, "type": t, "typeSignature": {"rawType": t, "arguments": []}}
            for n, t in (("orderdate", "date"), ("mktsegment", "varchar"), ("revenue", "double"),
                         ("orders", "bigint"))]
    doc = {
        "id": QID,
        "infoUri": f"{BACKEND_BASE}/ui/query.html?{QID}",
        "partialCancelUri": f"{BACKEND_BASE}/v1/statement/executing/partialCancel/{QID}/0/{SLUG}/7",
        "nextUri": f"{BACKEND_BASE}/v1/statement/executing/{QID}/{SLUG}/8",
        "columns": cols,
        "data": [[f"2024-{1 + i % 12:02d}-{1 + i % 28:02d}", "BUILDING", 1234.5 + i * 17.25, 1000 + i]
                 for i in range(rows)],
        "stats": {"state": "RUNNING", "queued": False, "scheduled": True, "nodes": 3,
                  "totalSplits": 120, "queuedSplits": 10, "runningSplits": 30, "completedSplits": 80,
                  "cpuTimeMillis": 1234, "wallTimeMillis": 2345, "queuedTimeMillis": 3,
                  "elapsedTimeMillis": 2400, "processedRows": 123456, "processedBytes": 9876543,
                  "physicalInputBytes": 9876543, "peakMemoryBytes": 1048576, "spilledBytes": 0,
                  "rootStage": {"stageId": "0", "state": "RUNNING", "done": False, "nodes": 1}},
        "warnings": [],
    }
    return json.dumps(doc, separators=(",", ":")).encode()


def _grow(size: int) -> bytes:
    rows = 1
    while len(_page(rows)) < size:
        rows *= 2
    lo, hi = rows // 2, rows
    while lo < hi:
        mid = (lo + hi) // 2
        if len(_page(mid)) < size:
            lo = mid + 1
        else:
            hi = mid
    return _page(lo)


def cases() -> list[tuple[str, Callable[[], object]]]:
    from gateway import protocol as P
    from gateway.proxy import exchange as X
    from gateway.routing.tokens import TokenKeys
    from gateway.runtime import http1

    keys = TokenKeys(b"k" * 32)
    token = keys.encode("adhoc-1", P.QUERY, QID)
    target = f"/_r/{token}/v1/statement/executing/{QID}/{SLUG}/7"
    request = (
        f"GET {target} HTTP/1.1\r\n"
        "Host: trino.example.com:8443\r\n"
        "User-Agent: trino-python-client/0.333.0\r\n"
        "Accept-Encoding: gzip, deflate\r\n"
        "Accept: */*\r\n"
        "Connection: keep-alive\r\n"
        "X-Trino-Catalog: hive\r\n"
        "X-Trino-Schema: sales\r\n"
        "X-Trino-Source: trino-python-client\r\n"
        "X-Trino-User: alice\r\n"
        "X-Trino-Time-Zone: UTC\r\n"
        "X-Trino-Client-Capabilities: PARAMETRIC_DATETIME,SESSION_AUTHORIZATION\r\n"
        "X-Trino-Session: \r\n"
        "X-Trino-Transaction-Id: NONE\r\n"
        "Authorization: Basic YWxpY2U6c2VjcmV0\r\n"
        "\r\n").encode("latin-1")
    small = _grow(1500)
    big = _grow(64 * 1024)
    response = (
        "HTTP/1.1 200 OK\r\n"
        "Date: Thu, 03 Dec 2026 18:05:13 GMT\r\n"
        "Content-Type: application/json\r\n"
        "X-Content-Type-Options: nosniff\r\n"
        "Vary: Accept-Encoding, User-Agent\r\n"
        f"Content-Length: {len(small)}\r\n"
        "\r\n").encode("latin-1")
    # What benchmarks/inflight.py's client sends and benchmarks/longpoll_backend.py answers.
    tiny_request = (f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nX-Trino-User: bench\r\n"
                    "Content-Length: 0\r\n\r\n").encode()
    doc = json.dumps({"id": QID, "infoUri": f"{BACKEND_BASE}/ui/query.html?{QID}",
                      "stats": {"state": "RUNNING", "queued": False, "scheduled": True, "nodes": 1},
                      "nextUri": f"{BACKEND_BASE}/v1/statement/executing/{QID}/y3/3"},
                     separators=(",", ":")).encode()
    tiny_answer = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%b"
                   % (len(doc), doc))
    big_answer = response + big   # head and body read in one go
    chunked = b"".join(b"%x\r\n%b\r\n" % (len(big[i:i + 8192]), big[i:i + 8192])
                       for i in range(0, len(big), 8192)) + b"0\r\n\r\n"

    req_head = http1.parse_request_head(request)
    resp_head = http1.parse_response_head(response)
    req_pairs = list(req_head.headers.get_all())
    resp_pairs = list(resp_head.headers.get_all())
    path, _, query = target.partition("?")
    fwd = P.forward_header_pairs(req_pairs, remote_ip="10.1.2.3", base=GATEWAY_BASE, forwarded=False,
                                 trust_forwarded=False)

    def rewrite(page: bytes, chunk: int = 0) -> bytes:
        rw = P.UriRewriter(GATEWAY_BASE, X.TokenMinter(keys, "adhoc-1"))
        if not chunk:
            return rw.feed(page) + rw.finish()
        out = [rw.feed(page[i:i + chunk]) for i in range(0, len(page), chunk)]
        return b"".join(out) + rw.finish()

    def page(body: bytes) -> bytes:
        rw = P.UriRewriter(GATEWAY_BASE, X.TokenMinter(keys, "adhoc-1"))
        whole = getattr(rw, "page", None)   # absent before the fourth session
        return whole(body) if whole is not None else rw.feed(body) + rw.finish()

    scopes = [f"20261203_180512_{i:05d}_abcde" for i in range(10000)]
    tokens = [keys.encode("adhoc-1", P.QUERY, s) for s in scopes]
    it = iter(range(10 ** 12))

    def encode_new() -> str:   # a scope not seen before: the HMAC itself
        i = next(it)
        return keys.encode(f"b{i}", P.QUERY, QID)

    def verify_new() -> str:
        i = next(it) % len(scopes)
        return keys._verify(tokens[i], P.QUERY, scopes[i])

    def chunked_decode() -> object:
        return http1.ChunkedDecoder().feed(chunked)

    def poll(request: bytes = request, answer: bytes = response + small) -> bytes:
        """What floor_proxy.py's pyfloor+ does for one poll and its answer."""
        end = http1.find_head_end(request)
        head = http1.parse_request_head(request[:end])
        p, _, q = head.target.partition("?")
        route = X.resolve_token(keys, head.method, p, q)
        pairs = P.forward_header_pairs(head.headers.get_all(), remote_ip="127.0.0.1", base=GATEWAY_BASE,
                                       forwarded=False, trust_forwarded=False)
        pairs.append(("Host", head.headers.get("Host", "")))
        out = http1.serialize_head(f"GET {route.uri} HTTP/1.1", pairs)
        end = http1.find_head_end(answer)
        rhead = http1.parse_response_head(answer[:end])
        minter = X.TokenMinter(keys, route.backend)
        tr = X.translate_response_headers(rhead.headers.get_all(), backend_base=BACKEND_BASE,
                                          gateway_base=GATEWAY_BASE, request_transaction=None, route=minter)
        rw = P.UriRewriter(GATEWAY_BASE, minter)
        whole = getattr(rw, "page", None)
        body = whole(answer[end:]) if whole is not None else rw.feed(answer[end:]) + rw.finish()
        lines = [(n, v) for n, v in tr.headers if n.lower() != "content-length"]
        lines.append(("Content-Length", str(len(body))))
        return out + http1.serialize_head(f"HTTP/1.1 {rhead.code} {rhead.reason}", lines) + body

    return [
        ("find_head_end (request)", lambda: http1.find_head_end(request)),
        ("find_head_end (response + 64 KB page)", lambda: http1.find_head_end(big_answer)),
        ("parse_request_head (poll, 14 headers)", lambda: http1.parse_request_head(request)),
        ("parse_response_head (coordinator)", lambda: http1.parse_response_head(response)),
        ("body_length (response)", lambda: http1.body_length(resp_head.headers)),
        ("serialize_head (backend request)", lambda: http1.serialize_head(f"GET {target} HTTP/1.1", fwd)),
        ("forward_header_pairs", lambda: P.forward_header_pairs(
            req_pairs, remote_ip="10.1.2.3", base=GATEWAY_BASE, forwarded=False, trust_forwarded=False)),
        ("forward_header_pairs (X-Forwarded-*)", lambda: P.forward_header_pairs(
            req_pairs, remote_ip="10.1.2.3", base=GATEWAY_BASE, forwarded=True, trust_forwarded=False)),
        ("resolve_token (repeated token)", lambda: X.resolve_token(keys, "GET", path, query)),
        ("TokenKeys.encode (new scope: HMAC)", encode_new),
        ("TokenKeys._verify (uncached: HMAC)", verify_new),
        ("translate_response_headers", lambda: X.translate_response_headers(
            resp_pairs, backend_base=BACKEND_BASE, gateway_base=GATEWAY_BASE, request_transaction=None,
            route=X.TokenMinter(keys, "adhoc-1"))),
        (f"UriRewriter {len(small)} B page, one chunk", lambda: rewrite(small)),
        (f"UriRewriter.page {len(small)} B (feed+finish if absent)", lambda: page(small)),
        (f"UriRewriter {len(big) // 1024} KB page, one chunk", lambda: rewrite(big)),
        (f"UriRewriter {len(big) // 1024} KB page, 16 KB chunks", lambda: rewrite(big, 16384)),
        (f"ChunkedDecoder {len(big) // 1024} KB, 8 KB chunks", chunked_decode),
        ("poll (sum, as pyfloor+)", poll),
        ("poll (sum), inflight.py's head and page", lambda: poll(tiny_request, tiny_answer)),
    ]


def measure(number: int, reps: int) -> dict[str, float]:
    out: dict[str, float] = {}
    for name, fn in cases():
        fn()   # warm the caches a running proxy has warm
        best = float("inf")
        n = max(1, number // 20) if "64 KB" in name else number
        for _ in range(reps):
            t0 = time.process_time()
            for _ in range(n):
                fn()
            best = min(best, (time.process_time() - t0) / n)
        out[name] = best * 1e6
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--number", type=int, default=4000, help="calls per repetition (64 KB cases: /20)")
    p.add_argument("--reps", type=int, default=7)
    p.add_argument("--rounds", type=int, default=3,
                   help="with --compare: trees alternate this many times; the best round counts")
    p.add_argument("--compare", help="comma-separated repository roots, each run in its own process")
    p.add_argument("--json", action="store_true", help="print the figures as JSON (used by --compare)")
    args = p.parse_args()
    if not args.compare:
        res = measure(args.number, args.reps)
        if args.json:
            print(json.dumps(res))
        else:
            import gateway
            print(f"gateway from {os.path.dirname(gateway.__file__)}")
            for name, us in res.items():
                print(f"{name:45s} {us:9.2f} µs")
        return
    roots = [r for r in args.compare.split(",") if r]
    results: list[dict[str, float]] = [{} for _ in roots]
    for _ in range(args.rounds):   # alternate, so a busy moment does not favour one tree
        for root, best in zip(roots, results):
            env = dict(os.environ, PYTHONPATH=os.path.abspath(root))
            cmd = [sys.executable, os.path.abspath(__file__), "--json", "--number", str(args.number),
                   "--reps", str(args.reps)]
            # The script's own directory comes first on sys.path; gateway is not in benchmarks/.
            done = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True,
                                  cwd=os.path.abspath(root))
            for name, us in json.loads(done.stdout).items():
                best[name] = min(us, best.get(name, us))
    print(f"load average {os.getloadavg()[0]:.2f}; µs of CPU per call, best of {args.reps} "
          f"× {args.rounds} alternating rounds")
    print("| function | " + " | ".join(roots) + (" | after / before |" if len(roots) == 2 else " |"))
    print("|---" * (len(roots) + 1 + (len(roots) == 2)) + "|")
    for name in results[0]:
        vals = [r.get(name) for r in results]
        cells = " | ".join(f"{v:.2f}" if v is not None else "–" for v in vals)
        ratio = ""
        if len(roots) == 2 and None not in vals:
            ratio = f" | {vals[1] / vals[0]:.2f}×"
        print(f"| {name} | {cells}{ratio} |")


if __name__ == "__main__":
    main()
