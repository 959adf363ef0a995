"""The Java CLI follows the gateway's routing-token URIs as opaque strings (issue 14).

Needs Java and the trino-cli executable jar, fetched through Maven into the local repository
on first use (as the real-Trino suite fetches it, tests/real/launcher.py). It skipped on a new
machine while this test ran before the real suite had fetched the jar; now it fetches it
itself. Skipped without Java or Maven (or when the fetch fails) unless
``TRINO_GATEWAY_REQUIRE_CLI=1`` or ``TRINO_GATEWAY_REQUIRE_REAL=1`` (CI).
"""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import gateway_config, wait_for
from tests.real import launcher

JAR = launcher.CLI.path


def _java() -> str | None:
    return shutil.which("java")


def _require() -> None:
    why = "no java on PATH"
    if _java():
        try:
            launcher.fetch(launcher.CLI, say=lambda _: None)
            return
        except launcher.LauncherError as exc:
            why = str(exc)
    if "1" in (os.environ.get("TRINO_GATEWAY_REQUIRE_CLI"), os.environ.get("TRINO_GATEWAY_REQUIRE_REAL")):
        pytest.fail(f"the Trino CLI is required here: {why}")
    pytest.skip(f"the Trino CLI is not available: {why}")


def cli(url: str, sql: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([_java() or "java", "-jar", str(JAR), "--server", url, "--user", "alice",
                           "--output-format", "CSV_UNQUOTED", *extra, "--execute", sql],
                          capture_output=True, text=True, timeout=120)


def test_the_java_cli_follows_token_uris_including_spooled_segments_across_two_workers(
        fresh_clusters, gateway_factory, tmp_path):
    _require()
    for c in fresh_clusters.values():
        c.control(spooling=True, page_rows=50, spool_inline_bytes=0)
    try:
        gw = gateway_factory(gateway_config(tmp_path, fresh_clusters, server={"workers": 2}))
        wait_for(lambda: gw.log().count("listening on") >= 2, message="two workers")
        plain = cli(gw.url, "SELECT n FROM numbers WHERE n <= 120 ORDER BY n")
        assert plain.returncode == 0, plain.stderr
        assert plain.stdout.split() == [str(n) for n in range(1, 121)]
        spooled = cli(gw.url, "SELECT n FROM numbers WHERE n <= 400 ORDER BY n", "--encoding", "json")
        assert spooled.returncode == 0, spooled.stderr
        assert spooled.stdout.split() == [str(n) for n in range(1, 401)]
        # the segments were spooled, and every follow-up came back through a routing token
        metrics = gw.api("GET", "/metrics").text
        assert 'trino_gateway_owner_lookups_total{source="token"}' in metrics
        assert 'source="store"' not in metrics and 'source="none"' not in metrics
        ran = [q for c in fresh_clusters.values() for q in c.queries()
               if q["sql"].startswith("SELECT n FROM numbers WHERE n <= 400")]
        assert len(ran) == 1
        asked = ",".join(ran[0]["headers"].get("X-Trino-Query-Data-Encoding", []))
        assert "json" in asked, ran[0]["headers"]      # the CLI asked for spooled segments
    finally:
        for c in fresh_clusters.values():
            c.control(spooling=False)
