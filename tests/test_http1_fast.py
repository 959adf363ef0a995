"""The fast head parsers of gateway/runtime/http1.py against the careful ones they skip.

``parse_request_head`` and ``parse_response_head`` check a head with one pass over its bytes
and fill Tornado's ``HTTPHeaders`` directly; anything unusual goes to the careful line-by-line
parser (``_parse_request_head``, ``_parse_response_head``, the algorithm they replaced). These
tests feed both the same generated heads, hostile ones included (control characters, bare CRs,
line folding, bad names, missing colons, repeated and conflicting lengths, odd line ends), and
require the same answer or the same error.
"""
from __future__ import annotations

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from tornado.httputil import HTTPHeaders

from gateway.runtime import http1


def _outcome(parse, head: bytes):
    try:
        rh = parse(head)
    except Exception as e:   # the type and the text are part of the behaviour
        return ("error", type(e), str(e))
    h = rh.headers
    names = list(h)
    return (tuple(rh[:-1]), list(h.get_all()), names, {n: h[n] for n in names},
            {n: h.get_list(n) for n in names}, len(h), str(h))


def _same(head: bytes) -> None:
    assert _outcome(http1.parse_request_head, head) == _outcome(http1._parse_request_head, head)
    assert _outcome(http1.parse_response_head, head) == _outcome(http1._parse_response_head, head)


NAMES = st.sampled_from([
    "Host", "host", "HOST", "X-Trino-User", "x-trino-user", "Content-Length", "content-length",
    "Transfer-Encoding", "Connection", "X-Trino-Client-Tags", "a", "A", "x_y", "!#$%&'*+-.^_`|~",
    "Bad Name", "", " X", "\tX", "X ", "A@b", "Na\x00me", "Ä", "a\rb", "é-x",
])
VALUE_CHARS = st.sampled_from(list("ab1 ,;=/\t:") + ["\x00", "\x01", "\x08", "\x0b", "\x0c", "\r", "\n",
                                                    "\x1f", "\x7f", "\x80", "\xa0", "\xb2", "\xff"])
VALUES = st.one_of(st.text(VALUE_CHARS, max_size=12),
                   st.sampled_from(["5", "6", "5, 5", "chunked", " 7 ", ""]))
EOLS = st.sampled_from(["\r\n", "\r\n", "\r\n", "\n", "\r", "\r\r\n", ""])


@st.composite
def header_lines(draw) -> str:
    kind = draw(st.integers(0, 9))
    if kind == 0:
        return draw(st.sampled_from([" folded", "\tfolded", "NoColon", "", ":novalue", "  "]))
    return f"{draw(NAMES)}:{draw(VALUES)}" if kind == 1 else f"{draw(NAMES)}: {draw(VALUES)}"


@st.composite
def heads(draw) -> bytes:
    if draw(st.booleans()):
        first = "{} {} {}".format(
            draw(st.sampled_from(["GET", "POST", "DELETE", "PATCH", "G@T", "get", "BREW", ""])),
            draw(st.sampled_from(["/", "/v1/statement", "/_r/t.b.m/v1/statement/executing/x/y/1?a=b",
                                  "", "/a\x00b", "/a\rb", "/\x7f", "/\xff"])),
            draw(st.sampled_from(["HTTP/1.1", "HTTP/1.0", "HTTP/2.0", "http/1.1", "HTTP/1.1\r"])))
        if draw(st.integers(0, 9)) == 0:
            first = draw(st.sampled_from(["GET /", "GET  / HTTP/1.1", "GET / HTTP/1.1 x"]))
    else:
        first = "{} {} {}".format(
            draw(st.sampled_from(["HTTP/1.1", "HTTP/1.0", "HTTP/1.x", "HTTP/2", "HTTP/1.1\x00"])),
            draw(st.sampled_from(["200", "404", "20", "2000", "abc", "\xb2\xb2\xb2", ""])),
            draw(st.sampled_from(["OK", "Not Found Here", "", "A\x01B", "A\rB", "\xe9"])))
    lead = draw(st.sampled_from(["", "", "\r\n", "\n", "\r\n\r\n"]))
    lines = draw(st.lists(header_lines(), max_size=8))
    out = lead + first
    for line in lines:
        out += draw(EOLS) + line
    out += draw(st.sampled_from(["\r\n\r\n", "\n\n", "\r\n\n", "\r\n", ""]))
    return out.encode("latin-1")


@given(heads())
@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@example(b"GET / HTTP/1.1\r\nContent-Length: 5\r\ncontent-length: 6\r\n\r\n")
@example(b"GET / HTTP/1.1\r\nA: b\r\n folded\r\n\r\n")
@example(b"GET / HTTP/1.1\r\nA: b\rc\r\n\r\n")
@example(b"GET / HTTP/1.1\nA: b\r\nB: c\n\n")
@example(b"HTTP/1.1 \xb2\xb2\xb2 OK\r\n\r\n")
@example(b"HTTP/1.1 200 A\x01B\r\nX: y\r\n\r\n")
def test_fast_parsers_answer_as_the_careful_ones(head: bytes) -> None:
    _same(head)


@given(st.binary(max_size=80))
@settings(max_examples=800, deadline=None)
def test_fast_parsers_answer_as_the_careful_ones_on_any_bytes(raw: bytes) -> None:
    _same(raw)
    _same(b"GET / HTTP/1.1\r\n" + raw + b"\r\n\r\n")
    _same(b"HTTP/1.1 200 OK\r\nX: " + raw + b"\r\n\r\n")


def test_the_fast_path_is_taken_for_an_ordinary_head(monkeypatch) -> None:
    """Guards the point of the fast path: a usual head never reaches the careful parser."""
    def refuse(head):
        raise AssertionError("careful parser used")
    monkeypatch.setattr(http1, "_parse_request_head", refuse)
    monkeypatch.setattr(http1, "_parse_response_head", refuse)
    rh = http1.parse_request_head(b"GET /v1/info HTTP/1.1\r\nHost: a\r\nx-new-name-1: v\r\n\r\n")
    assert rh.headers["X-New-Name-1"] == "v"
    assert http1.parse_response_head(b"HTTP/1.1 200 OK\nContent-Length: 0\n\n").code == 200


def test_tornado_headers_are_stored_as_the_fast_parsers_fill_them() -> None:
    """The fast parsers set ``_as_list`` (normalised name → values) and an empty
    ``_combined_cache`` on an ``HTTPHeaders`` made without ``__init__``. Tornado is pinned in
    constraints.txt; if a new version keeps its headers otherwise, this fails first."""
    assert vars(HTTPHeaders()) == {"_as_list": {}, "_combined_cache": {}}
    head = (b"GET / HTTP/1.1\r\nx-trino-client-tags: a\r\nHost: h\r\nX-TRINO-CLIENT-TAGS: b\r\n"
            b"Set-Cookie: c=1\r\nset-cookie: d=2\r\n\r\n")
    fast = http1.parse_request_head(head).headers
    public = HTTPHeaders()
    for name, value in (("x-trino-client-tags", "a"), ("Host", "h"), ("X-TRINO-CLIENT-TAGS", "b"),
                        ("Set-Cookie", "c=1"), ("set-cookie", "d=2")):
        public.add(name, value)
    assert vars(fast) == {"_as_list": public._as_list, "_combined_cache": {}}
    for h in (fast, public):   # both must go on behaving alike when changed afterwards
        h.add("Host", "h2")
        h["X-New"] = "n"
        del h["set-cookie"]
    for h in (fast, public):
        assert h["host"] == "h,h2" and h.get_list("X-Trino-Client-Tags") == ["a", "b"]
    assert list(fast.get_all()) == list(public.get_all())
    assert list(fast.copy().get_all()) == list(public.get_all())
    assert fast.pairs() == list(public.get_all())   # the relay's one-list form of get_all


@pytest.mark.parametrize("head", [
    b"GET / HTTP/1.1\r\nA: b\x00c\r\n\r\n",
    b"GET / HTTP/1.1\r\nA: b\rc\r\n\r\n",
    b"GET / HTTP/1.1\r\n A: b\r\n\r\n",
    b"GET / HTTP/1.1\r\nA b: c\r\n\r\n",
])
def test_hostile_heads_are_still_refused(head: bytes) -> None:
    with pytest.raises(http1.HTTPParseError):
        http1.parse_request_head(head)


def _old_find_head_end(buf, start=0):
    """find_head_end before the fourth session (scanned the whole buffer for a bare-LF end)."""
    crlf = buf.find(b"\r\n\r\n", start)
    lf = buf.find(b"\n\n", start)
    if crlf < 0:
        return lf + 2 if lf >= 0 else -1
    if 0 <= lf < crlf + 2:
        return lf + 2
    return crlf + 4


@given(st.lists(st.sampled_from([b"\r", b"\n", b"\r\n", b"a", b"\r\n\r\n", b"\n\n", b" "]), max_size=30),
       st.integers(0, 40))
@settings(max_examples=1500, deadline=None)
def test_head_end_is_found_where_it_was(pieces: list[bytes], start: int) -> None:
    buf = b"".join(pieces)
    assert http1.find_head_end(buf, start) == _old_find_head_end(buf, start)
    assert http1.find_head_end(bytearray(buf), start) == _old_find_head_end(buf, start)


# -- the lookups of http1.Headers, body_length's shortcut, serialize_head's one check ----------

HEADER_NAMES = ["Host", "Connection", "Content-Length", "Transfer-Encoding", "X-Trino-User",
                "X-Trino-Transaction-Id", "X-Forwarded-Host", "Expect", "Www-Authenticate", "Te", "A"]
SPELLINGS = st.sampled_from(HEADER_NAMES).flatmap(
    lambda n: st.sampled_from([n, n.lower(), n.upper(), n.swapcase()]))
VALUES = st.text(alphabet="abc 0123,;=-", max_size=8).map(str.strip)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(SPELLINGS, VALUES), max_size=8), st.lists(SPELLINGS, min_size=1, max_size=6))
def test_headers_lookups_answer_as_tornados(pairs, asked) -> None:
    head = ("GET / HTTP/1.1\r\n" + "".join(f"{n}: {v}\r\n" for n, v in pairs) + "\r\n").encode()
    ours = http1.parse_request_head(head).headers
    theirs = HTTPHeaders()
    for n, v in pairs:
        theirs.add(n, v)
    assert type(ours) is http1.Headers
    for name in asked + ["Not-There", "not-there"]:
        assert ours.get(name) == theirs.get(name)
        assert ours.get(name, "d") == theirs.get(name, "d")
        assert ours.get_list(name) == theirs.get_list(name)
        assert (name in ours) == (name in theirs)
    assert (5 in ours) is False


@settings(max_examples=300)
@given(st.lists(st.tuples(st.sampled_from(["Content-Length", "content-length", "Transfer-Encoding"]),
                          st.sampled_from(["5", "05", " 5", "5, 5", "5,6", "-1", "x", "", "chunked",
                                           "gzip, chunked", "5\xb2", "\xb9", "99999999999999999999"])),
                max_size=3))
def test_body_length_shortcut_answers_as_every_rule_checked(pairs) -> None:
    h = http1.parse_request_head(
        ("POST / HTTP/1.1\r\n" + "".join(f"{n}: {v}\r\n" for n, v in pairs) + "\r\n").encode("latin-1")).headers

    def outcome(fn):
        try:
            return fn(h)
        except http1.HTTPParseError as e:
            return ("error", str(e))
    assert outcome(http1.body_length) == outcome(http1._body_length)


def _serialized_line_by_line(first: str, pairs: list[tuple[str, str]]) -> bytes:
    """serialize_head as it was: each name and value checked on its own."""
    parts = [first]
    for name, value in pairs:
        value = str(value)
        if "\n" in value or "\r" in value or "\n" in name or "\r" in name:
            raise ValueError("illegal line break")
        parts.append(f"{name}: {value}")
    parts.append("\r\n")
    return "\r\n".join(parts).encode("latin-1")


@settings(max_examples=300)
@given(st.lists(st.tuples(st.text(alphabet="Ab-\r\n", max_size=5), st.text(alphabet="x \r\n", max_size=5)),
                max_size=5))
def test_serialize_head_refuses_what_it_refused_and_writes_what_it_wrote(pairs) -> None:
    try:
        expected: object = _serialized_line_by_line("HTTP/1.1 200 OK", pairs)
    except ValueError:
        expected = ValueError
    try:
        got: object = http1.serialize_head("HTTP/1.1 200 OK", pairs)
    except ValueError:
        got = ValueError
    assert got == expected


def _parsed(parse, head: bytes):
    """What a request head parses to (with its body length), or the error, comparable."""
    try:
        rh, length = parse(head)
    except Exception as e:   # noqa: BLE001
        return ("error", type(e), str(e))
    h = rh.headers
    return tuple(rh[:-1]), list(h.get_all()), {n: h.get_list(n) for n in h}, length


def _fresh(head: bytes):
    rh = http1.parse_request_head(head)
    return rh, http1.body_length(rh.headers)


REQUEST_LINES = st.sampled_from([
    "GET /_r/t/v1/statement/executing/q/y/2 HTTP/1.1", "GET /x HTTP/1.0", "POST /v1/statement HTTP/1.1",
    "GET /a\x00b HTTP/1.1", "GET /a\rb HTTP/1.1", "GET /a\tb HTTP/1.1", "GET  /x HTTP/1.1", "BREW /x HTTP/1.1",
    "GET /x HTTP/2.0", "GET /\x7f HTTP/1.1", "GET /\xff HTTP/1.1", "", "GET /x HTTP/1.1\r", "GET /x"])


@given(heads(), REQUEST_LINES, st.sampled_from(["\r\n", "\n", "\r", "\r\r\n"]), st.booleans())
@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@example(b"GET /a HTTP/1.1\r\nHost: h\r\nX: 1\r\n\r\n", "GET /b HTTP/1.1", "\r\n", True)
@example(b"GET /a HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\n", "GET /b\rc HTTP/1.1", "\r\n", True)
@example(b"GET /a HTTP/1.1\nHost: h\n\n", "GET /b HTTP/1.1", "\r\n", True)
def test_repeated_header_lines_parse_as_a_fresh_head(kept: bytes, line: str, eol: str, same: bool) -> None:
    """``RepeatedHeads`` answers every head as ``parse_request_head`` and ``body_length`` do,
    whether its header lines repeat the kept head's (``same``: the kept head with another
    request line, the case it is made for) or not, hostile request lines included."""
    rh = http1.parse_request_head(kept) if _parsed(_fresh, kept)[0] != "error" else None
    if rh is None:
        return
    memo = http1.RepeatedHeads()
    memo.keep(kept, rh, http1.body_length(rh.headers))
    nl = kept.find(b"\n") + 1
    head = (line + eol).encode("latin-1") + kept[nl:] if same else kept
    got = _parsed(lambda h: memo.parse(h)[:2], head)
    assert got == _parsed(_fresh, head)
    plain = eol in ("\r\n", "\n") and http1._plain_request_line(line) is not None \
        and not any((c < " " and c != "\t") or c == "\x7f" for c in line)
    if same and plain and got[0] != "error" and kept[:1] not in (b"\r", b"\n") and b"\n" in kept:
        assert memo.parse(head)[2]   # and the case it is made for does reuse them


def test_repeated_header_lines_are_reused_and_dropped() -> None:
    first = b"GET /_r/t/1 HTTP/1.1\r\nHost: gw\r\nX-Trino-User: alice\r\n\r\n"
    memo = http1.RepeatedHeads()
    rh, length, reused = memo.parse(first)
    assert not reused
    memo.keep(first, rh, length)
    again, _, reused = memo.parse(b"GET /_r/t/2 HTTP/1.1\r\nHost: gw\r\nX-Trino-User: alice\r\n\r\n")
    assert reused and again.headers is rh.headers and again.target == "/_r/t/2"
    other, _, reused = memo.parse(b"GET /_r/t/3 HTTP/1.1\r\nHost: gw\r\nX-Trino-User: bob\r\n\r\n")
    assert not reused and other.headers["X-Trino-User"] == "bob"
    memo.drop()
    _, _, reused = memo.parse(first)
    assert not reused


RESPONSE_LINES = st.one_of(header_lines(), st.sampled_from([
    "Date: Fri, 04 Dec 2026 17:00:00 GMT", "Date:Fri", "date: Fri", "Date:  Fri \t", "Content-Length: 5",
    "Content-Length: 12", "content-length: 5", "Content-Length:  5", "Content-Length: 5, 5",
    "Transfer-Encoding: chunked", "Content-Type: application/json", "Vary: Accept-Encoding",
    "Connection: close"]))
NEW_VALUES = st.one_of(st.sampled_from(["0", "17", "007", "5", "", " 5", "5 ", "-1", "5\x00", "\xb2",
                                        "Sat, 05 Dec 2026 00:00:00 GMT"]), st.text(VALUE_CHARS, max_size=8))


@st.composite
def response_heads(draw) -> bytes:
    status = draw(st.sampled_from(["HTTP/1.1 200 OK", "HTTP/1.1 404 Not Found", "HTTP/1.0 200 OK",
                                   "HTTP/1.1 200 "]))
    eol = draw(st.sampled_from(["\r\n", "\r\n", "\r\n", "\n"]))
    lines = draw(st.lists(RESPONSE_LINES, max_size=7))
    return (status + "".join(eol + line for line in lines) + eol + eol).encode("latin-1")


def _value_replaced(head: bytes, prefix: bytes, value: str) -> bytes:
    i = head.find(prefix)
    if i < 0:
        return head
    i += len(prefix)
    return head[:i] + value.encode("latin-1") + head[head.find(b"\r\n", i):]


def _fresh_response(head: bytes):
    rh = http1.parse_response_head(head)
    return rh, http1.body_length(rh.headers)


@given(response_heads(), NEW_VALUES, NEW_VALUES, st.integers(0, 2), response_heads())
@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@example(b"HTTP/1.1 200 OK\r\nDate: a\r\nContent-Length: 5\r\n\r\n", "Sat", "17", 0,
         b"HTTP/1.1 200 OK\r\n\r\n")
@example(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nDate: a\r\n\r\n", "S\x00t", "17", 0,
         b"HTTP/1.1 200 OK\r\n\r\n")
@example(b"HTTP/1.1 200 OK\r\nDate: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n", "b", "6", 0,
         b"HTTP/1.1 200 OK\r\n\r\n")
def test_repeated_response_heads_parse_as_a_fresh_head(kept: bytes, date: str, length: str, how: int,
                                                      other: bytes) -> None:
    """``RepeatedResponses`` answers every head as ``parse_response_head`` and ``body_length``
    do: the kept head with new ``Date`` and ``Content-Length`` values (hostile ones included,
    the case it is made for), the kept head with only a new length, or another head."""
    try:
        rh, _ = _fresh_response(kept)
    except http1.HTTPParseError:
        return
    memo = http1.RepeatedResponses()
    kept_now = memo.keep(kept, rh)
    if how == 0:
        head = _value_replaced(_value_replaced(kept, b"\r\nDate: ", date), b"\r\nContent-Length: ", length)
    elif how == 1:
        head = _value_replaced(kept, b"\r\nContent-Length: ", length)
    else:
        head = other
    got = _parsed(lambda h: memo.parse(h)[:2], head)
    assert got == _parsed(_fresh_response, head)
    if kept_now and how == 0 and got[0] != "error" and length.isdigit() and length.isascii() \
            and "\r" not in date and "\n" not in date:
        assert memo.parse(head)[2]   # and the case it is made for does reuse the parse


def test_repeated_response_heads_are_reused_and_not_kept_when_they_cannot_be() -> None:
    first = b"HTTP/1.1 200 OK\r\nDate: Fri, 04 Dec 2026 17:00:00 GMT\r\nContent-Type: application/json\r\n" \
            b"Content-Length: 12\r\n\r\n"
    memo = http1.RepeatedResponses()
    rh, length, reused = memo.parse(first)
    assert (length, reused) == (12, False) and memo.keep(first, rh)
    again, length, reused = memo.parse(first.replace(b"17:00:00", b"17:00:01").replace(b": 12", b": 345"))
    assert reused and length == 345 and again.headers is rh.headers
    assert again.headers["Date"] == "Fri, 04 Dec 2026 17:00:01 GMT" and again.headers["Content-Length"] == "345"
    other, _, reused = memo.parse(first.replace(b"json", b"xml"))
    assert not reused and other.headers["Content-Type"] == "application/xml"
    for head in (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                 b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\n",
                 b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n",
                 b"HTTP/1.1 200 OK\r\nDate: a\r\nDate: b\r\nContent-Length: 3\r\n\r\n",
                 b"HTTP/1.1 200 OK\nContent-Length: 3\r\n\r\n"):
        assert not memo.keep(head, http1.parse_response_head(head)), head
        assert memo.derived is None and not memo.parse(head)[2]
