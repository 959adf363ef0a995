"""The decisions of an exchange (gateway/proxy/exchange.py) and the one forwarding path
(gateway/proxy/forward.py), without sockets: finding 7 of issue 14."""
from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from tornado.httputil import HTTPHeaders

from gateway import protocol as P
from gateway.backends.state import Backend
from gateway.proxy import exchange as X
from gateway.proxy.client import BackendError, BufferSink
from gateway.proxy.forward import Forwarder, NoBackendReached, StatementLost
from gateway.routing.tokens import TokenError, TokenKeys

KEYS = TokenKeys(b"0123456789abcdef0123456789abcdef")
QID = "20240101_123456_00001_abcde"
QID2 = "20240101_123456_00002_abcde"
GW = "http://gw:8080"
COORD = "http://coord:8080"


def _prefix(backend: str, kind: str, key: str) -> str:
    return "/_r/" + KEYS.encode(backend, kind, key)


# -- resolve_token ----------------------------------------------------------------------------

def test_a_token_route_names_the_backend_and_the_path_the_backend_gets():
    path = _prefix("b1", P.QUERY, QID) + f"/v1/statement/executing/{QID}/yslug/3"
    r = X.resolve_token(KEYS, "GET", path, "maxWait=1s")
    assert r == X.TokenRoute("b1", P.RequestKind(P.QUERY, QID), f"/v1/statement/executing/{QID}/yslug/3",
                             f"/v1/statement/executing/{QID}/yslug/3?maxWait=1s")


def test_paths_without_a_token_are_not_token_routes():
    assert X.resolve_token(KEYS, "GET", f"/v1/statement/executing/{QID}/y/1", "") is None


def test_a_token_of_one_query_does_not_route_another():
    path = _prefix("b1", P.QUERY, QID) + f"/v1/statement/executing/{QID2}/yslug/3"
    with pytest.raises(TokenError):
        X.resolve_token(KEYS, "GET", path, "")


@pytest.mark.parametrize("inner", ["/v1/statement", "/v1/info", "/ui/", "/oauth2/callback"])
def test_a_token_never_routes_a_new_statement_or_a_request_tied_to_nothing(inner):
    # even with a valid token for some query: a token only routes the resource it names
    path = _prefix("b1", P.QUERY, QID) + inner
    with pytest.raises(TokenError, match="only routes follow-ups"):
        X.resolve_token(KEYS, "POST" if inner == "/v1/statement" else "GET", path, "")


def test_a_tampered_token_is_refused():
    good = _prefix("b1", P.SPOOL, "seg-1")
    bad = good[:-1] + ("A" if good[-1] != "A" else "B")
    with pytest.raises(TokenError):
        X.resolve_token(KEYS, "GET", bad + "/v1/spooled/download/seg-1", "")


# -- TokenMinter and the URI rewriter -------------------------------------------------------

def test_the_minter_binds_each_uri_to_its_resource():
    m = X.TokenMinter(KEYS, "b1")
    assert m.prefix(f"/v1/statement/queued/{QID}/y/1") == _prefix("b1", P.QUERY, QID)
    assert m.prefix(f"/v1/statement/executing/partialCancel/{QID}/0/y/1") == _prefix("b1", P.QUERY, QID)
    assert m.prefix("/v1/spooled/ack/seg-9?x=1") == _prefix("b1", P.SPOOL, "seg-9")
    auth = "0b6ad3c1-7d4e-4a5f-9a0b-1234567890ab"
    assert m.prefix(f"/oauth2/token/{auth}") == _prefix("b1", P.OAUTH_TOKEN, auth)
    assert m.prefix("/oauth2/token/initiate/" + "a" * 64) == _prefix("b1", P.OAUTH_INITIATE, "a" * 64)
    for untouched in ("/ui/query.html", "/v1/info", "/oauth2/callback", "/ui/login.html"):
        assert m.prefix(untouched) == ""


_OTHER_QID = "20261204_000000_00002_zzzzz"
_KEPT_MINTER = X.TokenMinter(KEYS, "b1")


@given(st.lists(st.sampled_from([
    "/v1/statement/executing/", "/v1/statement/queued/", "/v1/statement/executing/partialCancel/",
    "/v1/statement/", "/v1/query/", "/ui/api/query/", "/v1/spooled/download/", QID, _OTHER_QID,
    QID[:-1], QID.upper(), "/", "y", "/0", "?", "#", "?a=b", "\\/", "\n", "%2F", "\u00e9", "\xff", "/1"]),
    max_size=6), st.booleans())
@settings(max_examples=2000, deadline=None)
@example(["/v1/statement/executing/", QID, "\n"], False)
@example(["/v1/statement/executing/", QID, "?", "/1"], True)
def test_the_minters_shortcut_for_query_uris_gives_what_classifying_them_gives(parts, again) -> None:
    """``prefix_bytes`` reads a statement URI's query id off its bytes; for every path it gives
    what decoding and classifying it (``prefix``) gives, also for a second path of the page,
    and from a minter kept across pages (as ``FollowUps.minter`` keeps one) that has seen
    other queries' paths."""
    path = "".join(parts).encode("utf-8", "surrogateescape") if "\xff" not in parts else \
        "".join(parts).encode("latin-1", "replace")
    m = _KEPT_MINTER if again else X.TokenMinter(KEYS, "b1")
    if again:   # the page's first URI named another query
        m.prefix_bytes(f"/v1/statement/executing/{_OTHER_QID}/y/1".encode())
    slow = X.TokenMinter(KEYS, "b1").prefix(path.decode("utf-8", "replace").replace("\\/", "/")).encode()
    assert m.prefix_bytes(path) == slow


def _resolved_the_long_way(path: str, query: str) -> Any:
    """What resolve_token gives, by split_path, classify and verify (or the error's type)."""
    from gateway.routing.tokens import split_path
    parts = split_path(path)
    if parts is None:
        return None
    token, inner = parts
    kind = P.classify("GET", inner, query)
    if kind.kind not in X.ROUTABLE or kind.key is None:
        return TokenError
    try:
        backend = KEYS.verify(token, kind.kind, kind.key)
    except TokenError:
        return TokenError
    return X.TokenRoute(backend, kind, inner, inner + ("?" + query if query else ""))


_TOKEN = KEYS.encode("b1", P.QUERY, QID)


@given(st.lists(st.sampled_from([
    "/_r/", _TOKEN, _TOKEN[:-1], KEYS.encode("b1", P.SPOOL, "s1"), "/", "x",
    "/v1/statement/executing/", "/v1/statement/queued/", "/v1/statement/executing/partialCancel/",
    "/v1/statement/", "/v1/spooled/download/", "s1", QID, _OTHER_QID, QID[:-1], "/y/1", "\n",
    "/0", "//", "\u00e9"]), max_size=7), st.sampled_from(["", "a=b"]))
@settings(max_examples=3000, deadline=None)
@example(["/_r/", _TOKEN, "/v1/statement/executing/", QID, "/y/1"], "")
@example(["/_r/", _TOKEN, "/v1/statement/executing/", QID, "\n"], "")
@example(["/_r/", _TOKEN, "/v1/statement/executing/", QID], "a=b")
@example(["/_r/", _TOKEN, "/v1/statement/executing/", _OTHER_QID, "/y/1"], "")
@example(["/_r/", _TOKEN, "/v1/statement/executing/", QID, "x"], "")
def test_resolving_a_token_gives_what_splitting_classifying_and_verifying_give(parts, query):
    """``resolve_token`` reads a poll's token and query id with one pattern; for every path it
    gives what the general steps give, also for the paths that pattern does not take."""
    path = "".join(parts)
    want = _resolved_the_long_way(path, query)
    try:
        got = X.resolve_token(KEYS, "GET", path, query)
    except TokenError:
        got = TokenError
    assert got == want


def test_a_kept_minter_bounds_its_query_prefixes_and_stays_right_past_the_bound(monkeypatch):
    monkeypatch.setattr(X, "_QUERY_PREFIXES", 4)
    m = X.TokenMinter(KEYS, "b1")
    qids = [f"20261204_000000_{i:05d}_aaaaa" for i in range(11)]
    for _ in range(2):
        for qid in qids:
            got = m.prefix_bytes(f"/v1/statement/executing/{qid}/y/1".encode())
            assert got == _prefix("b1", P.QUERY, qid).encode()
            assert len(m._by_query) <= 4


def test_follow_ups_keep_one_minter_per_backend_and_a_new_one_for_new_keys():
    from gateway.proxy.follow import FollowUps
    parts = FollowUps(tokens=lambda: KEYS, registry=None, metrics=None, lifecycle=None,
                      forwarder=None, active=None, base_for=lambda s, h: GW, taught=lambda t, b: None)
    a = parts.minter(KEYS, "b1")
    assert parts.minter(KEYS, "b1") is a and parts.minter(KEYS, "b2") is not a
    path = f"/v1/statement/executing/{QID}/y/1".encode()
    a.prefix_bytes(path)
    rotated = TokenKeys(b"another key of 32 bytes, rotated", [KEYS.current])
    b = parts.minter(rotated, "b1")
    assert b is not a and b.prefix_bytes(path) != a.prefix_bytes(path)
    assert X.resolve_token(rotated, "GET", b.prefix_bytes(path).decode() + path.decode(), "").backend == "b1"


def test_result_pages_get_token_uris_and_info_uri_stays_plain():
    page = {"id": QID, "infoUri": f"{COORD}/ui/query.html?{QID}",
            "nextUri": f"{COORD}/v1/statement/executing/{QID}/yslug/2",
            "partialCancelUri": f"{COORD}/v1/statement/executing/partialCancel/{QID}/0/yslug/2",
            "data": {"encoding": "json", "segments": [
                {"type": "spooled", "uri": f"{COORD}/v1/spooled/download/s1",
                 "ackUri": f"{COORD}/v1/spooled/ack/s1", "metadata": {}},
                {"type": "spooled", "uri": "https://bucket.s3.example.com/s2?X-Amz-Signature=abc",
                 "metadata": {}}]}}
    rw = P.UriRewriter(GW, X.TokenMinter(KEYS, "b1"))
    raw = json.dumps(page).encode()
    out = json.loads(rw.feed(raw[:100]) + rw.feed(raw[100:]) + rw.finish())
    q = _prefix("b1", P.QUERY, QID)
    assert out["nextUri"] == f"{GW}{q}/v1/statement/executing/{QID}/yslug/2"
    assert out["partialCancelUri"] == f"{GW}{q}/v1/statement/executing/partialCancel/{QID}/0/yslug/2"
    assert out["infoUri"] == f"{GW}/ui/query.html?{QID}"
    s = _prefix("b1", P.SPOOL, "s1")
    seg = out["data"]["segments"]
    assert seg[0]["uri"] == f"{GW}{s}/v1/spooled/download/s1"
    assert seg[0]["ackUri"] == f"{GW}{s}/v1/spooled/ack/s1"
    assert seg[1]["uri"] == page["data"]["segments"][1]["uri"]   # pre-signed: never touched
    # and each rewritten URI routes back to b1 from any process holding the keys
    for uri in (out["nextUri"], out["partialCancelUri"], seg[0]["uri"], seg[0]["ackUri"]):
        path = uri[len(GW):]
        assert X.resolve_token(KEYS, "GET", path, "").backend == "b1"


# -- response headers -----------------------------------------------------------------------

def test_response_headers_drop_hop_by_hop_and_connection_listed_lines():
    out = X.translate_response_headers(
        [("Connection", "keep-alive, X-Secret"), ("X-Secret", "1"), ("Keep-Alive", "timeout=5"),
         ("Content-Length", "10"), ("X-Trino-Set-Session", "a=1"), ("Set-Cookie", "a=1"),
         ("Set-Cookie", "b=2")],
        backend_base=COORD, gateway_base=GW, request_transaction=None, route=None,
        connection=["keep-alive, X-Secret"])
    assert out.headers == [("X-Trino-Set-Session", "a=1"), ("Set-Cookie", "a=1"), ("Set-Cookie", "b=2")]
    assert out.learn == [] and out.forget == []


def test_location_points_at_the_gateway_with_a_token_and_idp_redirects_are_untouched():
    m = X.TokenMinter(KEYS, "b1")
    out = X.translate_response_headers(
        [("Location", f"{COORD}/v1/statement/executing/{QID}/y/1")], backend_base=COORD,
        gateway_base=GW, request_transaction=None, route=m)
    assert out.headers == [("Location", f"{GW}{_prefix('b1', P.QUERY, QID)}/v1/statement/executing/{QID}/y/1")]
    out = X.translate_response_headers(
        [("Location", f"{COORD}/ui/login.html"), ("Location", "https://idp.example.com/auth?x=1")],
        backend_base=COORD, gateway_base=GW, request_transaction=None, route=m)
    assert out.headers == [("Location", f"{GW}/ui/login.html"), ("Location", "https://idp.example.com/auth?x=1")]


def test_an_oauth2_challenge_gets_token_uris_and_teaches_the_exchange():
    auth = "0b6ad3c1-7d4e-4a5f-9a0b-1234567890ab"
    h = (f'Bearer x_redirect_server="{COORD}/oauth2/token/initiate/{P.auth_initiate_key(auth)}", '
         f'x_token_server="{COORD}/oauth2/token/{auth}"')
    out = X.translate_response_headers([("WWW-Authenticate", h)], backend_base=COORD, gateway_base=GW,
                                       request_transaction=None, route=X.TokenMinter(KEYS, "b1"))
    value = out.headers[0][1]
    init = _prefix("b1", P.OAUTH_INITIATE, P.auth_initiate_key(auth))
    assert f'x_redirect_server="{GW}{init}/oauth2/token/initiate/' in value
    assert f'x_token_server="{GW}{_prefix("b1", P.OAUTH_TOKEN, auth)}/oauth2/token/{auth}"' in value
    assert out.learn == [(P.OAUTH_TOKEN, auth), (P.OAUTH_INITIATE, P.auth_initiate_key(auth))]


def test_transactions_are_learned_when_started_and_forgotten_when_cleared():
    out = X.translate_response_headers([("X-Trino-Started-Transaction-Id", " tx-1 ")], backend_base=COORD,
                                       gateway_base=GW, request_transaction=None, route=None)
    assert out.learn == [(P.TRANSACTION, "tx-1")]
    out = X.translate_response_headers([("X-Trino-Clear-Transaction-Id", "true")], backend_base=COORD,
                                       gateway_base=GW, request_transaction="tx-1", route=None)
    assert out.forget == [(P.TRANSACTION, "tx-1")]


# -- when a query ended ----------------------------------------------------------------------

@pytest.mark.parametrize("method,path,status,final,expected", [
    ("DELETE", f"/v1/statement/executing/{QID}/y/1", 204, (None, None),
     ("CANCELED", "Query was canceled by the client")),
    ("DELETE", f"/v1/statement/executing/partialCancel/{QID}/0/y/1", 204, (None, None), None),
    ("GET", f"/v1/statement/executing/{QID}/y/9", 200, ("FINISHED", None), ("FINISHED", None)),
    ("GET", f"/v1/statement/executing/{QID}/y/9", 200, ("FAILED", "boom"), ("FAILED", "boom")),
    ("GET", f"/v1/statement/executing/{QID}/y/2", 200, (None, None), None),   # nextUri: not over
    ("GET", f"/v1/statement/executing/{QID}/y/2", 410, ("FINISHED", None), None),
    ("GET", f"/v1/query/{QID}", 200, ("FINISHED", None), None),              # info, not results
])
def test_query_end(method, path, status, final, expected):
    assert X.query_end(P.RequestKind(P.QUERY, QID), method, path, status, final) == expected


# -- the one forwarding path ----------------------------------------------------------------

class FakeClient:
    """Answers per backend from a script: a status, or a BackendError to raise."""

    def __init__(self, script: dict[str, list[object]]) -> None:
        self.script = script
        self.calls: list[tuple[str, str, list[tuple[str, str]]]] = []

    async def fetch(self, base, method, target, headers, body, sink, **kw):
        self.calls.append((base, method, list(headers)))
        step = self.script[base].pop(0)
        if isinstance(step, BackendError):
            raise step
        code = int(step)  # type: ignore[call-overload]
        sink.on_headers(code, "", HTTPHeaders({"Content-Type": "text/plain"}))
        sink.on_chunk(f"answer {code}".encode())
        sink.on_end()
        return code


def _backend(name: str) -> Backend:
    return Backend(name, f"http://{name}:8080", None, "adhoc", True)


def _forwarder(client: FakeClient, failures: list[str]) -> Forwarder:
    return Forwarder(client, x_forwarded=True, trust_forwarded=False,  # type: ignore[arg-type]
                     on_failure=lambda b, exc, *_: failures.append(b.name))


def test_a_406_for_forwarded_headers_is_sent_again_without_them_and_remembered():
    client = FakeClient({"http://b1:8080": [406, 200, 200]})
    fw = _forwarder(client, [])
    sink = BufferSink()
    code = asyncio.run(fw.send(_backend("b1"), "POST", "/v1/statement", [("X-Trino-User", "u")], b"SELECT 1",
                               sink, base=GW, remote_ip="10.0.0.1"))
    assert code == 200 and sink.code == 200 and bytes(sink.body) == b"answer 200"   # not the 406 body
    sent = [{n for n, _ in headers} for _, _, headers in client.calls]
    assert "X-Forwarded-Host" in sent[0] and "X-Forwarded-Host" not in sent[1]
    assert fw.no_forwarded == {"b1"}
    asyncio.run(fw.send(_backend("b1"), "GET", "/v1/info", [], None, BufferSink(), base=GW, remote_ip="x"))
    assert "X-Forwarded-Host" not in {n for n, _ in client.calls[2][2]}   # remembered: no third 406


def test_failover_only_while_nothing_was_sent():
    failures: list[str] = []
    client = FakeClient({"http://b1:8080": [BackendError("refused", sent=False)],
                         "http://b2:8080": [200]})
    fw = _forwarder(client, failures)
    sink = BufferSink()
    chosen = asyncio.run(fw.submit([_backend("b1"), _backend("b2")], "/v1/statement", [], b"q", sink,
                                   base=GW, remote_ip="x"))
    assert chosen.name == "b2" and failures == ["b1"] and sink.code == 200

    client = FakeClient({"http://b1:8080": [BackendError("reset after send", sent=True)],
                         "http://b2:8080": [200]})
    with pytest.raises(StatementLost) as lost:
        asyncio.run(_forwarder(client, []).submit([_backend("b1"), _backend("b2")], "/v1/statement", [],
                                                  b"q", BufferSink(), base=GW, remote_ip="x"))
    assert lost.value.backend.name == "b1"
    assert [c[0] for c in client.calls] == ["http://b1:8080"]     # never sent twice (§7.3)

    client = FakeClient({"http://b1:8080": [BackendError("refused", sent=False)]})
    with pytest.raises(NoBackendReached, match="b1: refused"):
        asyncio.run(_forwarder(client, []).submit([_backend("b1")], "/v1/statement", [], b"q",
                                                  BufferSink(), base=GW, remote_ip="x"))


def test_a_connect_that_timed_out_while_the_loop_stalled_is_tried_once_more():
    """on_failure says 'excused' (gateway/runtime/overload.py): nothing was sent and the backend never
    had its connect timeout, so the same request goes to the same backend once more."""
    stalled = BackendError("timed out connecting after 5s", sent=False, timeout=True)
    verdicts: list[str] = []

    def excused(b: Backend, exc: BackendError, elapsed: float, lag: float) -> str:
        verdicts.append(b.name)
        return "excused"

    client = FakeClient({"http://b1:8080": [stalled, 200]})
    fw = Forwarder(client, x_forwarded=False, trust_forwarded=False,  # type: ignore[arg-type]
                   on_failure=excused)
    sink = BufferSink()
    assert asyncio.run(fw.send(_backend("b1"), "POST", "/v1/statement", [], b"q", sink,
                               base=GW, remote_ip="x")) == 200
    assert [c[0] for c in client.calls] == ["http://b1:8080"] * 2 and verdicts == ["b1"]
    # only once: a second stalled connect fails the request
    client = FakeClient({"http://b1:8080": [stalled, stalled, 200]})
    fw = Forwarder(client, x_forwarded=False, trust_forwarded=False,  # type: ignore[arg-type]
                   on_failure=excused)
    with pytest.raises(BackendError):
        asyncio.run(fw.send(_backend("b1"), "GET", "/v1/info", [], None, BufferSink(), base=GW, remote_ip="x"))
    # a failure that counts ('mark', 'probe') is not tried again here
    client = FakeClient({"http://b1:8080": [stalled, 200]})
    fw = Forwarder(client, x_forwarded=False, trust_forwarded=False,  # type: ignore[arg-type]
                   on_failure=lambda *_: "probe")
    with pytest.raises(BackendError):
        asyncio.run(fw.send(_backend("b1"), "GET", "/v1/info", [], None, BufferSink(), base=GW, remote_ip="x"))
    assert len(client.calls) == 1


# -- a connect that timed out is tried again (issue 19: an overflowing accept queue) -------------

class Clock:
    """``time`` for gateway.proxy.forward: each timed-out connect takes ``step`` seconds."""

    def __init__(self, step: float = 5.0) -> None:
        self.t = 1000.0
        self.step = step

    def now(self) -> float:
        return self.t


class SlowTimeouts(FakeClient):
    def __init__(self, script: dict[str, list[object]], clock: Clock) -> None:
        super().__init__(script)
        self.clock = clock

    async def fetch(self, base, method, target, headers, body, sink, **kw):
        step = self.script[base][0]
        if isinstance(step, BackendError) and step.timeout:
            self.clock.t += self.clock.step
        return await super().fetch(base, method, target, headers, body, sink, **kw)


def _timed_out() -> BackendError:
    return BackendError("timed out connecting after 5s", sent=False, timeout=True)


def _refused() -> BackendError:
    return BackendError("cannot connect: Connection refused", sent=False)


class GoneSink(BufferSink):
    gone = True


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    from types import SimpleNamespace
    from gateway.proxy import forward
    c = Clock()
    monkeypatch.setattr(forward, "time", SimpleNamespace(monotonic=c.now, perf_counter=c.now))
    return c


def _patient(client: FakeClient, *, retry_for: float = 60.0, healthy=None, stopping=None) -> Forwarder:
    return Forwarder(client, x_forwarded=False, trust_forwarded=False,  # type: ignore[arg-type]
                     on_failure=lambda *_: "probe", retry_for=retry_for, healthy=healthy,
                     stopping=stopping)


def _submit(fw: Forwarder, names: list[str], sink: BufferSink | None = None) -> Backend:
    return asyncio.run(fw.submit([_backend(n) for n in names], "/v1/statement", [], b"q",
                                 sink if sink is not None else BufferSink(), base=GW, remote_ip="x"))


def test_a_statement_whose_connects_timed_out_is_tried_again_until_a_backend_accepts(clock):
    client = SlowTimeouts({"http://b1:8080": [_timed_out(), _timed_out(), _timed_out(), 200]}, clock)
    sink = BufferSink()
    assert _submit(_patient(client), ["b1"], sink).name == "b1"
    assert [c[0] for c in client.calls] == ["http://b1:8080"] * 4 and sink.code == 200
    # every candidate whose connect timed out is tried again, in the order given
    client = SlowTimeouts({"http://b1:8080": [_timed_out(), _timed_out()],
                           "http://b2:8080": [_timed_out(), 200]}, clock)
    assert _submit(_patient(client), ["b1", "b2"]).name == "b2"
    assert [c[0] for c in client.calls] == ["http://b1:8080", "http://b2:8080"] * 2
    # a follow-up (or a held statement) the same way: send() is patient by default
    client = SlowTimeouts({"http://b1:8080": [_timed_out(), _timed_out(), 200]}, clock)
    assert asyncio.run(_patient(client).send(_backend("b1"), "GET", "/v1/statement/executing/q/y/1",
                                             [], None, BufferSink(), base=GW, remote_ip="x")) == 200
    assert len(client.calls) == 3


def test_a_refused_connect_is_never_tried_again(clock):
    client = SlowTimeouts({"http://b1:8080": [_refused(), _refused(), 200]}, clock)
    with pytest.raises(NoBackendReached, match="b1: cannot connect: Connection refused"):
        _submit(_patient(client), ["b1"])
    assert len(client.calls) == 1
    with pytest.raises(BackendError):
        asyncio.run(_patient(client).send(_backend("b1"), "GET", "/v1/info", [], None, BufferSink(),
                                          base=GW, remote_ip="x"))
    assert len(client.calls) == 2
    # refused on one, timed out on the other: only the one that timed out is tried again
    client = SlowTimeouts({"http://b1:8080": [_refused(), 200],
                           "http://b2:8080": [_timed_out(), 200]}, clock)
    assert _submit(_patient(client), ["b1", "b2"]).name == "b2"
    assert [c[0] for c in client.calls] == ["http://b1:8080", "http://b2:8080", "http://b2:8080"]


def test_retries_stop_at_the_bound_when_unhealthy_when_stopping_and_when_the_client_left(clock):
    # retry_for 12 s, 5 s per timed-out connect: attempts end at +5 and +10 (tried again) and +15
    script = [_timed_out(), _timed_out(), _timed_out(), 200]
    client = SlowTimeouts({"http://b1:8080": list(script)}, clock)
    with pytest.raises(NoBackendReached) as none:
        _submit(_patient(client, retry_for=12), ["b1"])
    assert len(client.calls) == 3
    assert none.value.tried == ["b1: timed out connecting after 5s"]   # each backend named once
    client = SlowTimeouts({"http://b1:8080": list(script)}, clock)
    with pytest.raises(BackendError):
        asyncio.run(_patient(client, retry_for=12).send(_backend("b1"), "GET", "/v1/info", [], None,
                                                         BufferSink(), base=GW, remote_ip="x"))
    assert len(client.calls) == 3
    # the monitor no longer takes the backend for HEALTHY (the probe the failure started)
    client = SlowTimeouts({"http://b1:8080": list(script)}, clock)
    with pytest.raises(NoBackendReached):
        _submit(_patient(client, healthy=lambda b: False), ["b1"])
    assert len(client.calls) == 1
    # the gateway is shutting down
    client = SlowTimeouts({"http://b1:8080": list(script)}, clock)
    with pytest.raises(NoBackendReached):
        _submit(_patient(client, stopping=lambda: True), ["b1"])
    assert len(client.calls) == 1
    # the client went away (the sink says so)
    client = SlowTimeouts({"http://b1:8080": list(script)}, clock)
    with pytest.raises(BackendError):
        asyncio.run(_patient(client).send(_backend("b1"), "GET", "/v1/info", [], None, GoneSink(),
                                          base=GW, remote_ip="x"))
    assert len(client.calls) == 1
    # no bound (the constructor's default): not tried again
    client = SlowTimeouts({"http://b1:8080": list(script)}, clock)
    with pytest.raises(NoBackendReached):
        _submit(_patient(client, retry_for=0), ["b1"])
    assert len(client.calls) == 1


def test_relay_response_rewrites_json_keeps_other_lengths_and_nothing_for_head():
    from gateway.routing.tokens import TokenKeys
    keys = TokenKeys(b"k" * 32)
    json_head = HTTPHeaders({"Content-Type": "application/json", "Content-Length": "99",
                             "X-Trino-Started-Transaction-Id": "tx-9"})
    kw = dict(keys=keys, backend="b1", backend_base="http://b1:8080", gateway_base="http://gw",
              request_transaction=None)
    page = X.relay_response(json_head, method="GET", **kw)
    assert page.rewriter is not None and page.length is None          # the length changes
    assert ("X-Trino-Started-Transaction-Id", "tx-9") in page.headers.headers
    assert page.headers.learn == [(P.TRANSACTION, "tx-9")]
    assert "Content-Length" not in dict(page.headers.headers)
    text = X.relay_response(HTTPHeaders({"Content-Type": "text/plain", "Content-Length": "12"}),
                            method="GET", **kw)
    assert text.rewriter is None and text.length == "12"
    head = X.relay_response(json_head, method="HEAD", **kw)
    assert head.rewriter is None and head.length is None
    untokened = X.relay_response(json_head, method="GET", **{**kw, "keys": None})
    doc = b'{"nextUri":"http://b1:8080/v1/statement/executing/20240101_123456_00003_abcde/y/1"}'
    assert untokened.rewriter.page(doc) == \
        b'{"nextUri":"http://gw/v1/statement/executing/20240101_123456_00003_abcde/y/1"}'
    assert b"/_r/" in page.rewriter.page(doc)
