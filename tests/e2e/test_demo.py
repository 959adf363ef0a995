"""`trino-gateway demo` starts, answers the official client as printed, and stops on Ctrl-C."""
from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
import time

import trino

from tests.conftest import REPO, wait_for


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_demo_runs_routes_by_the_example_rules_and_stops_on_ctrl_c(tmp_path):
    port = _free_port()
    out = tmp_path / "demo.out"
    with open(out, "wb") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "gateway.cli", "demo", "--port", str(port)],
                                stdout=fh, stderr=subprocess.STDOUT, cwd=tmp_path)
    try:
        wait_for(lambda: "Press Ctrl-C" in out.read_text(), timeout=30, message="the demo banner")
        text = out.read_text()
        assert f"http://127.0.0.1:{port}" in text
        # the printed one-line example works as printed
        example = re.search(r'Try: python3 -c "(.*)"', text).group(1)
        res = subprocess.run([sys.executable, "-c", example], capture_output=True, text=True, timeout=60)
        assert res.returncode == 0, res.stderr
        assert "ALGERIA" in res.stdout and ("adhoc-" in res.stdout or "etl-" in res.stdout)

        def cluster(**kw):
            cur = trino.dbapi.connect(host="127.0.0.1", port=port, **kw).cursor()
            cur.execute("SELECT current_cluster()")
            return cur.fetchall()[0][0]

        # the example rules: ETL tools go to etl, people to adhoc
        wait_for(lambda: cluster(user="etl_bot", source="airflow") == "etl-1", timeout=10,
                 message="airflow routed to etl")
        assert cluster(user="alice", source="superset").startswith("adhoc-")
    finally:
        proc.send_signal(signal.SIGINT)
        code = proc.wait(30)
    assert code == 0, out.read_text()[-2000:]
