"""Graceful shutdown on SIGTERM (drain, refuse, deadline, history flushed, exit 0) and SIGHUP."""
from __future__ import annotations

import os
import signal
import threading
import time

import requests
import yaml

from tests.conftest import gateway_config, wait_for
from tests.ops.support import metric, scrape

CLOSE = {"X-Trino-User": "alice", "Connection": "close"}


def _post(url: str, sql: str) -> dict:
    return requests.post(url + "/v1/statement", data=sql.encode(), headers=CLOSE, timeout=10).json()


def test_sigterm_drains_queries_refuses_new_ones_flushes_history_and_exits_0(
        fresh_clusters, gateway_factory, tmp_path):
    cfg = gateway_config(tmp_path, fresh_clusters, groups={"adhoc-1": "adhoc"},
                         server={"shutdownGracePeriod": "20s"}, store={"historyFlushInterval": "5s"})
    gw = gateway_factory(cfg)
    # one query through the trino client (keep-alive connection) ...
    result: dict = {}

    def run() -> None:
        try:
            cur = gw.connect().cursor()
            cur.execute("SELECT sleep(2)")
            result["rows"] = cur.fetchall()
            result["id"] = cur.query_id
        except Exception as exc:  # reported by the assertion below
            result["error"] = exc

    t = threading.Thread(target=run, daemon=True)
    t.start()
    # ... and one polled by hand, every request on a new connection
    raw = _post(gw.url, "SELECT sleep(2)")
    wait_for(lambda: metric(scrape(gw), "trino_gateway_queries_in_flight") == 2, message="2 queries in flight")

    started = time.monotonic()
    gw.proc.send_signal(signal.SIGTERM)
    wait_for(lambda: gw.api("GET", "/trino-gateway/readyz").status_code == 503, message="readyz 503")
    assert gw.api("GET", "/trino-gateway/livez").status_code == 200
    refused = _post(gw.url, "SELECT 1")
    assert refused["error"]["errorName"] == "SERVER_SHUTTING_DOWN", refused
    assert "shutting down" in refused["error"]["message"]
    assert "nextUri" not in refused

    doc = raw   # follow-ups on new connections are still served while draining
    while "nextUri" in doc:
        r = requests.get(doc["nextUri"], headers=CLOSE, timeout=10)
        assert r.status_code == 200, r.text
        doc = r.json()
    assert doc["stats"]["state"] == "FINISHED", doc
    t.join(20)
    assert "error" not in result, result.get("error")
    assert len(result["rows"]) == 1

    assert gw.proc.wait(20) == 0
    assert time.monotonic() - started < 15, "the drain should end when the queries finish, not at the deadline"
    log = gw.log()
    assert "shutting down" in log and "stopped" in log and "still in flight" not in log

    # history was flushed before exit (flush interval 5 s: only the shutdown flush can have written it)
    again = gateway_factory(cfg)
    rows = {q["queryId"]: q for q in again.api("GET", "/api/queries").json()}
    for qid in (result["id"], raw["id"]):
        assert qid in rows, f"query {qid} missing from history after shutdown"
        assert rows[qid]["finalState"] == "FINISHED"


def test_sigterm_deadline_cuts_off_a_query_that_runs_too_long(fresh_clusters, gateway_factory, tmp_path):
    gw = gateway_factory(gateway_config(tmp_path, fresh_clusters, groups={"adhoc-1": "adhoc"},
                                        server={"shutdownGracePeriod": "1s"}))
    doc = _post(gw.url, "SELECT sleep(30)")
    stop = threading.Event()

    def poll() -> None:   # a client polling as usual
        d = doc
        while "nextUri" in d and not stop.is_set():
            try:
                d = requests.get(d["nextUri"], headers=CLOSE, timeout=5).json()
            except (requests.RequestException, ValueError):
                return

    threading.Thread(target=poll, daemon=True).start()
    wait_for(lambda: metric(scrape(gw), "trino_gateway_queries_in_flight") == 1, message="query in flight")
    started = time.monotonic()
    gw.proc.send_signal(signal.SIGTERM)
    assert gw.proc.wait(15) == 0
    stop.set()
    assert time.monotonic() - started < 8
    assert "still in flight after 1s" in gw.log()


def test_two_workers_stop_together_with_exit_0(fresh_clusters, gateway_factory, tmp_path):
    gw = gateway_factory(gateway_config(tmp_path, fresh_clusters, groups={"adhoc-1": "adhoc"},
                                        server={"workers": 2}))
    wait_for(lambda: gw.log().count("listening on") >= 2, message="two workers")
    doc = _post(gw.url, "SELECT 1")
    while "nextUri" in doc:
        doc = requests.get(doc["nextUri"], headers=CLOSE, timeout=10).json()
    gw.proc.send_signal(signal.SIGTERM)
    assert gw.proc.wait(20) == 0
    assert gw.log().count("INFO gateway.server: stopped") == 2


def test_workers_stop_when_their_supervisor_is_killed(fresh_clusters, gateway_factory, tmp_path):
    """SIGKILL (or the OOM killer) on the supervisor: no orphaned worker keeps the port."""
    gw = gateway_factory(gateway_config(tmp_path, fresh_clusters, groups={"adhoc-1": "adhoc"},
                                        server={"workers": 2}))
    wait_for(lambda: gw.log().count("listening on") >= 2, message="two workers")
    workers = [int(p) for p in open(f"/proc/{gw.proc.pid}/task/{gw.proc.pid}/children").read().split()
               if b"gateway.store" not in open(f"/proc/{p}/cmdline", "rb").read()]
    assert len(workers) == 2
    gw.proc.kill()
    gw.proc.wait()

    def gone(pid: int) -> bool:
        try:
            return open(f"/proc/{pid}/stat").read().split(")")[1].split()[0] == "Z"
        except OSError:
            return True
    wait_for(lambda: all(gone(p) for p in workers), timeout=30, message="the workers to stop")
    wait_for(lambda: gw.log().count("INFO gateway.server: stopped") == 2, timeout=10,
             message="both workers to stop gracefully")


def test_sighup_reloads_rules_the_watcher_cannot_see_and_logging(fresh_clusters, gateway_factory, tmp_path):
    # The rules file is a symlink to a file in a folder the watcher does not watch, and the
    # edit keeps size, inode and mtime: only SIGHUP can make the gateway notice it.
    real = tmp_path / "real"
    real.mkdir()
    target = real / "r.yaml"
    target.write_text("name: r\npriority: 10\ncondition: source == \"x\"\nroutingGroup: etl\n")
    (tmp_path / "rules").mkdir(exist_ok=True)
    link = tmp_path / "rules" / "current.yaml"
    link.symlink_to(target)
    gw = gateway_factory(gateway_config(tmp_path, fresh_clusters, rules=[str(link)]))
    version = gw.api("GET", "/api/rules").json()["version"]
    st = os.stat(target)
    with open(target, "r+b") as fh:
        edited = fh.read().replace(b"priority: 10", b"priority: 11")
        fh.seek(0)
        fh.write(edited)
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
    time.sleep(2.5)   # longer than the watcher's poll interval and debounce: it must not notice
    assert gw.api("GET", "/api/rules").json()["version"] == version

    # also change what can change at run time (logging) and what cannot (server)
    cfg = yaml.safe_load(gw.config_path.read_text())
    cfg["logging"] = {"level": "DEBUG"}
    cfg["server"]["shutdownGracePeriod"] = "7s"
    gw.config_path.write_text(yaml.safe_dump(cfg))
    gw.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: gw.api("GET", "/api/rules").json()["version"] != version, message="rules reloaded on SIGHUP")
    assert gw.api("GET", "/api/rules").json()["rules"][0]["priority"] == 11
    log = gw.log()
    assert "SIGHUP: logging is now level DEBUG" in log
    assert "SIGHUP: changes to server take effect after a restart" in log
    assert gw.proc.poll() is None

    # a configuration that does not load is reported and the running one kept
    gw.config_path.write_text("server: {port: [\n")
    gw.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "SIGHUP: configuration not reloaded" in gw.log(), message="the error logged")
    assert gw.api("GET", "/trino-gateway/readyz").status_code == 200
