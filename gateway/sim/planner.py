"""Turn a Trino statement into what the simulated cluster does with it (pure, no I/O).

`plan(sql, session)` returns one of:
  Outcome  - a result known without running SQL (USE, SET SESSION, PREPARE, SHOW CATALOGS...)
             with the response headers the statement sets;
  SqlPlan  - SQLite SQL to run (catalog/schema prefixes stripped, parameters bound);
  Command  - a statement acting on cluster state (transactions, kill_query);
or raises SqlError. Session headers are parsed here too (`parse_session`).
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from typing import Any, Callable
from urllib.parse import quote_plus, unquote_plus

from .data import CATALOGS, SCHEMAS
from .protocol import column

RESULT_COLUMNS = [column("result", "boolean")]


class SqlError(Exception):
    """A statement failure, reported as a FAILED query with this errorName."""

    def __init__(self, message: str, name: str = "GENERIC_USER_ERROR") -> None:
        super().__init__(message)
        self.message = message
        self.name = name


class HeaderError(ValueError):
    """A malformed request header; the POST answers 400 with this message."""


@dataclass
class Session:
    """The parts of a statement's request headers the fake acts on."""

    user: str
    source: str | None = None
    catalog: str | None = None
    schema: str | None = None
    properties: dict[str, str] = field(default_factory=dict)
    prepared: dict[str, str] = field(default_factory=dict)
    transaction_id: str | None = None  # None when absent or NONE


@dataclass
class Outcome:
    columns: list[dict[str, Any]] | None
    rows: list[list[Any]]
    update_type: str | None = None
    update_count: int | None = None
    headers: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class SqlPlan:
    sql: str                  # what SQLite runs
    kind: str                 # query | dml | ddl | ctas
    update_type: str | None
    table: str | None = None  # ctas: the table whose rows are counted afterwards
    original: str = ""        # the Trino text, for type detection


@dataclass
class Command:
    kind: str                 # start_transaction | commit | rollback | kill_query
    update_type: str
    args: dict[str, Any] = field(default_factory=dict)


def ok(update_type: str, headers: list[tuple[str, str]] | None = None) -> Outcome:
    """The result of a statement without output: `result boolean` = [[true]], as Trino does."""
    return Outcome(RESULT_COLUMNS, [[True]], update_type, None, headers or [])


# ---------------------------------------------------------------- headers

def parse_kv_list(values: list[str], header: str) -> dict[str, str]:
    """`name=urlenc(value)` items of (possibly repeated, comma-joined) header lines."""
    out: dict[str, str] = {}
    for line in values:
        for item in line.split(","):
            item = item.strip()
            if not item:
                continue
            name, sep, value = item.partition("=")
            if not sep or not name.strip():
                raise HeaderError(f"Invalid {header} header: {item!r} is not name=value")
            out[unquote_plus(name.strip())] = unquote_plus(value.strip())
    return out


def parse_session(get_list: Callable[[str], list[str]], user: str) -> Session:
    """A Session from request headers (`get_list(name)` returns every line of a header)."""
    def one(name: str) -> str | None:
        values = get_list(name)
        return values[0].strip() if values and values[0].strip() else None

    catalog, schema = one("X-Trino-Catalog"), one("X-Trino-Schema")
    if schema and not catalog:
        raise HeaderError("Schema is set but catalog is not")
    txn = one("X-Trino-Transaction-Id")
    return Session(
        user=user, source=one("X-Trino-Source"), catalog=catalog, schema=schema,
        properties=parse_kv_list(get_list("X-Trino-Session"), "X-Trino-Session"),
        prepared=parse_kv_list(get_list("X-Trino-Prepared-Statement"),
                               "X-Trino-Prepared-Statement"),
        transaction_id=None if txn is None or txn.upper() == "NONE" else txn)


# ---------------------------------------------------------------- SQL text helpers

_TOKEN_RE = re.compile(r"""
    (?P<str>'(?:[^']|'')*')
  | (?P<qid>"(?:[^"]|"")*")
  | (?P<comment>--[^\n]*|/\*.*?\*/)
  | (?P<word>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<space>\s+)
  | (?P<other>.)
""", re.S | re.X)

_PART = r'(?:"(?:[^"]|"")+"|[A-Za-z_][A-Za-z0-9_]*)'
_NAME_RE = re.compile(rf"{_PART}(?:\s*\.\s*{_PART})*")
_TABLE_KEYWORDS = {"from", "join", "into", "update", "table", "exists"}


def _tokens(sql: str) -> list[tuple[str, str]]:
    return [(m.lastgroup or "other", m.group()) for m in _TOKEN_RE.finditer(sql)]


def _unquote_ident(part: str) -> str:
    return part[1:-1].replace('""', '"') if part.startswith('"') else part.lower()


def normalize(sql: str) -> str:
    """Without leading comments, surrounding blanks and trailing semicolons."""
    text = sql.strip()
    while True:
        if text.startswith("--"):
            text = text.split("\n", 1)[1].strip() if "\n" in text else ""
        elif text.startswith("/*") and "*/" in text:
            text = text.split("*/", 1)[1].strip()
        else:
            break
    while text.endswith(";"):
        text = text[:-1].rstrip()
    return text


def strip_prefixes(sql: str) -> str:
    """`tpch.tiny.nation`, `tiny.nation`, `"tpch"."tiny"."nation"` -> `nation`.

    In table position (after FROM, JOIN, INTO, UPDATE, TABLE) any qualified name is reduced
    to its last part; elsewhere known schemas and catalogs are dropped, so that
    `tiny.nation.name` becomes `nation.name` while `n.name` stays as it is."""
    out: list[str] = []
    tokens = _tokens(sql)
    i, previous_word = 0, ""
    while i < len(tokens):
        kind, text = tokens[i]
        if kind in ("word", "qid"):
            # Greedily collect `part . part . part` (blanks allowed around the dots).
            j, parts = i + 1, [text]
            while True:
                k = j
                while k < len(tokens) and tokens[k][0] == "space":
                    k += 1
                if k < len(tokens) and tokens[k][1] == ".":
                    m = k + 1
                    while m < len(tokens) and tokens[m][0] == "space":
                        m += 1
                    if m < len(tokens) and tokens[m][0] in ("word", "qid"):
                        parts.append(tokens[m][1])
                        j = m + 1
                        continue
                break
            out.append(".".join(_reduce_name(parts, previous_word in _TABLE_KEYWORDS)))
            previous_word = _unquote_ident(parts[-1]) if len(parts) == 1 else ""
            i = j
            continue
        if kind not in ("space", "comment"):
            previous_word = ""
        out.append(text)
        i += 1
    return "".join(out)


def _reduce_name(parts: list[str], table_position: bool) -> list[str]:
    if len(parts) < 2:
        return parts
    names = [_unquote_ident(p) for p in parts]
    if table_position:
        return parts[-1:]
    if names[0] in CATALOGS and len(parts) >= 3 and names[1] in CATALOGS[names[0]]:
        return parts[2:]
    if names[0] in SCHEMAS:
        return parts[1:]
    if len(parts) >= 3:  # catalog.schema.table[.column] of a catalog the fake does not know
        return parts[2:]
    return parts


def split_top_level(text: str) -> list[str]:
    """Split on commas outside quotes and brackets."""
    items, depth, current = [], 0, []
    for kind, tok in _tokens(text):
        if kind == "other" and tok in "([":
            depth += 1
        elif kind == "other" and tok in ")]":
            depth -= 1
        if kind == "other" and tok == "," and depth == 0:
            items.append("".join(current).strip())
            current = []
        else:
            current.append(tok)
    if "".join(current).strip():
        items.append("".join(current).strip())
    return items


_TYPED_NUMBER_RE = re.compile(r"(?:DOUBLE|DECIMAL|REAL|BIGINT|INTEGER|INT|SMALLINT|TINYINT)"
                              r"\s+'\s*([-+0-9.eE]+)\s*'", re.I)
_TYPED_STRING_RE = re.compile(r"(?:DATE|TIMESTAMP|TIME|UUID|VARCHAR|CHAR|JSON)\s+('(?:[^']|'')*')",
                              re.I)


def sqlite_literal(param: str) -> str:
    """A Trino literal from an EXECUTE ... USING list, as SQLite text."""
    p = param.strip()
    if m := _TYPED_NUMBER_RE.fullmatch(p):
        return m.group(1)
    if m := _TYPED_STRING_RE.fullmatch(p):
        return m.group(1)
    special = {"infinity()": "9e999", "-infinity()": "-9e999", "nan()": "NULL"}
    return special.get(p.lower(), p)


def bind_parameters(sql: str, params: list[str]) -> str:
    """Replace each `?` outside literals with the next parameter."""
    slots = sum(1 for kind, tok in _tokens(sql) if kind == "other" and tok == "?")
    if slots != len(params):
        raise SqlError(f"Incorrect number of parameters: expected {slots} but found "
                       f"{len(params)}", "INVALID_PARAMETER_USAGE")
    values = iter(sqlite_literal(p) for p in params)
    return "".join(next(values) if kind == "other" and tok == "?" else tok
                   for kind, tok in _tokens(sql))


def _string_literal(text: str) -> str | None:
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] == "'":
        return text[1:-1].replace("''", "'")
    return None


@functools.lru_cache(maxsize=2048)
def projections(sql: str) -> tuple[tuple[bool, str | None], ...]:
    """For each output column of a SELECT: whether it is a boolean expression (SQLite returns
    0/1 for those) and the name Trino gives it when SQLite's differs (`_colN` for unaliased
    expressions). Empty when the text does not parse or selects `*`."""
    if not re.match(r"[\s(]*(SELECT|WITH)\b", sql, re.I):
        return ()
    try:
        import sqlglot
        from sqlglot import exp
        tree = sqlglot.parse_one(sql, read="trino")
    except Exception:
        return ()
    while isinstance(tree, exp.Subquery):
        tree = tree.this
    if not isinstance(tree, exp.Select) or any(
            isinstance(e, exp.Star) or (isinstance(e, exp.Column) and isinstance(e.this, exp.Star))
            for e in tree.expressions):
        return ()
    kinds = (exp.Predicate, exp.Boolean, exp.Not, exp.Connector)
    out = []
    for i, e in enumerate(tree.expressions):
        named = isinstance(e, (exp.Alias, exp.Column))
        out.append((isinstance(e.unalias(), kinds), None if named else f"_col{i}"))
    return tuple(out)


# ---------------------------------------------------------------- statements

_I = re.I | re.S
_ID = r'(?:"(?:[^"]|"")+"|[A-Za-z_][A-Za-z0-9_]*)'
_USE_RE = re.compile(rf"USE\s+({_ID})(?:\s*\.\s*({_ID}))?", _I)
_SET_AUTH_RE = re.compile(r"SET\s+SESSION\s+AUTHORIZATION\s+(.+)", _I)
_RESET_AUTH_RE = re.compile(r"RESET\s+SESSION\s+AUTHORIZATION", _I)
_SET_SESSION_RE = re.compile(r"SET\s+SESSION\s+([A-Za-z_][\w.]*)\s*=\s*(.+)", _I)
_RESET_SESSION_RE = re.compile(r"RESET\s+SESSION\s+([A-Za-z_][\w.]*)", _I)
_SET_ROLE_RE = re.compile(rf"SET\s+ROLE\s+({_ID})(?:\s+IN\s+({_ID}))?", _I)
_SET_PATH_RE = re.compile(r"SET\s+PATH\s+(.+)", _I)
_PREPARE_RE = re.compile(rf"PREPARE\s+({_ID})\s+FROM\s+(.+)", _I)
_EXECUTE_IMMEDIATE_RE = re.compile(r"EXECUTE\s+IMMEDIATE\s+('(?:[^']|'')*')(?:\s+USING\s+(.+))?", _I)
_EXECUTE_RE = re.compile(rf"EXECUTE\s+({_ID})(?:\s+USING\s+(.+))?", _I)
_DEALLOCATE_RE = re.compile(rf"DEALLOCATE\s+PREPARE\s+({_ID})", _I)
_START_RE = re.compile(r"START\s+TRANSACTION\b.*", _I)
_COMMIT_RE = re.compile(r"(COMMIT|ROLLBACK)(?:\s+WORK)?", _I)
_CALL_RE = re.compile(r"CALL\s+([\w.\"]+)\s*\((.*)\)", _I)
_SHOW_CATALOGS_RE = re.compile(r"SHOW\s+CATALOGS(?:\s+LIKE\s+('(?:[^']|'')*'))?", _I)
_SHOW_SCHEMAS_RE = re.compile(rf"SHOW\s+SCHEMAS(?:\s+(?:FROM|IN)\s+({_ID}))?"
                              r"(?:\s+LIKE\s+('(?:[^']|'')*'))?", _I)
_SHOW_TABLES_RE = re.compile(rf"SHOW\s+TABLES(?:\s+(?:FROM|IN)\s+{_ID}(?:\s*\.\s*{_ID})?)?"
                             r"(?:\s+LIKE\s+('(?:[^']|'')*'))?", _I)
_SHOW_COLUMNS_RE = re.compile(rf"(?:SHOW\s+COLUMNS\s+(?:FROM|IN)|DESCRIBE|DESC)\s+"
                              rf"((?:{_ID}\s*\.\s*)*{_ID})", _I)
_SHOW_SESSION_RE = re.compile(r"SHOW\s+SESSION\b.*", _I)
_SCHEMA_DDL_RE = re.compile(r"(CREATE|DROP)\s+SCHEMA\b.*", _I)
_CTAS_RE = re.compile(rf"CREATE\s+TABLE\s+(?:IF\s+NOT\s+EXISTS\s+)?((?:{_ID}\s*\.\s*)*{_ID})"
                      r"\s+(?:WITH\s*\((?:[^()']|'(?:[^']|'')*')*\)\s*)?AS\b", _I)
_TABLE_PROPS_RE = re.compile(r"\s+WITH\s*\((?:[^()']|'(?:[^']|'')*')*\)(?=\s*(?:AS\b|$))", _I)
_TRUNCATE_RE = re.compile(rf"TRUNCATE\s+TABLE\s+((?:{_ID}\s*\.\s*)*{_ID})", _I)
_QUERY_WORDS = {"SELECT", "WITH", "VALUES", "EXPLAIN", "TABLE", "PRAGMA"}
_DML_WORDS = {"INSERT": "INSERT", "UPDATE": "UPDATE", "DELETE": "DELETE", "MERGE": "MERGE",
              "REPLACE": "INSERT"}


def _ident(text: str) -> str:
    return _unquote_ident(text.strip())


def _last_part(name: str) -> str:
    return re.findall(_PART, name)[-1]


def _varchar_outcome(name: str, values: list[str], like: str | None) -> Outcome:
    if like is not None:
        pattern = _string_literal(like) or ""
        regex = re.compile("".join(".*" if c == "%" else "." if c == "_" else re.escape(c)
                                   for c in pattern) + r"\Z", re.S)
        values = [v for v in values if regex.match(v)]
    return Outcome([column(name, "varchar")], [[v] for v in values])


def plan(sql: str, session: Session, *, _depth: int = 0) -> Outcome | SqlPlan | Command:
    """Decide what `sql` does; raises SqlError for statements that fail before running."""
    text = normalize(sql)
    if not text:
        raise SqlError("line 1:1: mismatched input '<EOF>'. Expecting: <statement>",
                       "SYNTAX_ERROR")
    if m := _USE_RE.fullmatch(text):
        if m.group(2):
            catalog, schema = _ident(m.group(1)), _ident(m.group(2))
        elif session.catalog:
            catalog, schema = session.catalog, _ident(m.group(1))
        else:
            raise SqlError("Catalog must be specified when session catalog is not set")
        return ok("USE", [("X-Trino-Set-Catalog", catalog), ("X-Trino-Set-Schema", schema)])
    if m := _SET_AUTH_RE.fullmatch(text):
        user = _string_literal(m.group(1)) or _ident(m.group(1))
        return ok("SET SESSION AUTHORIZATION", [("X-Trino-Set-Authorization-User", user)])
    if _RESET_AUTH_RE.fullmatch(text):
        return ok("RESET SESSION AUTHORIZATION", [("X-Trino-Reset-Authorization-User", "true")])
    if m := _SET_SESSION_RE.fullmatch(text):
        raw = m.group(2).strip()
        value = _string_literal(raw)
        if value is None:
            value = raw.lower() if raw.lower() in ("true", "false") else raw
        return ok("SET SESSION",
                  [("X-Trino-Set-Session", f"{m.group(1).lower()}={quote_plus(value)}")])
    if m := _RESET_SESSION_RE.fullmatch(text):
        return ok("RESET SESSION", [("X-Trino-Clear-Session", m.group(1).lower())])
    if m := _SET_ROLE_RE.fullmatch(text):
        role = _ident(m.group(1))
        value = role.upper() if role.upper() in ("ALL", "NONE") else f"ROLE{{{role}}}"
        catalog = _ident(m.group(2)) if m.group(2) else "system"
        return ok("SET ROLE", [("X-Trino-Set-Role", f"{catalog}={quote_plus(value)}")])
    if m := _SET_PATH_RE.fullmatch(text):
        return ok("SET PATH", [("X-Trino-Set-Path", m.group(1).strip())])
    if m := _PREPARE_RE.fullmatch(text):
        name, statement = m.group(1), normalize(m.group(2))
        if name.startswith('"'):
            name = _ident(name)
        return ok("PREPARE", [("X-Trino-Added-Prepare",
                               f"{quote_plus(name)}={quote_plus(statement)}")])
    if m := _EXECUTE_IMMEDIATE_RE.fullmatch(text):
        inner = _string_literal(m.group(1)) or ""
        return _execute(inner, m.group(2), session, _depth)
    if m := _EXECUTE_RE.fullmatch(text):
        return _execute(_prepared(session, m.group(1)), m.group(2), session, _depth)
    if m := _DEALLOCATE_RE.fullmatch(text):
        name = m.group(1)
        _prepared(session, name)
        return ok("DEALLOCATE", [("X-Trino-Deallocated-Prepare",
                                  quote_plus(_ident(name) if name.startswith('"') else name))])
    if _START_RE.fullmatch(text):
        return Command("start_transaction", "START TRANSACTION")
    if m := _COMMIT_RE.fullmatch(text):
        return Command(m.group(1).lower(), m.group(1).upper())
    if m := _CALL_RE.fullmatch(text):
        return _call(m.group(1), m.group(2))
    if m := _SHOW_CATALOGS_RE.fullmatch(text):
        return _varchar_outcome("Catalog", sorted(CATALOGS), m.group(1))
    if m := _SHOW_SCHEMAS_RE.fullmatch(text):
        catalog = _ident(m.group(1)) if m.group(1) else (session.catalog or "tpch")
        schemas = CATALOGS.get(catalog, ("default", "information_schema"))
        return _varchar_outcome("Schema", sorted(schemas), m.group(2))
    if m := _SHOW_TABLES_RE.fullmatch(text):
        like = _string_literal(m.group(1)) if m.group(1) else None
        where = "type IN ('table', 'view') AND name NOT LIKE 'sqlite%'"
        if like is not None:
            where += " AND name LIKE '" + like.replace("'", "''") + "'"
        return SqlPlan(f'SELECT name AS "Table" FROM sqlite_master WHERE {where} ORDER BY name',
                       "query", None, original=text)
    if m := _SHOW_COLUMNS_RE.fullmatch(text):
        table = _ident(_last_part(m.group(1))).replace("'", "''")
        return SqlPlan('SELECT name AS "Column", lower(type) AS "Type", \'\' AS "Extra", '
                       f"'' AS \"Comment\" FROM pragma_table_info('{table}') ORDER BY cid",
                       "query", None, original=text)
    if _SHOW_SESSION_RE.fullmatch(text):
        rows = [[k, v, "", "varchar", ""] for k, v in sorted(session.properties.items())]
        names = ["Name", "Value", "Default", "Type", "Description"]
        return Outcome([column(n, "varchar") for n in names], rows)
    if m := _SCHEMA_DDL_RE.fullmatch(text):
        return ok(f"{m.group(1).upper()} SCHEMA")
    return _sql_plan(text)


def _prepared(session: Session, name: str) -> str:
    key = _ident(name) if name.startswith('"') else name
    for candidate in (key, key.lower()):
        if candidate in session.prepared:
            return session.prepared[candidate]
    lowered = {k.lower(): v for k, v in session.prepared.items()}
    if key.lower() in lowered:
        return lowered[key.lower()]
    raise SqlError(f"Prepared statement not found: {key}", "NOT_FOUND")


def _execute(statement: str, using: str | None, session: Session,
             depth: int) -> Outcome | SqlPlan | Command:
    if depth > 0:
        raise SqlError("EXECUTE of an EXECUTE statement is not supported", "NOT_SUPPORTED")
    params = split_top_level(using) if using else []
    return plan(bind_parameters(normalize(statement), params), session, _depth=depth + 1)


def _call(procedure: str, arguments: str) -> Command:
    name = ".".join(_ident(p) for p in re.findall(_PART, procedure))
    if name not in ("system.runtime.kill_query", "runtime.kill_query"):
        raise SqlError(f"Procedure not registered: {name}", "PROCEDURE_NOT_FOUND")
    args: dict[str, str | None] = {}
    positional = ["query_id", "message"]
    for index, item in enumerate(split_top_level(arguments)):
        m = re.fullmatch(r"([A-Za-z_]\w*)\s*=>\s*(.+)", item, re.S)
        key, raw = (m.group(1).lower(), m.group(2)) if m else (
            positional[index] if index < 2 else f"arg{index}", item)
        if key not in positional:
            raise SqlError(f"Unknown argument name: {key}", "INVALID_PROCEDURE_ARGUMENT")
        value = _string_literal(raw)
        if value is None and raw.strip().upper() != "NULL":
            raise SqlError(f"Argument {key} must be a string literal, got {raw.strip()}",
                           "INVALID_PROCEDURE_ARGUMENT")
        args[key] = value
    if not args.get("query_id"):
        raise SqlError("Required procedure argument 'query_id' is missing",
                       "INVALID_PROCEDURE_ARGUMENT")
    return Command("kill_query", "CALL", args)


def _sql_plan(text: str) -> SqlPlan:
    first = text.split(None, 1)[0].upper().lstrip("(")
    if m := _TRUNCATE_RE.fullmatch(text):
        return SqlPlan(f"DELETE FROM {strip_prefixes(m.group(1))}", "dml", "TRUNCATE TABLE",
                       original=text)
    if first in _QUERY_WORDS:
        return SqlPlan(strip_prefixes(text), "query", None, original=text)
    if first in _DML_WORDS:
        return SqlPlan(strip_prefixes(text), "dml", _DML_WORDS[first], original=text)
    if first in ("CREATE", "DROP", "ALTER", "COMMENT"):
        words = text.split(None, 2)
        update_type = " ".join(w.upper() for w in words[:2])
        cleaned = _TABLE_PROPS_RE.sub("", text) if first == "CREATE" else text
        if m := _CTAS_RE.match(text):
            return SqlPlan(strip_prefixes(cleaned), "ctas", update_type,
                           table=_ident(_last_part(m.group(1))), original=text)
        return SqlPlan(strip_prefixes(cleaned), "ddl", update_type, original=text)
    # Anything else goes to SQLite as is; it reports the syntax error if there is one.
    return SqlPlan(strip_prefixes(text), "query", None, original=text)
