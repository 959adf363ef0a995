"""Hostile input over raw sockets, much of it property-based (hypothesis): malformed paths,
query ids, headers and bodies; slow, pipelined and abandoned connections.

One gateway serves the whole module (``server.maxBodySize`` 64 KiB, ``idleConnectionTimeout``
1 s, ``backendRequestTimeout`` 2 s, which also bounds reading a request body). Every request
must get an answer other than 500, or a closed connection; the gateway must never crash, log
an uncaught exception, or keep memory or file descriptors (checked at the end of the module).
"""
from __future__ import annotations

import socket
import threading
import time
from typing import Any, Iterator

import pytest
from hypothesis import HealthCheck, example, given, settings, strategies as st

from tests.conftest import GatewayProcess, gateway_config, start_gateway, wait_for
from tests.reliability.helpers import (
    complete_responses, fd_kinds, parse_raw, raw_exchange, read_response_bytes, rss_mb,
)

LIMIT = 65536
FUZZ = settings(max_examples=200, deadline=None, derandomize=False,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@pytest.fixture(scope="module")
def hostile(clusters: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("hostile")
    cfg = gateway_config(tmp, {"adhoc-1": clusters["adhoc-1"]}, groups={"adhoc-1": "adhoc"},
                         server={"maxBodySize": LIMIT, "idleConnectionTimeout": "1s",
                                 "backendRequestTimeout": "2s", "shutdownGracePeriod": "2s"})
    gw = start_gateway(tmp, cfg, name="hostile")
    # warm-up: the code paths below, so the baseline is about leaks, not first use
    for data in (b"GET /v1/info HTTP/1.1\r\nHost: x\r\n\r\n",
                 b"POST /v1/statement HTTP/1.1\r\nHost: x\r\nX-Trino-User: a\r\nContent-Length: 8\r\n\r\nSELECT 1",
                 b"GET /v1/statement/executing/20240101_000000_00000_zzzzz/y/1 HTTP/1.1\r\nHost: x\r\n\r\n",
                 b"GET /api/rules HTTP/1.1\r\nHost: x\r\n\r\n", b"\x00garbage\r\n\r\n"):
        raw_exchange(gw.port, data)
    pid = gw.proc.pid
    wait_for(lambda: fd_kinds(pid)["in"] == 0, timeout=5, message="the warm-up connections to close")
    state = {"gw": gw, "fds": fd_kinds(pid), "rss": rss_mb(pid)}
    yield state
    gw.stop()


def _alive(gw: GatewayProcess) -> None:
    assert gw.proc.poll() is None, "the gateway crashed:\n" + gw.log()[-3000:]


def _check(gw: GatewayProcess, data: bytes, *, timeout: float = 5.0) -> Any:
    r = raw_exchange(gw.port, data, timeout=timeout)
    assert r.status != 500, (data[:300], r.raw[:500])
    assert r.status is None or r.status < 500, (data[:300], r.raw[:500])
    _alive(gw)
    return r


# ---------------------------------------------------------------------------------------------
# Paths and query ids

METHODS = st.sampled_from([b"GET", b"POST", b"DELETE", b"HEAD", b"PUT", b"PATCH", b"OPTIONS", b"TRACE",
                           b"CONNECT", b"FOO", b"get", b"G\x00T"])
PREFIXES = st.sampled_from([
    b"/", b"/v1/statement", b"/v1/statement/", b"/v1/statement/queued/", b"/v1/statement/executing/",
    b"/v1/statement/executing/partialCancel/", b"/v1/query/", b"/ui/api/query/", b"/ui/query.html?",
    b"/v1/spooled/download/", b"/v1/spooled/ack/", b"/oauth2/token/", b"/oauth2/token/initiate/",
    b"/oauth2/callback?state=", b"/api/rules", b"/api/queries?limit=", b"/api/public/backends/",
    b"/trino-gateway/", b"/metrics", b"/v1/info", b"//", b"/..", b"/%2e%2e/", b"*", b"http://x",
])
_NO_FRAMING = {ord(" "), ord("\r"), ord("\n")}
TAILS = st.binary(max_size=300).map(lambda b: bytes(c for c in b if c not in _NO_FRAMING))


@FUZZ
@given(method=METHODS, prefix=PREFIXES, tail=TAILS)
@example(method=b"GET", prefix=b"/v1/statement/executing/", tail=b"../../../etc/passwd")
@example(method=b"GET", prefix=b"/", tail=b"\xff\xfe\x00")
@example(method=b"GET", prefix=b"/api/queries?limit=", tail=b"-1")
def test_random_paths_never_get_a_500(hostile, method, prefix, tail):
    gw = hostile["gw"]
    body = b"" if method not in (b"POST", b"PUT", b"PATCH") else b"Content-Length: 0\r\n"
    _check(gw, method + b" " + prefix + tail + b" HTTP/1.1\r\nHost: x\r\nX-Trino-User: fuzz\r\n" + body + b"\r\n")


QUERY_IDS = st.one_of(
    st.from_regex(r"\A\d{8}_\d{6}_\d{5}_[a-z0-9]{5}\Z").map(str.encode),
    st.binary(max_size=60).map(lambda b: bytes(c for c in b if c not in _NO_FRAMING | {ord("/"), ord("?")})),
    st.text(alphabet="0123456789_abcz", max_size=40).map(str.encode),
)


@FUZZ
@given(qid=QUERY_IDS, slug=TAILS, token=st.integers(-2, 2**70),
       shape=st.sampled_from(["queued", "executing", "partialCancel", "query", "ui", "info"]),
       method=st.sampled_from([b"GET", b"HEAD", b"DELETE"]))
def test_malformed_and_unknown_query_ids_are_client_errors(hostile, qid, slug, token, shape, method):
    gw = hostile["gw"]
    path = {
        "queued": b"/v1/statement/queued/%s/%s/%d",
        "executing": b"/v1/statement/executing/%s/%s/%d",
        "partialCancel": b"/v1/statement/executing/partialCancel/%s/%s/%d",
        "query": b"/v1/query/%s%s%d",
        "ui": b"/ui/api/query/%s%s%d",
        "info": b"/ui/query.html?%s%s%d",
    }[shape] % (qid, slug.replace(b"/", b""), token)
    r = _check(gw, method + b" " + path + b" HTTP/1.1\r\nHost: x\r\nX-Trino-User: fuzz\r\n\r\n")
    assert r.status is not None and 400 <= r.status < 500 or shape == "info", (path, r.raw[:300])


# ---------------------------------------------------------------------------------------------
# Headers

HEADER_NAMES = st.one_of(
    st.sampled_from([b"X-Trino-User", b"X-Trino-Source", b"X-Trino-Session", b"X-Trino-Client-Tags",
                     b"X-Trino-Client-Info", b"X-Trino-Catalog", b"X-Trino-Schema", b"X-Trino-Routing-Group",
                     b"X-Trino-Prepared-Statement", b"X-Trino-Extra-Credential", b"X-Forwarded-For",
                     b"X-Forwarded-Host", b"X-Forwarded-Proto", b"Forwarded", b"Connection", b"Keep-Alive",
                     b"Upgrade", b"Via", b"Authorization", b"Cookie", b"Host", b"Accept-Encoding",
                     b"Content-Type", b"X-Presto-User", b"TE", b"Trailer"]),
    st.binary(min_size=1, max_size=30),
)
HEADER_VALUES = st.one_of(
    st.binary(max_size=200),
    st.integers(1, 70).map(lambda k: b"v" * (1000 * k)),        # up to 70 KB: over Tornado's header cap
)


def _header_line(name: bytes, value: bytes) -> bytes:
    return name.replace(b"\r", b"").replace(b"\n", b"") + b": " + value.replace(b"\r", b"").replace(b"\n", b"")


@FUZZ
@given(headers=st.lists(st.tuples(HEADER_NAMES, HEADER_VALUES), max_size=12),
       statement=st.booleans())
@example(headers=[(b"X-Trino-User", b"a")] * 200, statement=True)
@example(headers=[(b"X-Trino-User", b"\xff\xfe\x80")], statement=True)
@example(headers=[(b"Host", b"a"), (b"Host", b"b")], statement=True)
@example(headers=[(b"X-Trino-Session", b"=,=,%%%,\xff")], statement=True)
@example(headers=[(b"Connection", b"X-Trino-User, Host, close")], statement=True)
def test_random_headers_never_get_a_500(hostile, headers, statement):
    gw = hostile["gw"]
    framing = {b"content-length", b"transfer-encoding", b"expect", b"x-trino-transaction-id"}
    lines = [_header_line(n, v) for n, v in headers if n.lower().strip() not in framing]
    head = b"\r\n".join([b"Host: x"] + lines) + b"\r\n"
    if statement:
        data = b"POST /v1/statement HTTP/1.1\r\n" + head + b"Content-Length: 8\r\n\r\nSELECT 1"
    else:
        data = b"GET /v1/info HTTP/1.1\r\n" + head + b"\r\n"
    _check(gw, data)


@pytest.mark.parametrize("data", [
    b"GET /v1/info HTTP/1.1\r\nHost: x\r\nX-A: a\rX-Injected: 1\r\n\r\n",              # bare CR
    b"GET /v1/info HTTP/1.1\r\nHost: x\rX-Injected: 1\r\n\r\n",
    b"GET /v1/info HTTP/1.1\r\nHost: x\r\nX-A: a\nX-B: b\r\n\r\n",                     # bare LF
    b"GET /v1/info HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n",                        # NUL
    b"GET /v1/info HTTP/1.1\r\nHost: x\r\nX-A: a\r\n folded\r\n\r\n",                  # obs-fold
    b"GET /v1/info HTTP/1.1\r\nHost: x\r\nX A: b\r\n\r\n",                             # space in name
    b"GET /v1/info\r\nX-Injected: 1 HTTP/1.1\r\nHost: x\r\n\r\n",                      # CRLF in target
    b"GET /v1/info HTTP/1.1\r\nHost: x\r\nContent-Length: 8\r\nContent-Length: 9\r\n\r\nSELECT 1",
    b"POST /v1/statement HTTP/1.1\r\nHost: x\r\nContent-Length: 8\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    b"POST /v1/statement HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
    b"POST /v1/statement HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
    b"POST /v1/statement HTTP/1.1\r\nHost: x\r\nContent-Length: 0x10\r\n\r\n",
    b"POST /v1/statement HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n\r\n",
    b"POST /v1/statement HTTP/1.1\r\nHost: x\r\nX-Trino-User: a\r\nX-Trino-Transaction-Id: \xff\x01\r\n"
    b"Content-Length: 8\r\n\r\nSELECT 1",
    b"GET /v1/info HTTP/9.9\r\nHost: x\r\n\r\n",
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 200 + b"\r\n\r\n",    # a TLS hello
    b"GET /v1/info HTTP/1.1\r\nHost: x\r\n" + b"X-Trino-Client-Tags: a\r\n" * 4000 + b"\r\n",
], ids=["bare-cr", "cr-in-host", "bare-lf", "nul", "obs-fold", "space-in-name", "crlf-in-target",
        "two-content-lengths", "te-and-cl", "te-not-chunked-last", "negative-cl", "hex-cl", "bad-chunk",
        "binary-transaction-id", "http-9", "tls-hello", "4000-headers"])
def test_crafted_framing_and_injection_attempts(hostile, data):
    r = _check(hostile["gw"], data)
    # Nothing injected reaches a response header.
    assert b"X-Injected" not in r.head


# ---------------------------------------------------------------------------------------------
# Bodies

@FUZZ
@given(body=st.one_of(st.binary(max_size=4096), st.integers(LIMIT - 2, LIMIT + 2).map(lambda n: b"s" * n)),
       path=st.sampled_from([b"/v1/statement", b"/api/routing/explain", b"/gateway/backend/modify/add",
                             b"/api/rules/check"]),
       chunked=st.booleans())
@example(body=b"", path=b"/v1/statement", chunked=False)
@example(body=b"\xff\xfe\x00\x01", path=b"/v1/statement", chunked=False)
def test_random_bodies_never_get_a_500_and_over_the_limit_is_413(hostile, body, path, chunked):
    gw = hostile["gw"]
    head = b"POST " + path + b" HTTP/1.1\r\nHost: x\r\nX-Trino-User: fuzz\r\nContent-Type: application/json\r\n"
    if chunked:
        data = head + b"Transfer-Encoding: chunked\r\n\r\n"
        for i in range(0, len(body), 8192):
            piece = body[i:i + 8192]
            data += b"%x\r\n%s\r\n" % (len(piece), piece)
        data += b"0\r\n\r\n"
    else:
        data = head + b"Content-Length: %d\r\n\r\n" % len(body) + body
    r = _check(gw, data)
    if len(body) > LIMIT and path == b"/v1/statement":
        assert r.status == 413, r.raw[:300]
        assert b"limit" in r.body
    elif len(body) > LIMIT + 1:
        # The admin API is not a streaming handler: Tornado refuses the body (no 500 either way).
        assert r.status in (400, 413), r.raw[:300]
    else:
        assert r.status is not None and r.status != 413, r.raw[:300]


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_a_100mb_body_is_refused_with_413_without_reading_it(hostile, chunked):
    gw = hostile["gw"]
    before = rss_mb(gw.proc.pid)
    head = b"POST /v1/statement HTTP/1.1\r\nHost: x\r\nX-Trino-User: a\r\n"
    head += b"Transfer-Encoding: chunked\r\n\r\n" if chunked else b"Content-Length: 104857600\r\n\r\n"
    block = b"x" * (1 << 20)
    sent = 0
    with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as s:
        try:
            s.sendall(head)
            for _ in range(100):
                s.sendall(b"100000\r\n" + block + b"\r\n" if chunked else block)
                sent += len(block)
        except OSError:
            pass  # the gateway answered and closed: exactly what we want
        r = parse_raw(read_response_bytes(s, 10))
    assert r.status == 413, r.raw[:300]
    assert b"exceeds the gateway limit of 65536 bytes" in r.body
    assert sent < 50 << 20, f"the gateway read {sent >> 20} MB of a body it had refused"
    assert rss_mb(gw.proc.pid) - before < 20
    _alive(gw)


# ---------------------------------------------------------------------------------------------
# Slow, idle, pipelined and abandoned connections

def _closed_after(s: socket.socket, limit: float) -> float | None:
    """Seconds until the peer closes the socket (reading and discarding), or None at ``limit``."""
    t0 = time.monotonic()
    s.settimeout(0.1)
    while time.monotonic() - t0 < limit:
        try:
            if s.recv(65536) == b"":
                return time.monotonic() - t0
        except socket.timeout:
            continue
        except OSError:
            return time.monotonic() - t0
    return None


def test_idle_connections_are_closed(hostile):
    gw = hostile["gw"]
    with socket.create_connection(("127.0.0.1", gw.port)) as s:    # never sends a byte
        assert _closed_after(s, 5) is not None
    with socket.create_connection(("127.0.0.1", gw.port)) as s:    # idle after a keep-alive answer
        s.sendall(b"GET /trino-gateway/livez HTTP/1.1\r\nHost: x\r\n\r\n")
        assert parse_raw(read_response_bytes(s, 5)).status == 200
        took = _closed_after(s, 5)
        assert took is not None and took < 3


def test_slowloris_clients_are_disconnected_and_block_nobody(hostile):
    gw = hostile["gw"]
    request = b"GET /v1/info HTTP/1.1\r\nHost: x\r\nX-Trino-User: slow\r\nX-Padding: " + b"p" * 40 + b"\r\n\r\n"
    results: list[tuple[float, int]] = []
    lock = threading.Lock()

    def slow_client() -> None:
        with socket.create_connection(("127.0.0.1", gw.port)) as s:
            t0 = time.monotonic()
            sent = 0
            try:
                for i in range(len(request)):   # one byte every 0.1 s: 9 s for the headers
                    s.sendall(request[i:i + 1])
                    sent += 1
                    time.sleep(0.1)
            except OSError:
                pass
            rest = _closed_after(s, 3)
            with lock:
                results.append((time.monotonic() - t0 if rest is not None else 99.0, sent))

    threads = [threading.Thread(target=slow_client) for _ in range(30)]
    for t in threads:
        t.start()
    time.sleep(0.3)
    # Meanwhile a normal client is served at once.
    for _ in range(10):
        t0 = time.monotonic()
        assert raw_exchange(gw.port, b"GET /trino-gateway/livez HTTP/1.1\r\nHost: x\r\n\r\n").status == 200
        assert time.monotonic() - t0 < 0.5
    for t in threads:
        t.join(20)
    assert len(results) == 30
    for took, sent in results:
        assert took < 4, f"a slowloris connection lived {took:.1f}s (the header timeout is 1 s)"
        assert sent < len(request), "a slowloris client finished its headers"
    _alive(gw)


def test_a_body_that_stops_arriving_is_dropped_after_the_body_timeout(hostile):
    gw = hostile["gw"]
    with socket.create_connection(("127.0.0.1", gw.port)) as s:
        s.sendall(b"POST /v1/statement HTTP/1.1\r\nHost: x\r\nX-Trino-User: a\r\nContent-Length: 1000\r\n\r\nSELECT")
        took = _closed_after(s, 8)
    assert took is not None and took < 5, took


def test_abandoned_connections_leak_nothing(hostile):
    gw = hostile["gw"]
    pid = gw.proc.pid
    fds, rss = fd_kinds(pid), rss_mb(pid)
    for i in range(300):
        with socket.create_connection(("127.0.0.1", gw.port)) as s:
            if i % 3 == 0:    # mid-body
                s.sendall(b"POST /v1/statement HTTP/1.1\r\nHost: x\r\nX-Trino-User: a\r\n"
                          b"Content-Length: 60000\r\n\r\n" + b"S" * 50000)
            elif i % 3 == 1:  # mid-headers
                s.sendall(b"GET /v1/info HTTP/1.1\r\nHost: x\r\nX-Trino-")
            else:             # mid-response: ask for a multi-page result and leave
                s.sendall(b"POST /v1/statement HTTP/1.1\r\nHost: x\r\nX-Trino-User: a\r\n"
                          b"Content-Length: 44\r\n\r\nSELECT n FROM numbers WHERE n <= 900 ORDER BY n")
    wait_for(lambda: fd_kinds(pid)["in"] == 0, timeout=10, message="the abandoned connections to close")
    after_fds = fd_kinds(pid)
    growth = rss_mb(pid) - rss
    # The backend pool may grow to the number of forwards in flight at once (64 idle at most).
    wait_for(lambda: fd_kinds(pid)["other"] <= fds["other"] + 1, timeout=10,
             message=f"fds other than sockets back to {fds['other']}")
    after_fds = fd_kinds(pid)
    assert after_fds["out"] <= 64 + 3, f"fds {fds} -> {after_fds} after 300 abandoned connections"
    assert growth < 8, f"RSS grew {growth:.1f} MB after 300 abandoned connections (50 KB bodies)"
    _alive(gw)


PIPELINE = {
    "livez": (b"GET /trino-gateway/livez HTTP/1.1\r\nHost: x\r\n\r\n", 200),
    "info": (b"GET /v1/info HTTP/1.1\r\nHost: x\r\n\r\n", 200),
    "unknown": (b"GET /v1/statement/executing/20240101_000000_00000_zzzzz/y/1 HTTP/1.1\r\nHost: x\r\n\r\n", 404),
    "statement": (b"POST /v1/statement HTTP/1.1\r\nHost: x\r\nX-Trino-User: p\r\nContent-Length: 8\r\n\r\nSELECT 1", 200),
    "too-large": (b"POST /v1/statement HTTP/1.1\r\nHost: x\r\nContent-Length: 70000\r\n\r\n" + b"s" * 70000, 413),
    "rules": (b"GET /api/rules HTTP/1.1\r\nHost: x\r\n\r\n", 200),
    "head": (b"HEAD /trino-gateway/livez HTTP/1.1\r\nHost: x\r\n\r\n", 405),
    "empty-sql": (b"POST /v1/statement HTTP/1.1\r\nHost: x\r\nX-Trino-User: p\r\nContent-Length: 0\r\n\r\n", 400),
}


@settings(max_examples=100, deadline=None)
@given(st.lists(st.sampled_from(sorted(PIPELINE)), min_size=1, max_size=8))
def test_pipelined_requests_are_answered_in_order(hostile, names):
    gw = hostile["gw"]
    data = b"".join(PIPELINE[n][0] for n in names)
    expected = [PIPELINE[n][1] for n in names]
    if "too-large" in names:   # the connection closes after the 413: nothing after it is read
        expected = expected[: names.index("too-large") + 1]
    methods = [PIPELINE[n][0].split(b" ", 1)[0].decode() for n in names][: len(expected)]
    got: list[int] | None = None
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as s:
        s.sendall(data)
        buf = b""
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            got = complete_responses(buf, methods)
            if got is not None and len(got) == len(expected):
                break
            try:
                chunk = s.recv(65536)
            except socket.timeout:
                break
            if not chunk:
                break
            buf += chunk
        got = complete_responses(buf, methods)
    assert got == expected, (names, buf[:600])
    _alive(gw)


# ---------------------------------------------------------------------------------------------
# Last: the gateway survived all of it

def test_after_everything_no_crash_no_uncaught_error_no_leak(hostile):
    gw = hostile["gw"]
    _alive(gw)
    pid = gw.proc.pid
    wait_for(lambda: fd_kinds(pid)["in"] == 0, timeout=10, message="every client connection to close")
    fds = fd_kinds(pid)
    growth = rss_mb(pid) - hostile["rss"]
    log = gw.log()
    print(f"\nHOSTILE: fds {hostile['fds']} -> {fds}, RSS {hostile['rss']:.1f} -> {rss_mb(pid):.1f} MB")
    assert "Uncaught exception" not in log, log[log.index("Uncaught exception") - 200:][:3000]
    assert "Traceback" not in log, log[log.index("Traceback") - 200:][:3000]
    assert fds["other"] <= hostile["fds"]["other"] + 2 and fds["out"] <= 64 + 3, \
        f"fds {hostile['fds']} -> {fds}"
    assert growth < 40, f"RSS grew {growth:.1f} MB over the hostile tests"
    assert raw_exchange(gw.port, b"GET /trino-gateway/livez HTTP/1.1\r\nHost: x\r\n\r\n").status == 200
