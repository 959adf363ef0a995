"""Rules files → a compiled Ruleset: loading, load errors with file and line, evaluation order,
run-time errors, the index and the fast evaluator (checked against rule-engine itself)."""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest
import rule_engine
from hypothesis import given, settings, strategies as st

from gateway.routing.context import empty_context
from gateway.routing.rules import RulesError, Ruleset, load_ruleset, parse_ruleset
from gateway.routing.rules_compile import SYMBOL_TYPES, compile_condition

REPO = Path(__file__).resolve().parents[2]


def ruleset(text: str, path: str = "r.yaml") -> Ruleset:
    return parse_ruleset([(path, text.encode())])


def ctx(**kw: Any) -> dict[str, Any]:
    c = empty_context()
    c.update(kw)
    return c


def rule(name: str, condition: str, group: str = "g", priority: int = 0, extra: str = "") -> str:
    return f"name: {name}\npriority: {priority}\ncondition: '{condition}'\nroutingGroup: {group}\n{extra}"


def write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return path


# --- loading ----------------------------------------------------------------------------------

def test_folder_files_are_loaded_sorted_non_recursively(tmp_path: Path) -> None:
    write(tmp_path / "b.yml", rule("b", 'user == "x"'))
    write(tmp_path / "a.yaml", rule("a", 'user == "x"'))
    write(tmp_path / ".hidden.yaml", rule("hidden", 'user == "x"'))
    write(tmp_path / "notes.txt", "not rules")
    write(tmp_path / "sub" / "c.yaml", rule("c", 'user == "x"'))
    rs = load_ruleset([str(tmp_path)])
    assert [r.name for r in rs.rules] == ["a", "b"]
    assert rs.files == (str(tmp_path / "a.yaml"), str(tmp_path / "b.yml"))


def test_paths_keep_their_configured_order_and_files_are_not_loaded_twice(tmp_path: Path) -> None:
    write(tmp_path / "rules" / "a.yaml", rule("a", 'user == "x"'))
    extra = write(tmp_path / "z-first.conf", rule("z", 'user == "x"'))
    rs = load_ruleset([str(extra), str(tmp_path / "rules"), str(tmp_path / "rules" / "a.yaml")])
    assert [r.name for r in rs.rules] == ["z", "a"]   # equal priority: file order decides
    assert len(rs.files) == 2


def test_many_documents_per_file_and_empty_documents_are_skipped() -> None:
    rs = ruleset("# header comment\n---\n" + rule("one", 'user == "a"') + "---\n---\n# only a comment\n---\n"
                 + rule("two", 'user == "b"') + "---\n")
    assert [r.name for r in rs.rules] == ["one", "two"]
    assert [r.line for r in rs.rules] == [3, 11]


def test_defaults_and_optional_keys() -> None:
    rs = ruleset("name: a\ncondition: user == \"x\"\nroutingGroup: etl\n---\n"
                 "name: b\ndescription: not used\npriority: -3\nqueuePriority: 7\nenabled: false\n"
                 "condition: 'true'\nreject: go away\n")
    a, b = rs.get("a"), rs.get("b")
    assert (a.priority, a.queue_priority, a.enabled, a.description, a.reject) == (0, 0, True, None, None)
    assert (b.priority, b.queue_priority, b.enabled, b.description, b.reject) == (-3, 7, False, "not used", "go away")
    assert a.to_dict() == {"name": "a", "description": None, "priority": 0, "condition": 'user == "x"',
                           "routingGroup": "etl", "reject": None, "queuePriority": 0, "enabled": True,
                           "file": "r.yaml", "line": 1}


def test_yaml_booleans_and_numbers_in_name_fields_keep_their_text() -> None:
    rs = ruleset("name: off\ncondition: true\nroutingGroup: 2024\n")
    r = rs.rules[0]
    assert (r.name, r.condition, r.routing_group) == ("off", "true", "2024")
    assert rs.evaluate(ctx()).rule is r


def test_an_empty_folder_and_a_missing_optional_path_give_an_empty_ruleset(tmp_path: Path) -> None:
    assert len(load_ruleset([str(tmp_path)])) == 0
    assert len(load_ruleset([str(tmp_path / "nope")], missing_ok=True)) == 0


def test_a_missing_path_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(RulesError) as exc:
        load_ruleset([str(tmp_path / "nope")])
    assert str(exc.value) == f"{tmp_path / 'nope'}: no such file or folder"


BAD = [
    ("condition: 'true'\nroutingGroup: g\n", 1, "missing required key 'name'"),
    ("name: a\nroutingGroup: g\n", 1, "missing required key 'condition'"),
    ("name: a\ncondition: 'true'\nroutingGroup: g\nreject: no way\n", 1, "exactly one of 'routingGroup' or 'reject'"),
    ("name: a\ncondition: 'true'\n", 1, "exactly one of 'routingGroup' or 'reject'"),
    ("name: a\ncondition: 'true'\nconditon: x\nroutingGroup: g\n", 3, "unknown key 'conditon'"),
    ("name: a\ncondition: |\n  user == \"x\" or\n  usr == \"y\"\nroutingGroup: g\n", 4, "unknown symbol 'usr' (did you mean 'user'?)"),
    ("name: a\ncondition: |\n  user == \"x\"\n  and and\nroutingGroup: g\n", 4, "syntax error"),
    ("name: a\n\ncondition: user == 1\nroutingGroup: g\n", 3, "compares STRING with FLOAT"),
    ("name: a\ncondition: clientTags == \"etl\"\nroutingGroup: g\n", 2, 'to test membership write "value" in array'),
    ("name: a\ncondition: user =~ \"(\"\nroutingGroup: g\n", 2, "invalid regular expression"),
    ("name: a\ncondition: user\nroutingGroup: g\n", 2, "must be true or false"),
    ("name: a\ncondition: user + 1 == \"x\"\nroutingGroup: g\n", 2, "type error"),
    ("name: a\ncondition: ''\nroutingGroup: g\n", 2, "condition is empty"),
    ("name: a\npriority: high\ncondition: 'true'\nroutingGroup: g\n", 2, "'priority' must be an integer"),
    ("name: a\npriority: true\ncondition: 'true'\nroutingGroup: g\n", 2, "'priority' must be an integer"),
    ("name: a\nqueuePriority: 1.5\ncondition: 'true'\nroutingGroup: g\n", 2, "'queuePriority' must be an integer"),
    ("name: a\nenabled: maybe\ncondition: 'true'\nroutingGroup: g\n", 2, "'enabled' must be true or false"),
    ("name: [a]\ncondition: 'true'\nroutingGroup: g\n", 1, "'name' must be a string, got a list"),
    ("name: ' a'\ncondition: 'true'\nroutingGroup: g\n", 1, "without leading or trailing spaces"),
    ("name: a\ncondition: 'true'\nroutingGroup: two words\n", 3, "routing group 'two words'"),
    ("name: a\ncondition: 'true'\nreject: ''\n", 3, "'reject' needs a message"),
    ("name: a\ncondition: 'true'\nreject: no\n", 3, "'reject' must be a string"),
    ("name: a\nname: b\ncondition: 'true'\nroutingGroup: g\n", 2, "duplicate key 'name'"),
    ("- name: a\n", 1, "a rule is a mapping"),
    ("name: a\ncondition: \"user == 'x'\nroutingGroup: g\n", 2, "invalid YAML: found unexpected end of stream"),
    ("name: a\n  bad: indent\n", 2, "invalid YAML"),
]


@pytest.mark.parametrize("text,line,message", BAD, ids=[b[2][:40] for b in BAD])
def test_load_errors_name_the_file_and_line(text: str, line: int, message: str) -> None:
    with pytest.raises(RulesError) as exc:
        ruleset("# leading comment\n" + text, path="rules/x.yaml")
    problems = exc.value.errors
    assert any(p.file == "rules/x.yaml" and p.line == line + 1 and message in p.message for p in problems), \
        [str(p) for p in problems]
    assert all(re.match(r"^rules/x\.yaml:\d+: \S", str(p)) for p in problems)


def test_all_errors_are_collected_across_files(tmp_path: Path) -> None:
    write(tmp_path / "a.yaml", rule("ok", 'user == "x"') + "---\n" + rule("bad1", 'usr == "x"'))
    write(tmp_path / "b.yaml", rule("bad2", "user ==") + "---\n" + "name: bad3\n")
    with pytest.raises(RulesError) as exc:
        load_ruleset([str(tmp_path)])
    lines = str(exc.value).splitlines()
    assert len(lines) == 4
    assert lines[0].startswith(f"{tmp_path / 'a.yaml'}:8: rule 'bad1': condition: unknown symbol 'usr'")
    assert lines[1].startswith(f"{tmp_path / 'b.yaml'}:3: rule 'bad2': condition: syntax error")
    assert lines[2] == f"{tmp_path / 'b.yaml'}:6: missing required key 'condition'"
    assert lines[3] == f"{tmp_path / 'b.yaml'}:6: rule 'bad3' needs exactly one of 'routingGroup' or 'reject'"


def test_rule_names_are_unique_across_files(tmp_path: Path) -> None:
    write(tmp_path / "a.yaml", rule("same", 'user == "x"'))
    write(tmp_path / "b.yaml", "\n\n" + rule("same", 'user == "y"'))
    with pytest.raises(RulesError) as exc:
        load_ruleset([str(tmp_path)])
    assert str(exc.value) == (f"{tmp_path / 'b.yaml'}:3: duplicate rule name 'same' "
                              f"(first defined at {tmp_path / 'a.yaml'}:1)")


@pytest.mark.parametrize("data,line,message", [
    (b"name: a\n\x00\x01\x02binary", 2, "binary data"),
    (b"name: a\ncondition: '\xe9t\xe9'\n", 2, "not UTF-8 text (byte 0xe9"),
    (b"name: a\ncondition: 'user == \"x\"'\nrouting", 3, "invalid YAML"),
    (b"name: a\ncondition: 'user == \"x\"'\nroutingGroup: g\n---\nname: b\ncondition: 'user =", 6, "invalid YAML"),
])
def test_binary_non_utf8_and_truncated_files_are_clear_errors(tmp_path: Path, data: bytes, line: int,
                                                              message: str) -> None:
    path = write(tmp_path / "x.yaml", data)
    with pytest.raises(RulesError) as exc:
        load_ruleset([str(path)])
    assert any(p.line == line and message in p.message for p in exc.value.errors), str(exc.value)


def test_a_utf8_bom_is_accepted() -> None:
    rs = parse_ruleset([("r.yaml", "\ufeff".encode() + rule("a", 'user == "é"').encode())])
    assert rs.evaluate(ctx(user="é")).rule.name == "a"


def test_version_is_a_content_hash() -> None:
    a1 = ruleset(rule("a", 'user == "x"'))
    a2 = ruleset(rule("a", 'user == "x"'))
    b = ruleset(rule("a", 'user == "y"'))
    assert a1.version == a2.version != b.version
    assert re.fullmatch(r"[0-9a-f]{12}", a1.version)
    doc = a1.to_dict()
    assert set(doc) == {"version", "loadedAt", "files", "rules"} and doc["files"] == ["r.yaml"]
    assert re.match(r"\d{4}-\d\d-\d\dT", doc["loadedAt"])


# --- evaluation -------------------------------------------------------------------------------

def test_highest_priority_first_and_the_first_match_decides() -> None:
    rs = ruleset(rule("low", "true", "g1", 1) + "---\n" + rule("high", 'user == "a"', "g2", 10)
                 + "---\n" + rule("mid", 'source == "s"', "g3", 5))
    m = rs.evaluate(ctx(user="a", source="s"))
    assert m.rule.name == "high"
    assert [t["rule"] for t in m.trace] == ["high"]
    m = rs.evaluate(ctx(user="b", source="s"), explain=True)
    assert m.rule.name == "mid"
    assert m.trace == [{"rule": "high", "priority": 10, "matched": False, "error": None},
                       {"rule": "mid", "priority": 5, "matched": True, "error": None}]


def test_ties_are_broken_by_file_then_document_order(tmp_path: Path) -> None:
    write(tmp_path / "b.yaml", rule("b1", "true"))
    write(tmp_path / "a.yaml", rule("a1", "false") + "---\n" + rule("a2", "true") + "---\n" + rule("a3", "true"))
    rs = load_ruleset([str(tmp_path)])
    assert [r.name for r in rs.rules] == ["a1", "a2", "a3", "b1"]
    assert rs.evaluate(ctx()).rule.name == "a2"


def test_disabled_rules_are_loaded_but_never_evaluated() -> None:
    rs = ruleset(rule("off", "true", priority=9, extra="enabled: false\n") + "---\n" + rule("on", "true"))
    assert [r.name for r in rs.rules] == ["off", "on"]
    m = rs.evaluate(ctx(), explain=True)
    assert m.rule.name == "on" and [t["rule"] for t in m.trace] == ["on"]


def test_no_match_gives_no_rule_and_the_full_trace() -> None:
    rs = ruleset(rule("a", 'user == "a"') + "---\n" + rule("b", 'source == "b"'))
    m = rs.evaluate(ctx(user="z"), explain=True)
    assert m.rule is None and [t["matched"] for t in m.trace] == [False, False]


def test_a_run_time_error_is_not_a_match_and_routing_continues() -> None:
    rs = ruleset(rule("team", 'headers["x-team"] == "data"', "ds", 9) + "---\n"
                 + rule("lower", 'user.as_lower == "bob"', "g", 8) + "---\n" + rule("fallback", "true", "h", 1))
    m = rs.evaluate(ctx(user=None, headers={}))
    assert m.rule.name == "fallback"
    errors = {t["rule"]: t["error"] for t in m.trace}
    assert "no key 'x-team'" in errors["team"] and "headers&['x-team']" in errors["team"]
    assert "null" in errors["lower"]
    assert errors["fallback"] is None
    assert set(m.errors) == {"team", "lower"}
    assert rs.evaluate(ctx(user="BOB", headers={"x-team": "data"})).rule.name == "team"


@pytest.mark.parametrize("condition,context,expected", [
    ('source =~ "air.*"', {"source": None}, False),
    ('source !~ "air.*"', {"source": None}, True),
    ('source == null', {"source": None}, True),
    ('source != "x"', {"source": None}, True),
    ('user in ["a", "b"]', {"user": None}, False),
    ('headers&["x-team"] == "data"', {"headers": {}}, False),
    ('"x-team" in headers and headers["x-team"] == "data"', {"headers": {}}, False),
    ('(source ?? "") =~ "air.*"', {"source": None}, False),
    ('"etl" in clientTags', {"clientTags": ["etl"]}, True),
    ('clientTags == []', {}, True),
    ('"hive.raw.events" in tables', {"tables": ("hive.raw.events",)}, True),
    ('queryType == "INSERT"', {"queryType": "INSERT"}, True),
])
def test_null_and_missing_values(condition: str, context: dict, expected: bool) -> None:
    m = ruleset(rule("r", condition)).evaluate(ctx(**context), explain=True)
    assert (m.rule is not None) is expected
    assert m.trace[0]["error"] is None


def test_uses_sql_only_for_enabled_rules_reading_sql_symbols() -> None:
    assert not ruleset(rule("a", 'user == "x" and query =~ "(?i)select"')).uses_sql
    for sym in ('queryType == "INSERT"', '"x" in catalogs', '"x" in schemas', '"x" in tables'):
        assert ruleset(rule("a", sym)).uses_sql
    assert not ruleset(rule("a", '"x" in tables', extra="enabled: false\n")).uses_sql


def test_contexts_with_lists_and_odd_values_are_normalised() -> None:
    rs = ruleset(rule("a", 'clientTags == ["x", "y"] and headers["h"] == "1"'))
    assert rs.evaluate({"clientTags": ["x", "y"], "headers": {"H": 1}}).rule is not None


# --- index ------------------------------------------------------------------------------------

INDEX_RULES = "---\n".join([
    rule("u1", 'user == "alice" and source =~ "air.*"', "g1", 5),
    rule("u2", '"bob" == user', "g2", 5),
    rule("u3", 'user in ["carol", "dave"] and "x" in clientTags', "g3", 3),
    rule("s1", 'source == "dbt"', "g4", 4),
    rule("h1", 'routingGroupHeader == "etl" and user != "alice"', "g5", 6),
    rule("any", '"x" in clientTags or user == "erin"', "g6", 2),
    rule("neg", 'user != "alice"', "g7", 1),
    rule("or", 'user == "alice" or source == "dbt"', "g8", 5),
    rule("u1b", 'user == "alice"', "g9", 5),
])


def test_indexed_rules_are_skipped_when_their_literal_cannot_match() -> None:
    rs = ruleset(INDEX_RULES)
    m = rs.evaluate(ctx(user="zed", source="x"))
    evaluated = [t["rule"] for t in m.trace]
    assert "u1" not in evaluated and "u2" not in evaluated and "u3" not in evaluated and "s1" not in evaluated
    assert m.rule.name == "neg"


users = st.sampled_from([None, "alice", "bob", "carol", "dave", "erin", "zed"])
sources = st.sampled_from([None, "airflow", "dbt", "superset"])
headers_ = st.sampled_from([None, "etl", "adhoc"])
tags = st.lists(st.sampled_from(["x", "y"]), max_size=2)


_INDEX_RS = ruleset(INDEX_RULES)
_INDEX_REFERENCE = [(r, rule_engine.Rule(r.condition, context=rule_engine.Context(
    type_resolver=rule_engine.type_resolver_from_dict(SYMBOL_TYPES)))) for r in _INDEX_RS.rules]


@settings(max_examples=300, deadline=None)
@given(users, sources, headers_, tags)
def test_the_index_never_changes_the_decision(user: Any, source: Any, header: Any, tag_list: list) -> None:
    rs = _INDEX_RS
    c = ctx(user=user, source=source, routingGroupHeader=header, clientTags=tag_list)
    fast, full = rs.evaluate(c), rs.evaluate(c, explain=True)
    assert (fast.rule.name if fast.rule else None) == (full.rule.name if full.rule else None)
    # and both agree with plain rule-engine evaluating every rule in order
    expected = next((r for r, reference in _INDEX_REFERENCE if reference.matches(_thing(c))), None)
    assert full.rule is expected


# --- the fast evaluator agrees with rule-engine -----------------------------------------------

def _re_context() -> rule_engine.Context:
    return rule_engine.Context(type_resolver=rule_engine.type_resolver_from_dict(SYMBOL_TYPES))


def _thing(c: dict) -> dict:
    from gateway.routing.rules import prepare_context
    return prepare_context(c)


EXPRESSIONS = [
    'user == "alice"', 'user != "alice"', '"alice" == user', 'user == null', 'user != null',
    'source =~ "air.*"', 'source =~~ "flow"', 'source !~ "air.*"', 'source !~~ "flow"',
    '"etl" in clientTags', 'user in ["alice", "bob"]', 'user in ["alice", null]', '"li" in user',
    'not (user == "alice")', 'user == "alice" and source == "airflow"', 'user == "bob" or "etl" in clientTags',
    'headers["x-team"] == "data"', 'headers&["x-team"] == "data"', '"x-team" in headers',
    '(source ?? "none") == "none"', 'clientTags == ["etl", "nightly"]', 'clientTags == []', 'clientTags != []',
    '[user, source] == ["alice", "airflow"]', 'true', 'false', 'null == null', 'catalog == schema',
    'queryType in ["INSERT", "DATA_DEFINITION"]', '"hive.raw.events" in tables and queryType == "SELECT"',
    'user =~ source', 'user.as_lower == "alice"', 'clientTags.length > 1', 'user in clientTags',
    '"a" in ["a"]', 'not user == "x"', '(user ?? source) == "airflow"',
]
CONTEXTS = [
    {},
    {"user": "alice", "source": "airflow", "clientTags": ("etl", "nightly"), "headers": {"x-team": "data"}},
    {"user": "bob", "source": "Airflow-2", "clientTags": ("bob",), "headers": {"x-team": "ds"}},
    {"user": "ALICE", "source": "dbt", "catalog": "hive", "schema": "hive", "queryType": "INSERT",
     "tables": ("hive.raw.events",)},
    {"user": None, "source": "airflow", "queryType": "SELECT", "tables": ("hive.raw.events",)},
    {"user": "", "source": "", "clientTags": ("",), "headers": {"x-team": ""}},
]


@pytest.mark.parametrize("expression", EXPRESSIONS)
def test_the_fast_evaluator_agrees_with_rule_engine(expression: str) -> None:
    compiled = compile_condition(expression)
    reference = rule_engine.Rule(expression, context=_re_context())
    for c in CONTEXTS:
        thing = _thing(c)
        try:
            expected: Any = reference.matches(thing)
        except Exception:  # noqa: BLE001
            expected = "error"
        try:
            got: Any = compiled.evaluate(thing)
        except Exception:  # noqa: BLE001
            got = "error"
        assert got == expected, (expression, c)


def test_common_conditions_take_the_fast_path() -> None:
    fast = [e for e in EXPRESSIONS if compile_condition(e).fast]
    slow = sorted(set(EXPRESSIONS) - set(fast))
    assert slow == ['clientTags.length > 1', 'user =~ source', 'user.as_lower == "alice"']


# --- the shipped example rules ----------------------------------------------------------------

EXAMPLES = [
    ({"source": "airflow", "user": "etl_bot"}, "etl-tools"),
    ({"source": "dbt-core", "user": "analyst"}, "etl-tools"),
    ({"clientTags": ("etl",), "user": "carol"}, "etl-tools"),
    ({"user": "svc_reporting", "source": "trino-python-client"}, "service-users"),
    ({"user": "svc_reporting", "source": "Apache Superset"}, "bi-tools"),
    ({"user": "alice", "source": "tableau", "queryType": "INSERT"}, "bi-tools"),
    ({"user": "alice", "queryType": "DATA_DEFINITION", "tables": ("hive.raw.t",)}, "table-maintenance"),
    ({"user": "alice", "queryType": "ALTER_TABLE_EXECUTE", "tables": ("iceberg.s.t",)}, "table-maintenance"),
    ({"user": "alice", "queryType": "DATA_DEFINITION", "tables": ()}, None),
    ({"user": "alice", "queryType": "INSERT", "query": "INSERT INTO t SELECT * FROM s"}, "large-inserts"),
    ({"user": "alice", "queryType": "INSERT", "query": "insert into t (a, b) values (1, 2)"}, None),
    ({"user": "alice", "source": "trino-cli", "queryType": "SELECT"}, "interactive-clients"),
    ({"user": "alice", "queryType": "DATA_DEFINITION", "query": "DROP TABLE t", "tables": ("a.b.t",)},
     "table-maintenance"),
]


@pytest.mark.parametrize("context,expected", EXAMPLES)
def test_the_example_rules_route_the_main_cases(context: dict, expected: str | None) -> None:
    rs = load_ruleset([str(REPO / "rules")])
    m = rs.evaluate(ctx(**context))
    assert (m.rule.name if m.rule else None) == expected
    groups = {r.name: r.routing_group for r in rs.rules}
    assert set(groups.values()) <= {"adhoc", "etl", None}


def test_the_example_reject_rule_is_disabled_and_works_when_enabled() -> None:
    rs = load_ruleset([str(REPO / "rules")])
    freeze = [r for r in rs.rules if r.reject]
    assert len(freeze) == 1 and not freeze[0].enabled
    text = (REPO / "rules" / "10-guards.yaml").read_text().replace("enabled: false", "enabled: true")
    on = parse_ruleset([("g.yaml", text.encode())])
    m = on.evaluate(ctx(queryType="DATA_DEFINITION", query="  drop table x"))
    assert m.rule is not None and m.rule.reject
    assert on.evaluate(ctx(queryType="DATA_DEFINITION", query="CREATE TABLE x (a int)")).rule is None


# --- the cookbook in docs/rules.md ------------------------------------------------------------

def _cookbook() -> list[tuple[str, str]]:
    doc = (REPO / "docs" / "rules.md").read_text()
    section = doc.split("## Cookbook", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"\n### (.+?)\n.*?```yaml\n(.*?)```", section, re.S)


COOKBOOK_CASES: dict[str, list[tuple[dict, Any]]] = {
    "etl-tools": [({"source": "airflow-worker"}, "etl"), ({"clientTags": ("etl",)}, "etl"), ({"source": "cli"}, None)],
    "service-users": [({"user": "svc_loader"}, "etl"), ({"user": "alice"}, None)],
    "bi-dashboards": [({"source": "Apache Superset"}, "adhoc"), ({"source": "Looker", "queryType": "INSERT"}, "adhoc")],
    "table-maintenance": [({"queryType": "ALTER_TABLE_EXECUTE", "tables": ("a.b.c",)}, "etl"),
                          ({"queryType": "DATA_DEFINITION", "tables": ()}, None)],
    "bulk-inserts": [({"queryType": "INSERT", "query": "INSERT INTO t SELECT * FROM s"}, "etl"),
                     ({"queryType": "INSERT", "query": "INSERT INTO t VALUES (1)"}, None)],
    "finance-isolation": [({"catalogs": ("finance",)}, "secure"), ({"catalog": "finance"}, "secure"),
                          ({"catalogs": ("hive",)}, None)],
    "freeze-drop": [({"queryType": "DATA_DEFINITION", "query": "DROP TABLE x"}, "reject"),
                    ({"queryType": "DATA_DEFINITION", "query": "CREATE TABLE x (a int)"}, None)],
    "team-header": [({"headers": {"x-team": "data-science"}}, "ds"), ({"headers": {}}, None)],
    "batch-subnet": [({"remoteAddress": "10.20.3.4"}, "etl"), ({"remoteAddress": "10.2.3.4"}, None)],
    "vip-users": [({"user": "cfo"}, "adhoc")],
}


def test_the_cookbook_has_ten_rules_and_each_one_is_tested() -> None:
    entries = _cookbook()
    names = [ruleset(text).rules[0].name for _, text in entries]
    assert len(entries) == 10
    assert sorted(names) == sorted(COOKBOOK_CASES)


@pytest.mark.parametrize("title,text", _cookbook() if (REPO / "docs" / "rules.md").exists() else [])
def test_each_cookbook_rule_loads_and_routes_as_described(title: str, text: str) -> None:
    rs = ruleset(text, path=f"cookbook/{title}.yaml")
    assert len(rs.rules) == 1
    r = rs.rules[0]
    for context, expected in COOKBOOK_CASES[r.name]:
        m = rs.evaluate(ctx(**context))
        if expected is None:
            assert m.rule is None, (r.name, context)
        elif expected == "reject":
            assert m.rule is r and r.reject
        else:
            assert m.rule is r and r.routing_group == expected, (r.name, context)
    if r.name == "vip-users":
        assert r.queue_priority > 0


def test_benchmark_script_runs(tmp_path: Path) -> None:
    import subprocess
    import sys
    out = subprocess.run([sys.executable, str(REPO / "benchmarks" / "rules_bench.py"), "--decisions", "200"],
                         capture_output=True, text=True, timeout=60, cwd=tmp_path, env={**os.environ})
    assert out.returncode == 0, out.stderr
    assert re.search(r"^\s+1000\s+\d", out.stdout, re.M)


def test_unknown_builtins_are_load_errors(tmp_path):
    from gateway.routing.rules import RulesError, load_ruleset
    f = tmp_path / "r.yaml"
    f.write_text('name: typo\ncondition: $nwo > $today\nroutingGroup: etl\n')
    with pytest.raises(RulesError) as err:
        load_ruleset([str(f)])
    assert "unknown built-in '$nwo'" in str(err.value) and "r.yaml:2" in str(err.value)
    f.write_text('name: fine\ncondition: $now > $today\nroutingGroup: etl\n')
    assert load_ruleset([str(f)]).rules[0].name == "fine"


# --- remembered decisions -----------------------------------------------------------------------

def test_a_repeated_context_gets_the_remembered_decision_and_others_their_own() -> None:
    rs = ruleset("---\n".join([
        rule("hdr", 'headers&["x-team"] == "bi"', "g1", 3),
        rule("tag", '"etl" in clientTags', "g2", 2),
        rule("src", 'source =~ "air.*"', "g3", 1),
    ]))
    cases = [
        (ctx(headers={"X-Team": "bi"}), "hdr"),
        (ctx(headers={"X-Team": "ops"}, clientTags=["etl"]), "tag"),
        (ctx(headers={"X-Team": "ops"}, source="airflow"), "src"),
        (ctx(headers={"X-Team": "ops"}), None),
    ]
    for _ in range(3):                       # the second and third rounds are cache hits
        for c, want in cases:
            got = rs.evaluate(c)
            assert (got.rule.name if got.rule else None) == want
            fresh = rs.evaluate(c, explain=True)
            assert got.rule is fresh.rule
    assert len(rs._decisions) == len(cases)


@pytest.mark.parametrize("condition,cached", [
    ('user == "alice"', True),
    ('"x" in tables', True),
    ('query =~ ".*DROP.*"', False),                 # raw SQL text: too varied to key on
    ('$now.hour < 6 and user == "etl"', False),      # the clock
    ('$today > $parse_datetime("2020-01-01")', False),
    ('$random(10) > 5', False),
])
def test_decisions_are_remembered_only_when_they_depend_on_the_context_alone(condition: str, cached: bool) -> None:
    rs = ruleset(rule("r", condition))
    assert (rs._key_symbols is not None) == cached


def test_the_remembered_decisions_are_bounded(monkeypatch) -> None:
    from gateway.routing import rules as rules_mod
    monkeypatch.setattr(rules_mod, "_DECISION_CACHE_SIZE", 50)
    rs = ruleset(rule("r", 'user == "u7"'))
    for i in range(500):
        m = rs.evaluate(ctx(user=f"u{i}"))
        assert (m.rule is not None) == (i == 7)
        assert len(rs._decisions) <= 50
