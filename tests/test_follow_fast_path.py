"""The fast path for token follow-ups (gateway/proxy/follow.py) answers exactly as the general
path (the proxy handler) does: the same request, through one HTTP server with the fast path and
one without, to the same scripted backend, gives the same status, header lines (all but Date),
body, connection behaviour and lifecycle events. Any difference in what a client sees fails."""
from __future__ import annotations

import asyncio
import json
from typing import Any
from unittest import mock

import pytest
import tornado.web
from tornado.netutil import bind_sockets

from gateway import protocol as P
from gateway.app import Gateway
from gateway.backends.state import Backend, Health
from gateway.config import config_from_dict
from gateway.proxy import exchange as X
from gateway.proxy.handler import proxy_route
from gateway.runtime.http_server import HTTPServer

QID = "20240101_123456_00003_abcde"
SID = "seg-0001"


def _page(port: int, *, next_token: int | None, pad: int = 0) -> bytes:
    base = f"http://127.0.0.1:{port}"
    doc: dict[str, Any] = {"id": QID, "infoUri": f"{base}/ui/query.html?{QID}",
                           "partialCancelUri": f"{base}/v1/statement/executing/partialCancel/{QID}/0/y/1",
                           "stats": {"state": "RUNNING" if next_token is not None else "FINISHED"},
                           "data": [["x" * 100] for _ in range(pad)]}
    if next_token is not None:
        doc["nextUri"] = f"{base}/v1/statement/executing/{QID}/yslug/{next_token}"
    return json.dumps(doc).encode()


def _answer(port: int, token: str) -> bytes:
    """What the scripted backend answers for ``.../yslug/<token>`` (and a segment)."""
    json_head = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
    if token == "page":
        body = _page(port, next_token=2)
        return f"{json_head}Content-Length: {len(body)}\r\n\r\n".encode() + body
    if token == "last":
        body = _page(port, next_token=None)
        return f"{json_head}Content-Length: {len(body)}\r\n\r\n".encode() + body
    if token == "big":   # over the 256 KB the proxy buffers: streamed to the client
        body = _page(port, next_token=3, pad=4000)
        return (f"{json_head}Transfer-Encoding: chunked\r\n\r\n".encode()
                + b"".join(b"%x\r\n%b\r\n" % (len(body[i:i + 70000]), body[i:i + 70000])
                           for i in range(0, len(body), 70000)) + b"0\r\n\r\n")
    if token == "headers":
        body = _page(port, next_token=4)
        return (f"{json_head}Content-Length: {len(body)}\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\n"
                f"Connection: keep-alive, X-Hop\r\nX-Hop: secret\r\nServer: Jetty\r\n"
                f"Date: Mon, 01 Jan 2024 00:00:00 GMT\r\nX-Trino-Set-Session: a=b\r\n"
                f"Location: http://127.0.0.1:{port}/v1/statement/executing/{QID}/yslug/5\r\n\r\n").encode() + body
    if token == "text":
        body = b"Query not found\n"
        return (b"HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\n"
                + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
    if token == "unframed":   # chunked text: the proxy frames it itself
        return b"HTTP/1.1 410 Gone\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
    if token == "nobody":
        return b"HTTP/1.1 204 No Content\r\n\r\n"
    if token == "midway":   # promises more than it sends, then closes
        return b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 5000\r\n\r\n{\"id\":"
    if token == "bigcut":   # streamed past what the proxy buffers, then the backend dies
        body = _page(port, next_token=3, pad=4000)[:300000]
        return (f"{json_head}Transfer-Encoding: chunked\r\n\r\n".encode()
                + b"".join(b"%x\r\n%b\r\n" % (len(body[i:i + 70000]), body[i:i + 70000])
                           for i in range(0, len(body), 70000)))
    if token == "silent":   # never answers (the gateway's backendRequestTimeout ends it)
        return b""
    if token == "segment":
        body = b"\x00\x01binary segment bytes"
        return (b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
    raise AssertionError(token)


async def _backend() -> tuple[asyncio.AbstractServer, int, list[str]]:
    seen: list[str] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        port = writer.get_extra_info("sockname")[1]
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                line = head.split(b"\r\n", 1)[0].decode()
                target = line.split(" ")[1]
                seen.append(head.decode("latin-1"))
                token = "segment" if "/v1/spooled/" in target else target.rsplit("/", 1)[1]
                if token == "refuse406" and b"\r\nx-forwarded-for:" in head.lower():
                    # a coordinator that does not process X-Forwarded-* (Jetty: 406, then closes)
                    writer.write(b"HTTP/1.1 406 Not Acceptable\r\nContent-Length: 0\r\n\r\n")
                    await writer.drain()
                    writer.close()
                    return
                if token == "refuse406":
                    token = "page"
                writer.write(_answer(port, token))
                await writer.drain()
                if token in ("midway", "bigcut"):
                    writer.close()
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1], seen


def _gateway(tmp_path: Any, port: int, dead_port: int, *, forwarded: bool = False,
             names: tuple[str, str] = ("b1", "dead")) -> Gateway:
    """A gateway with two HEALTHY backends (``names``) at ``port`` and ``dead_port``."""
    cfg = config_from_dict({"store": {"url": f"sqlite:///{tmp_path / 'g.db'}"},
                            "server": {"xForwardedFor": forwarded, "backendConnectTimeout": "1s",
                                       "backendRequestTimeout": "2s"},
                            "routing": {"tokenKey": "t" * 32, "cookieSecret": "c" * 32,
                                        "rules": [str(tmp_path)]},
                            "monitor": {"type": "noop"}}, "<test>")
    gw = Gateway(cfg)
    backends = [Backend(names[0], f"http://127.0.0.1:{port}", None, "adhoc", True),
                Backend(names[1], f"http://127.0.0.1:{dead_port}", None, "adhoc", True)]
    gw.registry.replace(backends)
    for b in backends:
        gw.registry.state(b.name).health = Health.HEALTHY
    return gw


class _Counting:
    """The fast path's hook, counting the requests it took."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.taken = 0

    def take(self, *args: Any) -> bool:
        took = self.inner.take(*args)
        self.taken += took
        return took


def _server(gw: Gateway, fast: bool) -> tuple[HTTPServer, int]:
    app = tornado.web.Application([(r".*", proxy_route(gw))], cookie_secret=gw.cookie_secret,
                                  log_function=gw.metrics.log_request)
    app.follow_ups = gw.follow_ups if fast else None  # type: ignore[attr-defined]
    server = HTTPServer(app)
    socks = bind_sockets(0, "127.0.0.1")
    server.add_sockets(socks)
    return server, socks[0].getsockname()[1]


async def _stop(server: HTTPServer, gw: Gateway) -> None:
    server.stop()
    await server.close_all_connections()
    gw.client.close()


async def _exchange(port: int, request: bytes, before: bytes | None = None,
                    between: Any = None) -> tuple[bytes, bool]:
    """Everything the gateway sent for ``request`` (one whole response, or what came before
    it closed), and whether it closed the connection (waited for when it said it would).
    ``before``: a request sent first on the same connection (its answer, framed by its
    Content-Length, read and dropped; then ``between()``)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    if before is not None:
        writer.write(before)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        (length,) = [int(line.split(b":")[1]) for line in head.lower().split(b"\r\n")
                     if line.startswith(b"content-length:")]
        await asyncio.wait_for(reader.readexactly(length), 10)
        if between is not None:
            between()
    writer.write(request)
    data = b""

    def complete() -> bool:
        head, sep, body = data.partition(b"\r\n\r\n")
        if not sep:
            return False
        lower = head.lower()
        for line in lower.split(b"\r\n"):
            if line.startswith(b"content-length:"):
                return len(body) >= int(line.split(b":")[1])
        if b"transfer-encoding: chunked" in lower:
            return body.endswith(b"0\r\n\r\n")
        return lower.startswith((b"http/1.1 204", b"http/1.1 304"))

    closed = False
    while not complete():
        chunk = await asyncio.wait_for(reader.read(65536), 10)
        if not chunk:
            closed = True
            break
        data += chunk
    head = data.partition(b"\r\n\r\n")[0].lower()
    http10 = b" HTTP/1.0\r\n" in request.split(b"\r\n", 1)[0] + b"\r\n"
    if not closed and (b"connection: close" in head or (http10 and b"connection: keep-alive" not in head)):
        closed = await asyncio.wait_for(reader.read(1), 10) == b""
    writer.close()
    return data, closed


def _dechunk(body: bytes) -> bytes:
    out = b""
    while body:
        size, _, body = body.partition(b"\r\n")
        n = int(size, 16)
        if n == 0:
            break
        out, body = out + body[:n], body[n + 2:]
    return out


def _seen_by_client(data: bytes) -> tuple[str, list[tuple[str, str]], bytes]:
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = sorted((n.strip().lower(), v.strip()) for n, _, v in (x.partition(":") for x in lines[1:]))
    if ("transfer-encoding", "chunked") in headers:
        body = _dechunk(body)
    return lines[0], [h for h in headers if h[0] != "date"], body


def _count_whole_polls(monkeypatch: Any) -> dict[str, int]:
    """``["n"]``: the requests ``_Connection._whole_poll`` took (read in one call)."""
    from gateway.runtime import http_server
    whole = {"n": 0}
    real_whole = http_server._Connection._whole_poll

    def counting_whole(self: Any, data: bytes) -> bool:
        took = real_whole(self, data)
        whole["n"] += took
        return took
    monkeypatch.setattr(http_server._Connection, "_whole_poll", counting_whole)
    return whole


CASES = ["page", "last", "big", "headers", "text", "unframed", "nobody", "midway", "bigcut", "segment", "dead",
         "http10", "length0", "silent", "refuse406"]


def _request(gw: Gateway, case: str) -> bytes:
    assert gw.tokens is not None
    name, token = ("dead", "x") if case == "dead" else \
        ("b1", "last" if case == "http10" else "page" if case == "length0" else case)
    if case == "segment":
        tok = gw.tokens.encode(name, P.SPOOL, SID)
        target = f"/_r/{tok}/v1/spooled/download/{SID}"
    else:
        tok = gw.tokens.encode(name, P.QUERY, QID)
        target = f"/_r/{tok}/v1/statement/executing/{QID}/yslug/{token}"
    version = "HTTP/1.0" if case == "http10" else "HTTP/1.1"
    extra = "Content-Length: 0\r\n" if case == "length0" else ""   # some clients send it
    return (f"GET {target} {version}\r\nHost: gw.example:8080\r\nX-Trino-User: alice\r\n"
            f"User-Agent: t\r\n{extra}\r\n").encode()


@pytest.mark.parametrize("warm", [False, True, "kept"], ids=["connects", "pooled", "kept"])
@pytest.mark.parametrize("case", CASES)
def test_the_fast_path_answers_as_the_handler_does(tmp_path, monkeypatch, case, warm):
    """``connects``: the gateway has no idle backend connection, the follow-up goes through
    ``Forwarder.send``. ``pooled``: a first poll left one, the follow-up is a direct exchange
    on it (no task, gateway/proxy/follow.py ``_direct``). ``kept``: that first poll came on the
    same client connection, so a request with the same header lines is read in one call
    (``_Connection._whole_poll``)."""
    whole = _count_whole_polls(monkeypatch)

    async def main() -> tuple[list[Any], list[Any], int, list[str], int]:
        backend, port, seen = await _backend()
        whole_fast = -1
        probe = bind_sockets(0, "127.0.0.1")   # a port nobody listens on: connects are refused
        dead_port = probe[0].getsockname()[1]
        probe[0].close()
        results, events = [], []
        taken = 0
        for fast in (True, False):
            gw = _gateway(tmp_path / str(fast), port, dead_port, forwarded=case == "refuse406")
            finished: list[Any] = []
            gw.lifecycle.on_finished(lambda *a: finished.append(a))
            server, gport = _server(gw, fast)
            counting = _Counting(gw.follow_ups)
            if fast:
                server.follow_ups = counting
            connects = 1

            def warmed() -> None:
                assert gw.client.connects == 1
                counting.taken = 0
                whole["n"] = 0
            if warm is True:   # a poll that leaves an idle connection to b1 in the pool
                await _exchange(gport, _request(gw, "page"))
                warmed()
            elif not warm:
                connects = gw.client.connects
            data, closed = await _exchange(gport, _request(gw, case), before=_request(gw, "page")
                                           if warm == "kept" else None, between=warmed)
            if fast:
                whole_fast = whole["n"]
            results.append((_seen_by_client(data), closed))
            if fast and warm and case not in ("dead", "refuse406"):
                assert gw.client.connects == connects   # the pooled connection carried it
            await asyncio.sleep(0)
            events.append(finished)
            await _stop(server, gw)
            taken += counting.taken
        backend.close()
        return results, events, taken, seen, whole_fast

    (fast, general), (fast_events, general_events), taken, seen, whole_fast = asyncio.run(main())
    assert taken == 1                                   # the fast path served it
    # read in one call when its lines are the first poll's (length0 has one line more)
    assert whole_fast == (warm == "kept" and case != "length0")
    assert fast == general
    assert fast_events == general_events
    status, headers, body = fast[0]
    # and what both answered is what the case is about (so equal cannot mean equally wrong)
    if case in ("page", "headers", "big"):
        assert status == "HTTP/1.1 200 OK" and b'"nextUri":"http://gw.example:8080/_r/' in body
        assert b'"infoUri":"http://gw.example:8080/ui/query.html' in body
    if case == "headers":
        assert ("set-cookie", "a=1") in headers and ("set-cookie", "b=2") in headers
        assert not any(n in ("x-hop", "server") for n, _ in headers)
        assert any(n == "location" and v.startswith("http://gw.example:8080/_r/") for n, v in headers)
    if case == "big":
        assert ("transfer-encoding", "chunked") in headers and len(body) > 256 * 1024
    if case == "last":
        assert fast_events == [(QID, "FINISHED", None)]
    if case == "dead":
        assert json.loads(body)["error"]["errorName"] == "GENERIC_INTERNAL_ERROR"
        assert fast_events[0][:2] == (QID, "FAILED")
    if case == "midway":   # cut short before anything reached the client: a 502 says so
        assert status == "HTTP/1.1 502 Bad Gateway" and b"connection" in body
    if case == "bigcut":   # cut short after the head went out: closed, so the client knows
        assert status == "HTTP/1.1 200 OK" and fast[1] is True
    if case == "http10":
        assert fast[1] is True                          # no keep-alive asked: closed after it
    if case == "segment":
        assert body == b"\x00\x01binary segment bytes"
    if case == "silent":   # backendRequestTimeout (2s): a 504 names the silence
        assert status == "HTTP/1.1 504 Gateway Timeout" and b"no answer within 2s" in body
    if case == "refuse406":   # sent again without X-Forwarded-*: the page, never the 406
        assert status == "HTTP/1.1 200 OK" and b'"nextUri":"http://gw.example:8080/_r/' in body
        assert any("x-forwarded-for" in s.lower() for s in seen)
        assert "x-forwarded-for" not in seen[-1].lower()
    # the backend got the path without the token, from both
    assert all("/_r/" not in s.split("\r\n", 1)[0] for s in seen)


def test_a_pooled_connection_lost_before_the_answer_is_replaced_by_a_fresh_one(tmp_path):
    """A direct exchange whose idle connection turns out closed (the backend closed it while it
    sat in the pool, and the gateway learns it only on sending) goes again on a fresh
    connection, as ``BackendClient.fetch`` retries a stale keep-alive connection: the client
    gets the page, not a 502."""
    async def main() -> tuple[bytes, int, int]:
        backend, port, seen = await _backend()
        gw = _gateway(tmp_path, port, 1)
        server, gport = _server(gw, True)
        await _exchange(gport, _request(gw, "page"))
        (idle,) = [c for pool in gw.client._pools.values() for c in pool]
        loop = asyncio.get_running_loop()

        def lost(data: bytes) -> None:   # the request never reaches the backend; the close does
            loop.call_soon(idle.connection_lost, ConnectionResetError("reset by peer"))
        idle.transport.write = lost
        data, _ = await _exchange(gport, _request(gw, "page"))
        await _stop(server, gw)
        backend.close()
        return data, gw.client.connects, len(seen)

    data, connects, requests = asyncio.run(main())
    status, _, body = _seen_by_client(data)
    assert status == "HTTP/1.1 200 OK" and b'"nextUri":"http://gw.example:8080/_r/' in body
    assert connects == 2          # the fresh connection
    assert requests == 2          # the backend saw the first poll and the one sent again


def test_polls_are_counted_the_same_whether_they_connect_or_go_directly(tmp_path):
    """Metrics of the fast path: the first poll connects (``Forwarder.send``), the second goes
    directly on the pooled connection; both are counted as answered follow-ups, with their
    proxy overhead and token lookup, and nothing stays in flight."""
    async def main() -> Gateway:
        backend, port, _ = await _backend()
        gw = _gateway(tmp_path, port, 1)
        server, gport = _server(gw, True)
        for _ in range(2):
            await _exchange(gport, _request(gw, "page"))
        await asyncio.sleep(0)
        await _stop(server, gw)
        backend.close()
        return gw

    gw = asyncio.run(main())
    m = gw.metrics
    assert gw.client.connects == 1                                   # the second went directly
    assert m.requests.labels("follow-up", "200")._value.get() == 2
    assert m.owner_lookups.labels("token")._value.get() == 2
    samples = {s.name: s.value for s in m.proxy_overhead.collect()[0].samples
               if s.labels.get("kind") == "follow-up"}
    assert samples["trino_gateway_proxy_overhead_seconds_count"] == 2
    assert m.in_flight._value.get() == 0
    assert gw.active.n == 0


async def _session(port: int, requests: list[bytes]) -> list[bytes]:
    """Each request's whole response, sent one after the other on one keep-alive connection
    (as a client polls: the same header lines every time)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    out = []
    for request in requests:
        writer.write(request)
        data = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        lower = data.lower()
        length = [int(line.split(b":")[1]) for line in lower.split(b"\r\n") if line.startswith(b"content-length:")]
        if length:
            data += await asyncio.wait_for(reader.readexactly(length[0]), 10)
        else:
            assert b"transfer-encoding: chunked" in lower
            while not data.endswith(b"\r\n0\r\n\r\n"):
                data += await asyncio.wait_for(reader.readuntil(b"\r\n"), 10)
        out.append(data)
    writer.close()
    return out


def _same_lines(gw: Gateway, case: str, user: str = "alice", extra: str = "") -> bytes:
    return _request(gw, case).replace(b"X-Trino-User: alice\r\n",
                                      f"X-Trino-User: {user}\r\n{extra}".encode())


@pytest.mark.parametrize("forwarded", [False, True], ids=["plain", "refuse406"])
def test_a_polling_connection_reuses_its_header_lines_and_answers_as_the_handler_does(tmp_path, monkeypatch,
                                                                                      forwarded):
    """A client polls on one keep-alive connection with the same header lines each time: the
    fast path parses them and derives the backend's lines once (``RepeatedHeads``,
    ``follow.Derived``), and still answers every request, and sends the backend every request,
    exactly as the handler does, also when the lines change (another user, one line more),
    when a request on the connection goes the general way in between (a token that does not
    verify), and after the backend refused ``X-Forwarded-*`` (406): those lines are then left
    out although the client's lines did not change."""
    from gateway.runtime import http1, http_server
    parsed = {"n": 0}
    real = http1.parse_request_head

    def counting(head: bytes) -> Any:
        parsed["n"] += 1
        return real(head)
    monkeypatch.setattr(http1, "parse_request_head", counting)
    monkeypatch.setattr(http_server, "parse_request_head", counting)
    poll = "refuse406" if forwarded else "page"

    async def main() -> tuple[list[list[bytes]], list[list[str]], list[int], int]:
        answers, seens, parses = [], [], []
        taken = 0
        backend, port, seen = await _backend()
        for fast in (True, False):
            start = len(seen)
            gw = _gateway(tmp_path / str(fast), port, 1, forwarded=forwarded)
            server, gport = _server(gw, fast)
            counting_hook = _Counting(gw.follow_ups)
            if fast:
                server.follow_ups = counting_hook
            bad = _request(gw, "page").replace(b"/_r/", b"/_r/x")   # a token that does not verify
            parsed["n"] = 0
            got = await _session(gport, [
                _same_lines(gw, "page"), _same_lines(gw, "page"), _same_lines(gw, poll),
                _same_lines(gw, "page"), bad,
                _same_lines(gw, "page"), _same_lines(gw, "page", "bob", "X-Trino-Source: dbt\r\n"),
                _same_lines(gw, "page"), _same_lines(gw, "page").replace(b"GET ", b"DELETE ", 1),
                _same_lines(gw, "last")])
            parses.append(parsed["n"])
            answers.append([_seen_by_client(d) for d in got])
            seens.append(seen[start:])
            await _stop(server, gw)
            taken += counting_hook.taken
        backend.close()
        return answers, seens, parses, taken

    (fast, general), (fast_seen, general_seen), (fast_parses, general_parses), taken = asyncio.run(main())
    assert taken == 8                       # every poll but the bad token (and the DELETE) took the fast path
    assert fast == general                  # what the client got
    assert fast_seen == general_seen        # what the backend got, byte for byte (the DELETE a DELETE)
    assert general_parses == 10
    # reused: the 2nd to 4th poll's lines, the bad token's (which then go: parsed again for
    # the 6th), and the DELETE's, which repeat the 8th's (and go: the last poll's are parsed)
    assert fast_parses == 5
    (bob,) = [s for s in fast_seen if "bob" in s]
    assert "x-trino-source: dbt" in bob.lower() and "alice" in fast_seen[-1]
    assert sum("x-trino-source" in s.lower() for s in fast_seen) == 1
    if forwarded:   # the first three polls carried them (the third got the 406, sent again
        # without); none after, although the client's lines did not change (the 4th poll
        # reuses the 3rd's parsed lines)
        assert ["x-forwarded-for" in s.lower() for s in fast_seen] == [True] * 3 + [False] * 7
    assert fast[-1][0] == "HTTP/1.1 200 OK" and fast[4][0].startswith("HTTP/1.1 4")


def test_a_repeated_answer_head_is_translated_once_but_never_for_another_client(tmp_path):
    """The backend answers every poll with the same header lines but ``Date`` and
    ``Content-Length``: the first direct answer's translation is kept with its parsed head
    (``RepeatedResponses.derived``) and reused. An answer with a line translated per request
    (``Location``, pointed at the gateway URL the client used) is not kept so: two clients
    using two host names each get their own URL back, and a plain page reuses its lines."""
    from gateway.runtime import http1
    translated = {"n": 0}
    real = X.relay_response

    def counting(*args: Any, **kw: Any) -> Any:
        translated["n"] += 1
        return real(*args, **kw)

    async def main() -> tuple[list[bytes], int, int]:
        backend, port, _ = await _backend()
        gw = _gateway(tmp_path, port, 1)
        server, gport = _server(gw, True)
        got = []
        for case, host in (("page", "gw.example:8080"), ("headers", "gw.example:8080"),
                           ("headers", "other.example:9090"), ("headers", "gw.example:8080")):
            request = _request(gw, case).replace(b"Host: gw.example:8080", f"Host: {host}".encode())
            got.append(await _session(gport, [request, request]))   # the second goes directly
        translated["n"] = 0
        pages = await _session(gport, [_request(gw, "page")] * 3)
        pages_translated = translated["n"]
        await _stop(server, gw)
        backend.close()
        (heads,) = gw.client._responses.values()
        assert isinstance(heads, http1.RepeatedResponses)
        return [a for pair in got for a in pair] + pages, pages_translated, heads.derived is not None

    with mock.patch.object(X, "relay_response", counting):
        answers, pages_translated, kept = asyncio.run(main())
    locations = [_seen_by_client(a)[1] for a in answers[2:8]]
    bases = [dict(lines)["location"].split("/_r/")[0] for lines in locations]
    assert bases == ["http://gw.example:8080"] * 2 + ["http://other.example:9090"] * 2 + ["http://gw.example:8080"] * 2
    assert pages_translated == 1 and kept   # the first plain page was translated, the next two reused it
    assert answers[-1] == answers[-2]


def test_a_poll_read_whole_behind_a_trusted_proxy_forwards_the_clients_address(tmp_path, monkeypatch):
    """Behind a trusted load balancer (``xheaders``) a client's address is the last
    ``X-Forwarded-For`` entry. A poll read in one call (``_Connection._whole_poll``) for another
    backend than the connection's last poll builds its lines to that backend again, from the
    address it read: the backend is told the client's address, as the first poll's backend
    (read the general way) was, not the load balancer's."""
    whole = _count_whole_polls(monkeypatch)

    async def main() -> tuple[list[str], list[str], bytes]:
        (b1, p1, seen1), (b2, p2, seen2) = await _backend(), await _backend()
        gw = _gateway(tmp_path, p1, p2, forwarded=True, names=("b1", "b2"))
        app = tornado.web.Application([(r".*", proxy_route(gw))], cookie_secret=gw.cookie_secret,
                                      log_function=gw.metrics.log_request)
        app.follow_ups = gw.follow_ups  # type: ignore[attr-defined]
        server = HTTPServer(app, xheaders=True, trusted_downstream=["127.0.0.1"])
        socks = bind_sockets(0, "127.0.0.1")
        server.add_sockets(socks)
        assert gw.tokens is not None

        def poll(name: str) -> bytes:
            tok = gw.tokens.encode(name, P.QUERY, QID)
            return (f"GET /_r/{tok}/v1/statement/executing/{QID}/yslug/page HTTP/1.1\r\n"
                    "Host: gw.example:8080\r\nX-Trino-User: alice\r\n"
                    "X-Forwarded-For: 203.0.113.9\r\nUser-Agent: t\r\n\r\n").encode()
        data, _ = await _exchange(socks[0].getsockname()[1], poll("b2"), before=poll("b1"))
        await _stop(server, gw)
        b1.close()
        b2.close()
        return seen1, seen2, data

    seen1, seen2, data = asyncio.run(main())
    assert data.startswith(b"HTTP/1.1 200 OK") and whole["n"] == 1   # the second poll, read whole

    def xff(heads: list[str]) -> list[str]:
        assert len(heads) == 1
        return [line for line in heads[0].lower().split("\r\n") if line.startswith("x-forwarded-for:")]
    assert xff(seen1) == ["x-forwarded-for: 203.0.113.9"]
    assert xff(seen2) == xff(seen1)
