"""Simulated Trino coordinators for the demo, the end-to-end tests and the benchmarks.

A `SimulatedCluster` is a real HTTP server (Tornado) speaking the Trino client protocol
(section 8 of shared/trino-protocol.md) over an in-memory SQLite database holding TPC-H
`nation` and `region` and a `numbers` table (n = 1..100000). `SELECT current_cluster()`
answers the cluster's name; `sleep(s)`, `fail(msg)` and `repeat(s, n)` also exist (see
gateway/sim/data.py). Session statements (USE, SET/RESET SESSION, PREPARE, EXECUTE,
DEALLOCATE PREPARE, START TRANSACTION, COMMIT, ROLLBACK) set the response headers Trino
sets; a statement carrying an X-Trino-Transaction-Id this cluster did not start fails
UNKNOWN_TRANSACTION; `CALL system.runtime.kill_query(...)` kills a query of this cluster.
The session property `sim_page_rows` (X-Trino-Session) sets the page size of one query.

Endpoints: /v1/statement (+ queued/executing/partialCancel URIs), /v1/info, /v1/info/state,
/v1/status, /v1/query[/<qid>], /v1/jmx/mbean/<name>, /metrics, /ui/login, /ui/api/stats,
/ui/api/query[/<qid>], /ui/query.html?<qid>, /v1/spooled/download|ack/<id> (with
`spooling`), /oauth2/* (with auth="oauth2").

Test control over HTTP, so a cluster in another process can be driven:
  POST /_sim/control  {"slow": 0.5, "fail": true, ...}  -> 200 and the whole control state
  GET  /_sim/control                                     -> the control state
  GET  /_sim/queries   every query seen: queryId, state, user, sql, headers received, ...
  POST /_sim/reset     control back to the constructor's settings, queries and data forgotten
The control fields are documented in gateway/sim/controls.py; in-process use
`cluster.set_control(...)`, `cluster.control`, `cluster.query_log()`.

Run one as a process:
  python3 -m gateway.sim.cluster --name c1 --port 18081 [--process-forwarded] [--page-rows N]
      [--queued-polls N] [--auth basic|jwt|oauth2] [--spooling] [--host H]
It prints `READY <port>` once listening and exits cleanly on SIGTERM or SIGINT.

For tests: `run_cluster_in_thread(name, **kw) -> (cluster, url, stop)` and
`spawn_cluster_process(name, port=0, **flags) -> (Popen, url)`.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import hashlib
import logging
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable

import tornado.httpserver
import tornado.ioloop
import tornado.netutil
import tornado.web

from .data import Database
from .controls import Control, ControlError
from .engine import Engine
from .endpoints import make_app
from .handlers import make_oauth_token

__all__ = ["SimulatedCluster", "run_cluster_in_thread", "spawn_cluster_process", "main"]

log = logging.getLogger(__name__)
MAX_PENDING_OAUTH = 1000


def _log_request(handler: tornado.web.RequestHandler) -> None:
    # Access logs of every poll would swamp test output and slow benchmarks (and the 5xx
    # answers here are simulated failures; real errors are logged by Tornado anyway).
    if log.isEnabledFor(logging.DEBUG):
        log.debug("%s %s -> %d", handler.request.method, handler.request.uri,
                  handler.get_status())


class SimulatedCluster:
    """A fake Trino coordinator. Create it, `await start()`, use `url`, `await stop()`."""

    def __init__(self, name: str, *, process_forwarded: bool = False, page_rows: int = 100,
                 queued_polls: int = 1, auth: str | None = None, spooling: bool = False) -> None:
        if not name or not isinstance(name, str):
            raise ValueError("a simulated cluster needs a non-empty name")
        self.name = name
        self._defaults = {"process_forwarded": process_forwarded, "page_rows": page_rows,
                          "queued_polls": queued_polls, "auth": auth, "spooling": spooling}
        self.control = Control()
        self.control.update(self._defaults)  # raises ControlError naming a bad argument
        self.started_at = time.time()
        self.ui_secret = os.urandom(16)
        self.oauth_pending: dict[str, dict[str, Any]] = {}
        self.oauth_by_hash: dict[str, str] = {}
        self.oauth_poll_seconds = 10.0
        self.host = "127.0.0.1"
        self.port: int | None = None
        self.engine: Engine | None = None  # type: ignore[assignment]
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._server: tornado.httpserver.HTTPServer | None = None
        self._sweeper: tornado.ioloop.PeriodicCallback | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping = False

    @property
    def url(self) -> str:
        if self.port is None:
            raise RuntimeError(f"simulated cluster {self.name} is not started")
        host = self.host if self.host not in ("", "0.0.0.0", "::") else "127.0.0.1"
        return f"http://{'[' + host + ']' if ':' in host else host}:{self.port}"

    async def start(self, port: int = 0, host: str = "127.0.0.1") -> int:
        """Listen on host:port (0: an ephemeral port); returns the bound port."""
        if self._server is not None:
            raise RuntimeError(f"simulated cluster {self.name} is already started")
        self.host = host
        self._loop = asyncio.get_running_loop()
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=32, thread_name_prefix=f"sim-{self.name}")
        db = await self._loop.run_in_executor(self._executor, Database, self.name)
        self.engine = Engine(self.name, self.control, self._executor, db)
        sockets = tornado.netutil.bind_sockets(port, host)
        app = make_app(self)
        app.settings["log_function"] = _log_request
        self._server = tornado.httpserver.HTTPServer(app)
        self._server.add_sockets(sockets)
        self.port = sockets[0].getsockname()[1]
        self._sweeper = tornado.ioloop.PeriodicCallback(self._sweep, 1000)
        self._sweeper.start()
        return self.port

    async def stop(self) -> None:
        """Stop listening, fail running queries, release hung requests and threads."""
        self._stopping = True
        if self._sweeper is not None:
            self._sweeper.stop()
        if self._server is not None:
            self._server.stop()
        if self.engine is not None:
            self.engine.shutdown()
        if self._server is not None:
            try:
                await asyncio.wait_for(self._server.close_all_connections(), 5)
            except asyncio.TimeoutError:
                log.warning("simulated cluster %s: connections still open at stop", self.name)
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
        if self.engine is not None:
            self.engine.db.close()
        self._server = None

    # ------------------------------------------------------------ control

    def set_control(self, **changes: Any) -> dict[str, Any]:
        """Change control fields (see controls.py); returns the whole state."""
        self.control.update(changes)
        return self.control.as_dict()

    def reset_control(self) -> dict[str, Any]:
        """Control back to the constructor's settings (queries and data are kept)."""
        fresh = Control()
        fresh.update(self._defaults)
        for key, value in fresh.as_dict().items():
            setattr(self.control, key, value)
        return self.control.as_dict()

    async def reset(self) -> None:
        """Control back to the constructor's settings; queries, transactions, data forgotten."""
        self.reset_control()
        old = self.engine
        assert old is not None and self._loop is not None
        old.shutdown()
        db = await self._loop.run_in_executor(self._executor, Database, self.name)
        self.engine = Engine(self.name, self.control, self._executor, db)  # type: ignore[arg-type]
        old.db.close()
        self.oauth_pending.clear()
        self.oauth_by_hash.clear()

    def reset_threadsafe(self, timeout: float = 10.0) -> None:
        """`reset()` from a thread other than the cluster's event loop."""
        assert self._loop is not None
        asyncio.run_coroutine_threadsafe(self.reset(), self._loop).result(timeout)

    async def hold(self) -> None:
        """Wait while the `hang` control is on (released when the cluster stops)."""
        while self.control.hang and not self._stopping:
            await asyncio.sleep(0.02)

    def _sweep(self) -> None:
        if self.engine is not None:
            self.engine.sweep()

    # ------------------------------------------------------------ views

    def query_log(self) -> list[dict[str, Any]]:
        """What `/_sim/queries` returns: every query this cluster has seen, oldest first."""
        out = []
        assert self.engine is not None
        for q in list(self.engine.queries.values()):
            headers: dict[str, list[str]] = {}
            for name, value in q.headers:
                headers.setdefault(name, []).append(value)
            entry: dict[str, Any] = {
                "queryId": q.id, "cluster": self.name, "state": q.state,
                "user": q.session.user, "source": q.session.source,
                "catalog": q.session.catalog, "schema": q.session.schema, "sql": q.sql,
                "transactionId": q.session.transaction_id, "headers": headers,
                "requests": q.requests, "rows": q.rows_out, "created": q.created,
            }
            if q.update_type:
                entry["updateType"] = q.update_type
            if q.error:
                entry["errorName"] = q.error["errorName"]
                entry["errorMessage"] = q.error["message"]
            out.append(entry)
        return out

    def query_infos(self, base: str, state: str | None, *,
                    synthetic: bool = False) -> list[dict[str, Any]]:
        """BasicQueryInfo-like list for /v1/query and /ui/api/query (optionally by state)."""
        assert self.engine is not None
        wanted = {s.strip().upper() for s in state.split(",")} if state else None
        items = [self.engine.describe(q, base) for q in list(self.engine.queries.values())
                 if wanted is None or q.state in wanted]
        if synthetic and (wanted is None or "QUEUED" in wanted):
            day = time.strftime("%Y%m%d", time.gmtime())
            index = 0
            for user, count in self.control.user_queued.items():
                for _ in range(count):
                    qid = f"{day}_000000_{index:05d}_{self.engine.ids.coordinator_id}"
                    items.append({"queryId": qid, "state": "QUEUED", "scheduled": False,
                                  "session": {"user": user}, "sessionUser": user,
                                  "resourceGroupId": ["global"], "query": "SELECT 1",
                                  "self": f"{base}/v1/query/{qid}", "queryType": "SELECT"})
                    index += 1
        return items

    def ui_stats(self) -> dict[str, Any]:
        assert self.engine is not None
        queued, running = self.engine.counts()
        workers = self.control.workers
        queries = list(self.engine.queries.values())
        return {"runningQueries": running, "blockedQueries": 0, "queuedQueries": queued,
                "activeCoordinators": 1, "activeWorkers": workers,
                "runningDrivers": running * workers,
                "totalAvailableProcessors": workers * (os.cpu_count() or 1),
                "reservedMemory": 0.0, "totalInputRows": sum(q.rows_out for q in queries),
                "totalInputBytes": sum(q.bytes_out for q in queries), "totalCpuTimeSecs": 0}

    # ------------------------------------------------------------ OAuth2 state

    def oauth_challenge(self, base: str) -> str:
        """A new authentication id and the Bearer challenge naming it (section 6)."""
        auth_id = str(uuid.uuid4())
        auth_hash = hashlib.sha256(auth_id.encode()).hexdigest()
        if len(self.oauth_pending) >= MAX_PENDING_OAUTH:
            self.oauth_forget(next(iter(self.oauth_pending)))
        self.oauth_pending[auth_id] = {"hash": auth_hash, "token": None, "event": asyncio.Event()}
        self.oauth_by_hash[auth_hash] = auth_id
        return (f'Bearer x_redirect_server="{base}/oauth2/token/initiate/{auth_hash}", '
                f'x_token_server="{base}/oauth2/token/{auth_id}"')

    def oauth_complete(self, auth_hash: str) -> bool:
        auth_id = self.oauth_by_hash.get(auth_hash)
        if auth_id is None or auth_id not in self.oauth_pending:
            return False
        entry = self.oauth_pending[auth_id]
        entry["token"] = entry["token"] or make_oauth_token()
        entry["event"].set()
        return True

    def oauth_forget(self, auth_id: str) -> None:
        entry = self.oauth_pending.pop(auth_id, None)
        if entry is not None:
            self.oauth_by_hash.pop(entry["hash"], None)


# ---------------------------------------------------------------- test helpers

def run_cluster_in_thread(name: str, *, port: int = 0, host: str = "127.0.0.1",
                          **kw: Any) -> tuple[SimulatedCluster, str, Callable[[], None]]:
    """Start a cluster on its own event loop in a daemon thread.

    Returns (cluster, url, stop); `stop()` is idempotent and waits for the thread."""
    ready = threading.Event()
    box: dict[str, Any] = {}
    loop = asyncio.new_event_loop()

    def run() -> None:
        asyncio.set_event_loop(loop)
        try:
            cluster = SimulatedCluster(name, **kw)
            loop.run_until_complete(cluster.start(port, host))
            box["cluster"] = cluster
        except BaseException as e:  # reported to the caller below
            box["error"] = e
            ready.set()
            loop.close()
            return
        ready.set()
        loop.run_forever()
        loop.close()

    thread = threading.Thread(target=run, name=f"sim-cluster-{name}", daemon=True)
    thread.start()
    if not ready.wait(30):
        raise RuntimeError(f"simulated cluster {name} did not start within 30 s")
    if "error" in box:
        raise box["error"]
    cluster: SimulatedCluster = box["cluster"]
    stopped = threading.Lock()

    def stop() -> None:
        if not stopped.acquire(blocking=False):
            return
        try:
            asyncio.run_coroutine_threadsafe(cluster.stop(), loop).result(15)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(15)

    return cluster, cluster.url, stop


REPO_ROOT = Path(__file__).resolve().parents[2]


def spawn_cluster_process(name: str, port: int = 0, *, timeout: float = 30.0,
                          **flags: Any) -> tuple[subprocess.Popen[str], str]:
    """Run `python3 -m gateway.sim.cluster` and wait for its READY line.

    `flags` become options: process_forwarded=True -> --process-forwarded,
    page_rows=10 -> --page-rows 10. Returns (process, url); terminate the process to stop."""
    args = [sys.executable, "-m", "gateway.sim.cluster", "--name", name, "--port", str(port)]
    for key, value in flags.items():
        option = "--" + key.replace("_", "-")
        if value is True:
            args.append(option)
        elif value not in (False, None):
            args += [option, str(value)]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
    errors = tempfile.TemporaryFile(mode="w+")
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=errors, text=True, env=env,
                            cwd=str(REPO_ROOT))
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: lines.put(proc.stdout.readline() if proc.stdout else ""),
                     daemon=True).start()
    try:
        line = lines.get(timeout=timeout)
    except queue.Empty:
        line = ""
    if not line.startswith("READY "):
        proc.kill()
        proc.wait(5)
        errors.seek(0)
        raise RuntimeError(f"simulated cluster {name} did not start (first line {line!r}); "
                           f"stderr: {errors.read()[-2000:]}")
    host = str(flags.get("host") or "127.0.0.1")
    host = "127.0.0.1" if host in ("0.0.0.0", "") else host
    return proc, f"http://{host}:{int(line.split()[1])}"


# ---------------------------------------------------------------- command line

async def _serve(args: argparse.Namespace) -> None:
    cluster = SimulatedCluster(args.name, process_forwarded=args.process_forwarded,
                               page_rows=args.page_rows, queued_polls=args.queued_polls,
                               auth=args.auth, spooling=args.spooling)
    port = await cluster.start(args.port, args.host)
    print(f"READY {port}", flush=True)
    done = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, done.set)
    await done.wait()
    await cluster.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m gateway.sim.cluster",
                                     description="Run one simulated Trino coordinator.")
    parser.add_argument("--name", required=True, help="cluster name (current_cluster())")
    parser.add_argument("--port", type=int, default=0, help="port (0: ephemeral)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind")
    parser.add_argument("--process-forwarded", action="store_true",
                        help="honour X-Forwarded-* headers instead of answering 406")
    parser.add_argument("--page-rows", type=int, default=100, help="rows per result page")
    parser.add_argument("--queued-polls", type=int, default=1,
                        help="queued pages before the executing URI")
    parser.add_argument("--auth", choices=["basic", "jwt", "oauth2"], default=None)
    parser.add_argument("--spooling", action="store_true",
                        help="use the spooling protocol when the client asks for json")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s")
    try:
        asyncio.run(_serve(args))
    except ControlError as e:
        parser.error(str(e))
    except OSError as e:
        print(f"cannot listen on {args.host}:{args.port}: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
