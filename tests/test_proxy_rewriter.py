"""The streaming URI rewriter gives the same bytes as one pattern substitution over the whole
document, however the document is cut into chunks (gateway/protocol.py, ``UriRewriter``)."""
from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway import protocol as P

BASE = b"http://gw:8080"


def reference(doc: bytes) -> bytes:
    """What the rewriter must produce: every URI field rewritten as ``_URI_FIELD`` defines."""
    def sub(m):
        key, path = m.group(1), m.group(3)
        if key not in P._ALWAYS_REWRITTEN and not P._SPOOL_PATH.match(path):
            return m.group(0)
        return b'"' + key + b'":"' + BASE + path + b'"'
    return P._URI_FIELD.sub(sub, doc)


def stream(doc: bytes, cuts: list[int]) -> tuple[bytes, P.UriRewriter]:
    rw = P.UriRewriter(BASE.decode())
    out, pos = [], 0
    for n in cuts:
        out.append(rw.feed(doc[pos:pos + n]))
        pos += n
    out.append(rw.feed(doc[pos:]))
    out.append(rw.finish())
    return b"".join(out), rw


tricky = st.sampled_from(["nextUri", "Uri", 'x"Uri', "uri", '"uri":', "partialCancelUri", "ackUri\"",
                          "http://coord:1/v1", "\\", "é", "", "a" * 50])
uri_values = st.sampled_from(["http://coord:8080/v1/statement/executing/20240101_000000_00001_abcde/y/1",
                              "https://c.example.com:8443/ui/query.html?x", "http://c:1/v1/spooled/download/S1",
                              "https://bucket.s3/x?sig=1", "not a uri", "http://c:1/a\"b"])
keys = st.sampled_from(["nextUri", "infoUri", "partialCancelUri", "uri", "ackUri", "xnextUri", "data"])


@st.composite
def documents(draw) -> bytes:
    fields = draw(st.lists(st.tuples(keys, st.one_of(uri_values, tricky, st.lists(tricky, max_size=4))),
                           max_size=8))
    doc = {"id": "20240101_000000_00001_abcde"}
    for k, v in fields:
        doc[k] = v
    seps = draw(st.sampled_from([(",", ":"), (", ", ": ")]))
    return json.dumps(doc, separators=seps).encode()


@settings(max_examples=300, deadline=None)
@given(doc=documents(), cuts=st.lists(st.integers(1, 40), max_size=30))
def test_streaming_equals_one_substitution_over_the_whole_document(doc, cuts):
    out, rw = stream(doc, cuts)
    assert out == reference(doc)
    assert rw.query_id == "20240101_000000_00001_abcde"
    assert json.loads(out)   # still valid JSON


def test_a_big_page_keeps_only_a_small_carry_and_the_tail_for_the_final_state():
    rows = [["Uri\"" * 3, "x" * 500, i] for i in range(20000)]   # ~10 MB
    doc = json.dumps({"id": "20240101_000000_00001_abcde", "nextUri": "http://c:1/v1/statement/x/1",
                      "data": rows, "stats": {"state": "FINISHED"}}).encode()
    rw = P.UriRewriter(BASE.decode())
    held = []
    out = []
    for i in range(0, len(doc), 65536):
        out.append(rw.feed(doc[i:i + 65536]))
        held.append(min(i + 65536, len(doc)) - sum(map(len, out)))
    out.append(rw.finish())
    assert b"".join(out) == reference(doc)
    assert max(held) <= 16384 + 64
    assert rw.saw_next_uri and rw.final_state() == (None, None)
