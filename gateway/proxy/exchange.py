"""The decisions of one client ↔ backend exchange, as pure code (no sockets, no Tornado app).

The proxy handler (``gateway.proxy.handler``), the gateway queue (``gateway.admission.control``) and the
forwarder (``gateway.proxy.forward``) only move bytes; what to do with them is decided here:

- ``resolve_token``: which backend a follow-up that carries a routing token belongs to.
- ``TokenMinter``: the routing-token prefix for every URI written into a response.
- ``translate_response_headers``: which response headers reach the client, rewritten how, and
  what they teach (transactions started or cleared, OAuth2 exchanges).
- ``relay_response``: how a backend's answer reaches the client (its header lines, and whether
  its body's URIs are rewritten or its length is kept).
- ``query_end``: whether a response ended its query, and how.
- ``follow_up_failure``: what the client of a follow-up is told when its backend failed.

Like the sans-IO protocol layers of mitmproxy or h11: inputs in, decisions out, so every rule
has an exact unit test (``tests/test_exchange.py``).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Iterable

from tornado.httputil import HTTPHeaders

from gateway import protocol as P
from gateway.runtime.http1 import header_pairs
from gateway.routing.tokens import PREFIX, TokenError, TokenKeys, remember, split_path

__all__ = ["ROUTABLE", "TokenRoute", "TokenMinter", "resolve_token", "ResponseHeaders",
           "translate_response_headers", "Relay", "relay_response", "query_end", "STATEMENT_PATH",
           "FollowUpFailure", "follow_up_failure"]

# Request kinds whose URIs carry a routing token (they name the resource the token is bound to).
ROUTABLE = frozenset({P.QUERY, P.SPOOL, P.OAUTH_TOKEN, P.OAUTH_INITIATE})
STATEMENT_PATH = "/v1/statement/"


@dataclass(frozen=True, slots=True)
class TokenRoute:
    """A follow-up routed by its token: the backend, and the request as the backend sees it."""
    backend: str
    kind: P.RequestKind
    path: str          # the path without the token prefix
    uri: str           # path and query string, to send to the backend


# A routing token, then a statement URI: split_path's token (up to the next slash) followed by
# what classify's first rule matches (protocol.STATEMENT_URI_PATH, the query id, a slash or the end).
_TOKEN_QUERY_PATH = re.compile(rf"{re.escape(PREFIX)}([^/]+)(?={P.STATEMENT_URI_PATH}({P.QUERY_ID})(?:/|$))")


def resolve_token(keys: TokenKeys, method: str, path: str, query: str) -> TokenRoute | None:
    """The route a token-carrying path names; None when the path carries no token.

    Raises ``TokenError`` for a token that is not valid for the request behind it (tampered,
    signed with an unknown key, or taken from another query): such a request is never routed.
    """
    m = _TOKEN_QUERY_PATH.match(path)
    if m is not None:   # a statement URI (a poll): what split_path and classify give, read at once
        token, qid = m.group(1, 2)
        inner = path[m.end(1):]
        kind = P.RequestKind(P.QUERY, qid)
    else:
        parts = split_path(path)
        if parts is None:
            return None
        token, inner = parts
        kind = P.classify(method, inner, query)
        if kind.kind not in ROUTABLE or kind.key is None:
            raise TokenError("a routing token only routes follow-ups of a query, a spooled segment "
                             "or an OAuth2 exchange")
    backend = keys.verify(token, kind.kind, kind.key)  # type: ignore[arg-type]
    return TokenRoute(backend, kind, inner, inner + ("?" + query if query else ""))


# The statement URIs of a page (``classify``'s first rule, on the raw bytes of a path whose query
# string or fragment may follow the id).
_QUERY_PATH = re.compile(rf"{P.STATEMENT_URI_PATH}({P.QUERY_ID})(?:[/?#]|\Z)".encode())


class TokenMinter(P.PathRoute):
    """Routing-token prefixes for the URIs of one backend's responses.

    A response names one query (or segment set, or auth exchange) many times; the last token
    is cached, so a page costs one HMAC per distinct resource. A statement URI's prefix is
    also kept per query id (``prefix_bytes``), for a minter kept across responses
    (``FollowUps.minter``): each poll of a query then finds its prefix in one lookup."""

    __slots__ = ("keys", "_backend", "_last_scope", "_last_prefix", "_by_query")

    def __init__(self, keys: TokenKeys, backend: str) -> None:
        self.keys = keys
        self._backend = backend
        self._last_scope: tuple[str, str] | None = None
        self._last_prefix = ""
        self._by_query: dict[bytes, bytes] = {}   # query id -> prefix (prefix_bytes's shortcut)

    def prefix(self, path: str) -> str:
        path = path.split("?", 1)[0].split("#", 1)[0]
        kind = P.classify("GET", path)
        if kind.kind not in ROUTABLE or kind.key is None:
            return ""
        scope = (kind.kind, kind.key)
        if scope != self._last_scope:
            self._last_prefix = PREFIX + self.keys.encode(self._backend, kind.kind, kind.key)
            self._last_scope = scope
        return self._last_prefix

    def prefix_bytes(self, path: bytes) -> bytes:
        # A page's nextUri and partialCancelUri name its query the usual way: its id read off
        # the bytes, without decoding the path and classifying it (``prefix``, which gives the
        # same for these paths: tests/test_exchange.py).
        m = _QUERY_PATH.match(path)
        if m is not None:
            qid = m.group(1)
            prefix = self._by_query.get(qid)
            if prefix is None:
                prefix = (PREFIX + self.keys.encode(self._backend, P.QUERY, qid.decode())).encode()
                remember(self._by_query, qid, prefix, _QUERY_PREFIXES)
            return prefix
        text = path.decode("utf-8", "replace").replace("\\/", "/")
        return self.prefix(text).encode()


_QUERY_PREFIXES = 8192   # query ids whose prefix one minter keeps


@dataclass
class ResponseHeaders:
    """The client's copy of a backend's response headers, and what they taught."""
    headers: list[tuple[str, str]] = field(default_factory=list)
    learn: list[tuple[str, str]] = field(default_factory=list)    # (kind, key) now owned by the backend
    forget: list[tuple[str, str]] = field(default_factory=list)   # (kind, key) no longer owned


def translate_response_headers(headers: Iterable[tuple[str, str]], *, backend_base: str,
                               gateway_base: str, request_transaction: str | None,
                               route: P.PathRoute | None, connection: Iterable[str] = ()
                               ) -> ResponseHeaders:
    """Which response header lines go to the client and what they teach the gateway.

    Hop-by-hop lines (and those the Connection header lists) are dropped; ``Location`` and
    OAuth2 ``WWW-Authenticate`` challenges are pointed at the gateway with a routing token;
    ``X-Trino-Started-Transaction-Id`` pins the transaction to the backend, and
    ``X-Trino-Clear-Transaction-Id`` forgets the request's transaction."""
    drop = P.RESPONSE_DROP
    conn = list(connection)
    if conn:
        drop = drop | P.connection_tokens(conn)
    out = ResponseHeaders()
    for name, value in headers:
        lname = name.lower()
        if lname in drop:
            continue
        if lname == "location":
            value = P.rewrite_location(value, backend_base, gateway_base, route)
        elif lname == "www-authenticate":
            value, ids = P.rewrite_www_authenticate(value, gateway_base, route)
            for auth_id in ids:
                out.learn.append((P.OAUTH_TOKEN, auth_id))
                out.learn.append((P.OAUTH_INITIATE, P.auth_initiate_key(auth_id)))
        elif lname in ("x-trino-started-transaction-id", "x-presto-started-transaction-id"):
            out.learn.append((P.TRANSACTION, value.strip()))
        elif lname in ("x-trino-clear-transaction-id", "x-presto-clear-transaction-id"):
            if request_transaction:
                out.forget.append((P.TRANSACTION, request_transaction))
        out.headers.append((name, value))
    return out


@dataclass(frozen=True, slots=True)
class Relay:
    """How one backend answer is passed on (``relay_response``)."""
    rewriter: P.UriRewriter | None   # a JSON body: its URIs are rewritten (its length changes)
    length: str | None               # otherwise the backend's Content-Length, kept
    headers: ResponseHeaders         # the client's header lines, and what they taught


def relay_response(headers: HTTPHeaders, *, method: str, keys: TokenKeys | None, backend: str,
                   backend_base: str, gateway_base: str, request_transaction: str | None) -> Relay:
    """How the answer of ``backend`` (at ``backend_base``) to a ``method`` request reaches the
    client: a JSON body gets its URIs pointed at ``gateway_base`` with routing tokens (``keys``),
    any other body keeps its length; the header lines as ``translate_response_headers`` says."""
    minter = TokenMinter(keys, backend) if keys is not None else None
    rewriter = length = None
    if method != "HEAD":
        if "json" in headers.get("Content-Type", ""):
            rewriter = P.UriRewriter(gateway_base, minter)
        else:
            length = headers.get("Content-Length")
    # (the parsers' headers as one list: Tornado's get_all is a generator, a call per line)
    lines = header_pairs(headers)
    translated = translate_response_headers(
        lines, backend_base=backend_base, gateway_base=gateway_base,
        request_transaction=request_transaction, route=minter,
        connection=headers.get_list("Connection"))
    return Relay(rewriter, length, translated)


# Response header lines whose translation depends on the request (its routing token, its
# transaction): an answer with one of them is translated for each request.
PER_REQUEST_LINES = frozenset({"location", "www-authenticate", "x-trino-clear-transaction-id",
                               "x-presto-clear-transaction-id"})


def repeatable(relay: Relay, names: Iterable[str]) -> bool:
    """Whether ``relay``, made by ``relay_response`` for a GET's answer with header lines named
    ``names``, holds for every answer with the same lines: nothing in it depends on the request
    or teaches the gateway anything."""
    return (not relay.headers.learn and not relay.headers.forget
            and not any(n.lower() in PER_REQUEST_LINES for n in names))


def query_end(kind: P.RequestKind, method: str, path: str, status: int,
              final_state: tuple[str | None, str | None]) -> tuple[str, str | None] | None:
    """(state, error) when this answer ended its query, else None.

    A DELETE of a result URI answered 204 cancelled it; a result page without ``nextUri``
    (``final_state`` read from its tail by the rewriter) finished it."""
    if kind.kind != P.QUERY or not path.startswith(STATEMENT_PATH):
        return None
    if method == "DELETE" and status == 204 and "/partialCancel/" not in path:
        return "CANCELED", "Query was canceled by the client"
    if method == "GET" and status == 200:
        state, error = final_state
        if state is not None:
            return state, error
    return None


@dataclass(frozen=True, slots=True)
class FollowUpFailure:
    """The answer to a follow-up whose backend failed before answering."""
    status: int      # 502/504 with ``message`` as plain text; 200: a FAILED query document
    message: str
    lost: bool       # the query is lost: end it FAILED (history, admission) and say so


def follow_up_failure(kind: P.RequestKind, method: str, path: str, backend: str, group: str,
                      error: str, *, sent: bool, timeout: bool) -> FollowUpFailure:
    """What the client of a follow-up is told when ``backend`` failed with ``error``.

    A result-page poll whose backend refuses connections (nothing sent, not a timeout, which
    may pass) lost its query: the coordinator is down and its queries died with it. A FAILED
    document ends the query with a message every client shows; a 502 would be retried and
    then shown as a bare "bad gateway". Anything else is a 504 (timed out) or a 502."""
    if kind.kind == P.QUERY and method == "GET" and path.startswith(STATEMENT_PATH) \
            and not sent and not timeout:
        return FollowUpFailure(200, f"Backend {backend} (group {group}) that ran query {kind.key} "
                                    f"cannot be reached ({error}); the query is lost, submit it again",
                               True)
    return FollowUpFailure(504 if timeout else 502, f"Backend {backend} did not answer: {error}\n", False)
