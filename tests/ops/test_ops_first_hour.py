"""The first hour of a new operator: the gateway started by hand or by a service manager, from
another directory, with its own configuration, as ``trino-gateway`` commands in processes.

Relative paths follow the configuration file; a configured rules folder that is missing stops
the start; two workers with a store that cannot open exit at once with the reason once; a busy
port is named; ``migrate`` says what it applied; ``--version``, ``--help`` and ``healthcheck``.
"""
from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
import yaml

from gateway import __version__
from gateway.cli import build_parser
from tests.conftest import REPO, wait_for
from tests.ops.support import free_port, make_cert


def _env(tmp: Path) -> dict[str, str]:
    """The environment of a gateway process: this checkout importable, its own TMPDIR (to see
    what it leaves behind)."""
    tmpdir = tmp / "tmpdir"
    tmpdir.mkdir(exist_ok=True)
    return {**os.environ, "PYTHONPATH": str(REPO), "TMPDIR": str(tmpdir)}


def _cli(*args: str, cwd: Path, tmp: Path, timeout: float = 60, **kw) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway.cli", *args], cwd=cwd, env=_env(tmp),
                          capture_output=True, text=True, timeout=timeout, **kw)


def _write_config(folder: Path, cfg: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "gateway.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _start(config: Path, cwd: Path, tmp: Path) -> tuple[subprocess.Popen[bytes], Path]:
    log = tmp / f"{config.stem}-{time.monotonic_ns()}.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "gateway.cli", "serve", "--config", str(config)],
                                cwd=cwd, env=_env(tmp), stdout=fh, stderr=subprocess.STDOUT)
    return proc, log


def _port_of(proc: subprocess.Popen[bytes], log: Path) -> int:
    def port() -> int | None:
        if proc.poll() is not None:
            raise AssertionError(f"gateway exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        m = re.search(r"listening on [^:\s]+:(\d+)", log.read_text(errors="replace"))
        return int(m.group(1)) if m else None
    return wait_for(port, timeout=30, message="the gateway to listen")


def _stop(proc: subprocess.Popen[bytes]) -> int:
    proc.send_signal(signal.SIGTERM)
    return proc.wait(30)


def test_relative_paths_follow_the_configuration_file_not_the_working_directory(tmp_path):
    etc = tmp_path / "etc"
    (etc / "rules").mkdir(parents=True)
    (etc / "rules" / "etl.yaml").write_text("name: etl-by-source\ncondition: source == 'airflow'\n"
                                           "routingGroup: etl\n")
    config = _write_config(etc, {"server": {"host": "127.0.0.1", "port": 0},
                                 "store": {"url": "sqlite:///state/gateway.db"},
                                 "routing": {"rules": ["rules/"]}})
    (etc / "state").mkdir()
    elsewhere = tmp_path / "var"          # where a service manager starts it
    elsewhere.mkdir()
    proc, log = _start(config, elsewhere, tmp_path)
    try:
        port = _port_of(proc, log)
        rules = wait_for(lambda: requests.get(f"http://127.0.0.1:{port}/api/rules", timeout=5).json(),
                         message="/api/rules")
        assert [r["name"] for r in rules["rules"]] == ["etl-by-source"], rules
        assert (etc / "state" / "gateway.db").exists()
        assert not list(elsewhere.iterdir()), list(elsewhere.iterdir())
    finally:
        assert _stop(proc) == 0, log.read_text()[-3000:]


def test_a_configured_rules_folder_that_is_missing_refuses_to_start(tmp_path):
    # The README's minimal configuration names rules/; started elsewhere, or with the folder
    # forgotten, the gateway used to run with no rules and send everything to the default group.
    config = _write_config(tmp_path / "etc", {"server": {"port": 0}, "routing": {"rules": ["rules/"]}})
    res = _cli("serve", "--config", str(config), cwd=tmp_path, tmp=tmp_path)
    assert res.returncode == 2, res.stdout + res.stderr
    assert res.stderr.strip() == (f"trino-gateway: {config}: routing.rules: '{tmp_path}/etc/rules/' does not "
                                  f"exist (relative paths resolve against the folder of {config})")


def test_two_workers_with_a_store_that_cannot_open_exit_at_once_saying_why_once(tmp_path):
    # A supervisor (systemd, a container) must see the failure: exit non-zero, port released.
    config = _write_config(tmp_path, {"server": {"host": "127.0.0.1", "port": 0, "workers": 2},
                                      "store": {"url": f"sqlite:///{tmp_path}/missing-dir/gw.db"}})
    started = time.monotonic()
    res = _cli("serve", "--config", str(config), cwd=tmp_path, tmp=tmp_path, timeout=30)
    elapsed = time.monotonic() - started
    out = res.stdout + res.stderr
    assert res.returncode == 1, out
    assert elapsed < 20, f"took {elapsed:.1f}s"
    assert out.count("does not exist") == 1 and out.count("cannot start") == 1, out
    assert "restarting" not in out and "Traceback" not in out, out
    # nothing left behind: the metrics folder the workers would have shared is gone
    assert not list((tmp_path / "tmpdir").iterdir())


def test_a_busy_port_is_named(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        config = _write_config(tmp_path, {"server": {"host": "127.0.0.1", "port": port},
                                          "store": {"url": "sqlite:///gw.db"}})
        res = _cli("serve", "--config", str(config), cwd=tmp_path, tmp=tmp_path)
    assert res.returncode == 1
    assert f"cannot listen on 127.0.0.1 port {port}: Address already in use" in res.stdout + res.stderr


def test_migrate_says_which_migrations_it_applied(tmp_path):
    config = _write_config(tmp_path, {"store": {"url": "sqlite:///gw.db"}})
    first = _cli("migrate", "--config", str(config), cwd=tmp_path, tmp=tmp_path)
    assert first.returncode == 0, first.stderr
    migrations = sorted(int(p.name.split("_")[0]) for p in (REPO / "sql" / "sqlite").glob("*.sql"))
    assert first.stdout.strip() == (f"applied migration(s) {', '.join(map(str, migrations))}; "
                                    f"schema version {migrations[-1]}")
    again = _cli("migrate", "--config", str(config), cwd=tmp_path, tmp=tmp_path)
    assert again.stdout.strip() == f"schema is up to date (version {migrations[-1]})"


def test_version_and_subcommand_help(tmp_path):
    res = _cli("--version", cwd=tmp_path, tmp=tmp_path)
    assert res.returncode == 0 and res.stdout.strip() == f"trino-gateway {__version__}"
    import tomllib
    assert "version" in tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dynamic"]
    parser = build_parser()
    subs = next(a for a in parser._actions if a.dest == "command").choices
    for name in ("serve", "demo", "migrate", "hash-password", "healthcheck"):
        assert subs[name].description, f"{name} --help has no description"
    demo = _cli("demo", "--help", cwd=tmp_path, tmp=tmp_path).stdout
    assert re.search(r"--port PORT\s+gateway port \(0: any free port\) \(default: 8080\)", demo), demo
    assert "(default: None)" not in _cli("serve", "--help", cwd=tmp_path, tmp=tmp_path).stdout


@pytest.mark.parametrize("tls", [False, True], ids=["http", "https-only"])
def test_healthcheck_follows_the_configured_port_and_scheme(tmp_path, tls):
    port = free_port()
    server = {"host": "127.0.0.1", "port": port}
    if tls:
        crt, key = make_cert(tmp_path)
        server["tls"] = {"certFile": str(crt), "keyFile": str(key)}
    config = _write_config(tmp_path, {"server": server, "store": {"url": "sqlite:///gw.db"}})
    down = _cli("healthcheck", "--config", str(config), cwd=tmp_path, tmp=tmp_path)
    assert down.returncode == 1, down.stdout
    proc, log = _start(config, tmp_path, tmp_path)
    try:
        _port_of(proc, log)
        res = _cli("healthcheck", "--config", str(config), cwd=tmp_path, tmp=tmp_path)
        scheme = "https" if tls else "http"
        assert res.returncode == 0, res.stderr
        assert res.stdout.strip() == f"{scheme}://127.0.0.1:{port}/trino-gateway/livez: 200"
    finally:
        assert _stop(proc) == 0, log.read_text()[-3000:]


def test_a_worker_that_crashes_after_starting_is_restarted(tmp_path):
    config = _write_config(tmp_path, {"server": {"host": "127.0.0.1", "port": 0, "workers": 2},
                                      "store": {"url": "sqlite:///gw.db"}})
    proc, log = _start(config, tmp_path, tmp_path)
    try:
        port = _port_of(proc, log)
        wait_for(lambda: f"supervising 2 worker processes on port {port}" in log.read_text(),
                 message="the supervisor's line, with the port the system chose")
        pid = int(wait_for(lambda: re.search(r"\[(\d+)\] INFO gateway\.server: worker 1 listening",
                                             log.read_text()), message="worker 1").group(1))
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: "worker 1 exited with -9; restarting it in 0.5s" in log.read_text(),
                 message="the restart")
        wait_for(lambda: log.read_text().count("worker 1 listening") == 2, message="worker 1 again")
    finally:
        assert _stop(proc) == 0, log.read_text()[-3000:]


def test_serve_without_a_configuration_uses_rules_from_the_working_directory_if_there(tmp_path):
    # Without ./rules it says so (routing still works: the default group); with it, it loads it.
    for with_rules in (False, True):
        folder = tmp_path / f"run-{with_rules}"
        folder.mkdir()
        if with_rules:
            (folder / "rules").mkdir()
            (folder / "rules" / "r.yaml").write_text("name: r\ncondition: source == 'x'\nroutingGroup: etl\n")
        log = folder / "log"
        with open(log, "wb") as fh:
            proc = subprocess.Popen([sys.executable, "-m", "gateway.cli", "serve", "--port", "0"], cwd=folder,
                                    env=_env(tmp_path), stdout=fh, stderr=subprocess.STDOUT)
        try:
            _port_of(proc, log)
            text = log.read_text()
            missing = f"no rules: the default folder rules/ does not exist in {folder}; every query goes to "
            assert (missing in text) is not with_rules, text
            assert "rules loaded: version " in text and f"{int(with_rules)} rules from" in text, text
        finally:
            assert _stop(proc) == 0, log.read_text()[-3000:]
