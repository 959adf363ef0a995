"""The HTTP server's fast route (gateway/runtime/http_server.py ``FastRoute``): result pages,
token follow-ups and new statements go straight to the proxy route instead of through the
application's rule list. It must pick exactly what the rules would, and serve the request the
same way."""
from __future__ import annotations

import asyncio
import re
from typing import Any

import tornado.web
from hypothesis import given, settings
from hypothesis import strategies as st
from tornado.netutil import bind_sockets
from tornado.routing import PathMatches

from gateway.app import HOT_RULES, hot_path
from gateway.proxy.lean import HandlerRoute, LeanHandler
from gateway.runtime.http_server import FastRoute, HTTPServer
from tests.test_http_server import read_response

MATCHERS = [PathMatches(p) for p in HOT_RULES]


class _Req:
    def __init__(self, target: str) -> None:
        self.path = target.partition("?")[0]


def rules_take(target: str) -> bool:
    return any(m.match(_Req(target)) is not None for m in MATCHERS)   # type: ignore[arg-type]


EXAMPLES = ["/v1/statement", "/v1/statement?x=1", "/v1/statement/", "/v1/statement/executing",
            "/v1/statement/executing/", "/v1/statement/executing/q/y/1", "/v1/statement/queued/q/y/1",
            "/_r/abc/v1/statement/queued/x/y/1", "/_r/abc/v1/statement/executing/x/y/1?slug=1",
            "/_r", "/_r/", "/v1/statementx", "/v1/query/x", "/ui/", "/", "/_r/a\nb",
            "/v1/statement\n", "/v1/statement/executing/a\n"]


def test_the_fast_route_takes_what_the_first_rules_take():
    taken = [t for t in EXAMPLES if hot_path(t)]
    assert taken == [t for t in EXAMPLES if rules_take(t) and "\n" not in t]
    assert "/_r/abc/v1/statement/executing/x/y/1?slug=1" in taken and "/v1/statement" in taken


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.sampled_from(["/v1/statement", "/_r/", "/v1/statement/executing/", "/v1/", "/"]),
                 st.text(max_size=5)).flatmap(
    lambda head: st.text(alphabet="/_rv1statemnxcuig?=\n%", max_size=30).map(lambda tail: head + tail)))
def test_the_fast_route_never_takes_what_the_rules_would_not(target):
    if hot_path(target):
        assert rules_take(target), target


class Seen(LeanHandler):
    """Answers with what the handler was given; a body streams in through data_received."""

    def initialize(self) -> None:
        self.got = b""

    def data_received(self, chunk: bytes) -> None:
        self.got += chunk

    def get(self) -> None:
        r = self.request
        self.finish(f"{r.method} path={r.path} query={r.query} ip={r.remote_ip} host={r.host} "
                    f"body={self.got.decode()}")

    post = get


class CountingApp(tornado.web.Application):
    routed: list[str] = []

    def find_handler(self, request: Any, **kwargs: Any) -> Any:
        CountingApp.routed.append(request.path)
        return super().find_handler(request, **kwargs)


def exchange(fast: bool, raw: bytes, responses: int) -> list[tuple[bytes, dict[str, str], bytes]]:
    async def main() -> list[tuple[bytes, dict[str, str], bytes]]:
        route = HandlerRoute(Seen)
        app = CountingApp([(r"/fast.*", route), (r".*", route)])
        if fast:
            app.fast_route = FastRoute(lambda t: t.startswith("/fast"), route)  # type: ignore[attr-defined]
        socks = bind_sockets(0, "127.0.0.1")
        server = HTTPServer(app)
        server.add_sockets(socks)
        try:
            r, w = await asyncio.open_connection("127.0.0.1", socks[0].getsockname()[1])
            w.write(raw)
            out = [await asyncio.wait_for(read_response(r), 5) for _ in range(responses)]
            w.close()
            return out
        finally:
            server.stop()
            await server.close_all_connections()
    return asyncio.run(main())


REQUESTS = (b"GET /fast/a?x=1 HTTP/1.1\r\nHost: gw:8080\r\n\r\n"
            b"POST /fast/b HTTP/1.1\r\nHost: gw\r\nContent-Length: 5\r\n\r\nhello"
            b"POST /fast/c HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
            b"GET /slow HTTP/1.1\r\nHost: gw\r\n\r\n")


def test_fast_routed_requests_are_served_like_routed_ones_without_the_rule_list():
    CountingApp.routed = []
    routed = exchange(False, REQUESTS, 4)
    assert CountingApp.routed == ["/fast/a", "/fast/b", "/fast/c", "/slow"]
    CountingApp.routed = []
    fast = exchange(True, REQUESTS, 4)
    assert CountingApp.routed == ["/slow"]   # only the request the fast route does not take
    for (h1, _, b1), (h2, _, b2) in zip(routed, fast):
        assert h1 == h2 and b1 == b2
    assert [b for _, _, b in fast] == [
        b"GET path=/fast/a query=x=1 ip=127.0.0.1 host=gw:8080 body=",
        b"POST path=/fast/b query= ip=127.0.0.1 host=gw body=hello",
        b"POST path=/fast/c query= ip=127.0.0.1 host=gw body=abc",
        b"GET path=/slow query= ip=127.0.0.1 host=gw body="]


def test_a_request_tornado_refuses_gets_400_on_the_fast_route_too():
    # Two Host headers: Tornado's HTTPServerRequest raises HTTPInputError.
    raw = b"GET /fast/a HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"
    (head, _, _), = exchange(True, raw, 1)
    assert re.match(rb"HTTP/1.1 400 ", head)
