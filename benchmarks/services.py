"""Processes the benchmarks run: static backends, nginx as a reverse proxy, gateways, clusters.

Every service is a real process on 127.0.0.1 with a port chosen free, started in a temporary
folder and stopped by its own pid. nginx is used only if installed (``apt-get install
nginx-light``); nothing is installed here.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
import payloads  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(cond: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(0.02)
    raise RuntimeError(f"timed out after {timeout:g}s waiting for {what}")


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


@dataclass
class Service:
    name: str
    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path else ""


def _spawn_ready(name: str, argv: list[str], cwd: Path, log_path: Path) -> Service:
    """Start a helper that prints ``READY <port>`` on its standard output."""
    logf = open(log_path, "wb")
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=logf, cwd=cwd)
    logf.close()
    assert proc.stdout is not None
    line = proc.stdout.readline().decode()
    m = re.match(r"READY (\d+)", line)
    if not m:
        proc.kill()
        raise RuntimeError(f"{name} did not start: {line!r} {log_path.read_text()[-2000:]}")
    return Service(name, proc, int(m.group(1)), log_path)


# ---------------------------------------------------------------------------------------------
# Static backends

def write_pages(tmp: Path, base: str, sizes: tuple[int, ...] = (1, 16)) -> None:
    for mb in sizes:
        path = tmp / f"page-{mb}mb.json"
        if not path.exists():
            path.write_bytes(payloads.big_page(mb, base))
            path.chmod(0o644)


def nginx_available() -> bool:
    return shutil.which("nginx") is not None


def _nginx_quote(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _nginx_common(tmp: Path) -> str:
    return (f"worker_processes 1;\nevents {{ worker_connections 4096; }}\n"
            f"http {{\n  access_log off;\n  keepalive_requests 10000000;\n  keepalive_timeout 300s;\n"
            f"  client_body_temp_path {tmp}/body;\n  proxy_temp_path {tmp}/proxy;\n"
            f"  fastcgi_temp_path {tmp}/fcgi;\n  uwsgi_temp_path {tmp}/uwsgi;\n  scgi_temp_path {tmp}/scgi;\n")


def nginx_backend_conf(tmp: Path, port: int) -> str:
    """nginx answering like a coordinator from memory: the fastest possible backend."""
    base = f"http://127.0.0.1:{port}"
    statement = payloads.statement_response().replace("{BASE}", base).replace(
        "{QID}", "${qid_time}_00000_${qid_rand}")
    pages = "".join(
        f"    location ^~ /v1/statement/executing/{qid}/ {{ try_files /page-{mb}mb.json =404; }}\n"
        for mb, qid in payloads.PAGE_QID.items())
    return _nginx_common(tmp) + (
        "  default_type application/json;\n  types { }\n"
        # A fresh, well-formed query id per statement, from the clock and the request id.
        '  map $msec $qid_time { "~^\\d\\d(?<s>\\d{8})\\.(?<m>\\d{3})$" "${s}_${m}000"; }\n'
        '  map $request_id $qid_rand { "~^(?<r>[0-9a-f]{5})" $r; }\n'
        f"  server {{\n    listen 127.0.0.1:{port} backlog=1024;\n    root {tmp};\n"
        f"    client_max_body_size 64m;\n"
        f"    location = /v1/statement {{ return 200 {_nginx_quote(statement)}; }}\n"
        f"    location /v1/statement/executing/ {{ return 200 "
        f"{_nginx_quote(payloads.executing_page().replace('{BASE}', base))}; }}\n"
        f"{pages}"
        f"    location /v1/query/ {{ return 200 {_nginx_quote(payloads.query_info_response())}; }}\n"
        f"    location = /v1/info {{ return 200 {_nginx_quote(payloads.info_response())}; }}\n"
        "  }\n}\n")


def nginx_proxy_conf(tmp: Path, port: int, upstream_port: int) -> str:
    """nginx as a plain reverse proxy with upstream keep-alive (what people deploy)."""
    return _nginx_common(tmp) + (
        f"  upstream backend {{ server 127.0.0.1:{upstream_port}; keepalive 64; "
        "keepalive_requests 10000000; }\n"
        f"  server {{\n    listen 127.0.0.1:{port} backlog=1024;\n    client_max_body_size 64m;\n"
        "    location / {\n      proxy_pass http://backend;\n      proxy_http_version 1.1;\n"
        '      proxy_set_header Connection "";\n      proxy_set_header Host $http_host;\n'
        "      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;\n"
        "      proxy_set_header X-Forwarded-Proto $scheme;\n"
        "      proxy_set_header X-Forwarded-Host $http_host;\n    }\n  }\n}\n")


def start_nginx(name: str, tmp: Path, conf_text: str, port: int) -> Service:
    d = tmp / name
    d.mkdir(parents=True, exist_ok=True)
    for sub in ("body", "proxy", "fcgi", "uwsgi", "scgi"):
        (d / sub).mkdir(exist_ok=True)
    conf = d / "nginx.conf"
    conf.write_text(conf_text)
    log_path = d / "error.log"
    logf = open(log_path, "wb")
    proc = subprocess.Popen(
        ["nginx", "-p", str(d), "-c", str(conf), "-e", str(log_path),
         "-g", f"daemon off; pid {d}/nginx.pid; error_log {log_path} warn;"],
        stdout=logf, stderr=subprocess.STDOUT)
    logf.close()
    try:
        wait_until(lambda: proc.poll() is not None or port_open(port), 10, f"{name} to listen")
    except RuntimeError:
        proc.kill()
        raise
    if proc.poll() is not None:
        raise RuntimeError(f"{name} exited: {log_path.read_text()[-2000:]}")
    return Service(name, proc, port, log_path)


def start_static_backend(tmp: Path, prefer_nginx: bool = True) -> Service:
    """The static-response backend: nginx when installed, else the asyncio one."""
    tmp.chmod(0o755)   # nginx workers may run as another user
    if prefer_nginx and nginx_available():
        port = free_port()
        write_pages(tmp, f"http://127.0.0.1:{port}")
        svc = start_nginx("backend-nginx", tmp, nginx_backend_conf(tmp, port), port)
        svc.extra["kind"] = "nginx"
        return svc
    write_pages(tmp, "http://127.0.0.1:1")
    svc = _spawn_ready("backend-python", [sys.executable, str(HERE / "static_backend.py"),
                                          "--port", "0", "--pages", str(tmp)],
                       tmp, tmp / "backend-python.log")
    svc.extra["kind"] = "python"
    return svc


def start_nginx_proxy(tmp: Path, upstream: Service) -> Service:
    port = free_port()
    return start_nginx("proxy-nginx", tmp, nginx_proxy_conf(tmp, port, upstream.port), port)


def start_bare_tornado(tmp: Path) -> Service:
    return _spawn_ready("bare-tornado", [sys.executable, str(HERE / "bare_tornado.py"), "--port", "0"],
                        tmp, tmp / "bare-tornado.log")


def start_cluster(tmp: Path, name: str, *flags: str) -> Service:
    return _spawn_ready(f"cluster-{name}", [sys.executable, "-m", "gateway.sim.cluster", "--name", name,
                                            "--port", "0", *flags], REPO, tmp / f"cluster-{name}.log")


# ---------------------------------------------------------------------------------------------
# Gateways

def write_rules(folder: Path, n: int) -> None:
    """``n`` realistic rules without SQL symbols (the rules engineer's benchmark mix)."""
    from rules_bench import make_rules
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.yaml"):
        old.unlink()
    if n:
        (folder / "bench.yaml").write_text(make_rules(n, sql=False))


def gateway_config(tmp: Path, backends: list[tuple[str, str]], *, rules: int = 100,
                   store_url: str | None = None, history: bool = True, workers: int = 1,
                   name: str = "gw") -> dict[str, Any]:
    rules_dir = tmp / f"{name}-rules"
    write_rules(rules_dir, rules)
    return {
        "server": {"host": "127.0.0.1", "port": 0, "workers": workers,
                   "stateDir": str(tmp / f"{name}-state")},
        "store": {"url": store_url or f"sqlite:///{tmp / (name + '.db')}", "historyEnabled": history},
        "routing": {"defaultGroup": "adhoc", "rules": [str(rules_dir)]},
        "monitor": {"type": "info-api", "interval": "5s"},
        "backends": [{"name": n, "proxyTo": url, "routingGroup": "adhoc"} for n, url in backends],
    }


def start_gateway(tmp: Path, cfg: dict[str, Any], name: str = "gw") -> Service:
    """Start ``trino-gateway serve`` and wait until readyz answers 200 (any log level)."""
    if not cfg["server"].get("port"):
        cfg["server"]["port"] = free_port()
    port = cfg["server"]["port"]
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    log_path = tmp / f"{name}.log"
    logf = open(log_path, "wb")
    t0 = time.monotonic()
    argv = [sys.executable, "-m", "gateway.cli", "serve", "--config", str(path)]
    profile_dir = os.environ.get("BENCH_GATEWAY_CPROFILE")
    if profile_dir:   # profile the gateway's main thread (one worker: the worker) by CPU time
        # into <dir>/<name>.prof, written at its exit (benchmarks/cpu_profile.py)
        argv[1:3] = [str(HERE / "cpu_profile.py"), str(Path(profile_dir) / f"{name}.prof"), "gateway.cli"]
    proc = subprocess.Popen(argv, stdout=logf, stderr=subprocess.STDOUT, cwd=tmp)
    logf.close()
    svc = Service(name, proc, port, log_path)
    import urllib.request

    def ready() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"gateway exited with {proc.returncode}: {log_path.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{svc.url}/trino-gateway/readyz", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False
    try:
        wait_until(ready, 30, "the gateway to be ready")
    except RuntimeError:
        svc.stop()
        raise
    svc.extra["ready_s"] = time.monotonic() - t0
    return svc


def worker_pids(svc: Service, workers: int = 1) -> list[int]:
    """The gateway process itself, or its workers when it supervises several (never the
    helper processes each of them runs: gateway/store/process.py, gateway/runtime/offload.py; with
    one worker the offload child used to be taken for the worker, so CPU and memory figures
    and py-spy profiles measured the wrong process).

    With ``workers`` > 1, waits (up to 30 s) until that many are running: the gateway is ready
    as soon as its first worker answers, the others are forked just after, and CPU and memory
    figures read right after start-up counted only some of them (the fourth session found
    two-worker CPU per request undercounted by up to 40 % that way)."""
    if workers > 1:
        deadline = time.monotonic() + 30
        while True:
            pids = _worker_pids(svc)
            if len(pids) >= workers or time.monotonic() > deadline:
                if len(pids) < workers:
                    raise RuntimeError(f"{svc.name}: {len(pids)} of {workers} workers running after 30 s")
                return pids
            time.sleep(0.1)
    return _worker_pids(svc)


def _worker_pids(svc: Service) -> list[int]:
    def children(pid: int) -> list[int]:
        try:
            kids = [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
        except OSError:
            return []
        out = []
        for kid in kids:
            try:
                cmd = Path(f"/proc/{kid}/cmdline").read_bytes()
            except OSError:
                continue
            if b"gateway.store.process" not in cmd and b"gateway.runtime.offload" not in cmd:
                out.append(kid)
        return out
    return children(svc.pid) or [svc.pid]


def cpu_seconds(pids: list[int]) -> float:
    """CPU time (user + system) the processes ``pids`` used so far; a process gone counts 0."""
    user, system = cpu_split(pids)
    return user + system


def cpu_split(pids: list[int]) -> tuple[float, float]:
    """(user, system) CPU seconds the processes ``pids`` used so far; a process gone counts 0.
    System time is the kernel's share: socket calls, and on loopback the receiving side's
    network stack, which runs inside the sender's send()."""
    user = system = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            user += int(fields[11]) / tick
            system += int(fields[12]) / tick
        except OSError:
            pass
    return user, system


def proc_status_kb(pid: int, field_name: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    raise KeyError(field_name)


def new_tmp(prefix: str = "tgw-bench-") -> Path:
    return Path(tempfile.mkdtemp(prefix=prefix))
