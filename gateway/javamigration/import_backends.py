"""Copy the backends of a trino-gateway installation into this gateway's store, idempotently.

Two sources: a running trino-gateway (``GET /gateway/backend/all``, JSON objects with ``name``,
``proxyTo``, ``externalUrl``, ``routingGroup``, ``active``) or its database table
``gateway_backend`` (columns ``name``, ``routing_group``, ``backend_url``, ``external_url``,
``active``) in PostgreSQL or MySQL. PostgreSQL uses psycopg (a dependency); MySQL needs a
driver this project does not install (PyMySQL, mysqlclient or mysql-connector-python) and says
so when none is present.

The pure part: ``backends_from_json`` / ``backends_from_rows`` validate entries exactly like
the REST API does (``name``, URLs, group names) and ``plan_import`` compares them with the store:
each backend is *added*, *updated* (with the fields that differ) or *unchanged*. ``apply_plan``
upserts only what changed, so running the import twice changes nothing the second time.
Backends already in the store but not in the source are left alone.
"""
from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence
from urllib.parse import unquote, urlsplit

from gateway.backends.state import Backend
from gateway.config import ConfigError, validate_name, validate_url
from gateway.store.base import redact_url

__all__ = [
    "BackendImportError", "Change", "ImportPlan", "backends_from_json", "backends_from_rows",
    "fetch_json", "fetch_rows", "plan_import", "apply_plan", "BACKEND_ALL_PATH", "MYSQL_DRIVERS",
]

BACKEND_ALL_PATH = "/gateway/backend/all"
MYSQL_DRIVERS = ("pymysql", "MySQLdb", "mysql.connector")
_TABLE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?$")
_COLUMNS = ("name", "routing_group", "backend_url", "external_url", "active")
_FIELDS = ("proxyTo", "externalUrl", "routingGroup", "active")


class BackendImportError(Exception):
    """The source cannot be read (unreachable, wrong shape, missing driver); nothing was imported."""


@dataclass(frozen=True)
class Change:
    action: str                          # added, updated, unchanged
    backend: Backend
    before: Backend | None = None

    def differences(self) -> list[str]:
        if self.before is None:
            return []
        out = []
        for f in _FIELDS:
            old, new = getattr(self.before, f), getattr(self.backend, f)
            if old != new:
                out.append(f"{f} {_show(old)} -> {_show(new)}")
        return out

    def describe(self) -> str:
        b = self.backend
        if self.action == "added":
            return (f"added {b.name} (group {b.routingGroup}, {b.proxyTo}"
                    f"{'' if b.active else ', inactive'})")
        if self.action == "updated":
            return f"updated {b.name}: {', '.join(self.differences())}"
        return f"unchanged {b.name}"


@dataclass
class ImportPlan:
    changes: list[Change] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)      # in the store, not in the source

    def count(self, action: str) -> int:
        return sum(1 for c in self.changes if c.action == action)

    def summary(self) -> str:
        text = (f"{len(self.changes)} backends: {self.count('added')} added, "
                f"{self.count('updated')} updated, {self.count('unchanged')} unchanged")
        if self.kept:
            text += f"; {len(self.kept)} in the store but not in the source left alone ({', '.join(self.kept)})"
        return text


def _show(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return "null" if v is None else str(v)


# --- validation -------------------------------------------------------------------------------

def _backend(name: Any, proxy_to: Any, external: Any, group: Any, active: Any,
             default_group: str, where: str) -> Backend:
    """One backend, validated like the REST API validates ``/gateway/backend/modify/add``."""
    name = validate_name(name, f"{where}: name")
    if not isinstance(proxy_to, str) or not proxy_to:
        raise ConfigError(f"{where} ({name}): proxyTo: required, an http(s) URL")
    proxy_to = validate_url(proxy_to.strip(), f"{where} ({name}): proxyTo")
    if external is not None and external != "":
        if not isinstance(external, str) or not external.strip().startswith(("http://", "https://")):
            raise ConfigError(f"{where} ({name}): externalUrl: expected an http(s) URL, got {external!r}")
        external = external.strip().rstrip("/")
    else:
        external = None
    group = group if isinstance(group, str) and group.strip() else default_group
    validate_name(group, f"{where} ({name}): routingGroup")
    if isinstance(active, int) and not isinstance(active, bool) and active in (0, 1):
        active = bool(active)                 # MySQL BOOLEAN is TINYINT(1)
    if not isinstance(active, bool):
        raise ConfigError(f"{where} ({name}): active: expected true or false, got {active!r}")
    return Backend(name, proxy_to, external, group, active)


def _dedupe(items: Iterable[tuple[str, Any]], build: Any) -> tuple[list[Backend], list[str]]:
    backends: list[Backend] = []
    problems: list[str] = []
    seen: set[str] = set()
    for where, item in items:
        try:
            b = build(where, item)
        except ConfigError as exc:
            problems.append(f"skipped: {exc}")
            continue
        if b.name in seen:
            problems.append(f"skipped: {where}: a second backend named {b.name!r}")
            continue
        seen.add(b.name)
        backends.append(b)
    return backends, problems


def backends_from_json(doc: Any, *, default_group: str) -> tuple[list[Backend], list[str]]:
    """Backends from ``GET /gateway/backend/all``; (valid backends, problems with the others)."""
    if not isinstance(doc, list):
        raise BackendImportError("expected a JSON list of backends from /gateway/backend/all, "
                                 f"got {type(doc).__name__}")

    def build(where: str, item: Any) -> Backend:
        if not isinstance(item, dict):
            raise ConfigError(f"{where}: expected a JSON object, got {type(item).__name__}")
        return _backend(item.get("name"), item.get("proxyTo"), item.get("externalUrl"),
                        item.get("routingGroup"), item.get("active", True), default_group, where)
    return _dedupe(((f"backend #{i}", item) for i, item in enumerate(doc, 1)), build)


def backends_from_rows(rows: Sequence[Sequence[Any]], *, default_group: str,
                       table: str = "gateway_backend") -> tuple[list[Backend], list[str]]:
    """Backends from rows of (name, routing_group, backend_url, external_url, active)."""
    def build(where: str, row: Sequence[Any]) -> Backend:
        name, group, url, external, active = row
        if active is None:
            raise ConfigError(f"{where} ({name}): active is NULL; set it to true or false")
        return _backend(name, url, external, group, active, default_group, where)
    return _dedupe(((f"{table} row {i}", row) for i, row in enumerate(rows, 1)), build)


def plan_import(existing: Iterable[Backend], incoming: Iterable[Backend]) -> ImportPlan:
    """Compare the source's backends with the store's."""
    current = {b.name: b for b in existing}
    plan = ImportPlan()
    names: set[str] = set()
    for b in incoming:
        names.add(b.name)
        old = current.get(b.name)
        if old is None:
            plan.changes.append(Change("added", b))
        elif all(getattr(old, f) == getattr(b, f) for f in _FIELDS):
            plan.changes.append(Change("unchanged", b, old))
        else:
            plan.changes.append(Change("updated", b, old))
    plan.kept = sorted(n for n in current if n not in names)
    return plan


def apply_plan(store: Any, plan: ImportPlan) -> None:
    """Write the added and updated backends (``store.upsert_backend``)."""
    for c in plan.changes:
        if c.action != "unchanged":
            store.upsert_backend(c.backend)


# --- I/O --------------------------------------------------------------------------------------

def fetch_json(base_url: str, *, headers: Sequence[tuple[str, str]] = (), timeout: float = 10.0) -> Any:
    """GET ``base_url`` + ``/gateway/backend/all`` (unless the URL already ends with it)."""
    parts = urlsplit(base_url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise BackendImportError(f"--from-url: expected http(s)://host:port of trino-gateway, got {base_url!r}")
    url = base_url.rstrip("/")
    if not url.endswith(BACKEND_ALL_PATH):
        url += BACKEND_ALL_PATH
    request = urllib.request.Request(url, headers={"Accept": "application/json", **dict(headers)})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:   # noqa: S310 - http(s) only
            body = response.read()
    except urllib.error.HTTPError as exc:
        hint = " (add credentials with --header 'Authorization: ...')" if exc.code in (401, 403) else ""
        raise BackendImportError(f"GET {redact_url(url)}: HTTP {exc.code} {exc.reason}{hint}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise BackendImportError(f"GET {redact_url(url)}: {reason}") from None
    try:
        return json.loads(body)
    except ValueError as exc:
        raise BackendImportError(f"GET {redact_url(url)}: the answer is not JSON ({exc})") from None


def fetch_rows(db_url: str, *, table: str = "gateway_backend", timeout: float = 10.0) -> list[tuple[Any, ...]]:
    """Rows of (name, routing_group, backend_url, external_url, active) from trino-gateway's table."""
    if not _TABLE.match(table):
        raise BackendImportError(f"--table: expected a table name such as gateway_backend or "
                                 f"schema.gateway_backend, got {table!r}")
    url = db_url[5:] if db_url.lower().startswith("jdbc:") else db_url
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    if scheme in ("postgresql", "postgres"):
        return _postgres_rows(url, table, timeout)
    if scheme in ("mysql", "mariadb"):
        return _mysql_rows(url, table, timeout)
    raise BackendImportError(f"--from-db {redact_url(db_url)!r}: expected a postgresql:// or mysql:// URL")


def _select(table: str, quote: str) -> str:
    cols = ", ".join(f"{quote}{c}{quote}" for c in _COLUMNS)
    qualified = ".".join(f"{quote}{p}{quote}" for p in table.split("."))
    return f"SELECT {cols} FROM {qualified} ORDER BY {quote}name{quote}"


def _postgres_rows(url: str, table: str, timeout: float) -> list[tuple[Any, ...]]:
    import psycopg
    try:
        with psycopg.connect(url, connect_timeout=max(1, int(timeout))) as conn:
            return [tuple(r) for r in conn.execute(_select(table, '"')).fetchall()]
    except psycopg.Error as exc:
        raise BackendImportError(f"{redact_url(url)}: {str(exc).strip()}") from None


def _mysql_rows(url: str, table: str, timeout: float) -> list[tuple[Any, ...]]:
    driver = _mysql_driver()
    parts = urlsplit(url)
    params = {
        "host": parts.hostname or "localhost", "port": parts.port or 3306,
        "user": unquote(parts.username or ""), "password": unquote(parts.password or ""),
        "database": parts.path.lstrip("/"),
    }
    if not params["database"]:
        raise BackendImportError(f"{redact_url(url)}: the URL names no database (mysql://user:pass@host:3306/gateway)")
    try:
        if driver.__name__ == "MySQLdb":
            conn = driver.connect(host=params["host"], port=params["port"], user=params["user"],
                                  passwd=params["password"], db=params["database"],
                                  connect_timeout=int(timeout))
        else:
            conn = driver.connect(host=params["host"], port=params["port"], user=params["user"],
                                  password=params["password"], database=params["database"],
                                  connect_timeout=int(timeout))
        try:
            cur = conn.cursor()
            cur.execute(_select(table, "`"))
            return [tuple(r) for r in cur.fetchall()]
        finally:
            conn.close()
    except Exception as exc:  # noqa: BLE001 - each driver has its own error classes
        raise BackendImportError(f"{redact_url(url)}: {exc}") from None


def _mysql_driver() -> Any:
    import importlib
    for name in MYSQL_DRIVERS:
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    raise BackendImportError(
        "reading a MySQL database needs a MySQL driver, and none is installed: "
        "pip install PyMySQL (or mysqlclient, or mysql-connector-python); "
        "or import from the running trino-gateway with --from-url instead")
