"""A grid of statement submissions and a comparison of our decision with trino-gateway's.

``GRID`` holds requests over users (header, Basic auth, empty), sources (case variants, empty,
missing), client tags, session catalog/schema (missing, empty, set), a custom header and SQL
statements whose trino-gateway facts are written by hand. ``mismatches`` converts nothing
itself: it takes the source rules (interpreted by ``reference.route``) and our converted rules
file (loaded with ``load_ruleset`` and decided with ``decide``) and lists every request where
the groups differ, or where one of our conditions raised at run time.
"""
from __future__ import annotations

import base64
import itertools
import random
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Optional

from gateway.routing.context import build_context
from gateway.routing.decision import decide
from gateway.routing.rules import Ruleset, load_ruleset

from tests.javamigration.reference import ERROR, QName, Request, TrinoFacts, load_ref_rules, route


def facts(cls: str, rg: str, tables: tuple[str, ...] = (), catalogs: tuple[str, ...] = (),
          schemas: tuple[str, ...] = (), catalog_schemas: tuple[str, ...] = ()) -> TrinoFacts:
    parts = [tuple(t.split(".")) for t in tables]
    return TrinoFacts(
        cls, rg,
        frozenset(catalogs) | {p[0] for p in parts},
        frozenset(schemas) | {p[1] for p in parts},
        frozenset(catalog_schemas) | {f"{p[0]}.{p[1]}" for p in parts},
        frozenset(QName(p) for p in parts))


def _unqualified(c: Optional[str], s: Optional[str]) -> Optional[TrinoFacts]:
    # trino-gateway qualifies "events" with the session defaults; without them (or with an
    # empty one) building TrinoQueryProperties throws and the request fails.
    if not c or not s:
        return None
    return facts("Query", "SELECT", (f"{c}.{s}.events",))


SqlCase = tuple[str, Callable[[Optional[str], Optional[str]], Optional[TrinoFacts]]]
SQL_CASES: list[SqlCase] = [
    ("SELECT 1", lambda c, s: facts("Query", "SELECT")),
    ("SELECT * FROM hive.raw.events", lambda c, s: facts("Query", "SELECT", ("hive.raw.events",))),
    ("SELECT * FROM events", _unqualified),
    ("INSERT INTO catx.nondefault.t SELECT * FROM caty.default.s",
     lambda c, s: facts("Insert", "INSERT", ("catx.nondefault.t", "caty.default.s"))),
    ("CREATE TABLE catx.nondefault.t2 AS SELECT 1",
     lambda c, s: facts("CreateTableAsSelect", "INSERT", ("catx.nondefault.t2",))),
    ("EXPLAIN ANALYZE SELECT * FROM hive.raw.events",
     lambda c, s: facts("ExplainAnalyze", "SELECT", ("hive.raw.events",))),
    ("EXPLAIN SELECT 1", lambda c, s: facts("Explain", "EXPLAIN")),
    ("SHOW TABLES FROM hive.raw",
     lambda c, s: facts("ShowTables", "DESCRIBE", catalogs=("hive",), schemas=("raw",), catalog_schemas=("hive.raw",))),
    ("DELETE FROM hive.raw.events WHERE x = 1", lambda c, s: facts("Delete", "DELETE", ("hive.raw.events",))),
    ("CREATE TABLE hive.raw.t (a int)", lambda c, s: facts("CreateTable", "DATA_DEFINITION", ("hive.raw.t",))),
    ("SELECT * FROM system.runtime.nodes", lambda c, s: facts("Query", "SELECT", ("system.runtime.nodes",))),
    ("this is not sql", lambda c, s: facts("", "")),
]

USERS = [None, "alice", "will", "svc_loader", "", "basic:bob"]
SOURCES = [None, "", "airflow", "Airflow", "AIRFLOW", "airflow-dag", "dbt-airflow", "superset",
           "tableau", "aIRflow", "null"]
TAGS = [None, "", "label=special", "label=foo", "etl,label=bar", "label=specialx", "etl"]
SESSIONS = [(None, None), ("hive", "raw"), ("catx", "default"), ("", "")]
TEAMS = [None, "ds"]


def _request(user: Optional[str], source: Optional[str], tags: Optional[str],
             session: tuple[Optional[str], Optional[str]], team: Optional[str], sql_case: SqlCase) -> Request:
    headers: list[tuple[str, str]] = []
    if user is not None:
        if user.startswith("basic:"):
            cred = base64.b64encode(f"{user[6:]}:secret".encode()).decode()
            headers.append(("Authorization", f"Basic {cred}"))
        else:
            headers.append(("X-Trino-User", user))
    for name, value in (("X-Trino-Source", source), ("X-Trino-Client-Tags", tags),
                        ("X-Trino-Catalog", session[0]), ("X-Trino-Schema", session[1]), ("X-Team", team)):
        if value is not None:
            headers.append((name, value))
    sql, make = sql_case
    return Request(headers, sql, make(session[0], session[1]),
                   label=f"user={user!r} source={source!r} tags={tags!r} session={session} team={team!r} sql={sql!r}")


def build_grid(sample: int = 1500, seed: int = 20240601) -> list[Request]:
    """Every header combination with one statement, plus a seeded sample of the full product."""
    headers = list(itertools.product(USERS, SOURCES, TAGS, SESSIONS, TEAMS))
    grid = [_request(*h, SQL_CASES[0]) for h in headers]
    rng = random.Random(seed)
    for _ in range(sample):
        grid.append(_request(*rng.choice(headers), rng.choice(SQL_CASES)))
    for case in SQL_CASES:                     # every statement with every session at least once
        for session in SESSIONS:
            grid.append(_request("alice", "airflow", "etl", session, None, case))
    return grid


GRID = build_grid()


@lru_cache(maxsize=None)
def _context(index: int) -> dict[str, Any]:
    req = GRID[index]
    return build_context(req.headers, req.sql.encode(), req.remote, analyze_sql=True)


def our_ruleset(text: str, tmp_path: Path, name: str = "converted.yaml") -> Ruleset:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return load_ruleset([str(path)])


def mismatches(source_text: str, ruleset: Ruleset, *, skip: set[str] = frozenset(),
               default_group: str = "adhoc", order: str = "file", default_priority: int = 0,
               grid: Optional[list[Request]] = None) -> tuple[list[str], dict[str, int]]:
    """(differences, statistics) between trino-gateway's routing of ``source_text`` (minus the
    ``skip`` rules) and ours, over ``GRID``."""
    ref_rules = load_ref_rules(source_text, skip=set(skip), default_priority=default_priority)
    groups = {r.routing_group for r in ruleset.rules if r.routing_group} | {default_group}
    diffs: list[str] = []
    stats = {"compared": 0, "fails_in_trino_gateway": 0, "not_default": 0}
    requests = grid if grid is not None else GRID
    for i, req in enumerate(requests):
        expected = route(ref_rules, req, on_error="false", default_group=default_group, order=order)
        if expected == ERROR:              # trino-gateway cannot even build the request's facts
            continue
        if route(ref_rules, req, on_error="fail", default_group=default_group, order=order) == ERROR:
            stats["fails_in_trino_gateway"] += 1
        ctx = _context(i) if grid is None else build_context(req.headers, req.sql.encode(), req.remote,
                                                              analyze_sql=True)
        d = decide(ruleset, ctx, groups_with_backends=groups, default_group=default_group,
                   allow_group_header=False)
        stats["compared"] += 1
        if expected != default_group:
            stats["not_default"] += 1
        if d.errors:
            diffs.append(f"{req.label}: run-time error in our rules: {d.errors}")
        if d.routing_group != expected:
            diffs.append(f"{req.label}: trino-gateway -> {expected}, ours -> {d.routing_group} ({d.reason})")
    return diffs, stats
