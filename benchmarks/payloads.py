"""What the benchmarks send and what the static backends answer: Trino-shaped documents and SQL.

The documents look like a coordinator's (same keys, same sizes as a small real query) so the
gateway does its real work on them: it finds the query id, rewrites ``nextUri``/``infoUri`` and
learns the owner. ``{BASE}`` and ``{QID}`` are placeholders each backend fills its own way
(nginx with variables, the Python backend with a counter).
"""
from __future__ import annotations

import json

# A query id every backend knows: the follow-up GET and the result pages belong to it.
FIXED_QID = "20240101_000000_00000_bench"
PAGE_QID = {1: "20240101_000000_00001_page1", 16: "20240101_000000_00016_pag16"}

STATS = {"state": "QUEUED", "queued": True, "scheduled": False, "nodes": 0, "totalSplits": 0,
         "queuedSplits": 0, "runningSplits": 0, "completedSplits": 0, "cpuTimeMillis": 0,
         "wallTimeMillis": 0, "queuedTimeMillis": 1, "elapsedTimeMillis": 1, "processedRows": 0,
         "processedBytes": 0, "physicalInputBytes": 0, "peakMemoryBytes": 0, "spilledBytes": 0}

# The statement POSTs carry a realistic ~200-byte dashboard query.
SQL_200 = ("SELECT o.orderdate, c.mktsegment, sum(l.extendedprice * (1 - l.discount)) AS revenue "
           "FROM hive.sales.orders o JOIN customer c ON o.custkey = c.custkey "
           "JOIN lineitem l ON l.orderkey = o.orderkey WHERE o.orderdate >= DATE '2024-01-01' "
           "GROUP BY 1, 2")

CLIENT_HEADERS = {
    "X-Trino-User": "alice",
    "X-Trino-Source": "trino-python-client",
    "X-Trino-Catalog": "hive",
    "X-Trino-Schema": "sales",
    "X-Trino-Client-Tags": "dashboard,team-a",
    "X-Trino-Time-Zone": "UTC",
    "User-Agent": "trino-python-client/0.340.0",
    "Accept-Encoding": "gzip, deflate",
    "Content-Type": "text/plain; charset=utf-8",
}


def _dump(doc: dict) -> str:
    return json.dumps(doc, separators=(",", ":"))


def statement_response() -> str:
    """The QUEUED answer to ``POST /v1/statement`` (about 700 bytes)."""
    return _dump({
        "id": "{QID}",
        "infoUri": "{BASE}/ui/query.html?{QID}",
        "nextUri": "{BASE}/v1/statement/queued/{QID}/y1f8b0a2c39d7e4b5a6c7d8e9f0a1b2c3d4e5f6a7/1",
        "stats": STATS,
        "warnings": [],
    })


COLUMNS = [
    {"name": "orderdate", "type": "date", "typeSignature": {"rawType": "date", "arguments": []}},
    {"name": "mktsegment", "type": "varchar(10)",
     "typeSignature": {"rawType": "varchar", "arguments": [{"kind": "LONG", "value": 10}]}},
    {"name": "revenue", "type": "double", "typeSignature": {"rawType": "double", "arguments": []}},
    {"name": "orders", "type": "bigint", "typeSignature": {"rawType": "bigint", "arguments": []}},
]


def _rows(n: int, start: int = 0) -> list[list]:
    segs = ("AUTOMOBILE", "BUILDING", "FURNITURE", "HOUSEHOLD", "MACHINERY")
    return [[f"2024-{1 + (i % 12):02d}-{1 + (i % 28):02d}", segs[i % 5], round(1234.5 + i * 17.25, 2),
             1000 + i] for i in range(start, start + n)]


def executing_page(qid: str = FIXED_QID, rows: int = 20) -> str:
    """A RUNNING page with data and a nextUri (about 2 KB): the answer to a follow-up GET."""
    stats = dict(STATS, state="RUNNING", queued=False, scheduled=True, nodes=3)
    return _dump({
        "id": qid,
        "infoUri": "{BASE}/ui/query.html?" + qid,
        "partialCancelUri": "{BASE}/v1/statement/executing/partialCancel/" + qid + "/0/y2a/2",
        "nextUri": "{BASE}/v1/statement/executing/" + qid + "/y2a9c4e6f8b1d3/2",
        "columns": COLUMNS,
        "data": _rows(rows),
        "stats": stats,
        "warnings": [],
    })


def big_page(size_mb: int, base: str) -> bytes:
    """A result page of ``size_mb`` MB (data rows between the URIs and the stats)."""
    qid = PAGE_QID[size_mb]
    head = executing_page(qid, rows=0).replace("{BASE}", base)
    prefix, _, suffix = head.partition('"data":[]')
    row = json.dumps(_rows(1, 7)[0], separators=(",", ":")).encode()
    target = size_mb * 1024 * 1024 - len(prefix) - len(suffix) - 10
    n = max(1, target // (len(row) + 1))
    body = b",".join([row] * n)
    return prefix.encode() + b'"data":[' + body + b"]" + suffix.encode()


def info_response() -> str:
    return _dump({"nodeVersion": {"version": "450"}, "environment": "bench", "coordinator": True,
                  "starting": False, "uptime": "1.00h"})


def query_info_response() -> str:
    return _dump({"queryId": FIXED_QID, "state": "RUNNING"})


def sql_20k() -> str:
    """A realistic ~20 KB dashboard statement: many CTEs, CASE columns, joins and a UNION."""
    parts = []
    i = 0
    while True:
        parts.append(
            f"cte_{i} AS (SELECT o.orderkey, o.custkey, o.orderdate, "
            f"CASE WHEN o.totalprice > {1000 + i} THEN 'high' WHEN o.totalprice > {100 + i} "
            f"THEN 'mid' ELSE 'low' END AS band_{i}, sum(l.quantity) AS qty_{i}, "
            f"avg(l.discount) AS disc_{i} FROM hive.sales_{i % 7}.orders o "
            f"JOIN hive.sales_{i % 7}.lineitem l ON l.orderkey = o.orderkey "
            f"WHERE o.orderdate BETWEEN DATE '2024-01-01' AND DATE '2024-12-31' "
            f"AND o.orderstatus IN ('F', 'O', 'P') GROUP BY 1, 2, 3, 4)")
        i += 1
        text = ("WITH " + ",\n".join(parts) + "\nSELECT * FROM cte_0 c0 "
                + " ".join(f"LEFT JOIN cte_{k} c{k} ON c{k}.orderkey = c0.orderkey" for k in range(1, i))
                + " UNION ALL SELECT * FROM iceberg.archive.orders_2023 LIMIT 1000")
        if len(text) >= 20 * 1024:
            return text
