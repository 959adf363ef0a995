"""The MVEL subset parser: literals, operators, precedence, statements, and clear errors."""
from __future__ import annotations

import pytest

from gateway.javamigration.mvel import (
    Attr, Binary, Call, ExprStmt, If, Lit, MvelSyntaxError, Name, Unary, parse_expression,
    parse_statements, unparse,
)


def test_both_quote_styles_and_java_escapes() -> None:
    assert parse_expression('"a\\"b"') == Lit('a"b')
    assert parse_expression("'it\\'s'") == Lit("it's")
    assert parse_expression('"tab\\tnl\\n\\u0041\\101\\\\"') == Lit("tab\tnl\nAA\\")


def test_method_calls_properties_and_chains() -> None:
    node = parse_expression('request.getHeader("X-Trino-Source").toLowerCase.equals("x")')
    assert node == Call(Attr(Call(Name("request"), "getHeader", (Lit("X-Trino-Source"),)), "toLowerCase"),
                        "equals", (Lit("x"),))


def test_precedence_not_and_or_comparisons() -> None:
    node = parse_expression('!a == "x" || b contains "y" && c ~= "z.*"')
    assert node == Binary("||", Binary("==", Unary("!", Name("a")), Lit("x")),
                          Binary("&&", Binary("contains", Name("b"), Lit("y")), Binary("~=", Name("c"), Lit("z.*"))))


def test_parentheses_literals_and_comments() -> None:
    node = parse_expression("(true || null == x) && -1 != y // trailing comment\n /* block */")
    assert node == Binary("&&", Binary("||", Lit(True), Binary("==", Lit(None), Name("x"))),
                          Binary("!=", Lit(-1), Name("y")))


def test_if_else_if_else_and_statement_lists() -> None:
    stmts = parse_statements('if (a) { result.put("k", "1"); } else if (b) result.put("k", "2") '
                             'else { result.put("k", "3") } result.put("k", "4");;')
    assert len(stmts) == 2
    first = stmts[0]
    assert isinstance(first, If) and len(first.branches) == 2 and first.orelse is not None
    assert isinstance(stmts[1], ExprStmt)
    assert parse_statements("") == ()


@pytest.mark.parametrize("text, fragment", [
    ("new HashSet()", "object creation"),
    ("def f(x) { x }", "function definitions"),
    ("a ? b : c", "unexpected '?'"),
    ("x = 1", "assignment"),
    ('"unterminated', "unterminated string"),
    ("a.?b", "null-safe navigation"),
    ("a[0]", "indexing"),
    ("a instanceof String", "instanceof"),
    ("a + 1", "arithmetic"),
    ("a ==", "expected a value"),
    ("", "empty"),
    ("a &&\n  (b", "line 2"),
])
def test_unsupported_or_broken_text_names_the_problem(text: str, fragment: str) -> None:
    with pytest.raises(MvelSyntaxError, match=None) as exc:
        if text.startswith("x = ") or "HashSet" in text:
            parse_statements(text)
        else:
            parse_expression(text)
    assert fragment in str(exc.value)


def test_unparse_round_trips() -> None:
    for text in ['request.getHeader("X") == "a" && !(b || c)', "x.y.z(1, \"q\\\"\") contains \"p\"",
                 "a ~= \"r.*\" || null != b"]:
        node = parse_expression(text)
        assert parse_expression(unparse(node)) == node
