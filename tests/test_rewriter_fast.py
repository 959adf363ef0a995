"""The URI rewriter of gateway/protocol.py against the one it replaced (fourth session).

``UriRewriter`` now matches a URI field with an unrolled pattern and has ``page()``, one pass
over a body that arrived whole. The reference below is the previous implementation, copied
verbatim; both get the same generated documents (hostile keys and escapes, spooled segments,
pages without ``nextUri``), cut into chunks at every offset, with a routing-token minter, and
must give the same bytes and learn the same things.
"""
from __future__ import annotations

import json
import re

from hypothesis import example, given, settings
from hypothesis import strategies as st

from gateway import protocol as P
from gateway.proxy.exchange import TokenMinter
from gateway.routing.tokens import TokenKeys

_OLD_URI_FIELD = re.compile(
    rb'"(nextUri|infoUri|partialCancelUri|uri|ackUri)"\s*:\s*"(https?://[^/"\\]+)((?:[^"\\]|\\.)*)"')
BASE = "https://gw.example.com:8443"
KEYS = TokenKeys(b"k" * 32)


class OldUriRewriter:
    """gateway/protocol.py's UriRewriter before the fourth session, verbatim (with the old field
    pattern ``_OLD_URI_FIELD``): the reference the new one must agree with.

    Streams a JSON response body, pointing coordinator URIs at the gateway.

    Works chunk by chunk with a bounded carry, so a 100 MB result page passes through without
    being held in memory. Learns, on the way, the spooled segment ids (to pin their downloads),
    whether the page had a ``nextUri`` and, for the last page, the query's final state.
    Pre-signed object-store URLs in segments are left alone (their signatures would break).

    ``route`` (a ``gateway.proxy.exchange.TokenMinter``) gives the routing-token prefix for a
    path, so that every follow-up URI says which backend owns it; ``infoUri`` gets none (the
    Trino web UI it opens loads its pages and API calls by absolute, token-less paths).
    """

    __slots__ = ("_base", "_carry", "spool_ids", "saw_next_uri", "_tail", "query_id", "_recent",
                 "_recent_len", "_head", "_route")

    def __init__(self, gateway_base: str, route: P.PathRoute | None = None) -> None:
        self._route = route
        self._base = gateway_base.rstrip("/").encode()
        self._carry = b""
        self._tail = b""
        self._recent: list[bytes] = []   # the last emitted pieces, >= P._TAIL_KEEP bytes in all
        self._recent_len = 0
        self._head = b""
        self.spool_ids: list[str] = []
        self.saw_next_uri = False
        self.query_id: str | None = None

    def _sub(self, m: re.Match[bytes]) -> bytes:
        key, path = m.group(1), m.group(3)
        if key not in P._ALWAYS_REWRITTEN:
            spool = P._SPOOL_PATH.match(path)
            if not spool:
                return m.group(0)
            sid = spool.group(1).decode("utf-8", "replace")
            if sid not in self.spool_ids:
                self.spool_ids.append(sid)
        elif key == b"nextUri":
            self.saw_next_uri = True
        if self._route is not None and key != b"infoUri":
            return b'"' + key + b'":"' + self._base + self._route.prefix_bytes(path) + path + b'"'
        return b'"' + key + b'":"' + self._base + path + b'"'

    def feed(self, chunk: bytes) -> bytes:
        buf = self._carry + chunk if self._carry else chunk
        if self.query_id is None and len(self._head) < 4096:
            # The id is near the start of the document; look for it in the first 4 KB, which
            # may arrive in several chunks.
            self._head += chunk[:4096 - len(self._head)]
            m = P._ID.search(self._head)
            if m:
                self.query_id = m.group(1).decode()
        emitted = self._rewrite(buf, final=False)
        if emitted:
            self._recent.append(emitted)
            self._recent_len += len(emitted)
            while self._recent_len - len(self._recent[0]) >= P._TAIL_KEEP:
                self._recent_len -= len(self._recent.pop(0))
        return emitted

    def _rewrite(self, buf: bytes, final: bool) -> bytes:
        """Rewrite the URI fields of ``buf``; unless ``final``, keep in the carry a tail that may
        be a field the next chunk completes."""
        n = len(buf)
        # Every URI field's key ends in `Uri"` or is `"uri"`: one bytes.find pass for `ri"` finds
        # them all, far faster than running the field pattern at every quote of a result page
        # (docs/benchmarks.md). The pattern then runs only where a key may start.
        starts: list[int] = []
        i = buf.find(b'ri"')
        while i >= 0:
            if i >= 1 and buf[i - 1] == 85:            # U: nextUri, infoUri, partialCancelUri, ackUri
                q = buf.rfind(b'"', max(0, i - 16), i - 1)
                if q >= 0:
                    starts.append(q)
            elif i >= 2 and buf[i - 2:i] == b'"u':     # "uri"
                starts.append(i - 2)
            i = buf.find(b'ri"', i + 3)
        hold = n
        pieces: list[bytes] = []
        done = 0   # end of the last rewritten field
        if starts:
            starts.sort()
            for q in starts:
                if q < done:
                    continue   # inside a field already rewritten
                m = _OLD_URI_FIELD.match(buf, q)
                if m is None:
                    if not final and q >= n - P._MAX_MATCH:
                        hold = q   # may be a field the next chunk completes
                        break
                    continue
                pieces.append(buf[done:q])
                pieces.append(self._sub(m))
                done = m.end()
        if not final:
            # The end may also be the start of a key, cut short ("next…): keep it for later.
            p = buf.rfind(b'"', max(done, n - 18))
            if p >= 0 and p < hold and any(k.startswith(buf[p + 1:]) for k in P._URI_KEYS):
                hold = p
        self._carry = buf[hold:] if hold < n else b""
        if pieces:
            pieces.append(buf[done:hold])
            return b"".join(pieces)
        return buf if hold == n else buf[:hold]

    def finish(self) -> bytes:
        carry, self._carry = self._carry, b""
        out = self._rewrite(carry, final=True) if carry else b""
        if out:
            self._recent.append(out)
        self._tail = b"".join(self._recent)[-P._TAIL_KEEP:]
        self._recent = []
        if not self.saw_next_uri and P._NEXT_URI_KEY.search(self._tail):
            self.saw_next_uri = True
        return out

    def final_state(self) -> tuple[str | None, str | None]:
        """For a page without nextUri: (stats.state, error message) read from the page's tail."""
        if self.saw_next_uri:
            return None, None
        states = P._STATE.findall(self._tail)
        state = states[-1].decode() if states else None
        m = P._ERROR_MESSAGE.search(self._tail)
        error = None
        if m:
            try:
                error = json.loads(b'"' + m.group(1) + b'"')
            except ValueError:
                error = m.group(1).decode("utf-8", "replace")
        return state, error


def _learnt(rw) -> tuple:
    return (rw.spool_ids, rw.saw_next_uri, rw.query_id, rw.final_state())


def _stream(rw, doc: bytes, cuts: list[int]) -> tuple[bytes, tuple]:
    out, pos = [], 0
    for n in cuts:
        out.append(rw.feed(doc[pos:pos + n]))
        pos += n
    out += (rw.feed(doc[pos:]), rw.finish())
    return b"".join(out), _learnt(rw)


def _old(doc: bytes, cuts: list[int]) -> tuple[bytes, tuple]:
    return _stream(OldUriRewriter(BASE, TokenMinter(KEYS, "adhoc-1")), doc, cuts)


def _new(doc: bytes, cuts: list[int]) -> tuple[bytes, tuple]:
    return _stream(P.UriRewriter(BASE, TokenMinter(KEYS, "adhoc-1")), doc, cuts)


def _page(doc: bytes) -> tuple[bytes, tuple]:
    rw = P.UriRewriter(BASE, TokenMinter(KEYS, "adhoc-1"))
    out = rw.page(doc)
    return out, _learnt(rw)


QID = "20261203_180512_04711_abcde"
PIECES = st.sampled_from([
    '"nextUri":"http://coord:8080/v1/statement/executing/%s/y1/2"' % QID,
    '"infoUri" : "http://coord:8080/ui/query.html?%s"' % QID,
    '"partialCancelUri":"http://coord:8080/v1/statement/executing/partialCancel/%s/0/y1/2"' % QID,
    '"uri":"http://coord:8080/v1/spooled/download/SEG%d"',
    '"ackUri":"https:\\/\\/c:1\\/v1\\/spooled\\/ack\\/S%d"',
    '"uri":"https://bucket.s3/x?sig=1"', '"ackUri":"http://c:1\\/v1\\/spooled\\/ack\\/T%d"',
    '"nextUri":"http://c:1/a\\"b\\\\c/%d"', '"nextUri":"http://c:1/a\\',
    '"id":"%s"' % QID, '"stats":{"state":"FINISHED"}', '"error":{"message":"boom \\"x\\""}',
    '"state":"RUNNING"', 'Uri"', 'ri"', '"u', '"uri"', '"next', '"nextUri":', '"nextUri":"', "\\", '"',
    "é", "a" * 40, "x" * 300, '"nextUri":"http://c:1/' + "p" * 17000 + '"', ",", " ", "\n",
    '"pad":"' + "y" * 9000 + '"', "[" + ",".join(['"2024-01-01 12:00:00"'] * 300) + "]",
    '"data":[' + ",".join(['[1,"BUILDING",2.5]'] * 600) + "]", '"nextUri" \t: "http://c:1/v1/x"',
    '"uri"\n:\n"http://c:1/v1/spooled/ack/W%d"', ' : ', '"Uri" :', '"nextUri"   ',
])


@st.composite
def documents(draw) -> bytes:
    parts = draw(st.lists(PIECES, max_size=14))
    text = "{" + ",".join(p.replace("%d", str(i)) if "%d" in p else p for i, p in enumerate(parts)) + "}"
    return text.encode()


@given(st.binary(max_size=120), st.integers(0, 130))
@settings(max_examples=1500, deadline=None)
@example(b'"nextUri":"http://c:1/a\\"b"', 0)
@example(b'"nextUri":"http://c:1/a\\\n"', 0)
def test_the_unrolled_field_pattern_matches_as_the_old_one(tail: bytes, pos: int) -> None:
    for prefix in (b"", b'"nextUri":"http://c:1/', b'"uri" : "https://h/x'):
        doc = prefix + tail
        old, new = _OLD_URI_FIELD.match(doc, pos), P._URI_FIELD.match(doc, pos)
        assert (old and (old.span(), old.groups())) == (new and (new.span(), new.groups()))


@given(documents(), st.lists(st.integers(0, 400), max_size=6))
@settings(max_examples=800, deadline=None)
def test_new_rewriter_gives_what_the_old_one_gave(doc: bytes, cuts: list[int]) -> None:
    want = _old(doc, cuts)
    assert _new(doc, cuts) == want
    assert _page(doc) == _old(doc, [])
    # a rewriter that does not look for the query id (a follow-up's) gives all the rest the same
    out, learnt = _page(doc)
    blind = P.UriRewriter(BASE, TokenMinter(KEYS, "adhoc-1"), find_id=False)
    assert blind.page(doc) == out and blind.query_id is None
    spools, next_uri, _, final = learnt
    assert _learnt(blind) == (spools, next_uri, None, final)


def test_a_real_page_cut_at_every_offset() -> None:
    doc = json.dumps({
        "id": QID, "infoUri": f"http://coord:8080/ui/query.html?{QID}",
        "partialCancelUri": f"http://coord:8080/v1/statement/executing/partialCancel/{QID}/0/y1/2",
        "nextUri": f"http://coord:8080/v1/statement/executing/{QID}/y1/2",
        "segments": [{"type": "spooled", "uri": "http://coord:8080/v1/spooled/download/S1",
                      "ackUri": "http://coord:8080/v1/spooled/ack/S1"}],
        "data": [[1, "x"]] * 20, "stats": {"state": "RUNNING"},
    }).encode()
    want = _old(doc, [])
    assert b"/_r/" in want[0] and want[1][0] == ["S1"]
    assert _page(doc) == want
    for cut in range(len(doc) + 1):
        assert _new(doc, [cut]) == want, cut
        assert _new(doc, [cut, 7]) == _old(doc, [cut, 7]), cut


def test_a_large_page_cut_at_many_offsets() -> None:
    """Fields at both ends and in the middle, more than one 16 KB hold window apart."""
    rows = ",".join(['[1,"BUILDING",2.5]'] * 700)
    doc = (f'{{"id":"{QID}","nextUri":"http://coord:8080/v1/statement/executing/{QID}/y1/2",'
           f'"data":[{rows}],"segments":[{{"uri" : "http://coord:8080/v1/spooled/download/S9"}}],'
           f'"data2":[{rows}],"stats":{{"state":"RUNNING"}},'
           f'"partialCancelUri":"http://coord:8080/v1/statement/executing/partialCancel/{QID}/0/y1/2"}}').encode()
    assert len(doc) > 2 * 8192
    want = _old(doc, [])
    assert want[0].count(b"/_r/") == 3 and want[1][0] == ["S9"]
    assert _page(doc) == want
    for cut in range(0, len(doc) + 1, 7):
        assert _new(doc, [cut]) == want, cut
    for cut in range(len(doc) - 400, len(doc) + 1):
        assert _new(doc, [cut]) == want, cut


def test_page_after_feed_finishes_the_stream() -> None:
    doc = b'{"id":"%s","nextUri":"http://c:1/v1/statement/executing/%s/y/1"}' % (QID.encode(), QID.encode())
    rw = P.UriRewriter(BASE, TokenMinter(KEYS, "adhoc-1"))
    out = rw.feed(doc[:20]) + rw.page(doc[20:])
    assert (out, _learnt(rw)) == _old(doc, [20])
