"""SQL facts (gateway/routing/sql.py) against what a real coordinator resolves.

``EXPLAIN (TYPE IO, FORMAT JSON)`` names every table a query reads and writes, fully qualified
as the coordinator resolved them with the session's catalog and schema; renames are checked by
doing them and looking where the table went.
"""
from __future__ import annotations

import json
import uuid
from typing import Any, Iterator

import pytest
import trino

from gateway.routing.sql import analyze
from tests.real.launcher import Cluster, Coordinator

pytestmark = pytest.mark.real


def execute(c: Coordinator, sql: str, catalog: str | None = None, schema: str | None = None) -> list[Any]:
    cur = trino.dbapi.connect(host="127.0.0.1", port=c.port, user="facts", catalog=catalog,
                              schema=schema).cursor()
    cur.execute(sql)
    return cur.fetchall()


def io_tables(c: Coordinator, sql: str, catalog: str, schema: str) -> set[str]:
    """The tables a query reads and writes, as the coordinator resolved them."""
    doc = json.loads(execute(c, f"EXPLAIN (TYPE IO, FORMAT JSON) {sql}", catalog, schema)[0][0])
    names = {f"{t['table']['catalog']}.{t['table']['schemaTable']['schema']}.{t['table']['schemaTable']['table']}"
             for t in doc.get("inputTableColumnInfos", [])}
    out = doc.get("outputTable")
    if out:
        names.add(f"{out['catalog']}.{out['schemaTable']['schema']}.{out['schemaTable']['table']}")
    return names


@pytest.fixture(scope="module")
def schema(coords: Cluster) -> Iterator[str]:
    c = coords.coordinators["etl"]
    name = f"facts_{uuid.uuid4().hex[:8]}"
    execute(c, f"CREATE SCHEMA memory.{name}")
    execute(c, f"CREATE TABLE memory.{name}.orders AS SELECT * FROM tpch.tiny.orders LIMIT 10")
    execute(c, f"CREATE TABLE memory.{name}.items AS SELECT * FROM tpch.tiny.lineitem LIMIT 10")
    yield name
    for t in execute(c, f"SHOW TABLES FROM memory.{name}"):
        execute(c, f"DROP TABLE memory.{name}.{t[0]}")
    execute(c, f"DROP SCHEMA memory.{name}")


STATEMENTS = [
    # (sql, session catalog, session schema) — {s} is the test's memory schema
    ("SELECT * FROM nation n JOIN region r ON n.regionkey = r.regionkey", "tpch", "tiny"),
    ("SELECT count(*) FROM tpch.sf1.lineitem", "memory", "default"),
    ("WITH big AS (SELECT * FROM orders) SELECT * FROM big JOIN tpch.tiny.customer c ON true", "memory", "{s}"),
    ("SELECT * FROM {s}.orders WHERE orderkey IN (SELECT orderkey FROM tpch.tiny.lineitem)", "memory", "default"),
    ("INSERT INTO memory.{s}.orders SELECT * FROM tpch.tiny.orders LIMIT 1", "tpch", "tiny"),
    ("INSERT INTO orders SELECT * FROM orders", "memory", "{s}"),
    ("CREATE TABLE memory.{s}.ctas AS SELECT * FROM tpch.tiny.region", "tpch", "tiny"),
]


@pytest.mark.parametrize("sql,catalog,session_schema", STATEMENTS, ids=[s[0][:40] for s in STATEMENTS])
def test_tables_are_the_ones_the_coordinator_resolves(coords: Cluster, schema: str, sql: str, catalog: str,
                                                      session_schema: str) -> None:
    sql, session_schema = sql.replace("{s}", schema), session_schema.replace("{s}", schema)
    c = coords.coordinators["etl"]
    try:
        expected = io_tables(c, sql, catalog, session_schema)
    except trino.exceptions.TrinoUserError as exc:
        pytest.fail(f"the coordinator refused {sql!r}: {exc}")
    assert set(analyze(sql, catalog, session_schema).tables) == expected


@pytest.mark.parametrize("source,target,session", [
    ("{s}.t_src", "t_dst", ("memory", "tiny")),          # schema from the source, not the session
    ("memory.{s}.t_src", "{s}.t_dst", ("tpch", "tiny")),  # catalog from the source, not the session
])
def test_a_renamed_table_lands_where_the_facts_say(coords: Cluster, schema: str, source: str, target: str,
                                                   session: tuple[str, str]) -> None:
    c = coords.coordinators["etl"]
    source, target = source.replace("{s}", schema), target.replace("{s}", schema)
    execute(c, f"CREATE TABLE memory.{schema}.t_src (a bigint)")
    sql = f"ALTER TABLE {source} RENAME TO {target}"
    execute(c, sql, *session)
    landed = {f"memory.{schema}.{t[0]}" for t in execute(c, f"SHOW TABLES FROM memory.{schema}")}
    assert f"memory.{schema}.t_dst" in landed and f"memory.{schema}.t_src" not in landed
    assert set(analyze(sql, *session).tables) == {f"memory.{schema}.t_src", f"memory.{schema}.t_dst"}
    execute(c, f"DROP TABLE memory.{schema}.t_dst")
