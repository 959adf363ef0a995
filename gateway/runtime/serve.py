"""Running the gateway as a server: sockets, worker processes, signals, graceful shutdown.

``server.workers: N`` forks N processes that share the listening socket; the parent only
supervises (restarting a worker that crashed) and forwards SIGTERM/SIGINT/SIGHUP.

On SIGTERM a worker turns readyz to 503 and refuses new statements with a Trino-shaped
``SERVER_SHUTTING_DOWN`` failure, but keeps listening: the queries it knows (routed or relayed
here, see ``gateway.metrics.ActiveQueries``) keep being served, including follow-ups that arrive
on new connections, until they finish or ``server.shutdownGracePeriod`` passes. Only then does
it stop listening, close the remaining connections, flush query history and exit 0. A load
balancer in front sees readyz fail and stops sending new clients meanwhile.

SIGHUP re-reads the configuration file: ``logging`` applies at once, the rules are reloaded
(even when the watcher missed a change), and other changed sections are named in a warning
because they need a restart.
"""
from __future__ import annotations

import asyncio
import atexit
import dataclasses
import logging
import os
import shutil
import signal
import socket
import ssl
import tempfile
import time
from typing import Any

from gateway.runtime.http_server import HTTPServer  # Tornado's interface, faster HTTP/1.1 layer (docs/benchmarks.md)
from tornado.netutil import bind_sockets

from gateway.runtime import gcpolicy
from gateway.runtime import loop as event_loop
from gateway.config import Config, ConfigError, ServerConfig, load_config
from gateway.limits import ConnectionLimits, bound_allocator, descriptor_limit
from gateway.logs import setup_logging

log = logging.getLogger("gateway.server")


def prepare_workers(config: Config) -> None:
    """Before prometheus-client is imported: with several workers, metrics live in files that
    every worker writes and /metrics aggregates (prometheus-client reads this at import)."""
    s = config.server
    if s.workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        d = s.stateDir
        if d is None:
            d = tempfile.mkdtemp(prefix="trino-gateway-metrics-")
            # Ours alone: removed when the supervisor exits (workers leave with os._exit).
            atexit.register(shutil.rmtree, d, ignore_errors=True)
        os.makedirs(d, exist_ok=True)
        for f in os.listdir(d):
            if f.endswith(".db"):
                os.unlink(os.path.join(d, f))
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = d


def serve(config: Config, *, ready_callback: Any = None) -> int:
    setup_logging(config.logging)
    s = config.server
    port = s.port
    try:
        sockets = bind_sockets(port, s.host, reuse_port=False)
        if s.tls.certFile and s.tls.port:
            port = s.tls.port
            tls_sockets = bind_sockets(port, s.host)
        else:
            tls_sockets = []
    except OSError as exc:
        log.error("cannot listen on %s port %d: %s", s.host, port, exc.strerror)
        return 1
    if s.tls.certFile:
        try:
            tls_context(config)
        except (OSError, ssl.SSLError) as exc:
            log.error("cannot load the TLS certificate or key: %s", exc)
            return 1
    try:
        event_loop.loop_factory()   # a bad TRINO_GATEWAY_LOOP fails here, once, before any worker
    except event_loop.LoopChoiceError as exc:
        log.error("%s", exc)
        return 1
    if s.workers > 1:
        return _supervise(config, (sockets, tls_sockets))
    return event_loop.run(_run_worker(config, (sockets, tls_sockets), ready_callback))


def tls_context(config: Config) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(config.server.tls.certFile, config.server.tls.keyFile)  # type: ignore[arg-type]
    return ctx


def backend_ssl_context(s: ServerConfig) -> ssl.SSLContext | None:
    """The context for https:// backends (proxying and probes), or None for the defaults.

    ``server.backendCaFile`` adds trusted CAs; ``server.backendVerify: false`` turns checking
    off, with a warning, since anyone on the path could then read queries and credentials.
    """
    if s.backendVerify and not s.backendCaFile:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=s.backendCaFile)
    if not s.backendVerify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        log.warning("server.backendVerify is false: the certificates of https:// backends are "
                    "not checked (anyone on the network path can impersonate a backend)")
    return ctx


def _exit_with_parent(parent: int) -> None:
    """A worker stops (SIGTERM: gracefully) when its supervisor dies, even by SIGKILL or OOM,
    instead of serving on as an orphan that holds the port and the store (Linux only)."""
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM, 0, 0, 0)    # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:                    # it died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


def _supervise(config: Config, sockets: tuple[list[socket.socket], list[socket.socket]]) -> int:
    """Fork the workers and wait; forward signals; restart a worker that crashed.

    Worker 0 starts alone first: if it cannot start (a store that does not exist, say), no
    other worker could either, so the supervisor exits 1 at once, the reason logged once by
    that worker, instead of restarting workers forever while clients wait on the bound port.
    Later, a worker that crashed is restarted; one that fails again before it is ready is
    restarted after a growing pause (up to ``_MAX_RESTART_DELAY``).
    """
    children: dict[int, tuple[int, int]] = {}   # pid -> (worker number, read end of its ready pipe)
    failed_starts: dict[int, int] = {}          # worker number -> start failures in a row

    supervisor = os.getpid()

    def spawn(i: int) -> int:
        ready_r, ready_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                for fd in [ready_r] + [r for _, r in children.values()]:   # the supervisor's ends
                    os.close(fd)
                for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                    signal.signal(sig, signal.SIG_DFL)
                _exit_with_parent(supervisor)

                def ready(_gw: Any, _port: int) -> None:
                    os.write(ready_w, b"r")
                    os.close(ready_w)
                code = event_loop.run(_run_worker(config, sockets, ready, worker=i))
            except BaseException:  # noqa: BLE001 - a forked worker never returns into the supervisor
                log.exception("worker %d failed", i)
            finally:
                os._exit(code)
        os.close(ready_w)
        children[pid] = (i, ready_r)
        return pid

    stopping = False

    def forward(signum: int, _frame: Any) -> None:
        nonlocal stopping
        if signum in (signal.SIGTERM, signal.SIGINT):
            stopping = True
        for pid in list(children):
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, forward)
    first = spawn(0)
    if os.read(children[first][1], 1) != b"r":     # end of file: it exited before it was ready
        _, status = os.waitpid(first, 0)
        os.close(children.pop(first)[1])
        _metrics_process_dead(first)
        if stopping:                                # SIGTERM / Ctrl-C while it was starting
            return 0
        log.error("the first worker could not start (exit code %d); stopping",
                  os.waitstatus_to_exitcode(status))
        return 1
    for i in range(1, config.server.workers):
        spawn(i)
    log.info("supervising %d worker processes on port %d", config.server.workers,
             sockets[0][0].getsockname()[1])
    worst = 0
    while children:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        except InterruptedError:
            continue
        entry = children.pop(pid, None)
        code = os.waitstatus_to_exitcode(status)
        _metrics_process_dead(pid)
        if entry is None:
            continue
        i, ready_r = entry
        os.set_blocking(ready_r, False)
        try:
            was_ready = pid == first or os.read(ready_r, 1) == b"r"
        except BlockingIOError:
            was_ready = False
        os.close(ready_r)
        if not stopping and code != 0:
            failed_starts[i] = 0 if was_ready else failed_starts.get(i, 0) + 1
            delay = min(_MAX_RESTART_DELAY, 0.5 * 2 ** failed_starts[i])
            log.error("worker %d exited with %d%s; restarting it in %.1fs", i, code,
                      "" if was_ready else " before it was ready", delay)
            time.sleep(delay)
            if not stopping:
                spawn(i)
        else:
            worst = max(worst, abs(code))
    return 0 if worst == 0 else 1


_MAX_RESTART_DELAY = 10.0   # seconds between restarts of a worker that keeps failing to start


def server_options(config: Config) -> dict[str, Any]:
    """The HTTP server's options for ``config`` (``gateway.runtime.http_server.HTTPServer``):
    one place, so that ``serve`` and ``demo`` run the same server."""
    s = config.server
    limits = ConnectionLimits(max_connections=s.maxConnections, per_address=s.maxConnectionsPerAddress,
                              reserve=s.reservedDescriptors, descriptor_limit=descriptor_limit())
    return dict(xheaders=s.trustForwardedHeaders, idle_connection_timeout=s.idleConnectionTimeout,
                max_body_size=s.maxBodySize + 1, body_timeout=s.backendRequestTimeout,
                header_timeout=s.headerTimeout, body_progress_timeout=s.bodyProgressTimeout,
                limits=limits, workers=s.workers)


async def _run_worker(config: Config, socket_sets: tuple[list[socket.socket], list[socket.socket]],
                      ready_callback: Any,
                      worker: int = 0) -> int:
    from gateway.app import Gateway, make_app  # after prepare_workers (metrics mode)
    bound_allocator()   # large request bodies are given back to the system when freed
    gw = Gateway(config)
    try:
        await gw.start()
    except Exception as exc:
        log.error("cannot start: %s", exc)
        return 1
    app = make_app(gw)
    s = config.server
    sockets, tls_sockets = socket_sets
    opts = server_options(config)
    servers = []
    if s.tls.certFile and not tls_sockets:  # HTTPS only, on server.port
        servers.append(HTTPServer(app, ssl_options=tls_context(config), **opts))
        servers[0].add_sockets(sockets)
    else:
        servers.append(HTTPServer(app, **opts))
        servers[0].add_sockets(sockets)
        if tls_sockets:
            servers.append(HTTPServer(app, ssl_options=tls_context(config), **opts))
            servers[1].add_sockets(tls_sockets)
    # After add_sockets froze what start-up built (gateway/runtime/http_server.py), in this process:
    # a forked worker gets its own settings and scheduler (gateway/runtime/gcpolicy.py).
    stop_gc = gcpolicy.install(observe=gw.metrics.gc_pause)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGHUP, lambda: reload_on_sighup(config, gw))
    port = sockets[0].getsockname()[1]
    scheme = "https" if s.tls.certFile and not tls_sockets else "http"
    log.info("worker %d listening on %s:%d (%s) on the %s event loop", worker, s.host, port, scheme,
             event_loop.kind(loop))
    if tls_sockets:
        log.info("worker %d listening on %s:%d (https)", worker, s.host, tls_sockets[0].getsockname()[1])
    if ready_callback is not None:
        ready_callback(gw, port)
    await stop.wait()
    await _drain(gw, servers)
    stop_gc()
    log.info("stopped")
    return 0


async def _drain(gw: Any, servers: list[HTTPServer]) -> None:
    """Graceful shutdown of one worker (see the module docstring for why we keep listening)."""
    grace = gw.config.server.shutdownGracePeriod
    gw.shutting_down = True
    queries = gw.metrics.queries
    log.info("shutting down: readyz is 503, new statements are refused; %d request(s) and "
             "%d query(ies) in flight have up to %.0fs to finish", gw.in_flight, queries.live(), grace)
    deadline = time.monotonic() + grace
    while (gw.in_flight > 0 or queries.live() > 0) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    if gw.in_flight or queries.live():
        log.warning("%d request(s) and %d query(ies) still in flight after %.0fs; closing them",
                    gw.in_flight, queries.live(), grace)
    for server in servers:
        server.stop()
    for server in servers:
        await server.close_all_connections()
    await gw.stop()


def reload_on_sighup(config: Config, gw: Any) -> None:
    """Apply what can change safely at run time from the configuration file, reload the rules."""
    if config.source.startswith("<"):
        log.info("SIGHUP: no configuration file to re-read")
    else:
        try:
            new = load_config(config.source)
        except ConfigError as exc:
            log.error("SIGHUP: configuration not reloaded, keeping the running one: %s", exc)
        else:
            if new.logging != config.logging:
                setup_logging(new.logging)
                config.logging = new.logging
                log.info("SIGHUP: logging is now level %s, format %s", new.logging.level, new.logging.format)
            changed = [f.name for f in dataclasses.fields(Config)
                       if f.name not in ("logging", "source") and getattr(new, f.name) != getattr(config, f.name)]
            if changed:
                log.warning("SIGHUP: changes to %s take effect after a restart", ", ".join(changed))
    gw.reload_config()


def _metrics_process_dead(pid: int) -> None:
    """A worker is gone: its live gauges stop counting (prometheus-client's files and ours)."""
    folder = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not folder:
        return
    from prometheus_client import multiprocess
    from gateway import metrics_shared
    # Each kind of file on its own: one that cannot be removed leaves the other's clean-up done.
    for mark in (multiprocess.mark_process_dead, metrics_shared.process_dead):
        try:
            mark(pid, folder)
        except Exception as exc:  # noqa: BLE001 - metrics housekeeping must not stop the supervisor
            log.debug("cannot mark worker %d dead for metrics: %s", pid, exc)
