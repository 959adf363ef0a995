"""``trino-gateway demo``: three simulated clusters and a gateway in front of them, in one process.

Two clusters are in routing group ``adhoc`` and one in ``etl``; the example rules (``rules/``
of the repository, shipped inside the package as ``gateway/rules/``) decide where each query
goes. It runs from any directory and leaves nothing behind: its store lives in a temporary
folder removed at exit. Ctrl-C stops everything.

The gateway part is what ``trino-gateway serve`` runs: the same HTTP server
(``gateway.runtime.http_server``, with its fast path for result-page polls) with the same
options, on the same event loop (uvloop by default; ``TRINO_GATEWAY_LOOP`` chooses, and the
banner says which). Until the seventh session the demo ran Tornado's own HTTP server on asyncio.
"""
from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import tempfile

from tornado.netutil import bind_sockets

from gateway.app import Gateway, make_app
from gateway.config import config_from_dict
from gateway.logs import setup_logging
from gateway.resources import resource_dir
from gateway.runtime import loop as event_loop
from gateway.runtime.http_server import HTTPServer
from gateway.runtime.serve import server_options

CLUSTERS = (("adhoc-1", "adhoc"), ("adhoc-2", "adhoc"), ("etl-1", "etl"))


def example_rules() -> str:
    """The example rules the package carries (never a ``rules/`` of the working directory:
    that may be anything)."""
    try:
        return str(resource_dir("rules"))
    except FileNotFoundError as exc:
        raise SystemExit(f"trino-gateway demo: the example rules are missing from the installation: {exc}")


async def _give_up(clusters: list, message: str) -> int:
    """A start-up problem the user can fix: one line saying which, no traceback."""
    print(f"trino-gateway demo: {message}", file=sys.stderr)
    for c in clusters:
        await c.stop()
    return 1


async def _demo(port: int, cluster_base_port: int, state: str) -> int:
    from gateway.sim.cluster import SimulatedCluster
    clusters = []
    backends = []
    for i, (name, group) in enumerate(CLUSTERS):
        # Like coordinators with http-server.process-forwarded=true (what the README advises):
        # they take the gateway's X-Forwarded-* headers instead of refusing them with 406.
        c = SimulatedCluster(name, process_forwarded=True)
        clusters.append(c)
        wanted = cluster_base_port + i if cluster_base_port else 0
        try:
            cport = await c.start(wanted)
        except OSError as exc:
            return await _give_up(clusters, f"cannot listen on port {wanted} for simulated cluster {name}: "
                                            f"{exc.strerror}; try another --cluster-port or 0 (any free port)")
        backends.append({"name": name, "proxyTo": f"http://127.0.0.1:{cport}", "routingGroup": group})
    cfg = config_from_dict({
        "server": {"host": "127.0.0.1", "port": port},
        "store": {"url": f"sqlite:///{os.path.join(state, 'demo.db')}"},
        "routing": {"defaultGroup": "adhoc", "rules": [example_rules()]},
        "monitor": {"type": "info-api", "interval": "2s", "timeout": "1s"},
        "backends": backends,
    }, "<demo>")
    setup_logging(cfg.logging)
    try:
        sockets = bind_sockets(port, "127.0.0.1")
    except OSError as exc:
        return await _give_up(clusters, f"cannot listen on port {port}: {exc.strerror}; "
                                        "try another --port, or 0 (any free port)")
    gw = Gateway(cfg)
    await gw.start()
    # The banner invites a query at once: print it once the backends have been probed, so that
    # query finds them HEALTHY rather than failing with "no backend".
    probed = asyncio.Event()
    gw.monitor.on_round(lambda _monitor: probed.set())
    if not gw.monitor.first_round_done:
        await probed.wait()
    server = HTTPServer(make_app(gw), **server_options(cfg))
    server.add_sockets(sockets)
    port = sockets[0].getsockname()[1]     # --port 0: the port the system chose
    url = f"http://127.0.0.1:{port}"
    loop = asyncio.get_running_loop()
    print(f"\ntrino-gateway demo is running at {url} (event loop: {event_loop.kind(loop)})", flush=True)
    for b in backends:
        print(f"  backend {b['name']:8} group {b['routingGroup']:6} {b['proxyTo']}")
    print(f"  rules from {cfg.routing.rules[0]}; admin pages at {url}/trino-gateway/")
    print("\nWith the official client installed (pip install trino):")
    print(f"Try: python3 -c \"import trino; c = trino.dbapi.connect(host='127.0.0.1', port={port}, "
          f"user='me').cursor(); c.execute('SELECT name, current_cluster() FROM nation LIMIT 3'); "
          f"print(c.fetchall())\"\nPress Ctrl-C to stop.\n", flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    print("\nstopping...", flush=True)
    gw.shutting_down = True
    server.stop()
    await server.close_all_connections()
    await gw.stop()
    for c in clusters:
        await c.stop()
    logging.getLogger("gateway").info("demo stopped")
    return 0


def run_demo(port: int = 8080, cluster_base_port: int = 0) -> int:
    try:
        event_loop.loop_factory()   # a bad TRINO_GATEWAY_LOOP: one line, as serve says it
    except event_loop.LoopChoiceError as exc:
        print(f"trino-gateway demo: {exc}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="trino-gateway-demo-") as state:
        try:
            return event_loop.run(_demo(port, cluster_base_port, state))
        except KeyboardInterrupt:   # Ctrl-C before the demo was up (later, it stops cleanly)
            return 130
