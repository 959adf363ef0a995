"""The routing context: the symbols a rule condition can use, built once per new statement.

``build_context`` turns a statement submission (headers, body, client address) into a plain dict
whose keys are exactly the symbols of the rules contract (see docs/rules.md). It is pure: no
I/O, no Tornado beyond reading an ``HTTPHeaders``-like object.

Credentials never reach rules or explain output: the ``headers`` symbol omits
``Authorization``, ``Proxy-Authorization``, ``Cookie`` and the extra-credential headers. The
``user`` symbol is still derived from Basic or JWT credentials (the JWT is decoded without
verification; it only chooses a routing group, the backend authenticates the request).
"""
from __future__ import annotations

import base64
import binascii
from typing import Any, Iterable, Mapping
from urllib.parse import unquote_plus

from tornado.httputil import HTTPHeaders

from gateway.limits import loads_json
from gateway.runtime.http1 import header_pairs
from gateway.routing.sql import SqlFacts, analyze

__all__ = [
    "RoutingContext", "build_context", "empty_context", "parse_prepared_statements", "user_from_authorization",
    "STRING_SYMBOLS", "ARRAY_SYMBOLS", "MAPPING_SYMBOLS", "SQL_SYMBOLS", "SYMBOLS",
    "HIDDEN_HEADERS",
]

STRING_SYMBOLS = ("user", "source", "clientInfo", "catalog", "schema", "routingGroupHeader",
                  "query", "queryType", "remoteAddress")
ARRAY_SYMBOLS = ("clientTags", "catalogs", "schemas", "tables")
MAPPING_SYMBOLS = ("headers",)
SYMBOLS = STRING_SYMBOLS + ARRAY_SYMBOLS + MAPPING_SYMBOLS
# Symbols that need the SQL parsed; a ruleset that never uses them skips sqlglot entirely.
SQL_SYMBOLS = frozenset({"queryType", "catalogs", "schemas", "tables"})

# Header values rules must never see (they would show up in explain output and traces).
HIDDEN_HEADERS = frozenset({
    "authorization", "proxy-authorization", "cookie",
    "x-trino-extra-credential", "x-presto-extra-credential",
})


def empty_context() -> dict[str, Any]:
    """A context with every symbol at its 'missing' value (null strings, empty arrays)."""
    ctx: dict[str, Any] = {name: None for name in STRING_SYMBOLS}
    ctx.update({name: () for name in ARRAY_SYMBOLS})
    ctx["headers"] = {}
    return ctx


class RoutingContext(dict):  # type: ignore[type-arg]
    """A context ``build_context`` made: every symbol present and of its declared type
    (strings or None, tuples of strings, a dict of lower-case names to strings), so rules
    evaluate it as it is (``rules.prepare_context`` copies anything else)."""
    __slots__ = ()


def build_context(headers: Any, body: bytes, remote_address: str | None, *, analyze_sql: bool,
                  max_sql_bytes: int = 1 << 20,
                  prepared: Mapping[str, str] | None = None,
                  facts: SqlFacts | None = None) -> RoutingContext:
    """Build the routing context of a new statement.

    ``headers`` is a ``tornado.httputil.HTTPHeaders`` (a plain mapping is accepted too).
    Only the first ``max_sql_bytes`` bytes of the body are decoded and analysed; the ``query``
    symbol is that (possibly truncated) text. ``prepared`` overrides the statements read from
    ``X-Trino-Prepared-Statement``. ``facts`` are SQL facts computed already (off the event
    loop, ``gateway.runtime.offload``); without them and with ``analyze_sql`` they are computed here.
    """
    if type(headers) is not HTTPHeaders and not isinstance(headers, HTTPHeaders):  # (an ABC: slow check)
        headers = _to_http_headers(headers)
    # One pass over the header lines: the first line of each name (single-valued symbols)
    # and the ``headers`` symbol (every line, credentials left out).
    first: dict[str, str] = {}
    shown: dict[str, str] = {}
    for name, value in header_pairs(headers):
        key = name.lower()
        if key not in first:
            first[key] = value
        if key in HIDDEN_HEADERS:
            continue
        shown[key] = f"{shown[key]},{value}" if key in shown else value
    catalog = _pick(first, "x-trino-catalog", "x-presto-catalog")
    schema = _pick(first, "x-trino-schema", "x-presto-schema")
    tags = headers.get_list("X-Trino-Client-Tags") or headers.get_list("X-Presto-Client-Tags")
    user = _pick(first, "x-trino-user", "x-presto-user")
    if user is None and "authorization" in first:
        user = user_from_authorization(",".join(headers.get_list("Authorization")))
    sql = sql_text(body, max_sql_bytes)
    if facts is None and analyze_sql:
        if prepared is None:
            prepared = prepared_statements(headers)
        facts = analyze(sql, catalog, schema, dict(prepared))
    # The keys in the order of SYMBOLS (explain output lists them so).
    ctx = RoutingContext(
        user=user,
        source=_pick(first, "x-trino-source", "x-presto-source"),
        clientInfo=_pick(first, "x-trino-client-info", "x-presto-client-info"),
        catalog=catalog,
        schema=schema,
        routingGroupHeader=_pick(first, "x-trino-routing-group", None),
        query=sql,
        queryType=None,
        remoteAddress=str(remote_address) if remote_address else None,
        clientTags=tuple(_split_commas(tags)),
        catalogs=(), schemas=(), tables=(),
        headers=shown,
    )
    if facts is not None:
        ctx["queryType"] = str(facts.query_type) if facts.query_type is not None else None
        ctx["catalogs"] = _strings(facts.catalogs)
        ctx["schemas"] = _strings(facts.schemas)
        ctx["tables"] = _strings(facts.tables)
    return ctx


def _pick(first: Mapping[str, str], name: str, alternative: str | None) -> str | None:
    """The first line of header ``name`` (else ``alternative``), stripped; empty means missing."""
    value = first.get(name)
    if value is not None:
        value = value.strip()
        if value:
            return value
    if alternative is None:
        return None
    value = first.get(alternative)
    return (value.strip() or None) if value is not None else None


def _strings(values: Any) -> tuple[str, ...]:
    if not values:
        return ()
    if type(values) is tuple and all(type(v) is str for v in values):
        return values
    return tuple(str(v) for v in values)


def sql_text(body: bytes, max_sql_bytes: int) -> str:
    """The ``query`` symbol: the first ``max_sql_bytes`` bytes of the body as text."""
    raw = body[:max_sql_bytes] if max_sql_bytes >= 0 else body
    return raw.decode("utf-8", errors="replace")


def sql_inputs(headers: Any, body: bytes, max_sql_bytes: int) -> tuple[str, str | None, str | None, dict[str, str]]:
    """What SQL analysis needs: (SQL text, session catalog, session schema, prepared statements)."""
    if not isinstance(headers, HTTPHeaders):
        headers = _to_http_headers(headers)
    catalog = _first(headers, "X-Trino-Catalog") or _first(headers, "X-Presto-Catalog")
    schema = _first(headers, "X-Trino-Schema") or _first(headers, "X-Presto-Schema")
    return sql_text(body, max_sql_bytes), catalog, schema, prepared_statements(headers)


def prepared_statements(headers: HTTPHeaders) -> dict[str, str]:
    return parse_prepared_statements(
        headers.get_list("X-Trino-Prepared-Statement") or headers.get_list("X-Presto-Prepared-Statement"))


def _to_http_headers(headers: Any) -> HTTPHeaders:
    out = HTTPHeaders()
    if headers is None:
        return out
    items: Iterable[tuple[str, Any]] = headers.items() if hasattr(headers, "items") else headers
    for name, value in items:
        for v in (value if isinstance(value, (list, tuple)) else [value]):
            out.add(str(name), str(v).strip())
    return out


def _first(headers: HTTPHeaders, name: str) -> str | None:
    """First line of a single-valued header, stripped; empty means missing."""
    values = headers.get_list(name)
    if not values:
        return None
    value = values[0].strip()
    return value or None


def _split_commas(values: Iterable[str]) -> list[str]:
    out: list[str] = []
    for line in values:
        for item in line.split(","):
            item = item.strip()
            if item:
                out.append(item)
    return out


def parse_prepared_statements(lines: Iterable[str]) -> dict[str, str]:
    """``X-Trino-Prepared-Statement`` lines (``urlenc(name)=urlenc(sql)``, comma lists) → dict.

    Clients form-encode both sides (Java ``URLEncoder``, Python ``quote_plus``), so commas inside
    a statement arrive as ``%2C`` and splitting on ``,`` is safe. Malformed items are skipped.
    """
    out: dict[str, str] = {}
    for line in lines:
        for item in line.split(","):
            name, sep, sql = item.strip().partition("=")
            if not sep or not name:
                continue
            out[unquote_plus(name)] = unquote_plus(sql)
    return out


def user_from_authorization(value: str | None) -> str | None:
    """The user of a Basic credential, or the ``sub`` claim of a Bearer JWT (not verified)."""
    if not value:
        return None
    scheme, _, cred = value.strip().partition(" ")
    cred = cred.strip()
    if scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(cred, validate=False).decode("utf-8", errors="replace")
        except (binascii.Error, ValueError):
            return None
        user = decoded.partition(":")[0]
        return user or None
    if scheme.lower() == "bearer":
        parts = cred.split(".")
        if len(parts) != 3:
            return None   # an opaque token: no user to read
        payload = parts[1] + "=" * (-len(parts[1]) % 4)
        try:
            claims = loads_json(base64.urlsafe_b64decode(payload))
        except (binascii.Error, ValueError):
            return None
        sub = claims.get("sub") if isinstance(claims, dict) else None
        return sub if isinstance(sub, str) and sub else None
    return None
