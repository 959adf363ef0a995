"""`trino-gateway demo` starts, answers the official client as printed, and stops on Ctrl-C:
from the checkout, and as a user runs it, from a wheel installed in a fresh virtual environment
and started in another directory (one with an unrelated ``rules/`` folder), leaving nothing
behind."""
from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import venv
from pathlib import Path

import pytest
import trino

from tests.conftest import REPO, wait_for


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cluster(port: int, **kw) -> str:
    cur = trino.dbapi.connect(host="127.0.0.1", port=port, **kw).cursor()
    cur.execute("SELECT current_cluster()")
    return cur.fetchall()[0][0]


def _routes_by_the_example_rules(port: int) -> None:
    # the example rules: ETL tools go to etl, people to adhoc
    wait_for(lambda: _cluster(port, user="etl_bot", source="airflow") == "etl-1", timeout=10,
             message="airflow routed to etl")
    assert _cluster(port, user="alice", source="superset").startswith("adhoc-")


def test_demo_runs_routes_by_the_example_rules_and_stops_on_ctrl_c(tmp_path):
    port = _free_port()
    out = tmp_path / "demo.out"
    with open(out, "wb") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "gateway.cli", "demo", "--port", str(port)],
                                stdout=fh, stderr=subprocess.STDOUT, cwd=tmp_path,
                                env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        wait_for(lambda: "Press Ctrl-C" in out.read_text(), timeout=30, message="the demo banner")
        text = out.read_text()
        assert f"http://127.0.0.1:{port}" in text
        # the loop serve would run on (uvloop when installed): the demo is the product as served
        assert f"(event loop: {'uvloop' if _has_uvloop() else 'asyncio'})" in text, text
        # the printed one-line example works as printed
        example = re.search(r'Try: python3 -c "(.*)"', text).group(1)
        res = subprocess.run([sys.executable, "-c", example], capture_output=True, text=True, timeout=60)
        assert res.returncode == 0, res.stderr
        assert "ALGERIA" in res.stdout and ("adhoc-" in res.stdout or "etl-" in res.stdout)
        _routes_by_the_example_rules(port)
    finally:
        proc.send_signal(signal.SIGINT)
        code = proc.wait(30)
    assert code == 0, out.read_text()[-2000:]


def _has_uvloop() -> bool:
    import importlib.util
    return importlib.util.find_spec("uvloop") is not None


def test_demo_with_an_unknown_event_loop_says_so_in_one_line_and_starts_nothing(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "gateway.cli", "demo", "--port", str(_free_port())],
                          capture_output=True, text=True, timeout=60, cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": str(REPO), "TRINO_GATEWAY_LOOP": "tokio"})
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.strip() == ("trino-gateway demo: TRINO_GATEWAY_LOOP='tokio': "
                                   "expected one of auto, asyncio, uvloop"), proc.stderr
    assert "running" not in proc.stdout


def _user_env() -> dict[str, str]:
    """A user's environment: not this checkout on the path, no other virtual environment."""
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}


@pytest.fixture(scope="session")
def installed(built_wheel, tmp_path_factory) -> Path:
    """The ``bin/`` folder of a fresh virtual environment with the project's wheel installed
    (dependencies from the package index, at the versions of constraints.txt)."""
    root = tmp_path_factory.mktemp("venv")
    venv.create(root, with_pip=False)    # this pip installs into it (--python): faster than ensurepip
    proc = subprocess.run([sys.executable, "-m", "pip", "--python", str(root / "bin" / "python"), "install",
                           "-q", "--no-compile", "--disable-pip-version-check",
                           "-c", str(REPO / "constraints.txt"), str(built_wheel)],
                          capture_output=True, text=True, timeout=600, cwd=root, env=_user_env())
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return root / "bin"


def test_the_installed_demo_runs_from_any_directory_quietly_and_leaves_nothing(installed, tmp_path):
    # Somewhere else, next to someone's own (here: broken) rules/ folder, which the demo ignores.
    home = tmp_path / "home"
    (home / "rules").mkdir(parents=True)
    (home / "rules" / "mine.yaml").write_text("name: [not, a, rule\n")
    tmpdir = tmp_path / "tmpdir"
    tmpdir.mkdir()
    env = {**_user_env(), "TMPDIR": str(tmpdir)}
    out = tmp_path / "demo.out"
    with open(out, "wb") as fh:
        proc = subprocess.Popen([str(installed / "trino-gateway"), "demo", "--port", "0"],
                                stdout=fh, stderr=subprocess.STDOUT, cwd=home, env=env)
    try:
        wait_for(lambda: "Press Ctrl-C" in out.read_text(), timeout=30, message="the demo banner")
        text = out.read_text()
        port = int(re.search(r"running at http://127\.0\.0\.1:(\d+)", text).group(1))
        assert port != 0
        assert f"port={port}" in text                     # the printed example names it too
        rules = re.search(r"  rules from (\S+);", text).group(1)
        assert rules.startswith(str(installed.parent)) and rules.endswith("/gateway/rules"), rules
        _routes_by_the_example_rules(port)
    finally:
        proc.send_signal(signal.SIGINT)
        code = proc.wait(30)
    text = out.read_text()
    assert code == 0, text[-3000:]
    # quiet: no 406 for X-Forwarded-*, no query before the backends were probed; the one warning
    # is the admin-pages notice every gateway without auth.users logs
    warnings = [line for line in text.splitlines() if " WARNING " in line or " ERROR " in line]
    assert [w for w in warnings if "admin auth: no users configured" not in w] == [], text
    assert "Traceback" not in text, text
    assert not list(tmpdir.iterdir()), f"left behind: {list(tmpdir.iterdir())}"
    assert [p.name for p in home.iterdir()] == ["rules"]


def test_a_busy_cluster_port_is_a_clear_error(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        busy = s.getsockname()[1]
        res = subprocess.run([sys.executable, "-m", "gateway.cli", "demo", "--port", "0",
                              "--cluster-port", str(busy)], capture_output=True, text=True, timeout=60,
                             cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert res.returncode == 1
    assert res.stderr.strip().splitlines()[-1] == (
        f"trino-gateway demo: cannot listen on port {busy} for simulated cluster adhoc-1: Address already "
        "in use; try another --cluster-port or 0 (any free port)")
    assert "Traceback" not in res.stderr


def test_the_readmes_backend_commands_name_the_demos_backends():
    from gateway.sim.demo import CLUSTERS
    readme = (REPO / "README.md").read_text()
    block = re.search(r"Manage backends at run time.*?```sh\n(.*?)```", readme, re.DOTALL).group(1)
    named = set(re.findall(r"/(?:activate|deactivate|backends)/([\w.-]+)", block))
    assert named and named <= {name for name, _ in CLUSTERS}, named
