"""Translation building blocks: formulas, string literals, Java regexes, case folding, and a
property test of the exception-aware translation of !, && and ||."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.javamigration.convert import convert_rules
from gateway.javamigration.formula import FALSE, TRUE, Atom, and_, not_, or_, quote, render
from gateway.javamigration.java_model import (
    UnsupportedRegex, ignore_case_pattern, java_regex_to_python, java_trim,
)
from gateway.routing.context import empty_context
from gateway.routing.rules import prepare_context
from gateway.routing.rules_compile import compile_condition

from tests.javamigration.harness import GRID, mismatches, our_ruleset
from tests.javamigration.reference import _equals_ignore_case


def test_formula_folding_and_rendering() -> None:
    a, b, c = Atom("a == 1", "a != 1"), Atom("b == 1"), Atom("c == 1")
    assert and_(a, TRUE) == a and and_(a, FALSE) == FALSE and or_(a, FALSE) == a and or_(a, TRUE) == TRUE
    assert not_(not_(b)) == b and not_(a) == Atom("a != 1", "a == 1")
    assert and_(a, not_(a)) == FALSE and or_(b, not_(b)) == TRUE
    assert render(or_(and_(a, b), c)) == "(a == 1 and b == 1) or c == 1"
    assert render(and_(or_(a, b), not_(and_(b, c)))) == "(a == 1 or b == 1) and not (b == 1 and c == 1)"
    assert render(or_(a, and_(not_(a), b))) == "a == 1 or b == 1"


def test_a_guard_is_never_moved_after_the_test_it_protects() -> None:
    guard = Atom("h != null", "h == null")
    unsafe = Atom('"x" in h', safe=False)
    # not (guard and unsafe) evaluated before guard: the guard must stay inside the negation
    f = and_(not_(and_(guard, unsafe)), guard)
    assert render(f) == 'not (h != null and "x" in h) and h != null'
    f = and_(guard, not_(and_(guard, unsafe)))
    assert render(f) == 'h != null and not ("x" in h)'


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40))
def test_quote_round_trips_through_rule_engine(s: str) -> None:
    cond = compile_condition(f"source == {quote(s)}")
    ctx = empty_context()
    ctx["source"] = s
    assert cond.evaluate(prepare_context(ctx))


@pytest.mark.parametrize("java, accepted, rejected", [
    ("airflow.*", ["airflow", "airflow-dag"], ["xairflow", "airflow\n", "airflow\x85x"]),
    ("(?i)etl-[0-9]+", ["ETL-1", "etl-42"], ["etl-", "etl-1a"]),
    (r"\w+\.\d{2,3}", ["ab.12", "a_b.123"], ["ab.1", "\u00e9.12"]),
    ("a|b", ["a", "b"], ["ab", ""]),
    ("[^,]*label=foo[^,]*", ["x label=foo y"], ["a,label=foo"]),
    (r"\Qx\E", None, None),
])
def test_java_regexes_translate_to_exactly_equivalent_patterns(java: str, accepted: list[str] | None,
                                                              rejected: list[str] | None) -> None:
    if accepted is None:
        with pytest.raises(UnsupportedRegex):
            java_regex_to_python(java)
        return
    py = java_regex_to_python(java)
    assert all(re.match(py, s) for s in accepted)
    assert not any(re.match(py, s) for s in rejected or [])


@pytest.mark.parametrize("java", ["a++", "[a-z&&[^b]]", "(?<name>x)", r"\p{Alpha}", "(unbalanced", "x{1"])
def test_regex_constructs_outside_the_subset_are_refused(java: str) -> None:
    with pytest.raises(UnsupportedRegex):
        java_regex_to_python(java)


def test_equals_ignore_case_folds_like_java() -> None:
    pattern = ignore_case_pattern("Kiss")
    for s in ["kiss", "KISS", "\u212aiss", "k\u0131ss", "k\u0130ss", "ki\u017fs"]:
        assert re.match(pattern, s), s
        assert _equals_ignore_case(s, "Kiss"), s           # the reference agrees
    for s in ["kis", "kisss", "k-ss"]:
        assert not re.match(pattern, s)
    with pytest.raises(ValueError):
        ignore_case_pattern("caf\u00e9")


def test_java_trim() -> None:
    assert java_trim("\x00 \t a b \x1f") == "a b"
    assert java_trim("\u00a0a\u00a0") == "\u00a0a\u00a0"        # not whitespace to Java's trim


# --- property: random boolean structure over throwing and non-throwing atoms -------------------

ATOMS = [
    'request.getHeader("X-Trino-Source") == "airflow"',
    'request.getHeader("X-Trino-Source").startsWith("air")',           # throws without the header
    'request.getHeader("X-Trino-Client-Tags") contains "etl"',
    'request.getHeader("X-Trino-Client-Tags").contains("label=foo")',  # throws
    'trinoRequestUser.userExistsAndEquals("alice")',
    'request.getHeader("X-Trino-User") == null',
    'trinoQueryProperties.getResourceGroupQueryType() == "SELECT"',
    'trinoQueryProperties.getDefaultCatalog().get() == "hive"',        # throws without a catalog
    'request.getHeader("X-Team").isEmpty()',                           # throws
    'trinoQueryProperties.getQueryType() == "Explain"',
    'trinoQueryProperties.tablesContains("hive.raw.events")',
    "true", "false",
]

expressions = st.recursive(
    st.sampled_from(ATOMS),
    lambda inner: st.one_of(
        inner.map(lambda e: f"!({e})"),
        st.tuples(inner, inner).map(lambda p: f"({p[0]}) && ({p[1]})"),
        st.tuples(inner, inner).map(lambda p: f"({p[0]}) || ({p[1]})"),
    ),
    max_leaves=6,
)
SMALL_GRID = GRID[::9]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cond=expressions, action_test=expressions)
def test_random_conditions_route_like_trino_gateway(cond: str, action_test: str, tmp_path: Path) -> None:
    text = (f"---\nname: first\npriority: 1\ncondition: {cond!r}\nactions:\n"
            f"  - 'if ({action_test}) {{ result.put(\"routingGroup\", \"then\") }} "
            f"else {{ result.put(\"routingGroup\", \"else\") }}'\n"
            f"  - 'result.put(\"routingGroup\", \"after\")'\n"
            f"---\nname: second\ncondition: {action_test!r}\nactions: ['result.put(\"routingGroup\", \"second\")']\n")
    conv = convert_rules(text)
    assert conv.complete, conv.not_converted
    diffs, _ = mismatches(text, our_ruleset(conv.to_yaml(), tmp_path), grid=SMALL_GRID)
    assert diffs == [], f"{cond} / {action_test}:\n" + "\n".join(diffs[:5])
