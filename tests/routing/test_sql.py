"""SQL facts: statement types and the catalogs, schemas and tables a statement names."""
from __future__ import annotations

import time

import pytest
from hypothesis import given, settings, strategies as st

from gateway.routing import sql as sqlmod
from gateway.routing.sql import QUERY_TYPES, SqlFacts, analyze

PREPARED = {"q1": "INSERT INTO iceberg.gold.daily SELECT * FROM hive.raw.events",
            "MyStmt": "SELECT * FROM orders"}

# (sql, expected queryType, expected tables) with session catalog hive, schema web
CASES = [
    ("SELECT * FROM a JOIN hive.s.b ON a.x = b.x", "SELECT", ["hive.s.b", "hive.web.a"]),
    ("select * from Orders o left join iceberg.Sales.Items i on o.id = i.oid", "SELECT",
     ["hive.web.orders", "iceberg.sales.items"]),
    ("WITH recent AS (SELECT * FROM events) SELECT * FROM recent, users", "SELECT",
     ["hive.web.events", "hive.web.users"]),
    ("WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 3) SELECT * FROM r",
     "SELECT", []),
    ("SELECT a FROM t1 UNION ALL SELECT a FROM other.t2", "SELECT", ["hive.other.t2", "hive.web.t1"]),
    ("SELECT (SELECT max(x) FROM s) FROM t WHERE y IN (SELECT y FROM u)", "SELECT",
     ["hive.web.s", "hive.web.t", "hive.web.u"]),
    ('SELECT * FROM "Hive"."Raw"."Events"', "SELECT", ["hive.raw.events"]),
    ("-- leading comment\n/* block */ SELECT 1", "SELECT", []),
    ("VALUES 1, 2", "SELECT", []),
    ("TABLE nation", "SELECT", ["hive.web.nation"]),
    ("SELECT * FROM TABLE(exclude_columns(input => TABLE(tpch.tiny.orders), columns => DESCRIPTOR(clerk)))",
     "SELECT", ["tpch.tiny.orders"]),
    ("SELECT * FROM TABLE(postgresql.system.query(query => 'SELECT 1'))", "SELECT", []),
    ("INSERT INTO target SELECT * FROM source", "INSERT", ["hive.web.source", "hive.web.target"]),
    ("INSERT INTO t (a, b) VALUES (1, 2)", "INSERT", ["hive.web.t"]),
    ("CREATE TABLE iceberg.gold.t AS SELECT * FROM raw.events", "INSERT", ["hive.raw.events", "iceberg.gold.t"]),
    ("REFRESH MATERIALIZED VIEW mv", "INSERT", ["hive.web.mv"]),
    ("UPDATE t SET a = 1 WHERE b IN (SELECT b FROM s)", "UPDATE", ["hive.web.s", "hive.web.t"]),
    ("DELETE FROM t WHERE a = 1", "DELETE", ["hive.web.t"]),
    ("MERGE INTO t USING s ON t.a = s.a WHEN MATCHED THEN DELETE", "MERGE", ["hive.web.s", "hive.web.t"]),
    ("ANALYZE hive.raw.events", "ANALYZE", ["hive.raw.events"]),
    ("CREATE TABLE t (a int) WITH (format = 'ORC')", "DATA_DEFINITION", ["hive.web.t"]),
    ("CREATE VIEW v AS SELECT * FROM t", "DATA_DEFINITION", ["hive.web.t", "hive.web.v"]),
    ("DROP TABLE IF EXISTS x.y", "DATA_DEFINITION", ["hive.x.y"]),
    ("ALTER TABLE a RENAME TO b", "DATA_DEFINITION", ["hive.web.a", "hive.web.b"]),
    # A renamed table's new name takes the catalog and schema of the source, not of the session
    # (what a real Trino 476 coordinator does: tests/real/test_real_sql_facts.py).
    ("ALTER TABLE cat.schem.tbl RENAME TO schem2.tbl2", "DATA_DEFINITION", ["cat.schem.tbl", "cat.schem2.tbl2"]),
    ("ALTER TABLE raw.a RENAME TO b", "DATA_DEFINITION", ["hive.raw.a", "hive.raw.b"]),
    ("ALTER TABLE IF EXISTS raw.a RENAME TO ice.s.b", "DATA_DEFINITION", ["hive.raw.a", "ice.s.b"]),
    # ... while a view's new name is qualified with the session's (Trino refuses a cross-catalog one)
    ("ALTER VIEW raw.v RENAME TO v2", "DATA_DEFINITION", ["hive.raw.v", "hive.web.v2"]),
    ("ALTER MATERIALIZED VIEW ice.s.mv RENAME TO mv2", "DATA_DEFINITION", ["hive.web.mv2", "ice.s.mv"]),
    ("ALTER TABLE a ADD COLUMN c int", "DATA_DEFINITION", ["hive.web.a"]),
    ("ALTER TABLE iceberg.s.t EXECUTE optimize(file_size_threshold => '10MB')", "ALTER_TABLE_EXECUTE",
     ["iceberg.s.t"]),
    ("COMMENT ON TABLE a IS 'x'", "DATA_DEFINITION", ["hive.web.a"]),
    ("COMMENT ON COLUMN s.t.c IS 'x'", "DATA_DEFINITION", ["hive.s.t"]),
    ("GRANT SELECT ON TABLE hive.s.a TO alice", "DATA_DEFINITION", ["hive.s.a"]),
    ("CREATE SCHEMA iceberg.staging", "DATA_DEFINITION", []),
    ("SET SESSION query_max_run_time = '1h'", "DATA_DEFINITION", []),
    ("START TRANSACTION", "DATA_DEFINITION", []),
    ("USE iceberg.gold", "DATA_DEFINITION", []),
    ("CALL system.sync_partition_metadata('web', 'events', 'FULL')", "DATA_DEFINITION", []),
    ("PREPARE q2 FROM SELECT * FROM secret", "DATA_DEFINITION", []),
    ("SHOW TABLES FROM iceberg.gold", "DESCRIBE", []),
    ("SHOW CATALOGS", "DESCRIBE", []),
    ("SHOW COLUMNS FROM s.t", "DESCRIBE", ["hive.s.t"]),
    ("SHOW CREATE MATERIALIZED VIEW x.mv", "DESCRIBE", ["hive.x.mv"]),
    ("SHOW STATS FOR (SELECT * FROM t WHERE x IN (1, 2))", "DESCRIBE", ["hive.web.t"]),
    ("DESCRIBE orders", "DESCRIBE", ["hive.web.orders"]),
    ("DESCRIBE OUTPUT q1", "DESCRIBE", ["hive.raw.events", "iceberg.gold.daily"]),
    ("EXPLAIN SELECT * FROM t", "EXPLAIN", ["hive.web.t"]),
    ("EXPLAIN (TYPE DISTRIBUTED, FORMAT TEXT) SELECT * FROM t", "EXPLAIN", ["hive.web.t"]),
    ("EXPLAIN ANALYZE INSERT INTO x SELECT * FROM y", "INSERT", ["hive.web.x", "hive.web.y"]),
    ("EXPLAIN ANALYZE VERBOSE SELECT * FROM y", "SELECT", ["hive.web.y"]),
    ("EXECUTE q1", "INSERT", ["hive.raw.events", "iceberg.gold.daily"]),
    ("EXECUTE mystmt USING 1, 'a'", "SELECT", ["hive.web.orders"]),
    ("EXECUTE IMMEDIATE 'SELECT * FROM t WHERE name = ''x'''", "SELECT", ["hive.web.t"]),
    ("EXECUTE IMMEDIATE 'DELETE FROM iceberg.s.t WHERE a = ?' USING 1", "DELETE", ["iceberg.s.t"]),
    ("EXPLAIN EXECUTE q1", "EXPLAIN", ["hive.raw.events", "iceberg.gold.daily"]),
    ("EXECUTE unknown_name", "UNKNOWN", []),
    ("SELECT FROM WHERE", "UNKNOWN", []),
    ("this is not sql", "UNKNOWN", []),
    ("", "UNKNOWN", []),
    ("1 + 1", "UNKNOWN", []),
]


@pytest.mark.parametrize("sql,qtype,tables", CASES, ids=[c[0][:50] for c in CASES])
def test_statement_facts(sql: str, qtype: str, tables: list[str]) -> None:
    facts = analyze(sql, "hive", "web", PREPARED)
    assert facts.query_type == qtype
    assert list(facts.tables) == tables
    assert facts.query_type in QUERY_TYPES


def test_catalogs_and_schemas_are_derived_from_the_tables() -> None:
    facts = analyze("SELECT * FROM a JOIN iceberg.gold.b ON true", "hive", "web")
    assert facts.catalogs == ("hive", "iceberg")
    assert facts.schemas == ("gold", "hive.web", "iceberg.gold", "web")


def test_schema_level_statements_report_schema_and_catalog() -> None:
    assert analyze("SHOW TABLES FROM iceberg.gold", None, None).schemas == ("gold", "iceberg.gold")
    assert analyze("SHOW SCHEMAS FROM tpch", None, None).catalogs == ("tpch",)
    assert analyze("CREATE SCHEMA iceberg.staging", None, None).schemas == ("iceberg.staging", "staging")
    assert analyze("USE raw", "hive", None).schemas == ("hive.raw", "raw")
    assert analyze("SHOW TABLES", "hive", "web").schemas == ("hive.web", "web")


def test_schema_renames_and_catalog_statements_name_what_they_touch() -> None:
    f = analyze("ALTER SCHEMA ice.s RENAME TO s4", "hive", "web")
    assert (f.query_type, f.catalogs, f.schemas) == ("DATA_DEFINITION", ("ice",), ("ice.s", "ice.s4", "s", "s4"))
    assert analyze("ALTER SCHEMA s RENAME TO s4", "hive", None).schemas == ("hive.s", "hive.s4", "s", "s4")
    for sql in ("CREATE CATALOG foo USING memory", "DROP CATALOG IF EXISTS foo", "drop catalog \"FOO\""):
        f = analyze(sql, "hive", "web")
        assert (f.query_type, f.catalogs, f.tables) == ("DATA_DEFINITION", ("foo",), ()), sql


def test_without_session_defaults_the_known_part_is_kept() -> None:
    assert analyze("SELECT * FROM t", None, None).tables == ("t",)
    assert analyze("SELECT * FROM s.t", None, None).tables == ("s.t",)
    assert analyze("SELECT * FROM t", "hive", None).tables == ("t",)
    assert analyze("SELECT * FROM s.t", "hive", None).tables == ("hive.s.t",)
    assert analyze("SELECT * FROM t", None, "web").tables == ("web.t",)


def test_session_defaults_are_lower_cased() -> None:
    assert analyze("SELECT * FROM T", "Hive", "Web").tables == ("hive.web.t",)


def test_prepared_statement_names_are_case_insensitive() -> None:
    assert analyze("EXECUTE MYSTMT", None, None, PREPARED).tables == ("orders",)


def test_the_cache_keys_on_prepared_statements() -> None:
    a = analyze("EXECUTE p", "c", "s", {"p": "SELECT * FROM one"})
    b = analyze("EXECUTE p", "c", "s", {"p": "SELECT * FROM two"})
    assert a.tables == ("c.s.one",) and b.tables == ("c.s.two",)


def test_the_cache_keys_on_session_defaults() -> None:
    assert analyze("SELECT * FROM t", "a", "b").tables == ("a.b.t",)
    assert analyze("SELECT * FROM t", "c", "d").tables == ("c.d.t",)


def test_a_repeated_statement_is_served_from_the_cache_quickly() -> None:
    sqlmod.cache_clear()
    sql = "SELECT region, sum(amount) FROM sales s JOIN regions r ON s.rid = r.id GROUP BY 1 " * 20
    first = analyze(sql, "hive", "web")
    n = 2000
    t0 = time.perf_counter()
    for _ in range(n):
        again = analyze(sql, "hive", "web")
    per_call = (time.perf_counter() - t0) / n
    assert again is first
    assert per_call < 20e-6, f"cache hit took {per_call * 1e6:.1f} µs"


def test_the_cache_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    sqlmod.cache_clear()
    monkeypatch.setattr(sqlmod, "_CACHE_MAX_ENTRIES", 10)
    for i in range(50):
        analyze(f"SELECT {i}", None, None)
    assert sqlmod.cache_info()["entries"] == 10
    monkeypatch.setattr(sqlmod, "_CACHE_MAX_CHARS", 100)
    analyze("SELECT 'x' " + "x" * 200, None, None)
    assert sqlmod.cache_info()["chars"] <= 100 or sqlmod.cache_info()["entries"] == 0


def test_an_internal_failure_gives_unknown(monkeypatch: pytest.MonkeyPatch) -> None:
    sqlmod.cache_clear()

    class Broken:
        def parse(self, *a: object, **k: object) -> None:
            raise RecursionError("deep")
    monkeypatch.setattr(sqlmod, "_TRINO", Broken())
    assert analyze("SELECT * FROM t", None, None) == SqlFacts("UNKNOWN")


@settings(max_examples=150, deadline=None)
@given(st.text(max_size=200))
def test_analyze_never_raises(text: str) -> None:
    facts = analyze(text, "c", "s", {"p": text})
    assert facts.query_type in QUERY_TYPES
    assert all(isinstance(t, str) for t in facts.tables)


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(["EXPLAIN ", "EXECUTE ", "EXECUTE IMMEDIATE '", "SHOW ", "SHOW STATS FOR (", "ALTER TABLE ",
                        "DESCRIBE ", "USE ", "EXPLAIN ANALYZE ("]), st.text(max_size=60))
def test_keyword_prefixes_with_junk_never_raise(prefix: str, junk: str) -> None:
    assert analyze(prefix + junk, None, None).query_type in QUERY_TYPES


@pytest.mark.parametrize("sql", [c[0] for c in CASES] + [
    "SELECT a FROM (SELECT CAST(x AS varchar) AS a FROM s) WHERE a IN (SELECT a FROM u) "
    "AND EXISTS (SELECT 1 FROM v WHERE v.k = CASE WHEN 1 = 1 THEN (SELECT max(k) FROM w) END)",
    "SELECT transform(arr, x -> (SELECT count(*) FROM lam)), ARRAY[(SELECT 1 FROM arr_t)] FROM t",
    "SELECT * FROM t1 CROSS JOIN UNNEST(ARRAY[1]) CROSS JOIN LATERAL (SELECT * FROM t2) x",
], ids=lambda s: s[:40])
def test_the_one_pass_walk_finds_what_find_all_finds(sql: str) -> None:
    # The walk skips identifiers, literals and columns for speed; it must still find every
    # table, CTE and function call sqlglot's own (complete) traversal finds.
    from sqlglot import exp
    from sqlglot.errors import SqlglotError
    try:
        trees = sqlmod._TRINO.parse(sql)
    except SqlglotError:
        return       # the cases include statements sqlglot refuses (they analyse as UNKNOWN)
    for tree in trees:
        if tree is None:
            continue
        tables, ctes, functions = sqlmod._interesting_nodes(tree)
        for found, cls in ((tables, exp.Table), (ctes, exp.CTE), (functions, exp.Anonymous)):
            assert sorted(map(id, found)) == sorted(map(id, tree.find_all(cls))), cls.__name__
