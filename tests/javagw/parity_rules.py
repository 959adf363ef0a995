"""Rules and requests for the routing parity test (trino-gateway vs ours after ``rules convert``).

``PHASES`` are trino-gateway MVEL rules files, loaded by trino-gateway as they are: its
documented examples (from tests/javamigration/rulesets.py) and ``generated_rules()``, a seeded larger
ruleset of the kinds of rules teams write (sources, users, client tags, a team header, SQL facts,
if/else actions, priorities with ties, rules without priority) plus a few rules the converter
must report as not exactly convertible. ``requests()`` builds the varied statement submissions
(tests/javamigration/harness.py's vocabulary, with trino-gateway's SQL facts written by hand).
"""
from __future__ import annotations

import itertools
import random

from tests.javamigration import harness, rulesets
from tests.javamigration.reference import Request

GROUPS = ("etl", "etl-special", "bi", "ds", "batch", "vip", "meta", "reports")
SENTINEL_GROUP = "sentinel"
# Written only by the rules the converter must report (their priorities are above every other
# generated rule, so trino-gateway's group is this one exactly when one of them matched).
UNCONVERTIBLE_GROUP = "selects"
UNCONVERTIBLE_RULES = {"selects-only-0", "selects-only-1", "selects-only-2"}
SENTINEL_HEADER = "X-Parity-Phase"

_SOURCES = ("airflow", "superset", "tableau", "dbt-airflow", "Airflow", "jupyter")
_USERS = ("alice", "will", "svc_loader", "bob")
_TAGS = ("label=special", "label=foo", "etl", "nightly")


_SRC = 'request.getHeader("X-Trino-Source")'
_TAG_HEADER = 'request.getHeader("X-Trino-Client-Tags")'
# (MVEL test with {} for the value, the values): each null-safe, each converted exactly
_ATOMS: list[tuple[str, tuple[str, ...]]] = [
    (f'{_SRC} == "{{}}"', _SOURCES),
    (f'{_SRC} != null && {_SRC}.startsWith("{{}}")', ("air", "dbt", "sup", "ta")),
    (f'{_TAG_HEADER} != null && {_TAG_HEADER} contains "{{}}"', _TAGS),
    ('trinoRequestUser.userExistsAndEquals("{}")', _USERS),
    ('request.getHeader("X-Team") == "ds"', ()),
    ('trinoQueryProperties.getResourceGroupQueryType() == "{}"',
     ("SELECT", "INSERT", "DELETE", "DATA_DEFINITION", "EXPLAIN", "DESCRIBE")),
    ('trinoQueryProperties.tablesContains("{}")', ("hive.raw.events", "catx.nondefault.t")),
    ('trinoQueryProperties.getCatalogs().contains("{}")', ("system", "hive", "caty")),
    ('trinoQueryProperties.getDefaultCatalog().orElse("none") == "{}"', ("hive", "catx")),
    (f'{_SRC} != null && {_SRC}.equalsIgnoreCase("AIRFLOW")', ()),
]


def _atom(rng: random.Random) -> str:
    template, values = _ATOMS[rng.randrange(len(_ATOMS))]
    return template.format(rng.choice(values)) if values else template


def _condition(rng: random.Random) -> str:
    atoms = [_atom(rng) for _ in range(rng.choice((1, 1, 2, 2, 3)))]
    op = rng.choice((" && ", " || "))
    text = op.join(f"({a})" for a in atoms)
    return f"!({text})" if rng.random() < 0.08 else text


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def generated_rules(n: int = 200, seed: int = 18) -> str:
    """``n`` convertible rules plus three the converter reports (``getQueryType() == "Query"``)."""
    rng = random.Random(seed)
    docs = []
    for i in range(n):
        lines = [f"name: gen-{i:03d}", f"description: generated rule {i}"]
        if rng.random() < 0.8:
            lines.append(f"priority: {rng.randrange(0, 25)}")
        lines.append(f"condition: {_quote(_condition(rng))}")
        if rng.random() < 0.15:
            t = rng.choice(_TAGS)
            a, b = rng.sample(GROUPS, 2)
            action = (f'if (request.getHeader("X-Trino-Client-Tags") != null && '
                      f'request.getHeader("X-Trino-Client-Tags") contains "{t}") '
                      f'{{ result.put("routingGroup", "{a}") }} else {{ result.put("routingGroup", "{b}") }}')
        else:
            action = f'result.put("routingGroup", "{rng.choice(GROUPS)}")'
        lines.append(f"actions:\n  - {_quote(action)}")
        docs.append("\n".join(lines))
    reports = _quote(f'result.put("routingGroup", "{UNCONVERTIBLE_GROUP}")')
    for i in range(3):
        condition = _quote('trinoQueryProperties.getQueryType() == "Query" && (' + _atom(rng) + ")")
        # above every generated priority, so that when they match they decide in trino-gateway
        docs.append(f"name: selects-only-{i}\npriority: {25 + i}\n"
                    f"condition: {condition}\nactions:\n  - {reports}")
    return "---\n" + "\n---\n".join(docs) + "\n"


def with_sentinel(text: str, phase: str) -> str:
    """The rules file plus a rule that routes only requests carrying ``X-Parity-Phase: phase``
    to the sentinel group: once a gateway does that, it has loaded this file."""
    return text.rstrip() + (
        f"\n---\nname: parity-sentinel\npriority: 1000000\n"
        f"condition: 'request.getHeader(\"{SENTINEL_HEADER}\") == \"{phase}\"'\n"
        f"actions:\n  - 'result.put(\"routingGroup\", \"{SENTINEL_GROUP}\")'\n")


# (phase name, trino-gateway rules file, how many of the requests go through it): 1,000 in all
PHASES: list[tuple[str, str, int]] = [
    ("docs-basic", rulesets.DOCS_BASIC, 100),
    ("docs-priorities", rulesets.DOCS_PRIORITIES, 100),
    ("docs-if", rulesets.DOCS_IF, 100),
    ("generated", generated_rules(), 700),
]

ALL_GROUPS = tuple(sorted(set(GROUPS) | {"adhoc", "etl-foo", "etl-bar", SENTINEL_GROUP, UNCONVERTIBLE_GROUP}))


def requests(n: int, seed: int = 1800) -> list[Request]:
    """``n`` statement submissions over users, sources, client tags, session catalog/schema, a
    team header and SQL statements (every user sent as ``X-Trino-User``: the simulated
    coordinators refuse requests without one)."""
    users = ["alice", "will", "svc_loader", "bob"]
    combos = list(itertools.product(users, harness.SOURCES, harness.TAGS, harness.SESSIONS, harness.TEAMS))
    rng = random.Random(seed)
    return [harness._request(*rng.choice(combos), rng.choice(harness.SQL_CASES)) for _ in range(n)]
