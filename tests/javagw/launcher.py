"""Run trino-gateway (the Java project) on this machine: fetch, configure, start, stop.

Used by the side-by-side tests (tests/javagw/) and by the benchmark suite (benchmarks/run.py)
to put the real trino-gateway next to ours. Everything is on loopback:

    python3 -m tests.javagw.launcher fetch                   # Maven -> ~/.m2, print the jar's path
    python3 -m tests.javagw.launcher check                   # fetch + find Java; say what is missing
    python3 -m tests.javagw.launcher start \\
        --backend adhoc-1=http://127.0.0.1:8081@adhoc \\
        [--rules routing_rules.yml] [--port 0]              # run until Ctrl-C

What it does, step by step, and what it says when a step fails (``JavaGatewayUnavailable``):

1. **Fetch** ``io.trino.gateway:gateway-ha:<version>:jar:jar-with-dependencies`` with
   ``mvn dependency:get`` into the local Maven repository (~/.m2, so only the first run
   downloads ~100 MB). Version: ``TRINO_GATEWAY_JAVA_VERSION`` (default ``DEFAULT_VERSION``).
2. **Find a JDK** at least as new as the jar's ``Java-Version`` manifest entry (25 for recent
   releases): ``TRINO_GATEWAY_JAVA_HOME``, then ``JAVA_HOME``, then every /usr/lib/jvm/*. Set
   only for the child process; the machine's default Java is left alone.
3. **Own PostgreSQL database**: ``CREATE DATABASE tgw_java_<random>`` on
   ``TRINO_GATEWAY_JAVA_PG_URL`` (default ``postgresql://postgres@127.0.0.1:5432/postgres``);
   trino-gateway creates its tables with its own Flyway migrations; dropped on stop.
4. **Configuration**: the YAML trino-gateway reads (``serverConfig`` with airlift's
   ``http-server.http.port`` and ``node.bind-ip: 127.0.0.1``, ``dataStore`` with the JDBC URL,
   ``clusterStatsConfiguration.monitorType: INFO_API``, ``routingRules`` when a rules file is
   given, ``requestAnalyzerConfig.analyzeRequest`` so rules can test the SQL).
5. **Start** ``java -jar gateway-ha.jar config.yaml`` on a free port and wait for
   ``/trino-gateway/readyz``; backends are added through its REST API
   (``/gateway/backend/modify/add``) and, if asked, waited for until its monitor calls them HEALTHY.
6. **Stop**: SIGTERM, then SIGKILL after a grace period; the database is dropped.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import yaml

from tests.real.launcher import stop_process

GROUP_ID, ARTIFACT_ID, CLASSIFIER = "io.trino.gateway", "gateway-ha", "jar-with-dependencies"
DEFAULT_VERSION = "21"           # the newest release on Maven Central when this was written
PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
M2 = Path(os.environ.get("MAVEN_REPO", Path.home() / ".m2" / "repository"))


class JavaGatewayUnavailable(RuntimeError):
    """trino-gateway cannot be fetched or started here; the message says which step and why."""


def version() -> str:
    return os.environ.get("TRINO_GATEWAY_JAVA_VERSION", DEFAULT_VERSION)


def coordinates(ver: str) -> str:
    return f"{GROUP_ID}:{ARTIFACT_ID}:{ver}:jar:{CLASSIFIER}"


def jar_path(ver: str) -> Path:
    return M2 / GROUP_ID.replace(".", "/") / ARTIFACT_ID / ver / f"{ARTIFACT_ID}-{ver}-{CLASSIFIER}.jar"


def fetch_jar(ver: str | None = None, log: Callable[[str], None] = lambda m: print(m, file=sys.stderr)) -> Path:
    """The jar in the local Maven repository, downloaded through ``mvn`` if it is not there yet."""
    ver = ver or version()
    path = jar_path(ver)
    if path.is_file() and zipfile.is_zipfile(path):
        return path
    mvn = shutil.which("mvn")
    if mvn is None:
        raise JavaGatewayUnavailable(
            f"cannot fetch {coordinates(ver)}: Maven (mvn) is not on PATH (apt-get install maven)")
    log(f"javagw: fetching {coordinates(ver)} from Maven Central into {M2} (about 100 MB, once) ...")
    try:
        proc = subprocess.run([mvn, "-q", "-B", "dependency:get", "-Dtransitive=false",
                               f"-Dartifact={coordinates(ver)}"],
                              capture_output=True, text=True, timeout=900)
    except subprocess.TimeoutExpired:
        raise JavaGatewayUnavailable(f"cannot fetch {coordinates(ver)}: mvn did not finish within 15 minutes") from None
    if proc.returncode != 0 or not path.is_file():
        errors = [ln for ln in (proc.stdout + proc.stderr).splitlines() if "ERROR" in ln]
        detail = re.sub(r"\x1b\[[0-9;]*m", "", errors[0] if errors else (proc.stdout + proc.stderr)[-500:])
        raise JavaGatewayUnavailable(
            f"cannot fetch {coordinates(ver)} with mvn (exit {proc.returncode}): {detail.strip()}")
    log(f"javagw: fetched {path} ({path.stat().st_size / 1e6:.0f} MB)")
    return path


def required_java(jar: Path) -> int:
    """The Java major version the jar was built for (its manifest's ``Java-Version``)."""
    with zipfile.ZipFile(jar) as z:
        manifest = z.read("META-INF/MANIFEST.MF").decode("utf-8", "replace")
    m = re.search(r"^(?:Java-Version|Build-Jdk-Spec):\s*(\d+)", manifest, re.M)
    return int(m.group(1)) if m else 17


def java_major(java: Path) -> int | None:
    try:
        out = subprocess.run([str(java), "-version"], capture_output=True, text=True, timeout=30).stderr
    except (OSError, subprocess.TimeoutExpired):
        return None
    m = re.search(r'version "(\d+)(?:\.(\d+))?', out)
    if not m:
        return None
    major = int(m.group(1))
    return int(m.group(2) or 0) if major == 1 else major


def find_java(minimum: int) -> Path:
    """A ``java`` binary of at least ``minimum``; never changes the machine's default Java."""
    homes: list[Path] = []
    for var in ("TRINO_GATEWAY_JAVA_HOME", "JAVA_HOME"):
        if os.environ.get(var):
            homes.append(Path(os.environ[var]))
    jvm = Path("/usr/lib/jvm")
    if jvm.is_dir():
        homes += sorted((p for p in jvm.iterdir() if p.is_dir() and not p.is_symlink()), reverse=True)
    seen: list[str] = []
    for home in homes:
        java = home / "bin" / "java"
        if not java.is_file():
            continue
        major = java_major(java)
        seen.append(f"{home} ({major})")
        if major is not None and major >= minimum:
            return java
    raise JavaGatewayUnavailable(
        f"trino-gateway needs Java {minimum} or newer; found {', '.join(seen) or 'no JDK'} "
        f"(set TRINO_GATEWAY_JAVA_HOME to a JDK {minimum}, e.g. Temurin {minimum})")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------------------------------
# PostgreSQL: one database per started trino-gateway

def pg_admin_url() -> str:
    return os.environ.get("TRINO_GATEWAY_JAVA_PG_URL", PG_ADMIN_URL)


def create_database(admin_url: str, name: str) -> None:
    try:
        import psycopg
        with psycopg.connect(admin_url, autocommit=True, connect_timeout=5) as c:
            c.execute(f'CREATE DATABASE "{name}"')
    except Exception as exc:  # noqa: BLE001 - any failure: say which server and why
        raise JavaGatewayUnavailable(f"cannot create trino-gateway's database {name} on {admin_url}: {exc}") from exc


def drop_database(admin_url: str, name: str) -> None:
    import psycopg
    with psycopg.connect(admin_url, autocommit=True, connect_timeout=5) as c:
        c.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))
        c.execute(f'DROP DATABASE IF EXISTS "{name}"')


def jdbc_url(admin_url: str, database: str) -> tuple[str, str, str]:
    """(JDBC URL, user, password) of ``database`` on the server of a libpq URL."""
    from urllib.parse import urlsplit
    u = urlsplit(admin_url)
    return (f"jdbc:postgresql://{u.hostname or '127.0.0.1'}:{u.port or 5432}/{database}",
            u.username or "postgres", u.password or "")


# ---------------------------------------------------------------------------------------------
# Configuration

@dataclass
class Backend:
    name: str
    proxyTo: str
    routingGroup: str = "adhoc"
    active: bool = True
    externalUrl: str | None = None

    def json(self) -> dict[str, Any]:
        return {"name": self.name, "proxyTo": self.proxyTo, "externalUrl": self.externalUrl or self.proxyTo,
                "routingGroup": self.routingGroup, "active": self.active}


def make_config(port: int, jdbc: tuple[str, str, str], *, rules_file: Path | None = None,
                default_group: str = "adhoc", monitor_interval: str | None = "1s",
                analyze_sql: bool = True, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """trino-gateway's YAML configuration (HaGatewayConfiguration) for one loopback instance.

    ``monitor_interval`` is ``monitor.taskDelay`` (trino-gateway's default is 1m, so a backend
    added at run time would stay unprobed for a minute); ``None`` keeps the default.
    """
    url, user, password = jdbc
    cfg: dict[str, Any] = {
        "serverConfig": {"node.environment": "javagw", "node.bind-ip": "127.0.0.1",
                         "http-server.http.port": str(port),
                         "http-server.log.enabled": "false"},
        "dataStore": {"jdbcUrl": url, "user": user, "password": password, "driver": "org.postgresql.Driver",
                      "queryHistoryHoursRetention": 24, "runMigrationsEnabled": True},
        "clusterStatsConfiguration": {"monitorType": "INFO_API"},
        "routing": {"defaultRoutingGroup": default_group},
        "requestAnalyzerConfig": {"analyzeRequest": analyze_sql},
    }
    if monitor_interval is not None:
        cfg["monitor"] = {"taskDelay": monitor_interval}
    if rules_file is not None:
        cfg["routingRules"] = {"rulesEngineEnabled": True, "rulesType": "FILE",
                               "rulesConfigPath": str(rules_file)}
    for key, value in (extra or {}).items():
        if isinstance(value, dict) and isinstance(cfg.get(key), dict):
            cfg[key].update(value)
        else:
            cfg[key] = value
    return cfg


# ---------------------------------------------------------------------------------------------
# The running process

def http(method: str, url: str, body: Any = None, timeout: float = 10.0,
         headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    """One request without raising on error statuses: (status, body)."""
    data = None
    hdrs = dict(headers or {})
    if body is not None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        hdrs.setdefault("Content-Type", "application/json")
    req = urllib.request.Request(url, data=data, method=method, headers=hdrs)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


@dataclass
class JavaGateway:
    proc: subprocess.Popen[bytes]
    port: int
    workdir: Path
    config_path: Path
    log_path: Path
    database: str
    admin_url: str
    version: str
    started_at: float
    ready_after_s: float = 0.0
    backends: list[Backend] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.proc.pid

    name = "trino-gateway"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def api(self, method: str, path: str, body: Any = None, timeout: float = 10.0) -> tuple[int, bytes]:
        return http(method, self.url + path, body, timeout)

    def add_backend(self, backend: Backend) -> None:
        status, text = self.api("POST", "/gateway/backend/modify/add", backend.json())
        if status != 200:
            raise JavaGatewayUnavailable(f"trino-gateway refused backend {backend.name}: {status} {text[:300]!r}")
        self.backends.append(backend)

    def wait_healthy(self, names: Iterable[str], timeout: float = 60.0) -> None:
        """Wait until trino-gateway's monitor has called every named backend HEALTHY."""
        pending = set(names)
        deadline = time.monotonic() + timeout
        while pending and time.monotonic() < deadline:
            self._check_alive()
            for name in list(pending):
                status, text = self.api("GET", f"/api/public/backends/{name}/state")
                state = json.loads(text or b"{}") if status == 200 else {}
                if state.get("trinoStatus", state.get("health")) == "HEALTHY":
                    pending.discard(name)
            if pending:
                time.sleep(0.2)
        if pending:
            raise JavaGatewayUnavailable(
                f"trino-gateway did not call {sorted(pending)} HEALTHY within {timeout:g}s:\n{_tail(self.log(), 30)}")

    def _check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise JavaGatewayUnavailable(
                f"trino-gateway exited with status {self.proc.returncode}; last lines of {self.log_path}:\n"
                + _tail(self.log(), 40))

    def rss_kb(self) -> int:
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return 0

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM (trino-gateway shuts down gracefully), SIGKILL after ``timeout``; drop the database."""
        stop_process(self.proc, timeout)
        try:
            drop_database(self.admin_url, self.database)
        except Exception as exc:  # noqa: BLE001 - stopping must not fail on cleanup
            print(f"javagw: could not drop database {self.database}: {exc}", file=sys.stderr)
        return self.proc.returncode

    def __enter__(self) -> "JavaGateway":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def _tail(text: str, lines: int) -> str:
    text = re.sub(r"\x1b\[[0-9;]*m", "", text)
    return "\n".join(text.splitlines()[-lines:])


def start(workdir: Path | None = None, *, backends: Iterable[Backend] = (), rules_file: Path | None = None,
          port: int = 0, ver: str | None = None, default_group: str = "adhoc",
          monitor_interval: str | None = "1s", analyze_sql: bool = True, wait_healthy: bool = True,
          extra_config: dict[str, Any] | None = None, ready_timeout: float = 180.0,
          heap: str | None = None) -> JavaGateway:
    """Fetch (if needed), configure and start one trino-gateway; return once it is ready.

    Raises ``JavaGatewayUnavailable`` naming the step that failed (fetch, Java, PostgreSQL,
    start-up) and why.
    """
    ver = ver or version()
    jar = fetch_jar(ver)
    java = find_java(required_java(jar))
    workdir = Path(workdir or tempfile.mkdtemp(prefix="javagw-"))
    workdir.mkdir(parents=True, exist_ok=True)
    admin = pg_admin_url()
    database = f"tgw_java_{uuid.uuid4().hex[:10]}"
    create_database(admin, database)
    port = port or free_port()
    cfg = make_config(port, jdbc_url(admin, database), rules_file=rules_file, default_group=default_group,
                      monitor_interval=monitor_interval, analyze_sql=analyze_sql, extra=extra_config)
    config_path = workdir / "trino-gateway-java.yaml"
    config_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    log_path = workdir / "trino-gateway-java.log"
    env = {**os.environ, "JAVA_HOME": str(java.parent.parent)}
    argv = [str(java), "--enable-native-access=ALL-UNNAMED", *([f"-Xmx{heap}"] if heap else []),
            "-jar", str(jar), str(config_path)]
    t0 = time.monotonic()
    with open(log_path, "wb") as logf:
        proc = subprocess.Popen(argv, stdout=logf, stderr=subprocess.STDOUT, cwd=workdir, env=env,
                                stdin=subprocess.DEVNULL)
    gw = JavaGateway(proc, port, workdir, config_path, log_path, database, admin, ver, t0)
    try:
        deadline = time.monotonic() + ready_timeout
        while True:
            gw._check_alive()
            try:
                if gw.api("GET", "/trino-gateway/readyz", timeout=2)[0] == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise JavaGatewayUnavailable(
                    f"trino-gateway {ver} did not answer /trino-gateway/readyz on port {port} within "
                    f"{ready_timeout:g}s; last lines of {log_path}:\n{_tail(gw.log(), 40)}")
            time.sleep(0.05)
        gw.ready_after_s = time.monotonic() - t0
        for b in backends:
            gw.add_backend(b)
        if wait_healthy and gw.backends:
            gw.wait_healthy([b.name for b in gw.backends if b.active])
    except BaseException:
        gw.stop(timeout=10)
        raise
    return gw


# ---------------------------------------------------------------------------------------------
# Command line

def _parse_backend(text: str) -> Backend:
    m = re.fullmatch(r"([^=]+)=(https?://[^@\s]+)(?:@(.+))?", text)
    if not m:
        raise argparse.ArgumentTypeError(f"--backend {text!r}: expected NAME=URL[@GROUP]")
    return Backend(m.group(1), m.group(2), m.group(3) or "adhoc")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python3 -m tests.javagw.launcher", description=__doc__.splitlines()[0])
    ap.add_argument("--version", dest="ver", default=None,
                    help=f"trino-gateway release (default $TRINO_GATEWAY_JAVA_VERSION or {DEFAULT_VERSION})")
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("fetch", help="download the jar through Maven (cached in ~/.m2) and print its path")
    sub.add_parser("check", help="fetch, find a suitable Java and PostgreSQL; say what is missing")
    st = sub.add_parser("start", help="start trino-gateway on loopback and run until Ctrl-C")
    st.add_argument("--port", type=int, default=0, help="HTTP port (default: a free one)")
    st.add_argument("--backend", action="append", type=_parse_backend, default=[], metavar="NAME=URL[@GROUP]")
    st.add_argument("--rules", type=Path, help="trino-gateway MVEL rules file (routingRules, FILE)")
    st.add_argument("--default-group", default="adhoc")
    st.add_argument("--workdir", type=Path, help="folder for the configuration and log (default: a temporary one)")
    args = ap.parse_args(argv)
    try:
        if args.cmd == "fetch":
            print(fetch_jar(args.ver))
        elif args.cmd == "check":
            jar = fetch_jar(args.ver)
            java = find_java(required_java(jar))
            probe = f"tgw_java_check_{uuid.uuid4().hex[:6]}"
            create_database(pg_admin_url(), probe)
            drop_database(pg_admin_url(), probe)
            print(f"jar: {jar}\njava: {java} ({java_major(java)})\npostgresql: {pg_admin_url()} (can create databases)")
        else:
            gw = start(args.workdir, backends=args.backend, rules_file=args.rules, port=args.port,
                       ver=args.ver, default_group=args.default_group)
            print(f"trino-gateway {gw.version} ready at {gw.url} after {gw.ready_after_s:.1f}s "
                  f"(pid {gw.pid}, database {gw.database}, log {gw.log_path}); Ctrl-C stops it", flush=True)
            try:
                signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
                gw.proc.wait()
            except KeyboardInterrupt:
                pass
            finally:
                gw.stop()
    except JavaGatewayUnavailable as exc:
        print(f"javagw: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
