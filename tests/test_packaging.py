"""Reproducible installs and a quiet test run.

constraints.txt pins every dependency of pyproject.toml (the package's and the test extras')
to one version inside its range; the test run prints no warnings of its own making.
"""
from __future__ import annotations

import re
import subprocess
import sys
import tomllib

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from tests.conftest import REPO


def _pins() -> dict[str, Version]:
    pins: dict[str, Version] = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, sep, version = line.partition("==")
            assert sep, f"constraints.txt: {line!r} is not name==version"
            pins[canonicalize_name(name)] = Version(version)
    return pins


def test_constraints_pin_every_dependency_within_its_range():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    wanted = [Requirement(r) for r in project["dependencies"]]
    wanted += [Requirement(r) for extra in project["optional-dependencies"].values() for r in extra]
    pins = _pins()
    for req in wanted:
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} is not in constraints.txt (refresh it: see its header)"
        assert req.specifier.contains(pins[name], prereleases=True), (
            f"constraints.txt pins {req.name}=={pins[name]}, outside pyproject's {req}")
    assert "sqlglotc" in pins       # sqlglot[c]'s compiled parser is pinned with sqlglot
    assert "trino-gateway" not in pins


def test_the_readme_installs_with_the_constraints():
    readme = (REPO / "README.md").read_text()
    assert "pip install -c constraints.txt -e '.[test]' && python3 -m pytest" in readme


def test_a_test_run_prints_no_warnings():
    # Plugins that are installed but unused (pytest-tornado, no longer a dependency) must not
    # add deprecation warnings to every run.
    res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                          "tests/test_balancer.py"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout[-3000:]
    assert "warning" not in res.stdout.lower(), res.stdout[-3000:]


def _run_pg_test(url: str, require: bool) -> subprocess.CompletedProcess[str]:
    import os
    env = {**os.environ, "TRINO_GATEWAY_TEST_PG_URL": url, "TRINO_GATEWAY_REQUIRE_PG": "1" if require else "0"}
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider",
                           "tests/javamigration/test_import_backends.py::test_missing_table_is_a_clear_error"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.postgres
def test_postgresql_tests_need_only_the_server_not_a_database_named_test():
    # The URL names a database that does not exist: the tests create their own databases
    # through the server's `postgres` database, so they run (CI makes them mandatory).
    res = _run_pg_test("postgresql://postgres@127.0.0.1:5432/tgw_no_such_database", require=True)
    assert res.returncode == 0 and "1 passed" in res.stdout, res.stdout[-3000:]


def test_a_postgresql_skip_says_whether_the_server_is_down():
    from tests.ops.support import free_port
    res = _run_pg_test(f"postgresql://postgres@127.0.0.1:{free_port()}/test", require=False)
    assert "1 skipped" in res.stdout, res.stdout[-3000:]
    assert re.search(r"SKIPPED .*PostgreSQL not reachable at postgresql://postgres@127\.0\.0\.1:\d+/postgres: "
                     r".*Connection refused", res.stdout), res.stdout[-3000:]


def test_installed_resources_come_from_the_package_not_a_neighbour_in_site_packages(tmp_path, monkeypatch):
    # Installed, gateway/'s parent is site-packages, where rules/ may be another distribution
    # (a package named "rules"); only a checkout (it has pyproject.toml) keeps them at its root.
    from gateway import resources
    site = tmp_path / "site-packages"
    (site / "gateway" / "rules").mkdir(parents=True)
    (site / "rules").mkdir()
    monkeypatch.setattr(resources, "_PACKAGE", site / "gateway")
    assert resources.resource_dir("rules") == site / "gateway" / "rules"
    (site / "pyproject.toml").write_text("")
    assert resources.resource_dir("rules") == site / "rules"


def test_rule_engine_stays_below_the_major_that_changes_rule_semantics():
    # rule-engine 5 warns (MappingAttributeLookupDeprecation) that 6.0 removes `headers.name`
    # lookups: a library user's install must not pick 6.x up before the rules are checked with it.
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    (req,) = [Requirement(r) for r in project["dependencies"] if r.startswith("rule-engine")]
    assert not req.specifier.contains("6.0.0") and req.specifier.contains(str(_pins()["rule-engine"]))
