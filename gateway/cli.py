"""The ``trino-gateway`` command: serve, demo, migrate, rules, hash-password, healthcheck."""
from __future__ import annotations

import argparse
import getpass
import sys

from gateway import __version__
from gateway.config import ConfigError, load_config, require_paths


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """--help shows each option's default; options without one say in their text what happens."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default in (None, False):
            return action.help
        return super()._get_help_string(action)


def _cmd_serve(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config)
        require_paths(config)
    except ConfigError as exc:
        print(f"trino-gateway: {exc}", file=sys.stderr)
        return 2
    if args.port is not None:
        config.server.port = args.port
    from gateway.runtime.serve import prepare_workers
    prepare_workers(config)
    from gateway.runtime.serve import serve
    return serve(config)


def _cmd_migrate(args: argparse.Namespace) -> int:
    from gateway.store import open_store
    try:
        config = load_config(args.config)
        store = open_store(config.store.url, migrate=False)  # migrate() below reports what it applied
    except ConfigError as exc:
        print(f"trino-gateway: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        print(f"trino-gateway: cannot open the store: {exc}", file=sys.stderr)
        return 1
    try:
        applied = store.migrate()
        version = store.schema_version()
    except Exception as exc:
        print(f"trino-gateway: migration failed: {exc}", file=sys.stderr)
        return 1
    finally:
        store.close()
    if applied:
        print(f"applied migration(s) {', '.join(str(v) for v in applied)}; schema version {version}")
    else:
        print(f"schema is up to date (version {version})")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from gateway.sim.demo import run_demo
    return run_demo(port=args.port, cluster_base_port=args.cluster_port)


def _cmd_hash_password(args: argparse.Namespace) -> int:
    from gateway.admin.auth import hash_password
    if sys.stdin.isatty():
        password = getpass.getpass("Password: ")
        again = getpass.getpass("Again: ")
        if password != again:
            print("trino-gateway: the passwords differ", file=sys.stderr)
            return 1
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        print("trino-gateway: the password is empty", file=sys.stderr)
        return 1
    print(hash_password(password))
    return 0


def _cmd_healthcheck(args: argparse.Namespace) -> int:
    from gateway.healthcheck import check_live
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"trino-gateway: {exc}", file=sys.stderr)
        return 2
    if args.port is not None:
        config.server.port = args.port
    ok, message = check_live(config, timeout=args.timeout)
    print(message, file=sys.stdout if ok else sys.stderr)
    return 0 if ok else 1


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="trino-gateway",
                                description="One URL in front of many Trino clusters.")
    p.add_argument("--version", action="version", version=f"trino-gateway {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    s = sub.add_parser(
        "serve", help="run the gateway", formatter_class=_HelpFormatter,
        description="Run the gateway until SIGTERM or Ctrl-C (in-flight queries may finish: "
                    "server.shutdownGracePeriod). Without --config: listen on 0.0.0.0:8080, "
                    "SQLite store trino-gateway.db and rules from ./rules if it exists, both in the "
                    "working directory, no backends. Relative paths in a configuration file resolve "
                    "against its folder (docs/configuration.md).")
    s.add_argument("--config", metavar="FILE", help="configuration file (YAML); none: built-in defaults")
    s.add_argument("--port", type=int, help="listen on this port instead of server.port")
    s.set_defaults(func=_cmd_serve)

    d = sub.add_parser(
        "demo", help="run simulated clusters and a gateway in front of them",
        formatter_class=_HelpFormatter,
        description="Start three simulated Trino clusters (adhoc-1 and adhoc-2 in group adhoc, etl-1 "
                    "in group etl) and a gateway in front of them on 127.0.0.1, routing with the "
                    "example rules; print how to connect. Ctrl-C stops everything.")
    d.add_argument("--port", type=int, default=8080, help="gateway port (0: any free port)")
    d.add_argument("--cluster-port", type=int, default=0,
                   help="port of the first simulated cluster, the others follow (0: any free ports)")
    d.set_defaults(func=_cmd_demo)

    m = sub.add_parser(
        "migrate", help="apply store migrations and exit", formatter_class=_HelpFormatter,
        description="Apply the pending migrations of the store named by store.url, print which, "
                    "and exit (0: done or nothing to do, 1: the store cannot be opened or migrated, "
                    "2: bad configuration). serve also migrates at start.")
    m.add_argument("--config", required=True, metavar="FILE", help="configuration file (YAML)")
    m.set_defaults(func=_cmd_migrate)

    h = sub.add_parser(
        "hash-password", help="print a password hash for auth.users.NAME.password",
        formatter_class=_HelpFormatter,
        description="Read a password from standard input (or prompt twice on a terminal) and print "
                    "its hash, to put in auth.users.NAME.password.")
    h.set_defaults(func=_cmd_hash_password)

    hc = sub.add_parser(
        "healthcheck", help="exit 0 if the local gateway is live (for container health checks)",
        formatter_class=_HelpFormatter,
        description="GET /trino-gateway/livez from the gateway on this machine, at the port and "
                    "scheme the configuration gives (server.port; https when server.tls serves it). "
                    "Exit 0 if it answers 200, 1 otherwise.")
    hc.add_argument("--config", metavar="FILE", help="configuration file (YAML); none: built-in defaults")
    hc.add_argument("--port", type=int, help="check this port instead of server.port")
    hc.add_argument("--timeout", type=float, default=2.0, help="seconds to wait for the answer")
    hc.set_defaults(func=_cmd_healthcheck)

    from gateway.routing.cli_rules import add_rules_parser
    rules_sub = add_rules_parser(sub)
    from gateway.javamigration.cli import add_migrate_parsers
    add_migrate_parsers(sub, rules_sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
