"""The real Trino CLI (executable jar) through the gateway and directly.

Each check runs the same command line once with ``--server`` set to the gateway (one worker and
two) and once to the coordinator the gateway chose, and compares output and exit code. Every
run uses a user of its own, so the gateway's history (``/api/queries?user=``) names exactly the
queries of that run.
"""
from __future__ import annotations

import os
import re
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import GatewayProcess, wait_for
from tests.real.launcher import Cluster, Coordinator
from tests.real.test_real_python_client import coordinator_of, coordinator_query

pytestmark = pytest.mark.real

QUERY_ID = re.compile(r"\d{8}_\d{6}_\d{5}_[a-z0-9]{5}")


@dataclass
class CliRun:
    returncode: int
    stdout: str
    stderr: str

    def comparable(self) -> tuple[int, str, str]:
        """Exit code, output and error text, with query ids (which differ per run) masked and
        the JVM's terminal warnings (which have nothing to do with the server) left out."""
        err = "\n".join(ln for ln in self.stderr.splitlines()
                        if "org.jline" not in ln and "Unable to create a system terminal" not in ln)
        return self.returncode, QUERY_ID.sub("<qid>", self.stdout), QUERY_ID.sub("<qid>", err)


class Cli:
    def __init__(self, java: list[str], jar: Path, home: Path) -> None:
        self.java = java
        self.jar = str(jar)
        # A HOME of its own: no ~/.trino_config or history file of the machine's user applies.
        self.env = {**os.environ, "HOME": str(home)}
        self.env.pop("TRINO_CONFIG", None)

    def run(self, server: str, user: str, *args: str) -> CliRun:
        proc = subprocess.run([*self.java, "-jar", self.jar, f"--server={server}", f"--user={user}", *args],
                              capture_output=True, text=True, timeout=180, env=self.env, stdin=subprocess.DEVNULL)
        return CliRun(proc.returncode, proc.stdout, proc.stderr)


@pytest.fixture(scope="session")
def cli(client_java: list[str], cli_jar: Path, tmp_path_factory: pytest.TempPathFactory) -> Cli:
    return Cli(client_java, cli_jar, tmp_path_factory.mktemp("cli-home"))


def history_of(gw: GatewayProcess, user: str, count: int) -> list[dict[str, Any]]:
    """The gateway's history rows of one user's queries, oldest first, once all ``count`` are in."""
    def rows() -> list[dict[str, Any]] | None:
        found = gw.api("GET", f"/api/queries?user={user}&limit=100").json()
        found = found.get("queries", found) if isinstance(found, dict) else found
        return found if len(found) >= count else None
    found = wait_for(rows, timeout=15, message=f"{count} history rows of {user}")
    assert len(found) == count, [r["sql"] for r in found]
    return sorted(found, key=lambda r: (r["submittedAt"], r["queryId"]))


def through_and_direct(cli: Cli, gw: GatewayProcess, coords: Cluster, count: int,
                       *args: str) -> tuple[CliRun, CliRun, list[dict[str, Any]], Coordinator]:
    """Run the CLI through the gateway, find where its ``count`` queries went (all to one
    coordinator), run it again straight against that coordinator."""
    user = f"cli-{uuid.uuid4().hex[:8]}"
    through = cli.run(gw.url, user, *args)
    rows = history_of(gw, user, count)
    owners = {r["backend"] for r in rows}
    assert len(owners) == 1, f"one CLI run spread over {owners}"
    target = coordinator_of(coords, owners.pop())
    key = (target.name, args)
    if key not in _DIRECT:      # the reference does not depend on the gateway: once per session
        _DIRECT[key] = cli.run(target.url, f"cli-{uuid.uuid4().hex[:8]}", *args)
    return through, _DIRECT[key], rows, target


_DIRECT: dict[tuple[str, tuple[str, ...]], CliRun] = {}


@pytest.mark.parametrize("fmt", ["CSV", "TSV_HEADER", "JSON", "ALIGNED"])
def test_execute_in_every_output_format_is_identical_to_direct(
        gw: GatewayProcess, coords: Cluster, cli: Cli, fmt: str) -> None:
    sql = ("SELECT n.nationkey, n.name, r.name AS region, n.comment FROM tpch.tiny.nation n "
           "JOIN tpch.tiny.region r ON n.regionkey = r.regionkey ORDER BY n.nationkey")
    through, plain, rows, target = through_and_direct(cli, gw, coords, 1, f"--execute={sql}",
                                                      f"--output-format={fmt}")
    assert through.returncode == 0, through.stderr
    assert through.comparable() == plain.comparable()
    assert target.name == "adhoc" and rows[0]["sql"] == sql
    if fmt == "CSV":
        lines = through.stdout.splitlines()
        assert len(lines) == 25 and lines[7].startswith('"7","GERMANY","EUROPE",')


def test_file_with_several_statements_keeps_the_session_between_them(
        gw: GatewayProcess, coords: Cluster, cli: Cli, tmp_path: Path) -> None:
    script = tmp_path / "several.sql"
    script.write_text(
        "USE tpch.tiny;\n"
        "SELECT count(*) FROM nation;\n"                           # the USE holds
        "SET SESSION query_max_run_time = '13m';\n"
        "SHOW SESSION LIKE 'query_max_run_time';\n"                # the SET holds
        "PREPARE p FROM SELECT name FROM region WHERE regionkey = ?;\n"
        "EXECUTE p USING 3;\n"                                     # the prepared statement holds
        "SELECT current_catalog, current_schema;\n")
    through, plain, rows, _ = through_and_direct(cli, gw, coords, 7, "-f", str(script),
                                                 "--output-format=CSV")
    assert through.returncode == 0, through.stderr
    assert through.comparable() == plain.comparable()
    out = through.stdout.splitlines()
    assert out[0] == '"25"' and out[1].startswith('"query_max_run_time","13m"')
    assert out[2:] == ['"EUROPE"', '"tpch","tiny"']


def test_source_client_tags_and_session_reach_the_etl_coordinator(
        gw: GatewayProcess, coords: Cluster, cli: Cli) -> None:
    source = f"airflow-cli-{uuid.uuid4().hex[:6]}"
    through, plain, rows, target = through_and_direct(
        cli, gw, coords, 1, f"--source={source}", "--client-tags=nightly,team-data",
        "--session=query_max_run_time=21m", "--session=join_distribution_type=BROADCAST",
        "--execute=SELECT count(*) FROM tpch.tiny.orders", "--output-format=CSV")
    assert through.returncode == 0, through.stderr
    assert through.comparable() == plain.comparable() == (0, '"15000"\n', "")
    assert target.name == "etl"                               # rule etl-sources
    row = rows[0]
    assert (row["source"], sorted(row["clientTags"]), row["rule"]) == (
        source, ["nightly", "team-data"], "etl-sources")
    session = coordinator_query(target, row["queryId"])["session"]
    assert (session["source"], sorted(session["clientTags"])) == (source, ["nightly", "team-data"])
    assert session["systemProperties"] == {"query_max_run_time": "21m",
                                           "join_distribution_type": "BROADCAST"}


@pytest.mark.parametrize("sql", ["SELEC 1", "SELECT * FROM tpch.tiny.no_such_table"])
def test_errors_are_identical_to_direct(gw: GatewayProcess, coords: Cluster, cli: Cli, sql: str) -> None:
    through, plain, rows, _ = through_and_direct(cli, gw, coords, 1, f"--execute={sql}")
    assert through.returncode != 0
    assert through.comparable() == plain.comparable()
    assert rows[0]["queryId"] in through.stderr               # the CLI names the failed query
