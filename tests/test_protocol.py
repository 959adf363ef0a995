"""Pure protocol decisions: request classification, kill_query, URI rewriting, headers."""
from __future__ import annotations

import json

import pytest

from gateway import protocol as P
from gateway.routing.sticky import StickyMap

QID = "20240101_123456_00001_abcde"


@pytest.mark.parametrize("method,path,query,kind,key", [
    ("POST", "/v1/statement", "", P.STATEMENT, None),
    ("GET", "/v1/statement", "", P.OTHER, None),
    ("GET", f"/v1/statement/queued/{QID}/y3c7f0a1b2e4d5c6b7a8f9e0d1c2b3a4f5e6d7c8b/1", "", P.QUERY, QID),
    ("DELETE", f"/v1/statement/queued/{QID}/yabc/1", "", P.QUERY, QID),
    ("GET", f"/v1/statement/executing/{QID}/yabc/0", "maxWait=1s", P.QUERY, QID),
    ("HEAD", f"/v1/statement/executing/{QID}/yabc/3", "", P.QUERY, QID),
    ("DELETE", f"/v1/statement/executing/partialCancel/{QID}/2/yabc/3", "", P.QUERY, QID),
    ("GET", f"/v1/query/{QID}", "", P.QUERY, QID),
    ("PUT", f"/v1/query/{QID}/killed", "", P.QUERY, QID),
    ("GET", f"/ui/api/query/{QID}", "", P.QUERY, QID),
    ("GET", f"/ui/api/query/{QID}/killed", "", P.QUERY, QID),
    ("GET", "/ui/query.html", QID, P.QUERY, QID),
    ("GET", "/ui/query.html", "", P.OTHER, None),
    ("GET", "/v1/spooled/download/abc%2Fdef", "", P.SPOOL, "abc/def"),
    ("GET", "/v1/spooled/ack/xyz", "", P.SPOOL, "xyz"),
    ("GET", "/oauth2/token/1b4e28ba-2fa1-11d2-883f-0016d3cca427", "", P.OAUTH_TOKEN,
     "1b4e28ba-2fa1-11d2-883f-0016d3cca427"),
    ("GET", "/oauth2/token/initiate/" + "A" * 64, "", P.OAUTH_INITIATE, "a" * 64),
    ("GET", "/oauth2/callback", "code=1&state=2", P.OAUTH_CALLBACK, None),
    ("GET", "/v1/info", "", P.OTHER, None),
    ("GET", "/v1/query", "state=RUNNING", P.OTHER, None),
    # ids that are not Trino query ids are not routed by id
    ("GET", "/v1/statement/executing/123_456/yabc/0", "", P.OTHER, None),
    ("GET", "/v1/query/../../etc/passwd", "", P.OTHER, None),
])
def test_classify(method, path, query, kind, key):
    rk = P.classify(method, path, query)
    assert (rk.kind, rk.key) == (kind, key)


GW = "http://gw.example:8080"


@pytest.mark.parametrize("method,path,query,referer,key", [
    # the login page a coordinator redirects the query page to, and its form's POST
    ("GET", "/ui/login.html", f"/ui/query.html?{QID}", None, QID),
    ("GET", "/ui/login.html", f"%2Fui%2Fquery.html%3F{QID}", None, QID),
    ("POST", "/ui/login", "", f"{GW}/ui/login.html?/ui/query.html?{QID}", QID),
    # what the query page loads: scripts, the cluster title, the worker links
    ("GET", "/ui/dist/query.js", "", f"{GW}/ui/query.html?{QID}", QID),
    ("GET", "/ui/api/cluster", "", f"{GW}/ui/query.html?{QID}", QID),
    ("GET", "/ui/vendor/bootstrap/css/bootstrap.css", "", f"{GW}/ui/login.html?/ui/query.html?{QID}", QID),
    # the page's own id wins over its referer's
    ("GET", "/ui/query.html", QID, f"{GW}/ui/query.html?20240101_123456_00002_zzzzz", QID),
    # pages that name no query route as before
    ("GET", "/ui/api/cluster", "", f"{GW}/ui/", None),
    ("GET", "/ui/login.html", "", None, None),
    ("POST", "/ui/login", "", f"{GW}/ui/login.html", None),
    ("GET", "/ui/api/stats", "", "not a url [", None),
    # only web-UI requests follow the referer
    ("GET", "/v1/info", "", f"{GW}/ui/query.html?{QID}", None),
    ("GET", "/ui/dist/query.js", "", f"{GW}/ui/query.html?not_a_query_id", None),
])
def test_classify_web_ui_by_the_page_that_asks(method, path, query, referer, key):
    """Every request of a query's UI page reaches the coordinator that owns the query: each
    coordinator signs its UI login with its own key (found with real Trino, tests/real)."""
    rk = P.classify(method, path, query, referer)
    assert (rk.kind, rk.key) == ((P.QUERY, key) if key else (P.OTHER, None))


@pytest.mark.parametrize("sql,target", [
    (f"CALL system.runtime.kill_query(query_id => '{QID}', message => 'x')", QID),
    (f"call system.runtime.kill_query('{QID}')", QID),
    (f"  CALL\n system . runtime . kill_query ( '{QID}' , 'too slow')", QID),
    (f'CALL "system"."runtime"."kill_query"(\'{QID}\')', QID),
    (f"CALL runtime.kill_query('{QID}')", QID),
    ("CALL system.runtime.kill_query('not-an-id')", None),
    (f"SELECT '{QID}'", None),
    (f"-- CALL system.runtime.kill_query('{QID}')\nSELECT 1", None),
])
def test_kill_query_target(sql, target):
    assert P.kill_query_target(sql) == target


def test_transaction_id():
    assert P.transaction_id(None) is None
    assert P.transaction_id("NONE") is None
    assert P.transaction_id(" none ") is None
    assert P.transaction_id("6f0e8d4c-1111-2222-3333-444455556666") == "6f0e8d4c-1111-2222-3333-444455556666"


def _page(**extra) -> bytes:
    doc = {"id": QID, "infoUri": f"http://coord:8080/ui/query.html?{QID}",
           "nextUri": f"http://coord:8080/v1/statement/executing/{QID}/yabc/1",
           "partialCancelUri": f"http://coord:8080/v1/statement/executing/partialCancel/{QID}/0/yabc/1",
           "columns": [{"name": "u", "type": "varchar"}],
           "data": [["http://coord:8080/v1/statement/executing/x"], ['"nextUri":"http://coord:8080/evil"']],
           "stats": {"state": "RUNNING"}}
    doc.update(extra)
    return json.dumps(doc, separators=(",", ":")).encode()


def _rewrite(body: bytes, chunk: int) -> tuple[bytes, P.UriRewriter]:
    rw = P.UriRewriter("http://gw:8080")
    out = b"".join(rw.feed(body[i:i + chunk]) for i in range(0, len(body), chunk)) + rw.finish()
    return out, rw


@pytest.mark.parametrize("chunk", [1, 7, 64, 100000])
def test_rewriter_points_uris_at_gateway_and_leaves_data_alone(chunk):
    out, rw = _rewrite(_page(), chunk)
    doc = json.loads(out)
    assert doc["nextUri"] == f"http://gw:8080/v1/statement/executing/{QID}/yabc/1"
    assert doc["infoUri"] == f"http://gw:8080/ui/query.html?{QID}"
    assert doc["partialCancelUri"].startswith("http://gw:8080/v1/statement/executing/partialCancel/")
    # values inside the data are strings; their quotes are escaped, so they are never touched
    assert doc["data"] == json.loads(_page())["data"]
    assert rw.query_id == QID
    assert rw.saw_next_uri
    assert rw.final_state() == (None, None)


def test_rewriter_spooled_segments():
    data = {"encoding": "json", "segments": [
        {"type": "spooled", "uri": "http://coord:8080/v1/spooled/download/SEG1",
         "ackUri": "http://coord:8080/v1/spooled/ack/SEG1", "metadata": {"rowOffset": 0}},
        {"type": "spooled", "uri": "https://bucket.s3.example.com/v1/x?X-Amz-Signature=abc",
         "ackUri": "http://coord:8080/v1/spooled/ack/SEG2", "metadata": {"rowOffset": 5}},
    ]}
    out, rw = _rewrite(_page(data=data), 5)
    segs = json.loads(out)["data"]["segments"]
    assert segs[0]["uri"] == "http://gw:8080/v1/spooled/download/SEG1"
    assert segs[0]["ackUri"] == "http://gw:8080/v1/spooled/ack/SEG1"
    assert segs[1]["uri"] == "https://bucket.s3.example.com/v1/x?X-Amz-Signature=abc"  # pre-signed: untouched
    assert rw.spool_ids == ["SEG1", "SEG2"]


def test_rewriter_final_page_state_and_error():
    doc = {"id": QID, "infoUri": "http://c:1/ui/query.html?" + QID,
           "stats": {"state": "FAILED"},
           "error": {"message": "line 1:8: Column \"x\" cannot be resolved", "errorCode": 47}}
    out, rw = _rewrite(json.dumps(doc).encode(), 3)
    assert json.loads(out)["stats"]["state"] == "FAILED"
    assert rw.final_state() == ("FAILED", 'line 1:8: Column "x" cannot be resolved')


def test_rewriter_big_page_streams_with_bounded_carry():
    rows = [["x" * 1000, i] for i in range(3000)]  # ~3 MB
    body = _page(data=rows)
    rw = P.UriRewriter("http://gw:8080")
    emitted = 0
    pieces = []
    for i in range(0, len(body), 65536):
        piece = rw.feed(body[i:i + 65536])
        pieces.append(piece)
        emitted += len(piece)
        # never more than one chunk plus the carry is held back
        assert len(body[: i + 65536]) - emitted <= 65536 + 16384 + 64
    pieces.append(rw.finish())
    assert json.loads(b"".join(pieces))["data"] == rows


def test_rewrite_location():
    assert P.rewrite_location("http://coord:8080/ui/", "http://coord:8080", "http://gw") == "http://gw/ui/"
    assert P.rewrite_location("https://idp.example.com/auth?x=1", "http://coord:8080", "http://gw") == \
        "https://idp.example.com/auth?x=1"
    assert P.rewrite_location("http://coord:80800/x", "http://coord:8080", "http://gw") == "http://coord:80800/x"


def test_rewrite_www_authenticate_oauth():
    auth_id = "1b4e28ba-2fa1-11d2-883f-0016d3cca427"
    h = ('Bearer x_redirect_server="http://coord:8080/oauth2/token/initiate/' + "ab" * 32 + '", '
         f'x_token_server="http://coord:8080/oauth2/token/{auth_id}"')
    out, ids = P.rewrite_www_authenticate(h, "https://gw.example.com")
    assert 'x_redirect_server="https://gw.example.com/oauth2/token/initiate/' in out
    assert f'x_token_server="https://gw.example.com/oauth2/token/{auth_id}"' in out
    assert ids == [auth_id]
    # an identity provider's URL (older servers) is never rewritten
    old = 'Bearer x_redirect_server="https://idp.example.com/authorize?x=1", x_token_server="http://c:1/oauth2/token/' + auth_id + '"'
    out, _ = P.rewrite_www_authenticate(old, "http://gw")
    assert "https://idp.example.com/authorize?x=1" in out


def test_failed_query_document_is_what_clients_need():
    doc = json.loads(P.failed_query("no backend", gateway_base="http://gw", error_name="NO_NODES_AVAILABLE"))
    assert P.is_query_id(doc["id"])
    assert doc["stats"]["state"] == "FAILED"
    assert "nextUri" not in doc
    err = doc["error"]
    assert err["message"] == "no backend" and err["errorType"] == "INTERNAL_ERROR"
    assert err["failureInfo"]["suppressed"] == [] and err["failureInfo"]["stack"] == []


def test_new_query_ids_are_unique_and_well_formed():
    ids = {P.new_query_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(P.is_query_id(i) for i in ids)


def test_sticky_map_expiry_bound_and_forget():
    m = StickyMap(ttl=10, max_entries=3)
    m.put(P.QUERY, "a", "b1", now=0)
    m.put(P.QUERY, "b", "b2", now=1)
    m.put("transaction", "t", "b1", now=2)
    assert m.get(P.QUERY, "a") == "b1"
    m.put(P.QUERY, "c", "b1", now=3)  # over the bound: the oldest goes
    assert m.get(P.QUERY, "a") is None and len(m) == 3
    assert m.expire(now=11.5) == 1  # "b" expired at 11
    assert m.get(P.QUERY, "b") is None
    assert m.forget_backend("b1") == 2
    assert len(m) == 0
