"""Rules plus fallbacks → the routing group: rule, reject, group header, default group."""
from __future__ import annotations

from typing import Any

from gateway.routing.context import empty_context
from gateway.routing.decision import Decision, decide
from gateway.routing.rules import Ruleset, parse_ruleset

RULES = """
name: etl-tools
priority: 10
queuePriority: 3
condition: source == "airflow"
routingGroup: etl
---
name: to-empty
priority: 9
condition: source == "spark"
routingGroup: gpu
---
name: strict
priority: 8
condition: source == "secure-app"
routingGroup: vault
---
name: freeze
priority: 20
condition: user == "intern"
reject: interns may not run queries on Fridays
---
name: tagged
priority: 10
condition: '"etl" in clientTags'
routingGroup: etl
"""


def rs() -> Ruleset:
    return parse_ruleset([("r.yaml", RULES.encode())])


def run(ruleset: Ruleset | None = None, *, groups: set[str] | None = None, allow: bool = True,
        default: str = "adhoc", strict: set[str] | None = None, **ctx: Any) -> Decision:
    c = empty_context()
    c.update(ctx)
    return decide(ruleset if ruleset is not None else rs(), c,
                  groups_with_backends=groups if groups is not None else {"adhoc", "etl", "bi"},
                  default_group=default, allow_group_header=allow, no_fallback_groups=strict or set())


def test_a_matching_rule_names_the_group() -> None:
    d = run(source="airflow")
    assert (d.routing_group, d.rule, d.reject, d.reason, d.queue_priority) == ("etl", "etl-tools", None, "rule etl-tools", 3)
    assert d.trace[-1] == {"rule": "etl-tools", "priority": 10, "matched": True, "error": None}
    assert not d.rejected


def test_equal_priorities_go_to_the_earlier_rule() -> None:
    d = run(source="airflow", clientTags=("etl",))
    assert d.rule == "etl-tools"


def test_a_rule_beats_the_group_header() -> None:
    assert run(source="airflow", routingGroupHeader="bi").routing_group == "etl"


def test_reject_refuses_with_the_rule_message() -> None:
    d = run(user="intern", source="airflow")
    assert d.rejected and d.routing_group is None and d.rule == "freeze"
    assert d.reject == "interns may not run queries on Fridays"
    assert d.reason == "rule freeze rejects the query"


def test_no_match_uses_the_allowed_header_whose_group_has_backends() -> None:
    d = run(routingGroupHeader="bi")
    assert (d.routing_group, d.rule, d.reason) == ("bi", None, "group header")


def test_no_match_and_a_disallowed_header_gives_the_default_group() -> None:
    d = run(routingGroupHeader="bi", allow=False)
    assert d.routing_group == "adhoc"
    assert d.reason == "default group (routing group header 'bi' is not allowed)"


def test_no_match_and_a_header_group_without_backends_gives_the_default_group() -> None:
    d = run(routingGroupHeader="nowhere")
    assert d.routing_group == "adhoc"
    assert d.reason == "default group (routing group header 'nowhere' names a group without backends)"


def test_no_match_and_no_header_gives_the_default_group() -> None:
    d = run(user="alice")
    assert (d.routing_group, d.rule, d.reason, d.queue_priority) == ("adhoc", None, "default group", 0)


def test_a_rule_naming_a_group_without_backends_falls_back_to_the_header_then_default() -> None:
    d = run(source="spark", routingGroupHeader="bi")
    assert (d.routing_group, d.rule) == ("bi", "to-empty")
    assert d.reason == "rule to-empty named group 'gpu' which has no backends; fell back to group header 'bi'"
    d = run(source="spark")
    assert d.routing_group == "adhoc"
    assert d.reason == "rule to-empty named group 'gpu' which has no backends; fell back to default group"
    d = run(source="spark", routingGroupHeader="bi", allow=False)
    assert d.routing_group == "adhoc"


def test_a_group_with_fallback_none_is_kept_without_backends() -> None:
    d = run(source="secure-app", strict={"vault"})
    assert (d.routing_group, d.rule) == ("vault", "strict")
    assert "its fallback is none" in d.reason


def test_the_default_group_is_used_even_without_backends() -> None:
    d = run(user="alice", groups=set())
    assert d.routing_group == "adhoc" and d.reason == "default group"


def test_no_ruleset_behaves_like_no_match() -> None:
    c = empty_context()
    c["routingGroupHeader"] = "etl"
    d = decide(None, c, groups_with_backends={"etl"}, default_group="adhoc", allow_group_header=True)
    assert (d.routing_group, d.rule, d.trace) == ("etl", None, [])


def test_an_empty_ruleset_behaves_like_no_match() -> None:
    d = run(Ruleset.empty(), user="x", default="main")
    assert d.routing_group == "main"


def test_run_time_errors_are_reported_but_do_not_decide() -> None:
    bad = parse_ruleset([("r.yaml", b'name: b\ncondition: headers["x"] == "1"\nroutingGroup: etl\n')])
    d = run(bad)
    assert d.routing_group == "adhoc" and d.rule is None
    assert "no key 'x'" in d.errors["b"] and d.trace[0]["error"]


def test_to_dict_for_the_explain_api() -> None:
    doc = run(source="airflow").to_dict()
    assert doc["routingGroup"] == "etl" and doc["rule"] == "etl-tools" and doc["reject"] is None
    assert set(doc) == {"routingGroup", "rule", "reject", "reason", "queuePriority", "trace"}
