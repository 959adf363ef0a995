"""Docker deployment, checked statically (Docker cannot run here), and the package it installs.

The compose file parses and every file it mounts or builds from exists; the image's entry
command is the `serve` command the end-to-end tests run; docker/gateway.yaml loads with the
environment compose gives it and points at the compose services; the example rules route to
groups that have backends; every published port is documented; the Prometheus alerts only use
metrics that exist; a built wheel carries the store migrations, the templates, static files and the example rules;
every image and package is pinned; the health check follows the configuration.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

from gateway.cli import _cmd_serve, build_parser
from gateway.config import load_config
from gateway.metrics import METRIC_NAMES
from gateway.routing.rules import load_ruleset
from tests.conftest import REPO

DOCKER = REPO / "docker"
COMPOSE = yaml.safe_load((DOCKER / "compose.yaml").read_text())
SERVICES = COMPOSE["services"]
_INTERP = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?-([^}]*))?\}")


def _interpolate(value: str) -> str:
    """Compose's ${VAR:-default} with nothing set: the default."""
    return _INTERP.sub(lambda m: m.group(2) or "", value)


def _dockerfile() -> list[tuple[str, str]]:
    """(instruction, arguments) of docker/Dockerfile, continuation lines joined."""
    text = re.sub(r"\\\n\s*", " ", (DOCKER / "Dockerfile").read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_compose_has_postgres_two_trino_coordinators_and_the_gateway():
    assert {"postgres", "trino-adhoc", "trino-etl", "gateway"} <= set(SERVICES)
    assert SERVICES["postgres"]["image"].startswith("postgres:")
    for name in ("trino-adhoc", "trino-etl"):
        assert _interpolate(SERVICES[name]["image"]).startswith("trinodb/trino:"), name
    deps = SERVICES["gateway"]["depends_on"]
    assert deps["postgres"]["condition"] == "service_healthy"


def test_every_mounted_or_built_file_exists():
    checked = 0
    for name, svc in SERVICES.items():
        for vol in svc.get("volumes", []):
            source = vol.split(":", 1)[0]
            if source.startswith((".", "/")):
                assert (DOCKER / source).exists(), f"{name} mounts {source}, which does not exist"
                checked += 1
        build = svc.get("build")
        if build:
            context = DOCKER / build["context"]
            assert context.is_dir()
            assert (context / build.get("dockerfile", "Dockerfile")).is_file()
            for instr, args in _dockerfile():
                if instr == "COPY" and "--from=" not in args:
                    *sources, _dest = args.split()
                    for src in sources:
                        assert (context / src).exists(), f"the Dockerfile copies {src}, which does not exist"
                        checked += 1
    assert checked >= 8


def test_trino_coordinators_process_forwarded_headers():
    for name in ("trino-adhoc", "trino-etl"):
        mounts = dict(v.split(":")[:2] for v in SERVICES[name]["volumes"])
        config = next(src for src, dst in mounts.items() if dst == "/etc/trino/config.properties")
        props = dict(line.split("=", 1) for line in (DOCKER / config).read_text().splitlines()
                     if line.strip() and not line.startswith("#"))
        assert props["coordinator"] == "true"
        assert props["http-server.process-forwarded"] == "true"


def test_image_is_small_non_root_and_runs_the_serve_command_the_tests_run():
    instrs = _dockerfile()
    froms = [a for i, a in instrs if i == "FROM"]
    assert froms and all(re.fullmatch(r"python:3\.11\.\d+-slim-bookworm", a.split()[0]) for a in froms), froms
    users = [a for i, a in instrs if i == "USER"]
    assert users and users[-1] not in ("root", "0"), "the image must not run as root"
    entry = [a for i, a in instrs if i == "ENTRYPOINT"]
    assert len(entry) == 1 and not [a for i, a in instrs if i == "CMD"]
    argv = json.loads(entry[0])
    assert argv[0] == "trino-gateway"
    # the console script is the CLI the end-to-end tests start (`python -m gateway.cli serve`)
    import tomllib
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["trino-gateway"] == "gateway.cli:main"
    args = build_parser().parse_args(argv[1:])
    assert args.func is _cmd_serve
    # ... with the configuration file compose mounts
    mounts = dict(v.split(":")[:2] for v in SERVICES["gateway"]["volumes"])
    assert args.config in mounts.values()
    assert (DOCKER / next(s for s, d in mounts.items() if d == args.config)).resolve() == DOCKER / "gateway.yaml"


def test_every_image_and_package_is_pinned():
    # Nothing floats: no `latest` or bare major tags in compose, a patch-level base image, and
    # the image installs exactly constraints.txt (tests/test_packaging.py checks that file).
    for name, svc in SERVICES.items():
        if "image" in svc and "build" not in svc:
            image = _interpolate(svc["image"])
            repo, _, tag = image.rpartition(":")
            assert repo and tag and tag != "latest", f"{name}: {image} is not pinned"
            assert re.search(r"\d+\.\d+|^\d{3,}$", tag), f"{name}: {image} names no exact version"
    runs = " ".join(a for i, a in _dockerfile() if i == "RUN")
    assert "pip wheel --no-cache-dir --constraint constraints.txt" in runs
    assert "pip install --no-cache-dir --no-index --find-links /wheels trino-gateway" in runs


def test_the_health_check_reads_the_configuration_the_image_serves():
    (check,) = [a for i, a in _dockerfile() if i == "HEALTHCHECK"]
    argv = json.loads(check.split("CMD", 1)[1])
    entry = json.loads(next(a for i, a in _dockerfile() if i == "ENTRYPOINT"))
    assert argv[:2] == ["trino-gateway", "healthcheck"]
    args = build_parser().parse_args(argv[1:])
    assert args.config == build_parser().parse_args(entry[1:]).config
    # ... and so follows the configured port and scheme (tests/ops/test_ops_first_hour.py runs it)
    assert "8080" not in check


def test_gateway_yaml_loads_with_the_compose_environment(monkeypatch):
    for key, value in SERVICES["gateway"]["environment"].items():
        monkeypatch.setenv(key, _interpolate(str(value)))
    cfg = load_config(str(DOCKER / "gateway.yaml"))
    assert cfg.store.url.startswith("postgresql://gateway:") and "@postgres:5432/" in cfg.store.url
    assert cfg.routing.cookieSecret and cfg.auth.sessionSecret
    published = {p.split(":")[-1] for p in SERVICES["gateway"]["ports"]}
    assert str(cfg.server.port) in published
    # backends are the compose coordinators
    for b in cfg.backends:
        host_port = b.proxyTo.split("://", 1)[1]
        host, port = host_port.split(":")
        assert host in SERVICES and port == "8080", b.proxyTo
    # the rules folder is where compose mounts the example rules, and they route to these groups
    mounts = {dst: src for src, dst in (v.split(":")[:2] for v in SERVICES["gateway"]["volumes"])}
    rules_dir = cfg.routing.rules[0].rstrip("/")
    assert (DOCKER / mounts[rules_dir]).resolve() == REPO / "rules"
    groups = {b.routingGroup for b in cfg.backends}
    ruleset = load_ruleset([str(REPO / "rules")])
    targets = {r.routing_group for r in ruleset.rules if r.routing_group}
    assert targets and targets <= groups, f"the example rules route to {targets}, backends exist for {groups}"
    assert cfg.routing.defaultGroup in groups


def test_published_ports_are_documented():
    doc = (REPO / "docs" / "deployment.md").read_text()
    for name, svc in SERVICES.items():
        for p in svc.get("ports", []):
            host = str(p).split(":")[0]
            assert re.search(rf"\b{host}\b", doc), f"port {host} of {name} is not in docs/deployment.md"


def _metric_names_in(text: str) -> set[str]:
    return {re.sub(r"_(bucket|sum|count)$", "", n) for n in re.findall(r"\btrino_gateway_[a-z_]+", text)}


def test_prometheus_config_and_alerts_use_existing_metrics():
    prom = yaml.safe_load((DOCKER / "prometheus" / "prometheus.yml").read_text())
    targets = prom["scrape_configs"][0]["static_configs"][0]["targets"]
    assert targets == ["gateway:8080"]
    alerts = yaml.safe_load((DOCKER / "prometheus" / "alerts.yml").read_text())
    exprs = [r["expr"] for g in alerts["groups"] for r in g["rules"]]
    used = set().union(*(_metric_names_in(e) for e in exprs))
    assert used and used <= set(METRIC_NAMES), used - set(METRIC_NAMES)
    for must in ("trino_gateway_backend_healthy", "trino_gateway_rules_error",
                 "trino_gateway_history_rows_dropped_total"):
        assert must in used
    # the docs show the same alerts and only existing metrics
    doc = (REPO / "docs" / "deployment.md").read_text()
    assert _metric_names_in(doc) <= set(METRIC_NAMES), _metric_names_in(doc) - set(METRIC_NAMES)


def test_wheel_carries_migrations_templates_static_files_and_example_rules(built_wheel):
    whl = built_wheel
    names = set(zipfile.ZipFile(whl).namelist())
    for sql in (REPO / "sql").rglob("*.sql"):
        assert f"gateway/sql/{sql.relative_to(REPO / 'sql').as_posix()}" in names, sql
    for tpl in (REPO / "templates").rglob("*.html"):
        assert f"gateway/templates/{tpl.relative_to(REPO / 'templates').as_posix()}" in names, tpl
    for static in (REPO / "gateway" / "admin" / "static").glob("*"):
        assert f"gateway/admin/static/{static.name}" in names, static
    for rule in (REPO / "rules").glob("*.yaml"):     # the demo's example rules
        assert f"gateway/rules/{rule.name}" in names, rule
    assert not [n for n in names if n.startswith(("rules/", "tests/", "docker/", "benchmarks/"))]
    assert "gateway/cli.py" in names and "gateway/store/base.py" in names
    # every module of the checkout (a package the build config misses is not left out), and no
    # other (a stale build/ from before a module moved would ship the old module too)
    modules = {p.relative_to(REPO).as_posix() for p in (REPO / "gateway").rglob("*.py")}
    assert modules - names == set()
    assert {n for n in names if n.startswith("gateway/") and n.endswith(".py")} - modules == set()
