"""The routing context: every symbol of the rules contract, built from a statement submission."""
from __future__ import annotations

import base64
import json
from urllib.parse import quote_plus

from tornado.httputil import HTTPHeaders

from gateway.routing.context import (
    SYMBOLS, build_context, empty_context, parse_prepared_statements, user_from_authorization,
)


def headers(*pairs: tuple[str, str]) -> HTTPHeaders:
    h = HTTPHeaders()
    for name, value in pairs:
        h.add(name, value)
    return h


def ctx_of(*pairs: tuple[str, str], body: bytes = b"SELECT 1", analyze_sql: bool = True, **kw: object) -> dict:
    return build_context(headers(*pairs), body, "10.1.2.3", analyze_sql=analyze_sql, **kw)  # type: ignore[arg-type]


def jwt(claims: dict) -> str:
    def part(d: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(d).encode()).rstrip(b"=").decode()
    return f"{part({'alg': 'none'})}.{part(claims)}.sig"


def test_every_symbol_is_present_even_when_nothing_is_sent() -> None:
    ctx = build_context(HTTPHeaders(), b"", None, analyze_sql=False)
    assert set(ctx) == set(SYMBOLS)
    assert ctx == {**empty_context(), "query": ""}


def test_every_symbol_from_a_full_request() -> None:
    ctx = ctx_of(("X-Trino-User", "alice"), ("X-Trino-Source", "airflow"), ("X-Trino-Client-Tags", "etl, nightly"),
                 ("X-Trino-Client-Info", '{"dag": "daily"}'), ("X-Trino-Catalog", "hive"),
                 ("X-Trino-Schema", "raw"), ("X-Trino-Routing-Group", "etl"), ("X-Team", "data"),
                 body=b"INSERT INTO t SELECT * FROM iceberg.gold.s")
    assert ctx["user"] == "alice"
    assert ctx["source"] == "airflow"
    assert ctx["clientTags"] == ("etl", "nightly")
    assert ctx["clientInfo"] == '{"dag": "daily"}'
    assert ctx["catalog"] == "hive"
    assert ctx["schema"] == "raw"
    assert ctx["routingGroupHeader"] == "etl"
    assert ctx["headers"]["x-team"] == "data"
    assert ctx["headers"]["x-trino-user"] == "alice"
    assert ctx["query"] == "INSERT INTO t SELECT * FROM iceberg.gold.s"
    assert ctx["queryType"] == "INSERT"
    assert ctx["catalogs"] == ("hive", "iceberg")
    assert ctx["schemas"] == ("gold", "hive.raw", "iceberg.gold", "raw")
    assert ctx["tables"] == ("hive.raw.t", "iceberg.gold.s")
    assert ctx["remoteAddress"] == "10.1.2.3"


def test_user_precedence_trino_then_presto_then_basic_then_jwt() -> None:
    basic = "Basic " + base64.b64encode(b"bob:secret").decode()
    assert ctx_of(("X-Trino-User", "a"), ("X-Presto-User", "b"), ("Authorization", basic))["user"] == "a"
    assert ctx_of(("X-Presto-User", "b"), ("Authorization", basic))["user"] == "b"
    assert ctx_of(("Authorization", basic))["user"] == "bob"
    assert ctx_of(("Authorization", "Bearer " + jwt({"sub": "carol", "exp": 1})))["user"] == "carol"


def test_credentials_that_carry_no_user() -> None:
    assert user_from_authorization(None) is None
    assert user_from_authorization("Bearer opaque-token") is None
    assert user_from_authorization("Bearer a.!!!.c") is None
    assert user_from_authorization("Bearer " + jwt({"iss": "x"})) is None
    assert user_from_authorization("Bearer " + jwt({"sub": 42})) is None
    assert user_from_authorization("Negotiate abc") is None
    assert user_from_authorization("Basic " + base64.b64encode(b":pw").decode()) is None


def test_client_tags_are_split_trimmed_and_merged_across_lines() -> None:
    ctx = ctx_of(("X-Trino-Client-Tags", "a, b ,,"), ("X-Trino-Client-Tags", ",c"))
    assert ctx["clientTags"] == ("a", "b", "c")


def test_headers_symbol_lower_cases_names_and_joins_repeats() -> None:
    ctx = ctx_of(("X-Custom", "1"), ("x-custom", "2"), ("X-Trino-Session", "a=1"))
    assert ctx["headers"]["x-custom"] == "1,2"
    assert ctx["headers"]["x-trino-session"] == "a=1"


def test_credentials_never_reach_the_headers_symbol() -> None:
    ctx = ctx_of(("Authorization", "Basic " + base64.b64encode(b"u:p").decode()), ("Cookie", "s=1"),
                 ("Proxy-Authorization", "x"), ("X-Trino-Extra-Credential", "aws=secret"))
    assert set(ctx["headers"]) == set()
    assert "secret" not in json.dumps({k: v for k, v in ctx.items() if k != "user"})


def test_empty_header_values_count_as_missing() -> None:
    ctx = ctx_of(("X-Trino-User", ""), ("X-Trino-Source", ""))
    assert ctx["user"] is None and ctx["source"] is None


def test_sql_facts_only_when_asked() -> None:
    ctx = ctx_of(("X-Trino-Catalog", "hive"), body=b"SELECT * FROM t", analyze_sql=False)
    assert ctx["query"] == "SELECT * FROM t"
    assert ctx["queryType"] is None and ctx["tables"] == ()


def test_the_body_read_for_analysis_is_bounded() -> None:
    body = b"SELECT * FROM a /*" + b"x" * 100 + b"*/"
    ctx = ctx_of(body=body, max_sql_bytes=20)
    assert ctx["query"] == body[:20].decode()
    assert ctx["queryType"] == "UNKNOWN"   # truncated inside the comment: not valid SQL


def test_invalid_utf8_is_replaced_not_fatal() -> None:
    ctx = ctx_of(body=b"SELECT '\xff' FROM t")
    assert "\ufffd" in ctx["query"]
    assert ctx["queryType"] == "SELECT"


def test_prepared_statements_header_is_used_for_execute() -> None:
    sql = "SELECT a, b FROM hive.raw.events WHERE x = 'a,b'"
    value = f"{quote_plus('daily')}={quote_plus(sql)},{quote_plus('other q')}={quote_plus('SELECT 1')}"
    ctx = ctx_of(("X-Trino-Prepared-Statement", value), body=b"EXECUTE daily USING 1")
    assert ctx["queryType"] == "SELECT"
    assert ctx["tables"] == ("hive.raw.events",)
    assert ctx["query"] == "EXECUTE daily USING 1"


def test_parse_prepared_statements() -> None:
    got = parse_prepared_statements(["a=SELECT+1%2C+2", "b%20c=DELETE+FROM+t, broken", "=x"])
    assert got == {"a": "SELECT 1, 2", "b c": "DELETE FROM t"}


def test_a_plain_mapping_is_accepted_as_headers() -> None:
    ctx = build_context({"x-trino-user": "dora", "X-Trino-Client-Tags": ["a", "b"]}, b"", None, analyze_sql=False)
    assert ctx["user"] == "dora" and ctx["clientTags"] == ("a", "b")


def test_a_built_context_is_what_rules_evaluate_without_a_copy() -> None:
    """build_context gives every symbol its declared type, so the rules use it as it is; any
    other mapping is copied into that form. Both read the same, in the order of SYMBOLS."""
    from gateway.routing.rules import prepare_context
    ctx = ctx_of(("X-Trino-User", "alice"), ("X-Presto-Source", "cli"), ("X-Trino-Client-Tags", "a,b"),
                 ("X-Team", "x"), ("x-team", "y"), ("Authorization", "Basic eA=="))
    assert prepare_context(ctx) is ctx
    copied = prepare_context(dict(ctx))
    assert copied == ctx and list(copied) == list(ctx) == list(SYMBOLS)
    assert ctx["user"] == "alice" and ctx["source"] == "cli" and ctx["headers"]["x-team"] == "x,y"
    loose = {**ctx, "clientTags": ["a", 1], "remoteAddress": None}
    assert prepare_context(loose)["clientTags"] == ("a", "1")


def test_repeated_authorization_lines_read_as_one_value() -> None:
    """The user from credentials sees the header as Tornado joins its lines (not only the first)."""
    basic = "Basic " + base64.b64encode(b"carol:pw").decode()
    assert ctx_of(("Authorization", basic))["user"] == "carol"
    assert ctx_of(("Authorization", basic), ("Authorization", "Bearer x"))["user"] == \
        user_from_authorization(f"{basic},Bearer x")
