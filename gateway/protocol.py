"""Trino client-protocol facts the gateway acts on, as pure functions.

Which request belongs to which query (or transaction, spooled segment, OAuth2 exchange), how
URIs in backend responses are pointed back at the gateway, which headers are hop-by-hop, and
what a Trino-shaped failure looks like. No sockets here: handlers call these.
Facts come from ``shared/trino-protocol.md``; section numbers below refer to it.
"""
from __future__ import annotations

import hashlib
import json
import random
import re
import threading
import time
from dataclasses import dataclass
from typing import Iterable
from urllib.parse import unquote, urlsplit

from tornado.httputil import HTTPHeaders

# §1.5: YYYYMMDD_HHMMSS_NNNNN_ccccc. Slightly looser in the coordinator id so a build that draws
# from a different alphabet still routes.
QUERY_ID = r"\d{8}_\d{6}_\d{5}_[a-z0-9]{5}"
_QUERY_ID_RE = re.compile(rf"^{QUERY_ID}$")

# Request kinds: what the gateway needs to know to route a request.
STATEMENT = "statement"        # POST /v1/statement: a new query
QUERY = "query"                # anything naming a query id
SPOOL = "spool"                # /v1/spooled/{download,ack}/<id>
OAUTH_TOKEN = "oauth"          # /oauth2/token/<authId>
OAUTH_INITIATE = "oauth-initiate"  # /oauth2/token/initiate/<sha256hex(authId)>
OAUTH_CALLBACK = "oauth-callback"  # /oauth2/callback (no id: routed by a signed cookie)
TRANSACTION = "transaction"    # X-Trino-Transaction-Id of a statement (never in a path)
OTHER = "other"                # not tied to a query: any backend of the default group

# A statement's URIs (nextUri, partialCancelUri) up to the query id that follows (also read off
# a page's bytes: gateway/proxy/exchange.py ``TokenMinter.prefix_bytes``).
STATEMENT_URI_PATH = r"/v1/statement/(?:queued|executing)/(?:partialCancel/)?"
_PATH_RULES: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(rf"^{STATEMENT_URI_PATH}({QUERY_ID})(?:/|$)"), QUERY),
    (re.compile(rf"^/v1/query/({QUERY_ID})(?:/|$)"), QUERY),
    (re.compile(rf"^/ui/api/query/({QUERY_ID})(?:/|$)"), QUERY),
    (re.compile(rf"^/v1/spooled/(?:download|ack)/([^/]+)$"), SPOOL),
    (re.compile(r"^/oauth2/token/initiate/([0-9a-fA-F]{64})$"), OAUTH_INITIATE),
    (re.compile(r"^/oauth2/token/([0-9a-fA-F-]{8,64})$"), OAUTH_TOKEN),
)
# Trino's web UI: the query page ``/ui/query.html?<qid>`` and the login page a coordinator sends
# a browser to from there, ``/ui/login.html?/ui/query.html?<qid>``.
_UI_PAGE_QID = re.compile(rf"^/ui/(?:query\.html\?|login\.html\?/ui/query\.html\?)({QUERY_ID})")
_KILL_QUERY = re.compile(
    r"^\s*CALL\s+(?:\"?system\"?\s*\.\s*)?\"?runtime\"?\s*\.\s*\"?kill_query\"?\s*\(([^)]*)\)",
    re.IGNORECASE | re.DOTALL)
_QID_LITERAL = re.compile(rf"'({QUERY_ID})'")


@dataclass(frozen=True, slots=True)
class RequestKind:
    kind: str
    key: str | None = None


def is_query_id(text: str) -> bool:
    return bool(_QUERY_ID_RE.match(text))


def classify(method: str, path: str, query: str = "", referer: str | None = None) -> RequestKind:
    """Tell what a client request is about, from its method, path and query string, and for
    Trino's web UI the page that made the request (its ``Referer``)."""
    if path == "/v1/statement":
        return RequestKind(STATEMENT) if method == "POST" else RequestKind(OTHER)
    for pattern, kind in _PATH_RULES:
        m = pattern.match(path)
        if m:
            key = m.group(1)
            if kind == SPOOL:
                key = unquote(key)
            elif kind == OAUTH_INITIATE:
                key = key.lower()
            return RequestKind(kind, key)
    if path.startswith("/ui/"):
        qid = ui_page_query(path, query, referer)
        if qid:
            return RequestKind(QUERY, qid)
    if path == "/oauth2/callback":
        return RequestKind(OAUTH_CALLBACK)
    return RequestKind(OTHER)


def ui_page_query(path: str, query: str, referer: str | None = None) -> str | None:
    """The query a web-UI request belongs to: the one its own URL names (``query.html?<qid>``,
    ``login.html?/ui/query.html?<qid>``), else the one the page that made it names.

    The query page loads scripts and calls ``/ui/api/cluster`` that name no query, and its login
    form posts to ``/ui/login``. Each coordinator signs its UI login cookie with a key of its
    own (unless every one sets the same ``web-ui.shared-secret``), so all of these must reach the
    coordinator that owns the query, or its login is refused there and the browser loops
    between the query and the login page. Browsers send same-origin ``Referer``s in full."""
    m = _UI_PAGE_QID.match(f"{path}?{unquote(query)}")
    if m is None and referer:
        try:
            ref = urlsplit(referer)
        except ValueError:
            return None
        m = _UI_PAGE_QID.match(f"{ref.path}?{unquote(ref.query)}")
    return m.group(1) if m else None


def kill_query_target(sql: str) -> str | None:
    """The query id a ``CALL system.runtime.kill_query(...)`` names, so it reaches its owner."""
    m = _KILL_QUERY.match(sql)
    if not m:
        return None
    ids = _QID_LITERAL.findall(m.group(1))
    return ids[0] if ids else None


# ---------------------------------------------------------------------------------------------
# Headers

HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
    "trailers", "transfer-encoding", "upgrade", "proxy-connection",
})
# Never forwarded to a backend: we set Host ourselves, bodies must arrive uncompressed so URIs can
# be rewritten (§7.4), and Content-Length is recomputed.
REQUEST_DROP = HOP_BY_HOP | {"host", "accept-encoding", "content-length", "expect"}
RESPONSE_DROP = HOP_BY_HOP | {"content-length", "server", "date"}


def connection_tokens(values: Iterable[str]) -> set[str]:
    """Header names listed in Connection, which are hop-by-hop for this message only."""
    out: set[str] = set()
    for v in values:
        out.update(t.strip().lower() for t in v.split(",") if t.strip())
    return out


def forwarded_for(existing: str | None, remote_ip: str) -> str:
    return f"{existing}, {remote_ip}" if existing else remote_ip


def forward_header_pairs(src: Iterable[tuple[str, str]], *, remote_ip: str, base: str, forwarded: bool,
                         trust_forwarded: bool) -> list[tuple[str, str]]:
    """The header lines a backend gets: the client's, minus hop-by-hop ones, plus ``Via`` and
    (for a coordinator that processes them) ``X-Forwarded-*`` describing the gateway's own URL.

    Plain (name, value) pairs: the proxy writes them straight into the request head, which is
    cheaper than building a header object per request (docs/benchmarks.md)."""
    items = src if isinstance(src, list) else list(src)
    out, client_xff, conn = _kept_lines(items, REQUEST_DROP, trust_forwarded)
    if conn:
        listed = connection_tokens(conn)
        if not listed <= REQUEST_DROP:   # Connection names lines of its own (rare): drop them too
            out, client_xff, _ = _kept_lines(items, REQUEST_DROP | listed, trust_forwarded)
    if forwarded:
        proto, _, hostport = base.partition("://")
        if ":" in hostport.rsplit("]", 1)[-1]:
            port = hostport.rsplit(":", 1)[1]
        else:
            port = "443" if proto == "https" else "80"
        out += (("X-Forwarded-For", forwarded_for(client_xff, remote_ip)), ("X-Forwarded-Proto", proto),
                ("X-Forwarded-Host", hostport), ("X-Forwarded-Port", port))
    out.append(("Via", "1.1 trino-gateway"))
    return out


def _kept_lines(items: list[tuple[str, str]], drop: frozenset[str], trust_forwarded: bool
                ) -> tuple[list[tuple[str, str]], str | None, list[str]]:
    """The client's lines a backend gets (not in ``drop``, no ``X-Forwarded-*``), the client's
    X-Forwarded-For if trusted, and the values of its Connection lines: one pass."""
    lower = _lower_names
    out: list[tuple[str, str]] = []
    client_xff = None
    conn: list[str] = []
    for name, value in items:
        lname = lower.get(name)
        if lname is None:
            lname = name.lower()
            if len(lower) < 4096:
                lower[name] = lname
        if lname in drop:
            if lname == "connection":
                conn.append(value)
            continue
        if lname.startswith("x-forwarded-") or lname == "forwarded":
            if lname == "x-forwarded-for" and trust_forwarded:
                client_xff = f"{client_xff}, {value}" if client_xff else value
            continue  # we set our own, and never send them where they earn a 406
        out.append((name, value))
    return out, client_xff, conn


_lower_names: dict[str, str] = {}   # header name → lower case (clients repeat the same names)


def forward_headers(src: Iterable[tuple[str, str]], *, remote_ip: str, base: str, forwarded: bool,
                    trust_forwarded: bool) -> HTTPHeaders:
    """``forward_header_pairs`` as an ``HTTPHeaders``."""
    out = HTTPHeaders()
    for name, value in forward_header_pairs(src, remote_ip=remote_ip, base=base, forwarded=forwarded,
                                            trust_forwarded=trust_forwarded):
        put_header(out, name, value)
    return out


def put_header(headers: HTTPHeaders, name: str, value: str) -> None:
    """``headers.add`` without Tornado's per-line validation (two regular expressions per
    line, a measurable cost on the request path): every name and value given here was parsed
    and checked when it arrived, or is the gateway's own."""
    if name in headers:
        headers.add(name, value)
    else:
        headers[name] = value


def transaction_id(value: str | None) -> str | None:
    """The transaction a request belongs to, from X-Trino-Transaction-Id (NONE means none)."""
    if not value:
        return None
    value = value.strip()
    if not value or value.upper() == "NONE":
        return None
    return value


# ---------------------------------------------------------------------------------------------
# URIs in responses

# The URI-valued keys of a QueryResults document and of spooled segments (§1.2, §3). Matching
# `"key":"` cannot hit text inside a JSON string value, where quotes are escaped. The string's
# rest is written as an unrolled loop (runs of plain characters, then one escape at a time),
# which matches exactly what `(?:[^"\\]|\\.)*` does at a quarter of the cost: that form takes a
# branch per character (tests/test_rewriter_fast.py holds both to the same matches).
_URI_FIELD = re.compile(
    rb'"(nextUri|infoUri|partialCancelUri|uri|ackUri)"\s*:\s*"(https?://[^/"\\]+)([^"\\]*(?:\\.[^"\\]*)*)"')
_ALWAYS_REWRITTEN = {b"nextUri", b"infoUri", b"partialCancelUri"}
_SPOOL_PATH = re.compile(rb"^(?:\\?/)v1(?:\\?/)spooled(?:\\?/)(?:download|ack)(?:\\?/)([^\"?#]+)")
_NEXT_URI_KEY = re.compile(rb'"nextUri"\s*:')
_STATE = re.compile(rb'"state"\s*:\s*"([A-Z_]+)"')
_ERROR_MESSAGE = re.compile(rb'"error"\s*:\s*\{\s*"message"\s*:\s*"((?:[^"\\]|\\.){0,2000})')
_ID = re.compile(rb'"id"\s*:\s*"(' + QUERY_ID.encode() + rb')"')
_URI_KEYS = (b'nextUri"', b'infoUri"', b'partialCancelUri"', b'uri"', b'ackUri"')
_URI_KEY_PREFIXES = frozenset(k[:i] for k in _URI_KEYS for i in range(len(k) + 1))
_MAX_MATCH = 16384   # longest URI field we promise to rewrite across chunk boundaries
_TAIL_KEEP = 65536   # bytes kept to read the final state of a finished query


class UriRewriter:
    """Streams a JSON response body, pointing coordinator URIs at the gateway.

    Works chunk by chunk with a bounded carry, so a 100 MB result page passes through without
    being held in memory. Learns, on the way, the spooled segment ids (to pin their downloads),
    whether the page had a ``nextUri`` and, for the last page, the query's final state.
    Pre-signed object-store URLs in segments are left alone (their signatures would break).

    ``route`` (a ``gateway.proxy.exchange.TokenMinter``) gives the routing-token prefix for a
    path, so that every follow-up URI says which backend owns it; ``infoUri`` gets none (the
    Trino web UI it opens loads its pages and API calls by absolute, token-less paths).
    """

    __slots__ = ("_base", "_carry", "spool_ids", "saw_next_uri", "_tail", "query_id", "_recent",
                 "_recent_len", "_head", "_route", "_find_id")

    def __init__(self, gateway_base: str, route: PathRoute | None = None, *, find_id: bool = True) -> None:
        """``find_id``: read the query id the page names (``query_id``); a caller that does not
        need it (a follow-up knows its query) saves a search of the page's start."""
        self._route = route
        self._find_id = find_id
        self._base = gateway_base.rstrip("/").encode()
        self._carry = b""
        self._tail = b""
        self._recent: list[bytes] = []   # the last emitted pieces, >= _TAIL_KEEP bytes in all
        self._recent_len = 0
        self._head = b""
        self.spool_ids: list[str] = []
        self.saw_next_uri = False
        self.query_id: str | None = None

    def _sub(self, m: re.Match[bytes]) -> bytes:
        """A ``uri`` or ``ackUri`` field (``_rewrite`` builds the always-rewritten ones): pointed
        at the gateway when it names a spooled segment of this backend, else left alone
        (a pre-signed object-store URL)."""
        key, path = m.group(1, 3)
        spool = _SPOOL_PATH.match(path)
        if not spool:
            return m.group(0)
        sid = spool.group(1).decode("utf-8", "replace")
        if sid not in self.spool_ids:
            self.spool_ids.append(sid)
        if self._route is not None:
            return b'"%b":"%b%b%b"' % (key, self._base, self._route.prefix_bytes(path), path)
        return b'"%b":"%b%b"' % (key, self._base, path)

    def feed(self, chunk: bytes) -> bytes:
        buf = self._carry + chunk if self._carry else chunk
        if self._find_id and self.query_id is None and len(self._head) < 4096:
            # The id is near the start of the document; look for it in the first 4 KB, which
            # may arrive in several chunks.
            self._head += chunk[:4096 - len(self._head)]
            m = _ID.search(self._head)
            if m:
                self.query_id = m.group(1).decode()
        emitted = self._rewrite(buf, final=False)
        if emitted:
            self._recent.append(emitted)
            self._recent_len += len(emitted)
            while self._recent_len - len(self._recent[0]) >= _TAIL_KEEP:
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
            route, base = self._route, self._base
            starts.sort()
            for q in starts:
                if q < done:
                    continue   # inside a field already rewritten
                m = _URI_FIELD.match(buf, q)
                if m is None:
                    if not final and q >= n - _MAX_MATCH:
                        hold = q   # may be a field the next chunk completes
                        break
                    continue
                pieces.append(buf[done:q])
                key, path = m.group(1, 3)
                if key in _ALWAYS_REWRITTEN:   # nextUri, infoUri, partialCancelUri
                    if key == b"nextUri":
                        self.saw_next_uri = True
                    if key == b"infoUri" or route is None:
                        pieces += (b'"', key, b'":"', base, path, b'"')
                    else:
                        pieces += (b'"', key, b'":"', base, route.prefix_bytes(path), path, b'"')
                else:
                    pieces.append(self._sub(m))
                done = m.end()
        if not final:
            # The end may also be the start of a key, cut short ("next…): keep it for later.
            p = buf.rfind(b'"', max(done, n - 18))
            if p >= 0 and p < hold and buf[p + 1:] in _URI_KEY_PREFIXES:
                hold = p
        self._carry = buf[hold:] if hold < n else b""
        if pieces:
            pieces.append(buf[done:hold])
            return b"".join(pieces)
        return buf if hold == n else buf[:hold]

    def page(self, body: bytes) -> bytes:
        """``feed(body) + finish()`` for a body that arrived whole (the usual page of a poll):
        one pass over it, with the same result and the same things learnt."""
        if self._carry or self._recent or self._head:
            return self.feed(body) + self.finish()   # part of the body went through feed
        if self._find_id:
            self._head = body[:4096]
            m = _ID.search(self._head)
            if m:
                self.query_id = m.group(1).decode()
        out = self._rewrite(body, final=True)
        self._carry = b""
        self._tail = out[-_TAIL_KEEP:]
        if not self.saw_next_uri and _NEXT_URI_KEY.search(self._tail):
            self.saw_next_uri = True
        return out

    def finish(self) -> bytes:
        carry, self._carry = self._carry, b""
        out = self._rewrite(carry, final=True) if carry else b""
        if out:
            self._recent.append(out)
        self._tail = b"".join(self._recent)[-_TAIL_KEEP:]
        self._recent = []
        if not self.saw_next_uri and _NEXT_URI_KEY.search(self._tail):
            self.saw_next_uri = True
        return out

    def final_state(self) -> tuple[str | None, str | None]:
        """For a page without nextUri: (stats.state, error message) read from the page's tail."""
        if self.saw_next_uri:
            return None, None
        states = _STATE.findall(self._tail)
        state = states[-1].decode() if states else None
        m = _ERROR_MESSAGE.search(self._tail)
        error = None
        if m:
            try:
                error = json.loads(b'"' + m.group(1) + b'"')
            except ValueError:
                error = m.group(1).decode("utf-8", "replace")
        return state, error


class PathRoute:
    """What the rewriters ask of a routing-token minter (``gateway.proxy.exchange``)."""

    __slots__ = ()

    def prefix(self, path: str) -> str:
        """The routing-token prefix for a coordinator path ("" when it needs none)."""
        raise NotImplementedError

    def prefix_bytes(self, path: bytes) -> bytes:
        raise NotImplementedError


def rewrite_location(location: str, backend_base: str, gateway_base: str,
                     route: PathRoute | None = None) -> str:
    """Point a coordinator-hosted Location at the gateway; leave any other host (an identity
    provider, a pre-signed object-store URL) untouched."""
    if location.startswith(backend_base + "/") or location == backend_base:
        path = location[len(backend_base):]
        return gateway_base + (route.prefix(path) if route is not None else "") + path
    return location


_AUTH_SERVER = re.compile(r'(x_(?:redirect|token)_server\s*=\s*")(https?://[^/"]+)(/[^"]*)"')
_TOKEN_ID = re.compile(r"/oauth2/token/([0-9a-fA-F-]{8,64})(?:[/?]|$)")


def rewrite_www_authenticate(value: str, gateway_base: str,
                             route: PathRoute | None = None) -> tuple[str, list[str]]:
    """Point OAuth2 ``x_*_server`` URIs of a 401 challenge at the gateway (§6), with a routing
    token when ``route`` is given, and return the auth ids they carry."""
    ids: list[str] = []

    def sub(m: re.Match[str]) -> str:
        path = m.group(3)
        if not path.startswith("/oauth2/"):
            return m.group(0)  # an identity provider's URL: never rewritten
        t = _TOKEN_ID.search(path)
        if t and not path.startswith("/oauth2/token/initiate/"):
            ids.append(t.group(1))
        if route is not None:
            return m.group(1) + gateway_base + route.prefix(path) + path + '"'
        return m.group(1) + gateway_base + path + '"'
    return _AUTH_SERVER.sub(sub, value), ids


def auth_initiate_key(auth_id: str) -> str:
    return hashlib.sha256(auth_id.encode()).hexdigest()


# ---------------------------------------------------------------------------------------------
# Documents the gateway writes itself

_COORDINATOR_ID = "gtway"   # letters from Trino's coordinator-id alphabet (§1.5)
_counter_lock = threading.Lock()
_counter = [0, ""]


def new_query_id(now: float | None = None) -> str:
    """A Trino-format query id for failures the gateway answers itself."""
    t = time.gmtime(now if now is not None else time.time())
    day = time.strftime("%Y%m%d_%H%M%S", t)
    with _counter_lock:
        if _counter[1] != day[:8]:
            _counter[0], _counter[1] = random.randint(0, 999), day[:8]
        _counter[0] = (_counter[0] + 1) % 100000
        n = _counter[0]
    return f"{day}_{n:05d}_{_COORDINATOR_ID}"


# (name, code, type) of the errors the gateway raises on a statement, from Trino's codes.
ERRORS = {
    "SYNTAX_ERROR": (1, "USER_ERROR"),
    "ABANDONED_QUERY": (2, "USER_ERROR"),
    "USER_CANCELED": (3, "USER_ERROR"),
    "PERMISSION_DENIED": (4, "USER_ERROR"),
    "NO_NODES_AVAILABLE": (65541, "INTERNAL_ERROR"),
    "GENERIC_INTERNAL_ERROR": (65536, "INTERNAL_ERROR"),
    "SERVER_SHUTTING_DOWN": (65549, "INTERNAL_ERROR"),
    "QUERY_QUEUE_FULL": (131074, "INSUFFICIENT_RESOURCES"),
    "EXCEEDED_TIME_LIMIT": (131075, "INSUFFICIENT_RESOURCES"),
}

_EMPTY_STATS = {
    "state": "FAILED", "queued": False, "scheduled": False, "nodes": 0, "totalSplits": 0,
    "queuedSplits": 0, "runningSplits": 0, "completedSplits": 0, "cpuTimeMillis": 0,
    "wallTimeMillis": 0, "queuedTimeMillis": 0, "elapsedTimeMillis": 0, "processedRows": 0,
    "processedBytes": 0, "physicalInputBytes": 0, "peakMemoryBytes": 0, "spilledBytes": 0,
}


def failed_query(message: str, *, gateway_base: str, error_name: str = "NO_NODES_AVAILABLE",
                 query_id: str | None = None) -> bytes:
    """A finished, FAILED QueryResults document (§1.2) every client shows as an error."""
    qid = query_id or new_query_id()
    code, etype = ERRORS[error_name]
    doc = {
        "id": qid,
        "infoUri": f"{gateway_base}/trino-gateway/query/{qid}",
        "stats": _EMPTY_STATS,
        "error": {
            "message": message, "errorCode": code, "errorName": error_name, "errorType": etype,
            "failureInfo": {"type": "io.trino.gateway.GatewayException", "message": message,
                            "suppressed": [], "stack": []},
        },
        "warnings": [],
    }
    return json.dumps(doc, separators=(",", ":")).encode()
