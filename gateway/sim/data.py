"""The data every simulated cluster serves, in an in-memory SQLite database.

Tables: TPC-H `nation` (25 rows) and `region` (5 rows) with the real TPC-H keys and names,
and `numbers` (n = 1..100000) for multi-page results. Scratch tables created by DML live in
the same database.

SQLite functions added on every connection (they stand in for Trino functions the tests need):
  current_cluster()  the cluster's name, so a test sees which cluster answered
  sleep(seconds)     blocks this query only (SQL runs in a thread pool); a cancel wakes it
  fail(message)      fails the query with that message
  repeat(s, n)       s repeated n times (a string, for large pages; Trino's returns an array)

Each query gets its own connection to a shared-cache in-memory database, so a sleeping or
long query never holds a lock that other queries of the same cluster need.
"""

from __future__ import annotations

import itertools
import sqlite3
import threading
import uuid
from dataclasses import dataclass, field

NUMBERS_MAX = 100_000

# Catalogs and schemas the fake claims to have; `catalog.schema.table` names using them are
# reduced to `table` before SQLite sees the SQL.
CATALOGS: dict[str, tuple[str, ...]] = {
    "memory": ("default", "information_schema"),
    "system": ("information_schema", "jdbc", "metadata", "runtime"),
    "tpch": ("information_schema", "sf1", "sf100", "tiny"),
}
SCHEMAS: frozenset[str] = frozenset(s for schemas in CATALOGS.values() for s in schemas)

REGIONS: list[tuple[int, str, str]] = [
    (0, "AFRICA", "lar deposits. blithely final packages cajole. regular waters are final requests. regular accounts are according to "),
    (1, "AMERICA", "hs use ironic, even requests. s"),
    (2, "ASIA", "ges. thinly even pinto beans ca"),
    (3, "EUROPE", "ly final courts cajole furiously final excuse"),
    (4, "MIDDLE EAST", "uickly special accounts cajole carefully blithely close requests. carefully final asymptotes haggle furiousl"),
]

NATIONS: list[tuple[int, str, int, str]] = [
    (0, "ALGERIA", 0, " haggle. carefully final deposits detect slyly agai"),
    (1, "ARGENTINA", 1, "al foxes promise slyly according to the regular accounts. bold requests alon"),
    (2, "BRAZIL", 1, "y alongside of the pending deposits. carefully special packages are about the ironic forges. slyly special "),
    (3, "CANADA", 1, "eas hang ironic, silent packages. slyly regular packages are furiously over the tithes. fluffily bold"),
    (4, "EGYPT", 4, "y above the carefully unusual theodolites. final dugouts are quickly across the furiously regular d"),
    (5, "ETHIOPIA", 0, "ven packages wake quickly. regu"),
    (6, "FRANCE", 3, "refully final requests. regular, ironi"),
    (7, "GERMANY", 3, "l platelets. regular accounts x-ray: unusual, regular acco"),
    (8, "INDIA", 2, "ss excuses cajole slyly across the packages. deposits print aroun"),
    (9, "INDONESIA", 2, " slyly express asymptotes. regular deposits haggle slyly. carefully ironic hockey players sleep blithely. carefull"),
    (10, "IRAN", 4, "efully alongside of the slyly final dependencies. "),
    (11, "IRAQ", 4, "nic deposits boost atop the quickly final requests? quickly regula"),
    (12, "JAPAN", 2, "ously. final, express gifts cajole a"),
    (13, "JORDAN", 4, "ic deposits are blithely about the carefully regular pa"),
    (14, "KENYA", 0, " pending excuses haggle furiously deposits. pending, express pinto beans wake fluffily past t"),
    (15, "MOROCCO", 0, "rns. blithely bold courts among the closely regular packages use furiously bold platelets?"),
    (16, "MOZAMBIQUE", 0, "s. ironic, unusual asymptotes wake blithely r"),
    (17, "PERU", 1, "platelets. blithely pending dependencies use fluffily across the even pinto beans. carefully silent accoun"),
    (18, "CHINA", 2, "c dependencies. furiously express notornis sleep slyly regular accounts. ideas sleep. depos"),
    (19, "ROMANIA", 3, "ular asymptotes are about the furious multipliers. express dependencies nag above the ironically ironic account"),
    (20, "SAUDI ARABIA", 4, "ts. silent requests haggle. closely express packages sleep across the blithely"),
    (21, "VIETNAM", 2, "hely enticingly express accounts. even, final "),
    (22, "RUSSIA", 3, " requests against the platelets use never according to the quickly regular pint"),
    (23, "UNITED KINGDOM", 3, "eans boost carefully special requests. accounts are. carefully final foxes hinder the special "),
    (24, "UNITED STATES", 1, "y final packages. slow foxes cajole quickly. quickly silent platelets breach ironic accounts. unusual pinto be"),
]

_SCHEMA_SQL = """
CREATE TABLE region (regionkey BIGINT PRIMARY KEY, name VARCHAR(25), comment VARCHAR(152));
CREATE TABLE nation (nationkey BIGINT PRIMARY KEY, name VARCHAR(25), regionkey BIGINT,
                     comment VARCHAR(152));
CREATE TABLE numbers (n INTEGER PRIMARY KEY);
"""

# repeat() refuses results beyond this many characters: a typo should fail, not eat the RAM.
MAX_REPEAT_CHARS = 256 * 1024 * 1024


class QueryInterrupted(Exception):
    """Raised inside SQL functions when the query was cancelled."""


@dataclass
class FunctionContext:
    """Per-query state the SQL functions read and write (they run in a worker thread)."""

    cluster_name: str
    cancel: threading.Event = field(default_factory=threading.Event)
    fail_message: str | None = None


def _register_functions(conn: sqlite3.Connection, ctx: FunctionContext) -> None:
    def current_cluster() -> str:
        return ctx.cluster_name

    def sleep(seconds: float | int | None) -> float | int | None:
        if seconds is None:
            return None
        ctx.cancel.wait(max(0.0, float(seconds)))
        if ctx.cancel.is_set():
            raise QueryInterrupted("query cancelled")
        return seconds

    def fail(message: object) -> None:
        ctx.fail_message = "" if message is None else str(message)
        raise ValueError(ctx.fail_message)

    def repeat(value: object, count: int | None) -> str | None:
        if value is None or count is None:
            return None
        text = value if isinstance(value, str) else str(value)
        count = int(count)
        if count <= 0:
            return ""
        if len(text) * count > MAX_REPEAT_CHARS:
            ctx.fail_message = (f"repeat() result too large: {len(text) * count} characters "
                                f"(limit {MAX_REPEAT_CHARS})")
            raise ValueError(ctx.fail_message)
        return text * count

    conn.create_function("current_cluster", 0, current_cluster, deterministic=True)
    conn.create_function("sleep", 1, sleep)
    conn.create_function("fail", 1, fail)
    conn.create_function("repeat", 2, repeat, deterministic=True)


class Database:
    """One cluster's in-memory database; `connect()` opens a connection for one query."""

    def __init__(self, label: str) -> None:
        safe = "".join(c if c.isalnum() else "_" for c in label)[:40]
        self.uri = f"file:simcluster_{safe}_{uuid.uuid4().hex}?mode=memory&cache=shared"
        # The keeper connection keeps the shared in-memory database alive between queries.
        self._keeper = sqlite3.connect(self.uri, uri=True, isolation_level=None,
                                       check_same_thread=False)
        self._load(self._keeper)

    @staticmethod
    def _load(conn: sqlite3.Connection) -> None:
        conn.executescript(_SCHEMA_SQL)
        conn.execute("BEGIN")
        conn.executemany("INSERT INTO region VALUES (?, ?, ?)", REGIONS)
        conn.executemany("INSERT INTO nation VALUES (?, ?, ?, ?)", NATIONS)
        conn.executemany("INSERT INTO numbers VALUES (?)",
                         ((n,) for n in itertools.islice(itertools.count(1), NUMBERS_MAX)))
        conn.execute("COMMIT")

    def connect(self, ctx: FunctionContext) -> sqlite3.Connection:
        """A new autocommit connection with the fake's functions bound to `ctx`."""
        conn = sqlite3.connect(self.uri, uri=True, isolation_level=None,
                               check_same_thread=False)
        # Readers take no table locks, so a long SELECT never blocks an INSERT elsewhere.
        conn.execute("PRAGMA read_uncommitted = true")
        _register_functions(conn, ctx)
        return conn

    def close(self) -> None:
        self._keeper.close()
