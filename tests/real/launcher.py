"""Real Trino coordinators for the tests and the benchmarks: fetch through Maven, lay out, start, stop.

Command line (from the repository root)::

    python3 -m tests.real.launcher fetch                 # download through Maven (cached in ~/.m2)
    python3 -m tests.real.launcher start --count 2       # start coordinators, print their URLs,
                                                         # stop them on Ctrl-C

The release is pinned (``TRINO_VERSION``); everything comes from Maven Central through the
ordinary ``mvn`` client (``dependency:get``), so it is cached in the local Maven repository and
the second run downloads nothing: ``io.trino:trino-server-core`` (tar.gz) plus the plugin zips
the tests use (``trino-tpch``, ``trino-memory``), the JDBC driver and the CLI. The server is
unpacked once into ``~/.cache/trino-gateway/trino-server-<version>`` with the plugins added.

Each coordinator gets its own folder with ``etc/`` (node.properties, jvm.config sized for a
2-core / 24 GB machine, config.properties for a single node that schedules work on itself,
catalogs ``tpch`` and ``memory``) and runs ``bin/launcher run`` with a JDK new enough for the
release (Trino 476 needs Java 24 or later; the Temurin 25 JDK under /usr/lib/jvm is found by
itself, ``TRINO_JAVA_HOME`` overrides). Anything that cannot be fetched or started raises
``LauncherError`` saying exactly what and why.
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
import urllib.request
import uuid
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

TRINO_VERSION = "476"
MIN_JAVA = 24          # the release's bin/launcher refuses older JDKs
PLUGINS = ("tpch", "memory")
M2 = Path(os.environ.get("MAVEN_REPO", Path.home() / ".m2" / "repository"))
CACHE = Path(os.environ.get("TRINO_GATEWAY_CACHE", Path.home() / ".cache" / "trino-gateway"))


class LauncherError(RuntimeError):
    """Something needed for real Trino could not be fetched or started; the text says what."""


# ---------------------------------------------------------------------------------------------
# Fetching

@dataclass(frozen=True)
class Artifact:
    artifact_id: str
    packaging: str = "jar"
    classifier: str | None = None
    group_id: str = "io.trino"
    version: str = TRINO_VERSION

    @property
    def coordinates(self) -> str:
        tail = f":{self.classifier}" if self.classifier else ""
        return f"{self.group_id}:{self.artifact_id}:{self.version}:{self.packaging}{tail}"

    @property
    def path(self) -> Path:
        name = f"{self.artifact_id}-{self.version}" + (f"-{self.classifier}" if self.classifier else "")
        return (M2.joinpath(*self.group_id.split(".")) / self.artifact_id / self.version
                / f"{name}.{self.packaging}")


SERVER = Artifact("trino-server-core", "tar.gz")
PLUGIN_ZIPS = {p: Artifact(f"trino-{p}", "zip") for p in PLUGINS}
JDBC = Artifact("trino-jdbc")
CLI = Artifact("trino-cli", "jar", "executable")


def fetch(artifact: Artifact, say=print) -> Path:
    """The artifact's file in the local Maven repository, downloaded through ``mvn`` if missing."""
    if artifact.path.is_file():
        return artifact.path
    mvn = shutil.which("mvn")
    if mvn is None:
        raise LauncherError(f"cannot fetch {artifact.coordinates}: no 'mvn' on PATH "
                            "(install Debian's 'maven' package)")
    say(f"fetching {artifact.coordinates} through Maven (first use; cached in {M2})")
    proc = subprocess.run([mvn, "-B", "-q", "dependency:get", "-Dtransitive=false",
                           f"-Dartifact={artifact.coordinates}"],
                          capture_output=True, text=True, timeout=900)
    if proc.returncode != 0 or not artifact.path.is_file():
        errors = [ln for ln in (proc.stdout + proc.stderr).splitlines() if "ERROR" in ln][:5]
        raise LauncherError(f"Maven could not fetch {artifact.coordinates} (exit {proc.returncode}): "
                            + (" | ".join(errors) or "no error text"))
    return artifact.path


def fetch_all(say=print) -> None:
    for artifact in (SERVER, *PLUGIN_ZIPS.values(), JDBC, CLI):
        fetch(artifact, say)


def server_home(say=print) -> Path:
    """The unpacked server with the plugins added; made once, atomically, under ``CACHE``."""
    home = CACHE / f"trino-server-{TRINO_VERSION}"
    if (home / ".complete").is_file():
        return home
    tarball = fetch(SERVER, say)
    zips = {p: fetch(a, say) for p, a in PLUGIN_ZIPS.items()}
    CACHE.mkdir(parents=True, exist_ok=True)
    say(f"unpacking Trino {TRINO_VERSION} into {home}")
    work = Path(tempfile.mkdtemp(prefix=".unpack-", dir=CACHE))
    try:
        subprocess.run(["tar", "-xzf", str(tarball), "-C", str(work)], check=True, capture_output=True)
        root = work / f"trino-server-core-{TRINO_VERSION}"
        if not (root / "bin" / "launcher").is_file():
            raise LauncherError(f"{tarball} has no trino-server-core-{TRINO_VERSION}/bin/launcher")
        for plugin, zpath in zips.items():
            with zipfile.ZipFile(zpath) as z:
                z.extractall(work / "plugins")
            (work / "plugins" / f"trino-{plugin}-{TRINO_VERSION}").rename(root / "plugin" / plugin)
        # zipfile drops the executable bits; the launcher binaries need them.
        for launcher in (root / "bin").rglob("launcher"):
            launcher.chmod(0o755)
        (root / ".complete").write_text(TRINO_VERSION)
        if home.exists():
            shutil.rmtree(home)
        root.rename(home)
    except subprocess.CalledProcessError as exc:
        raise LauncherError(f"cannot unpack {tarball}: {exc.stderr.decode(errors='replace')[:300]}") from exc
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return home


# ---------------------------------------------------------------------------------------------
# Java

def _java_major(java_home: Path) -> int | None:
    release = java_home / "release"
    if not release.is_file():
        return None
    m = re.search(r'JAVA_VERSION="(\d+)', release.read_text(errors="replace"))
    return int(m.group(1)) if m else None


def find_java(minimum: int = MIN_JAVA) -> Path:
    """A JDK home of at least ``minimum``: ``TRINO_JAVA_HOME``, ``JAVA_HOME``, then /usr/lib/jvm/*."""
    candidates = [Path(p) for p in (os.environ.get("TRINO_JAVA_HOME"), os.environ.get("JAVA_HOME")) if p]
    jvm = Path("/usr/lib/jvm")
    if jvm.is_dir():
        candidates += sorted((p for p in jvm.iterdir() if p.is_dir() and not p.is_symlink()),
                             key=lambda p: -(_java_major(p) or 0))
    seen = []
    for home in candidates:
        major = _java_major(home)
        seen.append(f"{home} ({major or 'unknown version'})")
        if major and major >= minimum and (home / "bin" / "java").is_file():
            return home
    raise LauncherError(f"Trino {TRINO_VERSION} needs Java {minimum} or later; found only: "
                        + (", ".join(seen) or "no JDK") + ". Set TRINO_JAVA_HOME.")


# ---------------------------------------------------------------------------------------------
# Coordinators

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Coordinator:
    """One single-node Trino coordinator in its own folder."""
    name: str
    folder: Path
    port: int
    process_forwarded: bool = False
    spooling: bool = False
    heap: str = "3G"
    attached: bool = False      # started elsewhere: never stopped or killed from here
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.folder / "server.log"

    def write_etc(self) -> None:
        etc = self.folder / "etc"
        (etc / "catalog").mkdir(parents=True, exist_ok=True)
        data = self.folder / "data"
        data.mkdir(exist_ok=True)
        (etc / "node.properties").write_text(
            "node.environment=test\n"
            f"node.id={self.name}-{uuid.uuid4().hex[:8]}\n"
            f"node.data-dir={data}\n")
        # Two coordinators, a gateway and the tests share 2 cores and 24 GB: a 3 GB heap each,
        # few compiler and GC threads so start-up does not starve the rest.
        (etc / "jvm.config").write_text("\n".join([
            "-server", f"-Xmx{self.heap}", "-XX:+UseG1GC", "-XX:G1HeapRegionSize=32M",
            "-XX:+ExitOnOutOfMemoryError", "-XX:+HeapDumpOnOutOfMemoryError",
            "-XX:-OmitStackTraceInFastThrow", "-XX:ReservedCodeCacheSize=256M",
            "-XX:PerMethodRecompilationCutoff=10000", "-XX:PerBytecodeRecompilationCutoff=10000",
            "-XX:CICompilerCount=2", "-XX:ParallelGCThreads=2", "-XX:ConcGCThreads=1",
            "-Djdk.attach.allowAttachSelf=true", "-Djdk.nio.maxCachedBufferSize=2000000",
            "-Dfile.encoding=UTF-8", ""]))
        props = [
            "coordinator=true",
            "node-scheduler.include-coordinator=true",
            f"http-server.http.port={self.port}",
            f"discovery.uri=http://127.0.0.1:{self.port}",
            "query.max-memory=1GB",
            "query.max-memory-per-node=1GB",
            # small task concurrency: 2 cores
            "task.concurrency=2",
            "task.max-worker-threads=8",
        ]
        if self.process_forwarded:
            props.append("http-server.process-forwarded=true")
        if self.spooling:
            spool = self.folder / "spool"
            spool.mkdir(exist_ok=True)
            props.append("protocol.spooling.enabled=true")
            props.append(f"protocol.spooling.shared-secret-key={_SPOOL_KEY}")
            (etc / "spooling-manager.properties").write_text(
                "spooling-manager.name=filesystem\n"
                "fs.location=local:///\n"
                "fs.local.enabled=true\n"
                f"local.location={spool}\n")
        (etc / "config.properties").write_text("\n".join(props) + "\n")
        (etc / "log.properties").write_text("io.trino=INFO\n")
        (etc / "catalog" / "tpch.properties").write_text("connector.name=tpch\n")
        (etc / "catalog" / "memory.properties").write_text("connector.name=memory\n")

    def start(self, home: Path, java_home: Path) -> None:
        self.write_etc()
        env = {**os.environ, "JAVA_HOME": str(java_home),
               "PATH": f"{java_home / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}"}
        log = open(self.log_path, "ab")
        # `launcher run` execs the JVM in the foreground: this Popen's pid is the server's.
        self.proc = subprocess.Popen(
            [str(home / "bin" / "launcher"), "run", f"--etc-dir={self.folder / 'etc'}",
             f"--data-dir={self.folder / 'data'}"],
            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        log.close()

    def info(self) -> dict | None:
        try:
            with urllib.request.urlopen(f"{self.url}/v1/info", timeout=2) as r:
                return json.loads(r.read())
        except Exception:
            return None

    def wait_ready(self, timeout: float = 240.0) -> None:
        """Until ``/v1/info`` says ``starting: false``; a dead JVM fails at once with its log's tail."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise LauncherError(f"Trino coordinator {self.name} exited with {self.proc.returncode} "
                                    f"while starting; last log lines:\n{self.log_tail()}")
            info = self.info()
            if info is not None and info.get("starting") is False:
                return
            time.sleep(0.25)
        raise LauncherError(f"Trino coordinator {self.name} on port {self.port} not ready after "
                            f"{timeout:.0f} s; last log lines:\n{self.log_tail()}")

    def log_tail(self, lines: int = 25) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def kill(self) -> None:
        """SIGKILL the JVM (a crash, for fault tests)."""
        if self.attached:
            raise LauncherError(f"{self.name} is attached, not started here")
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self, timeout: float = 30.0) -> None:
        if self.proc is not None:
            stop_process(self.proc, timeout)


def stop_process(proc: subprocess.Popen[bytes], timeout: float) -> None:
    """SIGTERM (a graceful stop), SIGKILL after ``timeout`` seconds."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


_SPOOL_KEY = "jxTKysfCBuMZtFqUf8UJDQ1w9ez8rynEJsJqgJf66u0="   # any 256-bit base64 key; tests only


class Cluster:
    """Several coordinators started together (in parallel: each takes ~20 s alone)."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = root or Path(tempfile.mkdtemp(prefix="trino-real-"))
        self.coordinators: dict[str, Coordinator] = {}
        self.home: Path | None = None
        self.java: Path | None = None

    def add(self, name: str, *, process_forwarded: bool = False, spooling: bool = False,
            port: int = 0) -> Coordinator:
        c = Coordinator(name, self.root / name, port or free_port(), process_forwarded, spooling)
        c.folder.mkdir(parents=True, exist_ok=True)
        self.coordinators[name] = c
        return c

    def start(self, say=print, timeout: float = 240.0) -> None:
        self.home = server_home(say)
        self.java = find_java()
        say(f"starting {len(self.coordinators)} Trino {TRINO_VERSION} coordinator(s) with {self.java} "
            f"(logs under {self.root})")
        for c in self.coordinators.values():
            c.start(self.home, self.java)
        try:
            for c in self.coordinators.values():
                c.wait_ready(timeout)
        except BaseException:
            self.stop()
            raise

    def restart(self, name: str, timeout: float = 240.0) -> Coordinator:
        c = self.coordinators[name]
        c.stop()
        assert self.home is not None and self.java is not None
        c.start(self.home, self.java)
        c.wait_ready(timeout)
        return c

    def stop(self) -> None:
        for c in self.coordinators.values():
            c.stop()

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python3 -m tests.real.launcher",
                                description=f"Real Trino {TRINO_VERSION} coordinators through Maven.")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("fetch", help="download the server, plugins, JDBC driver and CLI through Maven")
    st = sub.add_parser("start", help="start coordinators and wait for Ctrl-C")
    st.add_argument("--count", type=int, default=1, help="how many coordinators (default 1)")
    st.add_argument("--process-forwarded", action="store_true",
                    help="the first coordinator processes X-Forwarded-* (the rest answer 406)")
    st.add_argument("--spooling", action="store_true", help="spool results to a local folder")
    args = p.parse_args(argv)
    try:
        if args.command == "fetch":
            fetch_all()
            print(f"server: {server_home()}\njdbc: {JDBC.path}\ncli: {CLI.path}")
            return 0
        cluster = Cluster()
        for i in range(args.count):
            cluster.add(f"trino-{i + 1}", process_forwarded=args.process_forwarded and i == 0,
                        spooling=args.spooling)
        cluster.start()
    except LauncherError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for c in cluster.coordinators.values():
        print(f"{c.name} {c.url} (folder {c.folder})", flush=True)
    # Blocked, so that sigwait receives them (else SIGTERM's default action ends this process
    # and leaves the coordinators, which run in sessions of their own, behind).
    signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGINT, signal.SIGTERM])
    try:
        signal.sigwait([signal.SIGINT, signal.SIGTERM])
    except KeyboardInterrupt:
        pass
    finally:
        cluster.remove()
    return 0


if __name__ == "__main__":
    sys.exit(main())
