"""The real Trino JDBC driver (what DBeaver uses) through the gateway and directly.

tests/real/java/JdbcCheck.java does what DBeaver does on connect (DatabaseMetaData), runs a
PreparedStatement with parameters and cancels a running statement, and prints JSON. Each check
runs it through the gateway (one worker and two) and straight against the coordinator the
gateway chose, and compares the two.
"""
from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.conftest import GatewayProcess, wait_for
from tests.real.launcher import Cluster, Coordinator
from tests.real.test_real_python_client import coordinator_query, error_code, routed_to

pytestmark = pytest.mark.real

SOURCE = Path(__file__).parent / "java" / "JdbcCheck.java"


class Jdbc:
    """Runs the compiled JdbcCheck against a ``jdbc:trino://`` URL."""

    def __init__(self, java: list[str], jar: Path, classes: Path) -> None:
        self.java = java
        self.classpath = f"{jar}:{classes}"

    def command(self, mode: str, base_url: str, user: str, *props: str) -> list[str]:
        # DBeaver's URL: jdbc:trino://host:port, the user as a property, no SSL.
        url = "jdbc:trino://" + base_url.removeprefix("http://")
        return [*self.java, "-cp", self.classpath, "JdbcCheck", mode, url, user, *props]

    def run(self, mode: str, base_url: str, user: str = "dbeaver-user", *props: str) -> dict[str, Any]:
        proc = subprocess.run(self.command(mode, base_url, user, *props), capture_output=True,
                              text=True, timeout=180)
        assert proc.returncode == 0, f"JdbcCheck {mode} on {base_url} failed:\n{proc.stderr[-3000:]}"
        return json.loads(proc.stdout)


@pytest.fixture(scope="session")
def jdbc(client_java: list[str], jdbc_jar: Path, tmp_path_factory: pytest.TempPathFactory) -> Jdbc:
    """JdbcCheck compiled once per session (a source launch compiles on every run)."""
    classes = tmp_path_factory.mktemp("jdbc-classes")
    proc = subprocess.run([str(Path(client_java[0]).with_name("javac")), "-cp", str(jdbc_jar), "-d", str(classes),
                           str(SOURCE)], capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, f"javac JdbcCheck.java failed:\n{proc.stderr[-3000:]}"
    return Jdbc(client_java, jdbc_jar, classes)


def owner_of_all(gw: GatewayProcess, coords: Cluster, query_ids: list[str]) -> Coordinator:
    """The one coordinator that ran all these queries (the gateway's history says)."""
    owners = {routed_to(gw, coords, q).name for q in query_ids}
    assert len(owners) == 1, f"queries of one client spread over {owners}"
    return coords.coordinators[owners.pop()]


def test_database_metadata_as_dbeaver_reads_it_is_identical_to_direct(
        gw: GatewayProcess, coords: Cluster, jdbc: Jdbc) -> None:
    through = jdbc.run("metadata", gw.url)
    assert through["url"] == "jdbc:trino://" + gw.url.removeprefix("http://")
    assert len(through["queryIds"]) == 8                  # every metadata call is a real query
    target = owner_of_all(gw, coords, through["queryIds"])
    assert target.name == "adhoc"                        # no rule matches: the default group
    plain = jdbc.run("metadata", target.url)
    for key in ("url", "queryIds"):
        through.pop(key), plain.pop(key)
    assert through == plain
    assert ["tpch"] in through["catalogs"] and ["tiny", "tpch"] in through["schemas"]
    assert [c[3] for c in through["columns"]] == ["nationkey", "name", "regionkey", "comment"]


@pytest.mark.parametrize("props", [(), ("explicitPrepare=false",)], ids=["prepare", "execute-immediate"])
def test_prepared_statement_with_parameters_is_identical_to_direct(
        gw: GatewayProcess, coords: Cluster, jdbc: Jdbc, props: tuple[str, ...]) -> None:
    through = jdbc.run("prepared", gw.url, "dbeaver-user", *props)
    target = owner_of_all(gw, coords, through["queryIds"])
    plain = jdbc.run("prepared", target.url, "dbeaver-user", *props)
    through.pop("queryIds"), plain.pop("queryIds")
    assert through == plain
    assert through["first"][0] == ["ALGERIA", "AFRICA", "it's quoted", "12.30", "2024-02-29"]
    assert len(through["second"]) == 5 and through["count"] == [["255"]]


def cancel_through(jdbc: Jdbc, coords: Cluster, *, gw: GatewayProcess | None = None,
                   direct: Coordinator | None = None) -> tuple[dict[str, Any], dict[str, Any], Coordinator]:
    """Start the long query (through ``gw`` or straight to ``direct``), wait until its coordinator
    runs it, Statement.cancel() from another thread: what the client saw, what the coordinator
    reports, and which coordinator ran it."""
    base_url = gw.url if gw is not None else direct.url  # type: ignore[union-attr]
    proc = subprocess.Popen(jdbc.command("cancel", base_url, "dbeaver-user"), stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    query_id, target = None, direct
    try:
        assert proc.stdout is not None and proc.stdin is not None
        line = proc.stdout.readline()
        assert line, f"JdbcCheck cancel printed no query id:\n{proc.stderr.read()[-3000:] if proc.stderr else ''}"
        query_id = json.loads(line)["queryId"]
        if gw is not None:
            target = routed_to(gw, coords, query_id)
        assert target is not None
        wait_for(lambda: coordinator_query(target, query_id)["state"] == "RUNNING", timeout=60,
                 message="the query to run")
        proc.stdin.write("cancel\n")
        proc.stdin.flush()
        out, err = proc.communicate(timeout=90)
        assert proc.returncode == 0, err[-3000:]
        final = wait_for(lambda: (q := coordinator_query(target, query_id))["state"] == "FAILED" and q,
                         timeout=30, message="the coordinator to fail the query")
        return json.loads(out), final, target
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if query_id and target is not None:
            # Whatever happened, the sf100 scan must not keep the shared cores busy.
            requests.delete(f"{target.url}/v1/query/{query_id}", headers={"X-Trino-User": "dbeaver-user"},
                            timeout=10)


def test_statement_cancel_from_another_thread_is_user_canceled(
        gw: GatewayProcess, coords: Cluster, jdbc: Jdbc) -> None:
    seen, final, target = cancel_through(jdbc, coords, gw=gw)
    assert error_code(final) == "USER_CANCELED"
    plain_seen, plain_final, _ = cancel_through(jdbc, coords, direct=target)
    assert error_code(plain_final) == "USER_CANCELED"
    # The reading thread fails either way; which of the driver's two messages it gets depends
    # only on where it was when cancel() closed the result set (seen directly as well).
    outcomes = {"Error fetching results", "ResultSet is closed"}
    assert seen.get("error") in outcomes and plain_seen.get("error") in outcomes, (seen, plain_seen)
