"""The two migration commands as a user runs them: `rules convert` and `import-backends`."""
from __future__ import annotations

import subprocess
import sys

import yaml

from tests.conftest import gateway_config
from tests.javamigration.rulesets import DOCS_PRIORITIES

MVEL = DOCS_PRIORITIES  # the priorities example of trino-gateway's routing-rules docs


def run(*args: str, **kw):
    return subprocess.run([sys.executable, "-m", "gateway.cli", *args], capture_output=True, text=True,
                          timeout=60, **kw)


def test_rules_convert_then_check_then_explain(tmp_path):
    src = tmp_path / "routing_rules.yml"
    src.write_text(MVEL)
    out = tmp_path / "rules" / "converted.yaml"
    out.parent.mkdir()
    r = run("rules", "convert", str(src), "-o", str(out))
    assert r.returncode == 0, r.stderr
    assert run("rules", "check", str(out)).returncode == 0
    r = run("rules", "explain", "--rules", str(out), "--source", "airflow", "--client-tags", "label=special")
    assert r.returncode == 0 and "etl-special" in r.stdout
    r = run("rules", "explain", "--rules", str(out), "--source", "airflow")
    assert "etl" in r.stdout and "etl-special" not in r.stdout.split("\n")[0]


def test_import_backends_from_a_running_gateway_is_idempotent(fresh_clusters, gateway_factory, tmp_path):
    old = gateway_factory(gateway_config(tmp_path, fresh_clusters), name="old")  # speaks trino-gateway's API
    cfg = tmp_path / "new.yaml"
    cfg.write_text(yaml.safe_dump({"store": {"url": f"sqlite:///{tmp_path / 'new.db'}"}}))
    r = run("import-backends", "--from-url", old.url, "--config", str(cfg))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "adhoc-1" in r.stdout
    r2 = run("import-backends", "--from-url", old.url, "--config", str(cfg))
    assert r2.returncode == 0 and "unchanged" in r2.stdout.lower()
    from gateway.store import open_store
    s = open_store(f"sqlite:///{tmp_path / 'new.db'}")
    try:
        assert {b.name: b.routingGroup for b in s.list_backends()} == {"adhoc-1": "adhoc", "adhoc-2": "adhoc",
                                                                         "etl-1": "etl"}
    finally:
        s.close()
