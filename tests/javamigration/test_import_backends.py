"""`import-backends`: from a (fake) running trino-gateway over REST and from its PostgreSQL table,
into our store; idempotent; invalid entries skipped with a reason; MySQL without a driver."""
from __future__ import annotations

import argparse
import asyncio
import io
import json
import sys
import threading
from pathlib import Path
from typing import Any, Iterator

import psycopg
import pytest
import tornado.httpserver
import tornado.netutil
import tornado.web

from gateway.backends.state import Backend
from gateway.javamigration import import_backends as ib
from gateway.javamigration.cli import add_migrate_parsers, cmd_import_backends
from gateway.store import open_store

OLD_GATEWAY_BACKENDS = [
    {"name": "trino-1", "proxyTo": "http://trino-1:8080", "externalUrl": "https://trino-1.example.com",
     "routingGroup": "adhoc", "active": True},
    {"name": "trino-etl", "proxyTo": "http://trino-etl:8080/", "externalUrl": "http://trino-etl:8080",
     "routingGroup": "etl", "active": False},
    {"name": "trino-2", "proxyTo": "https://trino-2.example.com:8443", "externalUrl": None,
     "routingGroup": None, "active": True},
]


class _Backends(tornado.web.RequestHandler):
    def initialize(self, state: dict[str, Any]) -> None:
        self.state = state

    def get(self) -> None:
        token = self.state.get("token")
        if token and self.request.headers.get("Authorization") != token:
            self.set_status(401)
            self.finish("unauthorized")
            return
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(self.state["backends"]))


@pytest.fixture
def old_gateway() -> Iterator[dict[str, Any]]:
    """A tiny Tornado app serving trino-gateway's GET /gateway/backend/all on 127.0.0.1:<any>."""
    state: dict[str, Any] = {"backends": [dict(b) for b in OLD_GATEWAY_BACKENDS]}
    sockets = tornado.netutil.bind_sockets(0, "127.0.0.1")
    state["url"] = f"http://127.0.0.1:{sockets[0].getsockname()[1]}"
    ready = threading.Event()
    holder: dict[str, Any] = {}

    def run() -> None:
        async def main() -> None:
            app = tornado.web.Application([(r"/gateway/backend/all", _Backends, {"state": state})])
            server = tornado.httpserver.HTTPServer(app)
            server.add_sockets(sockets)
            holder["stop"] = asyncio.Event()
            holder["loop"] = asyncio.get_running_loop()
            ready.set()
            await holder["stop"].wait()
            server.stop()
        asyncio.run(main())

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert ready.wait(10)
    yield state
    holder["loop"].call_soon_threadsafe(holder["stop"].set)
    thread.join(10)


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "gateway.yaml"
    path.write_text(f"store:\n  url: sqlite:///{tmp_path / 'gw.db'}\nrouting:\n  defaultGroup: adhoc\n")
    return path


def run_import(*argv: str) -> tuple[int, str, str]:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    add_migrate_parsers(sub)
    args = parser.parse_args(["import-backends", *argv])
    out, err = io.StringIO(), io.StringIO()
    code = cmd_import_backends(args, out, err)
    return code, out.getvalue(), err.getvalue()


def stored(config: Path) -> dict[str, Backend]:
    url = next(line.split("url:", 1)[1].strip() for line in config.read_text().splitlines() if "url:" in line)
    store = open_store(url)
    try:
        return {b.name: b for b in store.list_backends()}
    finally:
        store.close()


def test_import_from_a_running_trino_gateway_is_idempotent(old_gateway: dict[str, Any], config: Path) -> None:
    code, out, err = run_import("--from-url", old_gateway["url"], "--config", str(config))
    assert (code, err) == (0, "")
    assert "added trino-1 (group adhoc, http://trino-1:8080)" in out
    assert "added trino-etl (group etl, http://trino-etl:8080, inactive)" in out
    assert "3 backends: 3 added, 0 updated, 0 unchanged" in out
    backends = stored(config)
    assert backends["trino-1"] == Backend("trino-1", "http://trino-1:8080", "https://trino-1.example.com", "adhoc", True)
    assert backends["trino-etl"].active is False and backends["trino-etl"].proxyTo == "http://trino-etl:8080"
    assert backends["trino-2"].routingGroup == "adhoc" and backends["trino-2"].externalUrl is None

    code, out, _ = run_import("--from-url", old_gateway["url"], "--config", str(config))
    assert code == 0
    assert "3 backends: 0 added, 0 updated, 3 unchanged" in out
    assert stored(config) == backends

    # a change on the old side is an update naming the fields; a backend only we know stays
    old_gateway["backends"][1].update(active=True, routingGroup="batch")
    store = open_store(f"sqlite:///{config.parent / 'gw.db'}")
    store.upsert_backend(Backend("ours-only", "http://new:8080", None, "adhoc", True))
    store.close()
    code, out, _ = run_import("--from-url", old_gateway["url"] + "/gateway/backend/all", "--config", str(config))
    assert code == 0
    assert "updated trino-etl: routingGroup etl -> batch, active false -> true" in out
    assert "1 updated, 2 unchanged" in out and "left alone (ours-only)" in out
    assert stored(config)["trino-etl"].routingGroup == "batch" and "ours-only" in stored(config)


def test_dry_run_changes_nothing(old_gateway: dict[str, Any], config: Path) -> None:
    code, out, _ = run_import("--from-url", old_gateway["url"], "--config", str(config), "--dry-run")
    assert code == 0 and "would be added trino-1" in out and "dry run" in out
    assert stored(config) == {}


def test_credentials_are_sent_with_header(old_gateway: dict[str, Any], config: Path) -> None:
    old_gateway["token"] = "Basic YWRtaW46c2VjcmV0"
    code, _, err = run_import("--from-url", old_gateway["url"], "--config", str(config))
    assert code == 2 and "HTTP 401" in err and "--header" in err
    code, out, _ = run_import("--from-url", old_gateway["url"], "--config", str(config),
                              "--header", "Authorization: Basic YWRtaW46c2VjcmV0")
    assert code == 0 and "3 added" in out


def test_invalid_entries_are_skipped_with_a_reason(old_gateway: dict[str, Any], config: Path) -> None:
    old_gateway["backends"] += [
        {"name": "bad name", "proxyTo": "http://x:8080", "routingGroup": "adhoc", "active": True},
        {"name": "no-url", "routingGroup": "adhoc", "active": True},
        {"name": "trino-1", "proxyTo": "http://dup:8080", "routingGroup": "adhoc", "active": True},
    ]
    code, out, err = run_import("--from-url", old_gateway["url"], "--config", str(config))
    assert code == 1
    assert "3 added" in out
    assert "'bad name'" in err and "no-url" in err and "second backend named 'trino-1'" in err
    assert stored(config)["trino-1"].proxyTo == "http://trino-1:8080"


def test_unreachable_source_is_a_clear_error(config: Path) -> None:
    sock = tornado.netutil.bind_sockets(0, "127.0.0.1")[0]
    port = sock.getsockname()[1]
    sock.close()                                   # nothing listens there now
    code, out, err = run_import("--from-url", f"http://127.0.0.1:{port}", "--config", str(config), "--timeout", "2")
    assert code == 2 and out == "" and f"127.0.0.1:{port}/gateway/backend/all" in err


def _create_trino_gateway_table(url: str, rows: list[tuple[Any, ...]]) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE gateway_backend (name VARCHAR(256) PRIMARY KEY, routing_group VARCHAR(256), "
                     "backend_url VARCHAR(256), external_url VARCHAR(256), active BOOLEAN)")
        with conn.cursor() as cur:
            cur.executemany("INSERT INTO gateway_backend VALUES (%s, %s, %s, %s, %s)", rows)


def test_import_from_trino_gateways_postgresql_table(pg_database: str, config: Path) -> None:
    _create_trino_gateway_table(pg_database, [
        ("trino-1", "adhoc", "http://trino-1:8080", "https://trino-1.example.com", True),
        ("trino-etl", "etl", "http://trino-etl:8080", "http://trino-etl:8080", False),
        ("trino-3", None, "http://trino-3:8080", None, True),
        ("broken", "adhoc", "ftp://nope", None, True),
        ("unknown-state", "adhoc", "http://u:8080", None, None),
    ])
    code, out, err = run_import("--from-db", pg_database, "--config", str(config))
    assert code == 1                                     # two rows skipped, the rest imported
    assert "3 backends: 3 added" in out
    assert "broken" in err and "ftp://nope" in err and "active is NULL" in err
    backends = stored(config)
    assert backends["trino-etl"] == Backend("trino-etl", "http://trino-etl:8080", "http://trino-etl:8080", "etl", False)
    assert backends["trino-3"].routingGroup == "adhoc"

    code, out, _ = run_import("--from-db", "jdbc:" + pg_database, "--config", str(config))
    assert code == 1 and "0 added, 0 updated, 3 unchanged" in out
    assert stored(config) == backends


def test_missing_table_is_a_clear_error(pg_database: str, config: Path) -> None:
    code, out, err = run_import("--from-db", pg_database, "--config", str(config), "--table", "public.gateway_backend")
    assert code == 2 and out == "" and "gateway_backend" in err and "does not exist" in err


def test_mysql_without_a_driver_names_the_package_to_install(config: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for module in ib.MYSQL_DRIVERS:
        monkeypatch.setitem(sys.modules, module, None)      # import fails as if not installed
    code, out, err = run_import("--from-db", "mysql://gw:secret@127.0.0.1:3306/gateway", "--config", str(config))
    assert code == 2 and out == ""
    assert "pip install PyMySQL" in err and "secret" not in err


@pytest.mark.parametrize("url, message", [
    ("sqlite:///x.db", "expected a postgresql:// or mysql:// URL"),
    ("postgresql://u:pw@127.0.0.1:1/db", "127.0.0.1"),
])
def test_bad_database_urls(url: str, message: str, config: Path) -> None:
    code, _, err = run_import("--from-db", url, "--config", str(config), "--timeout", "2")
    assert code == 2 and message in err and ":pw@" not in err


def test_bad_table_name_is_refused(config: Path) -> None:
    code, _, err = run_import("--from-db", "postgresql://127.0.0.1/x", "--config", str(config), "--table", "x; drop")
    assert code == 2 and "--table" in err


def test_plan_is_pure_and_compares_every_field() -> None:
    a = Backend("a", "http://a:1", None, "adhoc", True)
    plan = ib.plan_import([a, Backend("z", "http://z:1")],
                          [a, Backend("b", "http://b:1"), Backend("a2", "http://a:1", "http://ext", "adhoc", True)])
    assert [c.action for c in plan.changes] == ["unchanged", "added", "added"]
    assert plan.kept == ["z"]
    changed = ib.plan_import([a], [Backend("a", "http://a:1", "http://ext", "etl", True)]).changes[0]
    assert changed.action == "updated"
    assert changed.differences() == ["externalUrl null -> http://ext", "routingGroup adhoc -> etl"]


def test_json_shape_errors() -> None:
    with pytest.raises(ib.BackendImportError, match="JSON list"):
        ib.backends_from_json({"name": "x"}, default_group="adhoc")
    backends, problems = ib.backends_from_json([{"name": "x", "proxyTo": "http://x:1", "active": "yes"}, 7],
                                               default_group="adhoc")
    assert backends == [] and "active" in problems[0] and "JSON object" in problems[1]
    backends, problems = ib.backends_from_rows([("m", "g", "http://m:1", "", 1)], default_group="adhoc")
    assert backends == [Backend("m", "http://m:1", None, "g", True)] and problems == []
