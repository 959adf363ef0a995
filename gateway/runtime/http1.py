"""HTTP/1.1 framing for the proxy's server and backend client: pure functions, no sockets.

Tornado's own HTTP/1.1 layer validates every header line with several regular expressions and
moves each message through a chain of coroutines; on the proxy's path that was most of the
time spent per request (see docs/benchmarks.md). These helpers parse a whole head in one pass,
check it with cheap tests that reject the same dangerous input (control characters, line
folding, malformed names, conflicting lengths), and decode chunked bodies incrementally.
"""
from __future__ import annotations

import re
from typing import Any, Iterable, NamedTuple

from tornado.httputil import HTTPHeaders, _normalize_header

__all__ = [
    "HTTPParseError", "RequestHead", "ResponseHead", "find_head_end", "parse_request_head",
    "parse_response_head", "parse_headers", "RepeatedHeads", "RepeatedResponses", "body_length", "serialize_head", "ChunkedDecoder",
    "format_chunk", "LAST_CHUNK", "has_control_chars", "header_pairs",
]

LAST_CHUNK = b"0\r\n\r\n"
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_BAD_VALUE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_HEX = re.compile(rb"[0-9a-fA-F]{1,16}")
_MAX_KNOWN = 4096
# Header names already validated (clients repeat them), each with its ``Http-Header-Case``
# spelling, the key ``HTTPHeaders`` files it under.
_known_names: dict[str, str] = {}
# Every control character: a head holding none but LF and the CR of a CRLF needs no per-value
# check (one pass over the whole head instead of a regular expression per line).
_CTL_BYTES = bytes([*range(0, 0x09), *range(0x0a, 0x20), 0x7f])
_METHODS = frozenset({"GET", "POST", "DELETE", "HEAD", "PUT", "OPTIONS", "PATCH"})
_VERSIONS = ("HTTP/1.1", "HTTP/1.0")


class HTTPParseError(ValueError):
    """A malformed message; the text says what is wrong (sent back as a 400 reason)."""


class RequestHead(NamedTuple):
    method: str
    target: str
    version: str
    headers: HTTPHeaders


class ResponseHead(NamedTuple):
    version: str
    code: int
    reason: str
    headers: HTTPHeaders


class Headers(HTTPHeaders):
    """``HTTPHeaders`` as the parsers here fill them, with the lookups the request path makes
    (``get``, ``get_list``, ``in``) read straight from the name's value list.

    Tornado's ``get`` comes from ``Mapping``: a name that is not there costs a ``KeyError``
    raised and caught (a poll asks for several such names: ``Connection``,
    ``X-Trino-Transaction-Id``, ...), and one that is there is joined and cached. Here a name
    already in ``Http-Header-Case`` (as the gateway's code writes them) is looked up once; any
    other spelling is normalised first, as Tornado does. The values are the same strings
    Tornado would give (tests/test_http1_fast.py compares them)."""

    def _values(self, name: str) -> list[str] | None:
        values = self._as_list.get(name)
        if values is None:
            norm = _known_names.get(name) or _normalize_header(name)
            if norm != name:
                values = self._as_list.get(norm)
        return values

    def get(self, name: str, default: Any = None) -> Any:  # type: ignore[override]
        values = self._values(name)
        if not values:
            return default
        return values[0] if len(values) == 1 else ",".join(values)

    def get_list(self, name: str) -> list[str]:
        values = self._values(name)
        return values if values is not None else []

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self._values(name) is not None

    def pairs(self) -> list[tuple[str, str]]:
        """Every line as a (name, value) pair, in order: ``get_all`` as one list."""
        return [(name, value) for name, values in self._as_list.items() for value in values]


def header_pairs(headers: HTTPHeaders) -> list[tuple[str, str]]:
    """``headers``'s lines as (name, value) pairs, in order: ``list(headers.get_all())``, in one
    call for the parsers' headers (Tornado's ``get_all`` is a generator: a call per line)."""
    return headers.pairs() if type(headers) is Headers else list(headers.get_all())


def has_control_chars(value: str) -> bool:
    """Whether a header value holds a character that could split or corrupt a head."""
    return _BAD_VALUE.search(value) is not None


def find_head_end(buf: bytes | bytearray, start: int = 0) -> int:
    """Index just past the blank line ending a head, or -1 if the head is incomplete.

    CRLF is the norm; a bare LF is accepted as Tornado (and RFC 9112 §2.2) does.
    """
    crlf = buf.find(b"\r\n\r\n", start)
    if crlf < 0:
        lf = buf.find(b"\n\n", start)
        return lf + 2 if lf >= 0 else -1
    # A bare-LF blank line counts only if it starts before the CRLF one: look no further (a
    # body that came with the head is not scanned to its end).
    lf = buf.find(b"\n\n", start, crlf + 3)
    return lf + 2 if lf >= 0 else crlf + 4


def _valid_name(name: str) -> bool:
    return name in _known_names or _learn_name(name) is not None


def _learn_name(name: str) -> str | None:
    """The ``Http-Header-Case`` spelling of a valid header name (remembered), else None."""
    if not _TOKEN.fullmatch(name):
        return None
    probe = HTTPHeaders()
    probe[name] = ""          # Tornado's own normalisation, through its public interface
    norm: str = next(iter(probe))
    if len(_known_names) < _MAX_KNOWN:
        _known_names[name] = norm
    return norm


def parse_headers(lines: list[str]) -> HTTPHeaders:
    """Header lines (without line ends) → ``HTTPHeaders``; raises ``HTTPParseError``."""
    h = Headers()
    known = _known_names
    bad_value = _BAD_VALUE.search
    for line in lines:
        if not line:
            continue
        if line[0] in " \t":
            raise HTTPParseError("header line starts with whitespace (line folding is not supported)")
        name, sep, value = line.partition(":")
        if not sep:
            raise HTTPParseError(f"header line without a colon: {line[:60]!r}")
        if name not in known and not _valid_name(name):
            raise HTTPParseError(f"invalid header name {name[:60]!r}")
        value = value.strip(" \t")
        if bad_value(value):
            raise HTTPParseError(f"invalid character in the value of header {name}")
        if name in h:
            h.add(name, value)
        else:
            h[name] = value
    return h


def _lines(head: bytes | bytearray) -> list[str]:
    text = bytes(head).decode("latin-1")
    lines = text.split("\n")
    return [ln[:-1] if ln.endswith("\r") else ln for ln in lines]


def _clean_lines(head: bytes | bytearray) -> list[str] | None:
    """The lines of a head that holds no control character but its line ends (LF or CRLF) and
    HTAB; None for any other head, which the careful parser then reads (and refuses)."""
    data = head if type(head) is bytes else bytes(head)
    lf = data.count(b"\n")
    crlf = data.count(b"\r\n")
    if len(data) - len(data.translate(None, _CTL_BYTES)) != lf + crlf:
        return None   # a CR that ends no line, NUL, DEL, ...
    text = data.decode("latin-1")
    if crlf == lf:
        return text.split("\r\n")
    if not crlf:
        return text.split("\n")
    return [ln[:-1] if ln.endswith("\r") else ln for ln in text.split("\n")]


def _headers_of(lines: list[str]) -> HTTPHeaders | None:
    """``parse_headers`` for lines without control characters, or None when a line needs the
    careful parser (an unknown or invalid name, a missing colon, line folding).

    Fills the ``HTTPHeaders`` directly (``_as_list``: normalised name → values, the combined
    values computed on first read), as ``HTTPHeaders.add`` would after its checks, which these
    lines already passed; tests/test_http1_fast.py fails if Tornado stores headers otherwise."""
    known = _known_names
    by_name: dict[str, list[str]] = {}
    for line in lines:
        if not line:
            continue
        name, sep, value = line.partition(":")
        try:
            norm = known[name]
        except KeyError:
            norm = _learn_name(name)   # a name with leading whitespace is no token: folding
            if norm is None:
                return None
        if not sep:
            return None
        if norm in by_name:
            by_name[norm].append(value.strip(" \t"))
        else:
            by_name[norm] = [value.strip(" \t")]
    h = Headers.__new__(Headers)
    h._as_list = by_name
    h._combined_cache = {}
    return h


def _plain_request_line(line: str) -> list[str] | None:
    """[method, target, version] of a request line (without its line end and control
    characters) the fast parse accepts, else None (the careful parser decides)."""
    parts = line.split(" ")
    if len(parts) == 3 and parts[0] in _METHODS and parts[1] and parts[2] in _VERSIONS:
        return parts
    return None


def parse_request_head(head: bytes | bytearray) -> RequestHead:
    """A request head (request line and headers, up to the blank line) → ``RequestHead``."""
    lines = _clean_lines(head)
    if lines is not None and lines[0]:
        parts = _plain_request_line(lines[0])
        if parts is not None:
            headers = _headers_of(lines[1:])
            if headers is not None:
                return RequestHead(parts[0], parts[1], parts[2], headers)
    return _parse_request_head(head)


class RepeatedHeads:
    """The request heads of one connection, parsed; a head whose header lines are, byte for
    byte, those of the head ``keep`` was last given reuses that head's parsed headers.

    A client polling a query sends the same header lines with every request (its session's
    user, source, catalog, ...); only the request line changes. Comparing the bytes costs one
    ``memcmp``; parsing them again cost a split, a partition and a strip per line, and a new
    header object each time. Only a head whose request line the fast parse accepts reuses
    anything (everything else is parsed as ever), and the headers are only reused for those
    who promised not to change them (``keep``: the token follow-ups, gateway/proxy/follow.py)."""

    __slots__ = ("block", "headers", "length")

    def __init__(self) -> None:
        self.block: bytes | None = None     # the header lines of the kept head (after its request line)
        self.headers: HTTPHeaders | None = None
        self.length: int | None = None

    def parse(self, head: bytes) -> tuple[RequestHead, int | None, bool]:
        """(the head, its body length as ``body_length`` says, whether its headers are the
        kept ones); raises ``HTTPParseError`` as ``parse_request_head`` does."""
        rh = self.reuse(head)
        if rh is not None:
            return rh, self.length, True
        rh = parse_request_head(head)
        return rh, body_length(rh.headers), False

    def reuse(self, head: bytes) -> RequestHead | None:
        """The head, when its header lines are the kept ones and its request line is plain
        (its body length is then ``length``); None, having parsed nothing, for any other."""
        block = self.block
        if block is not None:
            nl = head.find(b"\n") + 1
            if head[nl:] == block:
                line = head[:nl]
                ends = 2 if line.endswith(b"\r\n") else 1
                # no control character in the request line but its line end
                if len(line) - len(line.translate(None, _CTL_BYTES)) == ends:
                    parts = _plain_request_line(line[:-ends].decode("latin-1"))
                    if parts is not None:
                        return RequestHead(parts[0], parts[1], parts[2], self.headers)  # type: ignore[arg-type]
        return None

    def keep(self, head: bytes, rh: RequestHead, length: int | None) -> None:
        """Reuse ``rh``'s headers for the next heads with the same header lines (whoever gets
        them must not change them)."""
        nl = head.find(b"\n")
        if nl < 0 or head[0] in b"\r\n":
            # no line end, or empty lines before the request line (allowed): the lines after
            # the first are not only header lines
            self.drop()
            return
        self.block = head[nl + 1:]
        self.headers = rh.headers
        self.length = length

    def drop(self) -> None:
        self.block = self.headers = None


def _parse_request_head(head: bytes | bytearray) -> RequestHead:
    """``parse_request_head`` for any head, checking each line (and saying what is wrong)."""
    lines = _lines(head)
    i = 0
    while i < len(lines) and not lines[i]:
        i += 1   # RFC 9112 §2.2: ignore empty lines before the request line
    if i == len(lines):
        raise HTTPParseError("empty request")
    parts = lines[i].split(" ")
    if len(parts) != 3:
        raise HTTPParseError("malformed request line")
    method, target, version = parts
    if not _TOKEN.fullmatch(method):
        raise HTTPParseError("malformed request method")
    if version not in _VERSIONS:
        raise HTTPParseError(f"unsupported HTTP version {version[:20]!r}")
    if not target or _BAD_VALUE.search(target) or " " in target:
        raise HTTPParseError("malformed request target")
    return RequestHead(method, target, version, parse_headers(lines[i + 1:]))


def parse_response_head(head: bytes | bytearray) -> ResponseHead:
    """A response head (status line and headers) → ``ResponseHead``."""
    lines = _clean_lines(head)
    if lines is not None and lines[0]:
        version, _, rest = lines[0].partition(" ")
        code_text, _, reason = rest.partition(" ")
        if version.startswith("HTTP/1.") and len(code_text) == 3 and code_text.isdigit():
            headers = _headers_of(lines[1:])
            if headers is not None:
                return ResponseHead(version, int(code_text), reason, headers)
    return _parse_response_head(head)


class RepeatedResponses:
    """The response heads of one backend, parsed; a head that is, byte for byte, the one
    ``keep`` was last given but for the values of its ``Date`` and ``Content-Length`` lines
    reuses that parse, those two values updated in it.

    A coordinator answers every poll with the same status line and header lines but for these
    two values. Comparing costs two searches and one ``memcmp``; parsing cost a split, a
    partition and a strip per line and a new header object. Only a head with exactly one
    ``Content-Length`` line (spelled so, plain digits), at most one ``Date`` line (spelled so),
    no ``Transfer-Encoding`` and CRLF line ends is kept. The header object a repeat returns is
    the kept one, changed in place: whoever gets it must be done with it before the next parse
    (the direct exchanges of gateway/proxy/client.py hand it on and forget it in one call).
    ``derived`` is for what a consumer derived from the kept head's other lines (None after each
    ``keep``)."""

    __slots__ = ("masked", "head", "derived")

    def __init__(self) -> None:
        self.masked: bytes | None = None    # the kept head without its two values
        self.head: ResponseHead | None = None
        self.derived: Any = None

    @staticmethod
    def _mask(head: bytes) -> tuple[bytes, bytes, bytes | None] | None:
        """(the head without the values of its first ``Content-Length`` and ``Date`` lines,
        the length's digits, the date) or None when the head has no plain such length line."""
        c = head.find(b"\r\nContent-Length: ")
        if c < 0:
            return None
        c += 18
        ce = head.find(b"\r\n", c)
        length = head[c:ce]
        if not length.isdigit():   # (bytes: ASCII digits only)
            return None
        d = head.find(b"\r\nDate: ")
        if d < 0:
            return head[:c] + head[ce:], length, None
        d += 8
        de = head.find(b"\r\n", d)
        if d < c:
            return head[:d] + head[de:c] + head[ce:], length, head[d:de]
        return head[:c] + head[ce:d] + head[de:], length, head[d:de]

    def parse(self, head: bytes) -> tuple[ResponseHead, int | None, bool]:
        """(the head, its body length as ``body_length`` says, whether it is the kept head with
        new values); raises ``HTTPParseError`` as ``parse_response_head`` does."""
        if self.masked is not None:
            mask = self._mask(head)
            if mask is not None and mask[0] == self.masked:
                masked, length, date = mask
                rh = self.head
                lists = rh.headers._as_list   # type: ignore[union-attr]
                lists["Content-Length"] = [length.decode()]
                if date is not None:
                    if len(date) != len(date.translate(None, _CTL_BYTES)):
                        return self._fresh(head)   # a control character: refused as ever
                    lists["Date"] = [date.decode("latin-1").strip(" \t")]
                rh.headers._combined_cache = {}   # type: ignore[union-attr]
                return rh, int(length), True   # type: ignore[return-value]
        return self._fresh(head)

    @staticmethod
    def _fresh(head: bytes) -> tuple[ResponseHead, int | None, bool]:
        rh = parse_response_head(head)
        return rh, body_length(rh.headers), False

    def keep(self, head: bytes, rh: ResponseHead) -> bool:
        """Reuse ``rh`` (``head`` parsed) for the next heads that differ only in those two
        values, if its lines allow (see the class); whether it is kept."""
        self.masked = self.head = self.derived = None
        mask = self._mask(head)
        lists = getattr(rh.headers, "_as_list", None)
        if mask is None or lists is None or "Transfer-Encoding" in lists or type(rh.headers) is not Headers:
            return False
        masked, length, date = mask
        if lists.get("Content-Length") != [length.decode()]:
            return False   # another Content-Length line, or one spelled otherwise
        if lists.get("Date") != (None if date is None else [date.decode("latin-1").strip(" \t")]):
            return False
        if head.count(b"\n") != head.count(b"\r\n"):
            return False   # a bare LF: the lines are not what the search assumes
        self.masked, self.head = masked, rh
        return True


def _parse_response_head(head: bytes | bytearray) -> ResponseHead:
    """``parse_response_head`` for any head, checking each line."""
    lines = _lines(head)
    i = 0
    while i < len(lines) and not lines[i]:
        i += 1
    if i == len(lines):
        raise HTTPParseError("empty response")
    version, _, rest = lines[i].partition(" ")
    code_text, _, reason = rest.partition(" ")
    if not version.startswith("HTTP/1.") or len(code_text) != 3 or not code_text.isdigit():
        raise HTTPParseError(f"malformed status line {lines[i][:60]!r}")
    return ResponseHead(version, int(code_text), reason, parse_headers(lines[i + 1:]))


def body_length(headers: HTTPHeaders) -> int | None:
    """How the body is framed: its length, -1 for chunked, None when no length is given.

    Raises ``HTTPParseError`` for conflicting or invalid framing (request smuggling vectors).
    """
    lists = getattr(headers, "_as_list", None)
    if lists is not None and "Transfer-Encoding" not in lists:
        # The usual head (a poll: neither line; an answer: one plain length), decided
        # without the general checks below, which give the same result for it.
        cl = lists.get("Content-Length")
        if cl is None:
            return None
        if len(cl) == 1 and cl[0].isdigit() and cl[0].isascii():
            return int(cl[0])
    return _body_length(headers)


def _body_length(headers: HTTPHeaders) -> int | None:
    """``body_length`` for any head, every rule checked."""
    te = headers.get_list("Transfer-Encoding")
    cl = headers.get_list("Content-Length")
    if te:
        codings = [t.strip().lower() for v in te for t in v.split(",") if t.strip()]
        if codings != ["chunked"]:
            raise HTTPParseError(f"unsupported Transfer-Encoding {', '.join(te)[:60]!r}")
        if cl:
            raise HTTPParseError("both Content-Length and Transfer-Encoding")
        return -1
    if not cl:
        return None
    values = {p.strip() for v in cl for p in v.split(",")}
    if len(values) != 1:
        raise HTTPParseError("conflicting Content-Length values")
    text = values.pop()
    if not text.isdigit() or not text.isascii():
        raise HTTPParseError(f"invalid Content-Length {text[:30]!r}")
    return int(text)


def serialize_head(first_line: str, headers: HTTPHeaders | Iterable[tuple[str, str]]) -> bytes:
    """The start line and headers (an ``HTTPHeaders`` or name/value pairs) as bytes, ending
    with the blank line."""
    parts = [first_line]
    # (a list first: isinstance against HTTPHeaders, a Mapping, goes through ABCMeta's check)
    pairs = headers if type(headers) is list else (
        header_pairs(headers) if isinstance(headers, HTTPHeaders) else headers)
    for name, value in pairs:
        parts.append(f"{name}: {value}")
    parts.append("\r\n")
    text = "\r\n".join(parts)
    # One look at the whole head for a line break inside a name or value: the head has as
    # many CR and LF characters as it has line ends, or one of them does not end a line.
    ends = len(parts)   # the separators, and the blank line's own CRLF
    if text.count("\n") != ends or text.count("\r") != ends:
        for line in parts[1:-1]:
            if "\n" in line or "\r" in line:
                raise ValueError(f"illegal line break in header {line.partition(':')[0]!r}")
    return text.encode("latin-1")


def format_chunk(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data) if data else b""


class ChunkedDecoder:
    """Decodes a chunked body incrementally: ``feed(data)`` returns (payload pieces, leftover).

    ``done`` turns true after the last chunk and its trailers; ``leftover`` is what followed
    the body in ``data`` (the next message on a keep-alive connection).
    """

    __slots__ = ("_buf", "_remaining", "_state", "done", "max_line")

    _SIZE, _DATA, _DATA_END, _TRAILER = range(4)

    def __init__(self, max_line: int = 4096) -> None:
        self._buf = b""
        self._remaining = 0
        self._state = self._SIZE
        self.done = False
        self.max_line = max_line

    def feed(self, data: bytes) -> tuple[list[bytes], bytes]:
        buf = self._buf + data if self._buf else data
        self._buf = b""
        out: list[bytes] = []
        pos = 0
        n = len(buf)
        while pos < n and not self.done:
            st = self._state
            if st == self._DATA:
                take = min(self._remaining, n - pos)
                out.append(buf[pos:pos + take])
                pos += take
                self._remaining -= take
                if self._remaining == 0:
                    self._state = self._DATA_END
                continue
            eol = buf.find(b"\n", pos)
            if eol < 0:
                if n - pos > self.max_line:
                    raise HTTPParseError("chunk header line too long")
                break
            line = buf[pos:eol].rstrip(b"\r")
            pos = eol + 1
            if st == self._SIZE:
                size_text = line.split(b";", 1)[0].strip(b" \t")
                if not _HEX.fullmatch(size_text):
                    raise HTTPParseError(f"invalid chunk size {size_text[:20]!r}")
                size = int(size_text, 16)
                if size == 0:
                    self._state = self._TRAILER
                else:
                    self._remaining = size
                    self._state = self._DATA
            elif st == self._DATA_END:
                if line:
                    raise HTTPParseError("missing line end after chunk data")
                self._state = self._SIZE
            else:  # trailers: ignored until the blank line
                if not line:
                    self.done = True
        rest = buf[pos:]
        if not self.done:
            self._buf = bytes(rest)
            return out, b""
        return out, bytes(rest)
