"""HTTP/1.1 framing helpers of the proxy (gateway/runtime/http1.py): heads, lengths, chunked bodies."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.runtime.http1 import (ChunkedDecoder, HTTPParseError, body_length, find_head_end,
                                 format_chunk, parse_request_head, parse_response_head, serialize_head)


def test_head_end_is_found_after_the_blank_line_with_crlf_or_bare_lf():
    assert find_head_end(b"GET / HTTP/1.1\r\nHost: a\r\n\r\nBODY") == len(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    assert find_head_end(b"GET / HTTP/1.1\nHost: a\n\nBODY") == len(b"GET / HTTP/1.1\nHost: a\n\n")
    assert find_head_end(b"GET / HTTP/1.1\r\nHost: a\r\n") == -1


def test_request_head_is_parsed_with_repeated_headers_kept_apart():
    rh = parse_request_head(b"\r\nPOST /v1/statement?x=1 HTTP/1.1\r\nX-Trino-User: alice\r\n"
                            b"X-Trino-Client-Tags: a\r\nx-trino-client-tags:  b \r\n\r\n")
    assert (rh.method, rh.target, rh.version) == ("POST", "/v1/statement?x=1", "HTTP/1.1")
    assert rh.headers["X-Trino-User"] == "alice"
    assert rh.headers.get_list("X-Trino-Client-Tags") == ["a", "b"]


@pytest.mark.parametrize("head, fragment", [
    (b"GET /\r\n\r\n", "request line"),
    (b"GET / HTTP/2.0\r\n\r\n", "HTTP version"),
    (b"G@T / HTTP/1.1\r\n\r\n", "method"),
    (b"GET / HTTP/1.1\r\nBad Name: x\r\n\r\n", "header name"),
    (b"GET / HTTP/1.1\r\nNoColon\r\n\r\n", "colon"),
    (b"GET / HTTP/1.1\r\nA: b\r\n folded\r\n\r\n", "folding"),
    (b"GET / HTTP/1.1\r\nA: b\x00c\r\n\r\n", "invalid character"),
    (b"GET / HTTP/1.1\r\nA: b\rc\r\n\r\n", "invalid character"),
])
def test_malformed_request_heads_are_refused_with_the_reason(head, fragment):
    with pytest.raises(HTTPParseError, match=fragment):
        parse_request_head(head)


def test_response_head_keeps_a_reason_with_spaces():
    rh = parse_response_head(b"HTTP/1.1 404 Not Found Here\r\nContent-Length: 0\r\n\r\n")
    assert (rh.version, rh.code, rh.reason) == ("HTTP/1.1", 404, "Not Found Here")
    with pytest.raises(HTTPParseError, match="status line"):
        parse_response_head(b"HTTP/1.1 20 OK\r\n\r\n")


def _h(*pairs):
    return parse_request_head(b"GET / HTTP/1.1\r\n" + b"".join(b"%s: %s\r\n" % p for p in pairs) + b"\r\n").headers


def test_body_length_from_content_length_or_chunked():
    assert body_length(_h()) is None
    assert body_length(_h((b"Content-Length", b"12"))) == 12
    assert body_length(_h((b"Content-Length", b"5, 5"))) == 5
    assert body_length(_h((b"Transfer-Encoding", b"chunked"))) == -1


@pytest.mark.parametrize("pairs, fragment", [
    (((b"Content-Length", b"5"), (b"Content-Length", b"6")), "conflicting"),
    (((b"Content-Length", b"-1"),), "invalid Content-Length"),
    (((b"Content-Length", b"1e3"),), "invalid Content-Length"),
    (((b"Transfer-Encoding", b"gzip, chunked"),), "unsupported Transfer-Encoding"),
    (((b"Transfer-Encoding", b"chunked"), (b"Content-Length", b"3")), "both"),
])
def test_ambiguous_framing_is_refused(pairs, fragment):
    with pytest.raises(HTTPParseError, match=fragment):
        body_length(_h(*pairs))


def test_serialize_head_refuses_line_breaks_in_values():
    h = _h((b"A", b"b"))
    assert serialize_head("HTTP/1.1 200 OK", h) == b"HTTP/1.1 200 OK\r\nA: b\r\n\r\n"
    h["X"] = "evil\r\nSet-Cookie: y"
    with pytest.raises(ValueError, match="line break"):
        serialize_head("HTTP/1.1 200 OK", h)


def _chunked(pieces: list[bytes], trailer: bytes = b"") -> bytes:
    return b"".join(format_chunk(p) for p in pieces if p) + b"0\r\n" + trailer + b"\r\n"


def test_chunked_body_with_extensions_trailers_and_the_next_message_after_it():
    raw = b"5;ext=1\r\nhello\r\n1\r\n \r\n5\r\nworld\r\n0\r\nX-Trailer: t\r\n\r\nNEXT"
    d = ChunkedDecoder()
    pieces, rest = d.feed(raw)
    assert b"".join(pieces) == b"hello world" and d.done and rest == b"NEXT"


@pytest.mark.parametrize("raw", [b"zz\r\n", b"1_0\r\n", b"-1\r\n", b"0x10\r\n", b"3\r\nabcX\r\n"])
def test_invalid_chunks_are_refused(raw):
    with pytest.raises(HTTPParseError):
        ChunkedDecoder().feed(raw)


@settings(max_examples=150, deadline=None)
@given(pieces=st.lists(st.binary(min_size=1, max_size=300), max_size=8), cuts=st.lists(st.integers(1, 50), max_size=40))
def test_chunked_decoding_does_not_depend_on_how_the_bytes_arrive(pieces, cuts):
    raw = _chunked(pieces) + b"TAIL"
    d = ChunkedDecoder()
    got, pos, rest = [], 0, b""
    for n in cuts + [len(raw)]:
        if pos >= len(raw):
            break
        out, rest = d.feed(raw[pos:pos + n])
        got += out
        pos += n
        if d.done:
            rest += raw[pos:]
            break
    assert d.done
    assert b"".join(got) == b"".join(pieces)
    assert rest == b"TAIL"
