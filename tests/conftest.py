"""Shared fixtures: simulated clusters and gateways as real processes, PostgreSQL access.

End-to-end tests talk to a real gateway process (``trino-gateway serve``) in front of real
simulated-cluster processes, with the official ``trino`` client, exactly as users do.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import requests
import yaml

REPO = Path(__file__).resolve().parents[1]
# The PostgreSQL server the tests use: they create (and drop) their own databases on it through
# its `postgres` maintenance database, so the database named here need not exist.
PG_URL = os.environ.get("TRINO_GATEWAY_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--runslow", action="store_true", default=False,
                     help="also run the larger (slow) scenarios")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--runslow"):
        return
    skip = pytest.mark.skip(reason="larger scenario: run with --runslow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


def wait_for(condition: Callable[[], Any], timeout: float = 10.0, interval: float = 0.02,
             message: str = "condition") -> Any:
    """Poll until ``condition()`` is truthy; fail with ``message`` at the deadline."""
    deadline = time.monotonic() + timeout
    last_exc: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            value = condition()
            if value:
                return value
        except Exception as exc:  # the thing may not be up yet
            last_exc = exc
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {message}"
                         + (f" (last error: {last_exc})" if last_exc else ""))


# ---------------------------------------------------------------------------------------------
# Simulated clusters

@dataclass
class ClusterProcess:
    name: str
    proc: subprocess.Popen[bytes]
    url: str

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def control(self, **settings: Any) -> dict[str, Any]:
        r = requests.post(f"{self.url}/_sim/control", json=settings, timeout=5)
        r.raise_for_status()
        return r.json()

    def queries(self) -> list[dict[str, Any]]:
        r = requests.get(f"{self.url}/_sim/queries", timeout=5)
        r.raise_for_status()
        return r.json()

    def reset(self) -> None:
        requests.post(f"{self.url}/_sim/reset", timeout=5).raise_for_status()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()


def spawn_cluster(name: str, port: int = 0, *args: str) -> ClusterProcess:
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway.sim.cluster", "--name", name, "--port", str(port), *args],
        stdout=subprocess.PIPE, stderr=None, cwd=REPO)
    assert proc.stdout is not None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = proc.stdout.readline().decode()
        if not line:
            raise AssertionError(f"simulated cluster {name} exited with {proc.wait()}")
        m = re.match(r"READY (\d+)", line)
        if m:
            return ClusterProcess(name, proc, f"http://127.0.0.1:{m.group(1)}")
    proc.kill()
    raise AssertionError(f"simulated cluster {name} did not start")


@pytest.fixture(scope="session")
def clusters() -> Iterator[dict[str, ClusterProcess]]:
    """Three simulated clusters for the whole session: two in adhoc, one in etl."""
    cs = {n: spawn_cluster(n, 0, *extra) for n, extra in
          (("adhoc-1", ()), ("adhoc-2", ("--process-forwarded",)), ("etl-1", ()))}
    yield cs
    for c in cs.values():
        c.stop()


@pytest.fixture
def fresh_clusters(clusters: dict[str, ClusterProcess]) -> dict[str, ClusterProcess]:
    """The session clusters with their control settings and query lists reset."""
    for c in clusters.values():
        if c.proc.poll() is None:
            c.reset()
    return clusters


# ---------------------------------------------------------------------------------------------
# Gateways

@dataclass
class GatewayProcess:
    proc: subprocess.Popen[bytes]
    config_path: Path
    log_path: Path
    port: int
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def connect(self, user: str = "alice", **kw: Any) -> Any:
        import trino
        kw.setdefault("http_scheme", "http")
        return trino.dbapi.connect(host="127.0.0.1", port=self.port, user=user, **kw)

    def api(self, method: str, path: str, **kw: Any) -> requests.Response:
        kw.setdefault("timeout", 10)
        return requests.request(method, self.url + path, **kw)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                return self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError("gateway did not stop in time:\n" + self.log()[-3000:])
        return self.proc.returncode


def gateway_config(tmp: Path, clusters: dict[str, ClusterProcess] | None, *,
                   groups: dict[str, str] | None = None, rules: list[str] | None = None,
                   store_url: str | None = None, **overrides: Any) -> dict[str, Any]:
    groups = groups or {"adhoc-1": "adhoc", "adhoc-2": "adhoc", "etl-1": "etl"}
    cfg: dict[str, Any] = {
        "server": {"host": "127.0.0.1", "port": 0},
        "store": {"url": store_url or f"sqlite:///{tmp / 'gateway.db'}", "historyFlushInterval": "100ms",
                  "syncInterval": "200ms"},
        "routing": {"defaultGroup": "adhoc", "rules": rules if rules is not None else [str(tmp / "rules")]},
        "monitor": {"type": "info-api", "interval": "300ms", "timeout": "1s"},
        "backends": [{"name": n, "proxyTo": c.url, "routingGroup": groups.get(n, "adhoc")}
                     for n, c in (clusters or {}).items() if n in groups],
    }
    for section, values in overrides.items():
        if isinstance(values, dict):
            cfg.setdefault(section, {}).update(values)
        else:
            cfg[section] = values
    return cfg


def start_gateway(tmp: Path, cfg: dict[str, Any], *, wait_ready: bool = True,
                  name: str | None = None, env: dict[str, str] | None = None) -> GatewayProcess:
    name = name or f"gw-{uuid.uuid4().hex[:6]}"
    (tmp / "rules").mkdir(exist_ok=True)
    config_path = tmp / f"{name}.yaml"
    config_path.write_text(yaml.safe_dump(cfg))
    log_path = tmp / f"{name}.log"
    logf = open(log_path, "wb")
    proc = subprocess.Popen([sys.executable, "-m", "gateway.cli", "serve", "--config", str(config_path)],
                            stdout=logf, stderr=subprocess.STDOUT, cwd=tmp,
                            env={**os.environ, **(env or {})})
    logf.close()

    def port() -> int | None:
        if proc.poll() is not None:
            raise AssertionError(f"gateway exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
        m = re.search(r"listening on [^:\s]+:(\d+)", log_path.read_text(errors="replace"))
        return int(m.group(1)) if m else None

    p = wait_for(port, timeout=30, message="the gateway to listen")
    gw = GatewayProcess(proc, config_path, log_path, p, cfg)
    if wait_ready:
        wait_for(lambda: gw.api("GET", "/trino-gateway/readyz").status_code == 200, timeout=20,
                 message="readyz")
        # every configured backend has been probed HEALTHY once
        names = [b["name"] for b in cfg.get("backends", [])]
        wait_for(lambda: all(gw.api("GET", f"/api/public/backends/{n}/state").json()["health"] == "HEALTHY"
                             for n in names), timeout=20, message="backends HEALTHY")
    return gw


@pytest.fixture
def gateway_factory(tmp_path: Path) -> Iterator[Callable[..., GatewayProcess]]:
    started: list[GatewayProcess] = []

    def make(cfg: dict[str, Any], **kw: Any) -> GatewayProcess:
        gw = start_gateway(tmp_path, cfg, **kw)
        started.append(gw)
        return gw

    yield make
    for gw in started:
        try:
            gw.stop(timeout=15)
        except AssertionError:
            pass


@pytest.fixture
def gateway(fresh_clusters: dict[str, ClusterProcess], gateway_factory: Callable[..., GatewayProcess],
            tmp_path: Path) -> GatewayProcess:
    """A gateway in front of the three session clusters, with no rules."""
    return gateway_factory(gateway_config(tmp_path, fresh_clusters))


def cluster_of(cursor: Any) -> str:
    """Which simulated cluster answers on this connection's next query."""
    cursor.execute("SELECT current_cluster()")
    return cursor.fetchall()[0][0]


# ---------------------------------------------------------------------------------------------
# The package as users get it

@pytest.fixture(scope="session")
def built_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project's wheel, built once per session as ``pip wheel .`` builds it."""
    folder = tmp_path_factory.mktemp("wheel")
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(folder), str(REPO)]
    try:  # a setuptools that builds wheels by itself: no need to fetch a build environment
        import setuptools.command.bdist_wheel  # noqa: F401
        cmd.insert(4, "--no-build-isolation")
    except ImportError:
        pass
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=folder)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (whl,) = folder.glob("trino_gateway-*.whl")
    return whl


# ---------------------------------------------------------------------------------------------
# PostgreSQL

def pg_required() -> bool:
    return os.environ.get("TRINO_GATEWAY_REQUIRE_PG") == "1"


def pg_url_for(dbname: str) -> str:
    """``PG_URL`` pointing at another database on the same server."""
    from urllib.parse import urlsplit, urlunsplit
    return urlunsplit(urlsplit(PG_URL)._replace(path=f"/{dbname}"))


def pg_admin() -> Any:
    """An autocommit connection to the test server's ``postgres`` database, for creating and
    dropping test databases. Without one: skip (fail with TRINO_GATEWAY_REQUIRE_PG=1), saying
    whether the server is down or answered with an error (a missing role, a password)."""
    import psycopg
    from gateway.store.base import redact_url
    url = pg_url_for("postgres")
    try:
        return psycopg.connect(url, autocommit=True, connect_timeout=3)
    except psycopg.Error as exc:
        detail = " ".join(str(exc).split())
        down = any(s in detail for s in ("Connection refused", "timeout expired", "could not translate host"))
        reason = (f"PostgreSQL not reachable at {redact_url(url)}: {detail}" if down else
                  f"PostgreSQL at {redact_url(url)} refused the tests' connection: {detail}")
        reason += " (set TRINO_GATEWAY_TEST_PG_URL to a server where that user may create databases)"
        if pg_required():
            pytest.fail(f"TRINO_GATEWAY_REQUIRE_PG=1 but {reason}", pytrace=False)
        pytest.skip(reason)


@pytest.fixture
def pg_database() -> Iterator[str]:
    """A fresh PostgreSQL database for one test; its URL. Skips (or fails in CI) without a server."""
    admin = pg_admin()
    name = f"tgw_e2e_{uuid.uuid4().hex[:10]}"
    admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield pg_url_for(name)
    finally:
        admin.execute(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'")
        admin.execute(f'DROP DATABASE IF EXISTS "{name}"')
        admin.close()
