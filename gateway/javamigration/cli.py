"""``trino-gateway rules convert`` and ``trino-gateway import-backends``.

``add_migrate_parsers(subparsers, rules_subparsers)`` registers ``import-backends`` on the
top-level command set and ``convert`` on the ``rules`` command set (the value
``add_rules_parser`` returns; without it a top-level ``convert-rules`` is registered instead).
Each command sets ``func(args) -> exit status``; ``cmd_convert`` and ``cmd_import_backends``
take the output streams so tests can call them directly.

Exit status of ``rules convert``: 0 every rule converted, 1 some rules were not converted
(listed on standard error; the others are written), 2 the input could not be read.
Exit status of ``import-backends``: 0 done, 1 some entries were invalid and skipped (the valid
ones were imported), 2 nothing imported (source, configuration or store unusable).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from typing import Any, TextIO

__all__ = ["add_migrate_parsers", "cmd_convert", "cmd_import_backends"]


def add_migrate_parsers(subparsers: Any, rules_subparsers: Any = None) -> None:
    if rules_subparsers is not None:
        conv = rules_subparsers.add_parser(
            "convert", help="convert trino-gateway MVEL routing rules",
            description="Convert a trino-gateway MVEL routing-rules file into this gateway's rules. "
                        "The rules go to OUT (default: standard output), the report of what was not "
                        "converted to standard error. Exit 0: all converted; 1: some rules not "
                        "converted; 2: unreadable input.")
    else:
        conv = subparsers.add_parser("convert-rules", help="convert trino-gateway MVEL routing rules")
    conv.add_argument("file", metavar="FILE", help="trino-gateway rules YAML ('-' for standard input)")
    conv.add_argument("-o", "--output", metavar="OUT", help="write the converted rules here")
    conv.add_argument("--default-group", default="adhoc", metavar="G",
                      help="trino-gateway's routing.defaultRoutingGroup: the group a "
                           "result.put(\"routingGroup\", null) sends to (default adhoc)")
    conv.add_argument("--default-priority", type=int, metavar="N",
                      help="priority of rules without one (default 0, as trino-gateway does; "
                           "2147483646 with --legacy-easy-rules)")
    conv.add_argument("--legacy-easy-rules", action="store_true",
                      help="order rules as trino-gateway versions built on easy-rules did "
                           "(missing priority = 2147483646, equal priorities by name)")
    conv.set_defaults(func=lambda args: cmd_convert(args, sys.stdout, sys.stderr))

    imp = subparsers.add_parser(
        "import-backends", help="copy backends from trino-gateway into the store",
        description="Copy the backends of a trino-gateway installation into this gateway's store. "
                    "Idempotent: existing backends are updated only when they differ.")
    src = imp.add_mutually_exclusive_group(required=True)
    src.add_argument("--from-url", metavar="URL",
                     help="a running trino-gateway, e.g. http://old-gateway:8080 (reads GET /gateway/backend/all)")
    src.add_argument("--from-db", metavar="URL",
                     help="trino-gateway's database: postgresql://user:pass@host:5432/gateway or "
                          "mysql://user:pass@host:3306/gateway (reads table gateway_backend)")
    imp.add_argument("--config", required=True, metavar="FILE", help="this gateway's configuration (its store)")
    imp.add_argument("--table", default="gateway_backend", metavar="NAME",
                     help="table to read with --from-db (default gateway_backend)")
    imp.add_argument("--header", action="append", default=[], metavar="'Name: value'",
                     help="request header for --from-url, e.g. 'Authorization: Basic ...' (repeatable)")
    imp.add_argument("--timeout", type=float, default=10.0, metavar="SECONDS", help="network timeout (default 10)")
    imp.add_argument("--dry-run", action="store_true", help="show what would change, change nothing")
    imp.set_defaults(func=lambda args: cmd_import_backends(args, sys.stdout, sys.stderr))


def cmd_convert(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from gateway.javamigration.convert import InputError, convert_rules
    try:
        if args.file == "-":
            text = sys.stdin.read()
        else:
            with open(args.file, encoding="utf-8") as fh:
                text = fh.read()
    except OSError as exc:
        print(f"trino-gateway: {args.file}: cannot read: {exc.strerror}", file=err)
        return 2
    except UnicodeDecodeError as exc:
        print(f"trino-gateway: {args.file}: not UTF-8 text ({exc.reason} at byte {exc.start})", file=err)
        return 2
    try:
        conv = convert_rules(text, default_group=args.default_group,
                             default_priority=args.default_priority,
                             legacy_easy_rules=args.legacy_easy_rules)
    except InputError as exc:
        print(f"trino-gateway: {args.file}: {exc}", file=err)
        return 2
    document = conv.to_yaml(args.file)
    if args.output:
        try:
            _write_atomically(args.output, document)
        except OSError as exc:
            print(f"trino-gateway: {args.output}: cannot write: {exc.strerror}", file=err)
            return 2
    else:
        out.write(document)
    for line in conv.report_lines():
        print(line, file=err)
    return 0 if conv.complete else 1


def _write_atomically(path: str, text: str) -> None:
    # A hot-reloading gateway may watch OUT: it must never see half a file.
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".convert-", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def cmd_import_backends(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from gateway.config import ConfigError, load_config
    from gateway.javamigration import import_backends as ib
    from gateway.store import open_store

    headers: list[tuple[str, str]] = []
    for line in args.header or []:
        name, sep, value = line.partition(":")
        if not sep or not name.strip():
            print(f"trino-gateway: --header {line!r}: expected 'Name: value'", file=err)
            return 2
        headers.append((name.strip(), value.strip()))
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"trino-gateway: {exc}", file=err)
        return 2
    default_group = config.routing.defaultGroup
    try:
        if args.from_url:
            backends, problems = ib.backends_from_json(
                ib.fetch_json(args.from_url, headers=headers, timeout=args.timeout), default_group=default_group)
        else:
            backends, problems = ib.backends_from_rows(
                ib.fetch_rows(args.from_db, table=args.table, timeout=args.timeout),
                default_group=default_group, table=args.table)
    except ib.BackendImportError as exc:
        print(f"trino-gateway: {exc}", file=err)
        return 2
    try:
        store = open_store(config.store.url)
    except Exception as exc:  # noqa: BLE001 - any store failure is reported, never a traceback
        print(f"trino-gateway: cannot open the store: {exc}", file=err)
        return 2
    try:
        plan = ib.plan_import(store.list_backends(), backends)
        if not args.dry_run:
            ib.apply_plan(store, plan)
    except Exception as exc:  # noqa: BLE001
        print(f"trino-gateway: store error: {exc}", file=err)
        return 2
    finally:
        store.close()
    for change in plan.changes:
        print(("would be " if args.dry_run and change.action != "unchanged" else "") + change.describe(), file=out)
    print(("dry run, nothing written: " if args.dry_run else "") + plan.summary(), file=out)
    for p in problems:
        print(f"trino-gateway: {p}", file=err)
    return 1 if problems else 0
