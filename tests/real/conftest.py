"""Fixtures for the suite against real Trino coordinators (marker ``real``).

Two coordinators start once per test session (in parallel, ~40 s on 2 cores):

- ``adhoc``: the default configuration, which answers 406 to ``X-Forwarded-*`` headers;
- ``etl``: ``http-server.process-forwarded=true``.

Gateways with one and with two workers sit in front of both, with the rules in ``RULES``. Every
check runs through a gateway and directly against the coordinator that the gateway chose, and
compares the two. The first run downloads Trino through Maven (see tests/real/launcher.py); when
that or a start fails, the tests skip with the reason, or fail under CI
(``TRINO_GATEWAY_REQUIRE_REAL=1``).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from tests.conftest import GatewayProcess, gateway_config, start_gateway, wait_for
from tests.real.launcher import CLI, JDBC, Cluster, Coordinator, LauncherError, fetch, find_java
from tests.real.launcher import _java_major as java_major

REQUIRE = os.environ.get("TRINO_GATEWAY_REQUIRE_REAL") == "1"

RULES = """\
name: etl-sources
description: Airflow and dbt run on the ETL cluster
priority: 20
condition: source =~ "(airflow|dbt).*"
routingGroup: etl
---
name: lineitem-sf1-to-etl
description: a rule on SQL facts (tables, fully qualified)
priority: 10
condition: '"tpch.sf1.lineitem" in tables'
routingGroup: etl
---
name: ddl-to-etl
description: a rule on the query type
priority: 10
condition: queryType == "DATA_DEFINITION" and "memory" in catalogs
routingGroup: etl
---
name: no-secrets
priority: 100
condition: query =~ "(?is).*secret_table.*"
reject: secret_table is not to be queried
"""


def say(message: str) -> None:
    """Progress of the Maven download and unpacking, shown while it happens (past pytest's capture)."""
    print(f"\n[real trino] {message}", file=sys.__stderr__, flush=True)


def _unavailable(why: str) -> None:
    if REQUIRE:
        pytest.fail(f"real Trino is required (TRINO_GATEWAY_REQUIRE_REAL=1): {why}")
    pytest.skip(f"real Trino unavailable: {why}")


# Package scope: the JVMs stop when tests/real is done, so the rest of the suite runs without them.
@pytest.fixture(scope="package")
def coords(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """Two real coordinators: ``adhoc`` (406 for X-Forwarded-*) and ``etl`` (processes them)."""
    cluster = Cluster(tmp_path_factory.mktemp("trino"))
    attach = os.environ.get("TRINO_GATEWAY_REAL_ATTACH")
    if attach:
        # Development: reuse coordinators already running (`python3 -m tests.real.launcher start
        # --count 2 --process-forwarded`), e.g. adhoc=http://127.0.0.1:PORT2,etl=http://127.0.0.1:PORT1.
        # Tests that stop or kill a coordinator skip.
        for item in attach.split(","):
            name, _, url = item.partition("=")
            c = cluster.add(name.strip(), port=int(url.rsplit(":", 1)[1]))
            c.attached = True
        yield cluster
        return
    cluster.add("adhoc")
    cluster.add("etl", process_forwarded=True)
    try:
        cluster.start(say=say)
    except LauncherError as exc:
        _unavailable(str(exc))
    yield cluster
    cluster.stop()


def real_backends(coords: Cluster) -> list[dict[str, Any]]:
    return [{"name": f"trino-{n}", "proxyTo": c.url, "routingGroup": n}
            for n, c in coords.coordinators.items()]


def real_gateway_config(tmp: Path, coords: Cluster, workers: int = 1, **overrides: Any) -> dict[str, Any]:
    rules = tmp / "rules"
    rules.mkdir(exist_ok=True)
    (rules / "real.yaml").write_text(RULES)
    cfg = gateway_config(tmp, None, rules=[str(rules)], **overrides)
    cfg["server"]["workers"] = workers
    # Real coordinators under a loaded 2-core machine answer /v1/info slower than the simulator.
    cfg["monitor"]["timeout"] = "5s"
    cfg["backends"] = real_backends(coords)
    return cfg


@pytest.fixture(scope="package")
def real_gateways(coords: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, GatewayProcess]]:
    """Gateways with one and with two workers in front of both coordinators."""
    gws: dict[str, GatewayProcess] = {}
    for workers in (1, 2):
        tmp = tmp_path_factory.mktemp(f"gw{workers}")
        gws[f"w{workers}"] = start_gateway(tmp, real_gateway_config(tmp, coords, workers))
    yield gws
    for gw in gws.values():
        gw.stop()


@pytest.fixture(params=["w1", "w2"])
def gw(request: pytest.FixtureRequest, real_gateways: dict[str, GatewayProcess]) -> GatewayProcess:
    """Each test runs through the one-worker and the two-worker gateway."""
    return real_gateways[request.param]


@pytest.fixture
def real_gateway_factory(coords: Cluster, tmp_path: Path,
                         gateway_factory: Callable[..., GatewayProcess]) -> Callable[..., GatewayProcess]:
    """Own gateways for tests that change settings (monitors, faults); stopped by gateway_factory."""
    def make(workers: int = 1, **overrides: Any) -> GatewayProcess:
        return gateway_factory(real_gateway_config(tmp_path, coords, workers, **overrides))
    return make


def _fetched(artifact: Any) -> Path:
    try:
        return fetch(artifact, say=say)
    except LauncherError as exc:
        _unavailable(str(exc))
        raise


@pytest.fixture(scope="session")
def jdbc_jar() -> Path:
    return _fetched(JDBC)


@pytest.fixture(scope="session")
def cli_jar() -> Path:
    return _fetched(CLI)


@pytest.fixture(scope="session")
def client_java() -> list[str]:
    """The command that starts the JDBC and CLI checks' JVM: Java 17 or later (the 476 driver
    and CLI need 11+ and 17+; tools such as DBeaver bundle 17 or 21). Short-lived clients on a
    busy 2-core machine: the C1 compiler and the serial collector halve their start-up CPU."""
    try:
        home = find_java(17)
    except LauncherError as exc:
        _unavailable(str(exc))
        raise
    cmd = [str(home / "bin" / "java"), "-XX:TieredStopAtLevel=1", "-XX:+UseSerialGC"]
    if (java_major(home) or 0) >= 22:
        # The CLI's terminal library loads native code; newer JDKs warn on stderr unless told.
        cmd.append("--enable-native-access=ALL-UNNAMED")
    return cmd


def coordinator_of(coords: Cluster, backend: str) -> Coordinator:
    return coords.coordinators[backend.removeprefix("trino-")]


def history_row(gw: GatewayProcess, query_id: str, timeout: float = 10) -> dict[str, Any]:
    """The gateway's history row of one query (waits for the batched write)."""
    def find() -> dict[str, Any] | None:
        rows = gw.api("GET", "/api/queries?limit=500").json()
        rows = rows.get("queries", rows) if isinstance(rows, dict) else rows
        return next((r for r in rows if r.get("queryId") == query_id), None)
    return wait_for(find, timeout=timeout, message=f"history row of {query_id}")
