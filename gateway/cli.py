"""The ``trino-gateway`` command: serve, demo, migrate, rules, hash-password."""
from __future__ import annotations

import argparse
import getpass
import sys

from gateway.config import ConfigError, load_config


def _cmd_serve(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"trino-gateway: {exc}", file=sys.stderr)
        return 2
    if args.port is not None:
        config.server.port = args.port
    from gateway.server import prepare_workers
    prepare_workers(config)
    from gateway.server import serve
    return serve(config)


def _cmd_migrate(args: argparse.Namespace) -> int:
    from gateway.store import open_store
    try:
        config = load_config(args.config)
        store = open_store(config.store.url)
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
    from gateway.demo.run import run_demo
    return run_demo(port=args.port, cluster_base_port=args.cluster_port)


def _cmd_hash_password(args: argparse.Namespace) -> int:
    from gateway.auth import hash_password
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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="trino-gateway",
                                description="One URL in front of many Trino clusters.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    s = sub.add_parser("serve", help="run the gateway")
    s.add_argument("--config", help="configuration file (YAML); default: built-in defaults")
    s.add_argument("--port", type=int, help="override server.port")
    s.set_defaults(func=_cmd_serve)

    d = sub.add_parser("demo", help="run simulated clusters and a gateway in front of them")
    d.add_argument("--port", type=int, default=8080, help="gateway port (default 8080)")
    d.add_argument("--cluster-port", type=int, default=0,
                   help="first simulated cluster port (default: any free port)")
    d.set_defaults(func=_cmd_demo)

    m = sub.add_parser("migrate", help="apply store migrations and exit")
    m.add_argument("--config", required=True, help="configuration file (YAML)")
    m.set_defaults(func=_cmd_migrate)

    h = sub.add_parser("hash-password", help="print a password hash for auth.users.NAME.password")
    h.set_defaults(func=_cmd_hash_password)

    from gateway.routing.cli_rules import add_rules_parser
    rules_sub = add_rules_parser(sub)
    from gateway.migrate.cli import add_migrate_parsers
    add_migrate_parsers(sub, rules_sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
