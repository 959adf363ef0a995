"""`rules convert`: every converted ruleset routes the grid of requests exactly as trino-gateway would.

"As trino-gateway would" is computed by ``reference.route``, an interpreter of the original MVEL
rules written independently of the converter; "ours" is ``decide()`` over the converted file
loaded with ``load_ruleset``. Rules the converter reports as not converted are removed from the
reference's ruleset too, so the comparison proves the rest was converted faithfully.
"""
from __future__ import annotations

import argparse
import io
import json
from pathlib import Path

import pytest
import yaml

from gateway.javamigration.cli import add_migrate_parsers, cmd_convert
from gateway.javamigration.convert import EASY_RULES_DEFAULT_PRIORITY, InputError, convert_rules
from gateway.routing.cli_rules import add_rules_parser, cmd_check, cmd_explain

from tests.javamigration.harness import mismatches, our_ruleset
from tests.javamigration.reference import Request, load_ref_rules, route
from tests.javamigration.rulesets import (
    DOCS_BASIC, DOCS_IF, DOCS_PRIORITIES, IF_ELSE, QUERY_PROPERTIES, RULESETS, STRINGS, TEAMS,
    TIES, UNCONVERTIBLE, UNCONVERTIBLE_RULES,
)


def test_the_suite_has_at_least_twenty_realistic_rules() -> None:
    total = sum(len([d for d in yaml.safe_load_all(t) if d]) for t in RULESETS.values())
    assert total >= 20, total


@pytest.mark.parametrize("name", sorted(RULESETS))
def test_converted_ruleset_routes_like_trino_gateway(name: str, tmp_path: Path) -> None:
    text = RULESETS[name]
    conv = convert_rules(text)
    assert {p.rule for p in conv.not_converted} == UNCONVERTIBLE[name]
    output = conv.to_yaml(f"{name}.yaml")
    ruleset = our_ruleset(output, tmp_path)
    assert cmd_check([str(tmp_path / "converted.yaml")], io.StringIO(), io.StringIO()) == 0
    diffs, stats = mismatches(text, ruleset, skip={p.rule for p in conv.not_converted})
    assert diffs == [], f"{len(diffs)} requests routed differently, e.g.:\n" + "\n".join(diffs[:10])
    assert stats["compared"] > 1000
    assert stats["not_default"] > 0, "the grid never reaches any rule of this file"


@pytest.mark.parametrize("text", [TEAMS, STRINGS, IF_ELSE], ids=["teams", "strings", "if_else"])
def test_grid_exercises_java_exceptions(text: str) -> None:
    # These files hold conditions/actions that throw on a missing header; the comparison above
    # is only meaningful if the grid contains requests where they do.
    from tests.javamigration.harness import GRID
    rules = load_ref_rules(text)
    failing = sum(1 for r in GRID[:2000] if route(rules, r, on_error="fail") == "<request fails>")
    assert failing > 0


@pytest.mark.parametrize("legacy", [False, True])
def test_equal_priorities_and_missing_priority_follow_the_chosen_engine(legacy: bool, tmp_path: Path) -> None:
    conv = convert_rules(TIES, legacy_easy_rules=legacy)
    assert conv.complete
    ruleset = our_ruleset(conv.to_yaml(), tmp_path)
    diffs, _ = mismatches(TIES, ruleset, order="name" if legacy else "file",
                          default_priority=EASY_RULES_DEFAULT_PRIORITY if legacy else 0)
    assert diffs == []
    names = [r["name"] for r in conv.rules]
    if legacy:
        # easy-rules: no priority = 2147483646 runs last, equal priorities by name (a before b)
        assert names == ["no-priority", "b-rule", "a-rule", "catch-all"]
    else:
        # current trino-gateway: no priority = 0; equal priorities in file order (b before a)
        assert names == ["a-rule", "b-rule", "no-priority", "catch-all"]


def test_default_priority_option(tmp_path: Path) -> None:
    conv = convert_rules(TIES, default_priority=10)
    assert [r["name"] for r in conv.rules][0] == "no-priority"
    diffs, _ = mismatches(TIES, our_ruleset(conv.to_yaml(), tmp_path), default_priority=10)
    assert diffs == []


def test_the_documentation_examples_explain_to_the_documented_groups(tmp_path: Path) -> None:
    """trino-gateway's routing-rules page: what `rules explain` answers on the converted files."""
    cases = {
        "basic": (DOCS_BASIC, [({"source": "airflow"}, "etl"),
                               ({"source": "airflow", "client_tags": "label=special"}, "etl-special"),
                               ({"source": "superset"}, "adhoc"), ({}, "adhoc")]),
        "priorities": (DOCS_PRIORITIES, [({"source": "airflow"}, "etl"),
                                         ({"source": "airflow", "client_tags": "label=special"}, "etl-special")]),
        "if": (DOCS_IF, [({"source": "airflow", "client_tags": "label=foo"}, "etl-foo"),
                         ({"source": "airflow", "client_tags": "label=bar"}, "etl-bar"),
                         ({"source": "airflow"}, "etl"), ({"source": "airflow", "client_tags": "x"}, "etl"),
                         ({"source": "dbt"}, "adhoc")]),
    }
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    add_rules_parser(sub)
    for name, (text, expectations) in cases.items():
        rules_file = tmp_path / f"{name}.yaml"
        rules_file.write_text(convert_rules(text).to_yaml())
        for flags, group in expectations:
            argv = ["rules", "explain", "--rules", str(rules_file), "--json", "--no-group-header"]
            for flag, value in flags.items():
                argv += [f"--{flag.replace('_', '-')}", value]
            args = parser.parse_args(argv)
            out = io.StringIO()
            assert cmd_explain(args, out) == 0
            assert json.loads(out.getvalue())["routingGroup"] == group, (name, flags)


def test_unconvertible_rules_are_named_with_reasons() -> None:
    conv = convert_rules(UNCONVERTIBLE_RULES)
    reasons = {p.rule: p.message for p in conv.not_converted}
    assert "state" in reasons["airflow special"]
    assert "routingCluster" in reasons["routing_cluster_pinning_rule"]
    assert "EXPLAIN ANALYZE" in reasons["selects-only"]
    assert "CreateTableAsSelect" in reasons["inserts-only"]
    assert "DescribeInput" in reasons["show-only"]
    assert "getBody" in reasons["batch-hint"]
    assert "getMethod" in reasons["posts"]
    assert "quoted" in reasons["quoted-table"]
    assert "def" in reasons["helper-function"]
    assert "lower-case" in reasons["upper-catalog"]
    assert "Authorization" in reasons["authenticated"]
    assert "bi dashboards" in reasons["bad-group"]
    assert "composite" in reasons["airflow rule group"]
    assert all(p.line for p in conv.not_converted)
    notes = " ".join(str(n) for n in conv.notes)
    assert "getTables().contains" in notes and "always false" in notes
    # the converted part keeps only what was convertible
    assert [r["name"] for r in conv.rules] == ["superset"]
    assert conv.rules[0]["condition"] == 'source == "superset" or queryType != "EXPLAIN"'


def test_exact_translations_of_common_forms() -> None:
    def cond(mvel: str) -> str:
        conv = convert_rules(f"name: r\ncondition: '{mvel}'\nactions: ['result.put(\"routingGroup\", \"g\")']\n")
        assert conv.complete, conv.not_converted
        return conv.rules[0]["condition"]

    assert cond('request.getHeader("X-Trino-Source") == "airflow"') == 'source == "airflow"'
    assert cond('trinoRequestUser.userExistsAndEquals("alice")') == 'user == "alice"'
    assert cond('request.getHeader("x-trino-catalog") != "hive"') == 'catalog != "hive"'
    assert cond('request.getHeader("X-Trino-Client-Tags") contains "etl"') == \
        'headers&["x-trino-client-tags"] != null and "etl" in headers&["x-trino-client-tags"]'
    assert cond('trinoQueryProperties.tablesContains("Hive.Raw.Events")') == '"hive.raw.events" in tables'
    assert cond('trinoQueryProperties.getResourceGroupQueryType() != "SELECT"') == 'queryType != "SELECT"'
    assert cond('trinoQueryProperties.getQueryType() == "Explain"') == 'queryType == "EXPLAIN"'
    # Java throws on the missing header, so the negation needs the header to be there
    assert cond('!request.getHeader("X-Trino-Source").equals("airflow")') == \
        'source != "airflow" and headers&["x-trino-source"] != null'


def test_rules_exported_from_the_web_api_convert_the_same(tmp_path: Path) -> None:
    # GET /webapp/getRoutingRules answers {"code": 200, "data": [rule, ...]} (JSON is YAML)
    docs = [d for d in yaml.safe_load_all(DOCS_PRIORITIES) if d]
    exported = json.dumps({"code": 200, "msg": "ok", "data": docs})
    assert convert_rules(exported).rules == convert_rules(DOCS_PRIORITIES).rules
    assert convert_rules(json.dumps(docs)).rules == convert_rules(DOCS_PRIORITIES).rules


def test_a_null_routing_group_sends_to_the_default_group() -> None:
    text = "name: r\ncondition: 'true'\nactions: ['result.put(\"routingGroup\", null)']\n"
    assert convert_rules(text, default_group="batch").rules[0]["routingGroup"] == "batch"


def test_conversion_is_deterministic() -> None:
    assert convert_rules(QUERY_PROPERTIES).to_yaml() == convert_rules(QUERY_PROPERTIES).to_yaml()


@pytest.mark.parametrize("text, message", [
    ("name: [unclosed", "not valid YAML"),
    ("just a string\n", "a rule is a YAML mapping"),
])
def test_unreadable_input_is_an_input_error(text: str, message: str) -> None:
    with pytest.raises(InputError, match=message):
        convert_rules(text)


def test_structurally_broken_rules_are_reported_not_fatal() -> None:
    conv = convert_rules("---\nname: a\nactions: []\n---\ncondition: 'true'\nactions: []\n"
                         "---\nname: c\npriority: high\ncondition: 'true'\nactions: []\n")
    reasons = [p.message for p in conv.not_converted]
    assert any("needs a condition" in r for r in reasons)
    assert any("no name" in r for r in reasons)
    assert any("priority must be an integer" in r for r in reasons)


# --- the command line ---------------------------------------------------------------------------

def _convert_cli(argv: list[str]) -> tuple[int, str, str]:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    rules_sub = add_rules_parser(sub)
    add_migrate_parsers(sub, rules_sub)
    args = parser.parse_args(["rules", "convert", *argv])
    out, err = io.StringIO(), io.StringIO()
    code = cmd_convert(args, out, err)
    return code, out.getvalue(), err.getvalue()


def test_cli_converts_to_stdout_with_the_report_on_stderr(tmp_path: Path) -> None:
    src = tmp_path / "routing_rules.yml"
    src.write_text(DOCS_BASIC)
    code, out, err = _convert_cli([str(src)])
    assert code == 0
    assert [d["name"] for d in yaml.safe_load_all(out) if d] == ["airflow special", "airflow"]
    assert "2 of 2 rules converted" in err


def test_cli_exit_1_when_rules_are_left_out_and_the_rest_is_written(tmp_path: Path) -> None:
    src = tmp_path / "rules.yml"
    src.write_text(UNCONVERTIBLE_RULES)
    out_file = tmp_path / "out" / "converted.yaml"
    out_file.parent.mkdir()
    code, out, err = _convert_cli([str(src), "-o", str(out_file)])
    assert code == 1
    assert out == ""
    assert "not converted: rule 'selects-only'" in err
    assert "16 not converted" in err
    assert cmd_check([str(out_file)], io.StringIO(), io.StringIO()) == 0
    assert "NOT CONVERTED: rule 'posts'" in out_file.read_text()
    assert not [p for p in out_file.parent.iterdir() if p.name.startswith(".convert-")]


@pytest.mark.parametrize("content", [None, b"name: [", b"\xff\xfe not utf-8"])
def test_cli_exit_2_for_unreadable_input(content: bytes | None, tmp_path: Path) -> None:
    src = tmp_path / "rules.yml"
    if content is not None:
        src.write_bytes(content)
    code, out, err = _convert_cli([str(src)])
    assert code == 2
    assert out == ""
    assert str(src) in err


def test_cli_legacy_flag_and_default_group(tmp_path: Path) -> None:
    src = tmp_path / "r.yml"
    src.write_text(TIES + "---\nname: z\npriority: 99\ncondition: 'true'\nactions: ['result.put(\"routingGroup\", \"\")']\n")
    code, out, _ = _convert_cli([str(src), "--legacy-easy-rules", "--default-group", "fallback"])
    assert code == 0
    docs = [d for d in yaml.safe_load_all(out) if d]
    assert docs[0]["name"] == "no-priority" and docs[1]["name"] == "z" and docs[1]["routingGroup"] == "fallback"


def test_requests_the_reference_cannot_route_are_not_compared() -> None:
    # sanity of the harness itself: an unqualified table without session defaults fails there
    rules = load_ref_rules(DOCS_BASIC)
    assert route(rules, Request([("X-Trino-Source", "airflow")], "SELECT * FROM events", None)) == "<request fails>"
