"""``trino-gateway rules check`` and ``trino-gateway rules explain``.

``add_rules_parser(subparsers)`` registers the ``rules`` command with ``check`` and ``explain``
and returns the ``rules`` sub-command set so other ``rules`` commands (``convert``) can join it.
Each sub-command sets ``func``: a callable ``func(args) -> int`` (the exit status) writing to
standard output / standard error.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any, TextIO

from tornado.httputil import HTTPHeaders

from gateway.routing.context import ARRAY_SYMBOLS, STRING_SYMBOLS, build_context
from gateway.routing.decision import decide
from gateway.routing.rules import RulesError, load_ruleset

__all__ = ["add_rules_parser", "cmd_check", "cmd_explain"]


def add_rules_parser(subparsers: Any) -> Any:
    rules = subparsers.add_parser("rules", help="check and explain routing rules",
                                  description="Validate rules files and explain routing decisions.")
    sub = rules.add_subparsers(dest="rules_command", metavar="COMMAND")
    sub.required = True

    check = sub.add_parser("check", help="validate rules files",
                           description="Validate rules files and folders. Exit 0 if valid, "
                                       "1 with file:line: message lines otherwise.")
    check.add_argument("paths", nargs="+", metavar="PATH", help="rules file or folder of *.yaml / *.yml")
    check.set_defaults(func=lambda args: cmd_check(args.paths, sys.stdout, sys.stderr))

    ex = sub.add_parser("explain", help="show which group a query would be routed to and why",
                        description="Evaluate the rules against a described query and print the "
                                    "decision and the rules evaluated.")
    ex.add_argument("--rules", action="append", required=True, metavar="PATH",
                    help="rules file or folder (repeatable)")
    ex.add_argument("--user", help="X-Trino-User")
    ex.add_argument("--source", help="X-Trino-Source")
    ex.add_argument("--client-tags", metavar="a,b", help="X-Trino-Client-Tags")
    ex.add_argument("--client-info", help="X-Trino-Client-Info")
    ex.add_argument("--catalog", help="X-Trino-Catalog (session catalog)")
    ex.add_argument("--schema", help="X-Trino-Schema (session schema)")
    ex.add_argument("--routing-group", metavar="G", help="X-Trino-Routing-Group")
    ex.add_argument("--header", action="append", default=[], metavar="'Name: value'",
                    help="any request header (repeatable)")
    ex.add_argument("--remote-address", default="127.0.0.1", help="client address (default 127.0.0.1)")
    sql = ex.add_mutually_exclusive_group()
    sql.add_argument("--sql", metavar="TEXT", help="the statement")
    sql.add_argument("--sql-file", metavar="F", help="read the statement from a file ('-' for standard input)")
    ex.add_argument("--group-with-backends", action="append", default=[], metavar="G",
                    help="a group that has backends (repeatable or comma list); default: every group "
                         "named by a rule, the header and the default group")
    ex.add_argument("--default-group", default="adhoc", metavar="G", help="routing.defaultGroup (default adhoc)")
    ex.add_argument("--no-group-header", action="store_true", help="as with routing.allowGroupHeader: false")
    ex.add_argument("--json", action="store_true", help="print the decision as JSON")
    ex.set_defaults(func=lambda args: cmd_explain(args, sys.stdout))
    return sub


def cmd_check(paths: list[str], out: TextIO, err: TextIO) -> int:
    try:
        ruleset = load_ruleset(paths)
    except RulesError as exc:
        for problem in exc.errors:
            print(problem, file=err)
        print(f"{len(exc.errors)} problem{'s' if len(exc.errors) != 1 else ''} found", file=err)
        return 1
    disabled = sum(1 for r in ruleset.rules if not r.enabled)
    note = f" ({disabled} disabled)" if disabled else ""
    print(f"OK: {len(ruleset.rules)} rules{note} in {len(ruleset.files)} files (version {ruleset.version})",
          file=out)
    return 0


def cmd_explain(args: argparse.Namespace, out: TextIO) -> int:
    try:
        ruleset = load_ruleset(args.rules)
    except RulesError as exc:
        for problem in exc.errors:
            print(problem, file=out)
        return 1
    headers = HTTPHeaders()
    for flag, name in (("user", "X-Trino-User"), ("source", "X-Trino-Source"),
                       ("client_tags", "X-Trino-Client-Tags"), ("client_info", "X-Trino-Client-Info"),
                       ("catalog", "X-Trino-Catalog"), ("schema", "X-Trino-Schema"),
                       ("routing_group", "X-Trino-Routing-Group")):
        value = getattr(args, flag, None)
        if value is not None:
            headers.add(name, value)
    for line in args.header or []:
        name, sep, value = line.partition(":")
        if not sep or not name.strip():
            print(f"--header {line!r}: expected 'Name: value'", file=out)
            return 2
        headers.add(name.strip(), value.strip())
    sql = args.sql or ""
    if args.sql_file:
        try:
            if args.sql_file == "-":
                sql = sys.stdin.read()
            else:
                with open(args.sql_file, encoding="utf-8", errors="replace") as fh:
                    sql = fh.read()
        except OSError as exc:
            print(f"{args.sql_file}: cannot read: {exc.strerror}", file=out)
            return 1
    ctx = build_context(headers, sql.encode("utf-8"), args.remote_address, analyze_sql=bool(sql.strip()))

    groups: set[str] = set()
    for item in args.group_with_backends or []:
        groups.update(g.strip() for g in item.split(",") if g.strip())
    if not args.group_with_backends:
        groups = {r.routing_group for r in ruleset.rules if r.routing_group} | {args.default_group}
        if ctx["routingGroupHeader"]:
            groups.add(ctx["routingGroupHeader"])
    decision = decide(ruleset, ctx, groups_with_backends=groups, default_group=args.default_group,
                      allow_group_header=not args.no_group_header, explain=True)

    if args.json:
        doc = decision.to_dict()
        doc["version"] = ruleset.version
        doc["context"] = {k: (list(v) if isinstance(v, tuple) else v) for k, v in ctx.items()}
        print(json.dumps(doc, indent=2), file=out)
        return 0
    print(f"rules: {len(ruleset.rules)} rules from {len(ruleset.files)} files (version {ruleset.version})", file=out)
    print("context:", file=out)
    for name in STRING_SYMBOLS + ARRAY_SYMBOLS:
        value = ctx.get(name)
        if name == "query" or value in (None, (), []):
            continue
        shown = ", ".join(value) if isinstance(value, tuple) else value
        print(f"  {name}: {shown}", file=out)
    print("rules evaluated (highest priority first):", file=out)
    if not decision.trace:
        print("  (none)", file=out)
    for entry in decision.trace:
        status = "error" if entry["error"] else ("MATCH" if entry["matched"] else "no")
        extra = f": {entry['error']}" if entry["error"] else ""
        print(f"  {status:<5} {entry['rule']} (priority {entry['priority']}){extra}", file=out)
    if decision.reject is not None:
        print(f"decision: reject with {decision.reject!r} ({decision.reason})", file=out)
    else:
        print(f"decision: routing group {decision.routing_group} ({decision.reason})", file=out)
    return 0
