"""A trino-gateway MVEL rules file → this gateway's rules, routing every request to the same group.

trino-gateway runs *every* rule whose condition holds, in ascending ``priority`` (ties in file
order: it sorts the rules with a stable sort), and each rule's actions may write
``result.put("routingGroup", ...)``; the last write wins. Here the matching rule with the
*highest* priority decides. So each write becomes one of our rules whose condition is "the
rule's condition holds and this write is reached" (an ``if``/``else`` branch contributes its
test), and the writes are emitted in reverse execution order with descending priorities: the
write trino-gateway would perform last is the first one we evaluate.

``convert_rules(text)`` returns a ``Conversion``: our rules, the rules not converted (name and
reason; nothing is converted approximately) and notes. ``InputError`` means the file cannot be
read as rules at all. Options mirror trino-gateway versions: current versions default a missing
priority to 0; the older easy-rules engine defaulted it to 2147483646 and ordered ties by name
(``legacy_easy_rules=True``).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import yaml

from gateway.javamigration.formula import FALSE, TRUE, F, and_, not_, or_, render
from gateway.javamigration.mvel import (
    Call, ExprStmt, If, Lit, MvelSyntaxError, Name, Stmt, parse_expression, parse_statements, unparse,
)
from gateway.javamigration.translate import ROUTING_GROUP_KEY, Translator
from gateway.javamigration.values import SLit, Unconvertible
from gateway.routing.rules_compile import ConditionError, compile_condition

__all__ = ["InputError", "Problem", "Conversion", "convert_rules", "EASY_RULES_DEFAULT_PRIORITY"]

EASY_RULES_DEFAULT_PRIORITY = 2147483646      # easy-rules' Rule.DEFAULT_PRIORITY (Integer.MAX_VALUE - 1)
_GROUP_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_RULE_KEYS = {"name", "description", "priority", "condition", "actions"}
_MAX_NAME = 180
_STEP = 10


class InputError(Exception):
    """The input is not a readable rules file (missing, not UTF-8, not YAML, not mappings)."""


@dataclass(frozen=True)
class Problem:
    rule: str
    line: int | None
    message: str

    def __str__(self) -> str:
        where = f" (line {self.line})" if self.line else ""
        return f"rule '{self.rule}'{where}: {self.message}"


@dataclass
class Conversion:
    rules: list[dict[str, Any]] = field(default_factory=list)     # our rules, in evaluation order
    not_converted: list[Problem] = field(default_factory=list)
    notes: list[Problem] = field(default_factory=list)
    source_rules: int = 0

    @property
    def complete(self) -> bool:
        return not self.not_converted

    def to_yaml(self, source: str = "<input>") -> str:
        """Our rules file: a comment header, then one YAML document per rule."""
        head = [
            f"# Converted from trino-gateway routing rules ({source}) by `trino-gateway rules convert`.",
            "# trino-gateway runs every matching rule in ascending priority and the last routingGroup",
            "# written wins; here the matching rule with the highest priority decides. The priorities",
            "# below encode trino-gateway's order: keep them in the same relative order.",
            f"# {self.source_rules - len(self.not_converted)} of {self.source_rules} rules converted "
            f"into {len(self.rules)} rules.",
        ]
        for p in self.not_converted:
            head.append(f"# NOT CONVERTED: {p}".replace("\n", " "))
        docs = [yaml.safe_dump(r, sort_keys=False, allow_unicode=True, width=1 << 16,
                               default_flow_style=False) for r in self.rules]
        return "\n".join(head) + "\n" + "".join(f"---\n{d}" for d in docs)

    def report_lines(self) -> list[str]:
        out = [f"not converted: {p}" for p in self.not_converted]
        out += [f"note: {p}" for p in self.notes]
        out.append(f"{self.source_rules - len(self.not_converted)} of {self.source_rules} rules "
                   f"converted into {len(self.rules)} rules; {len(self.not_converted)} not converted")
        return out


@dataclass
class _Source:
    index: int
    line: int
    name: str
    description: str
    priority: int
    condition: Any
    actions: list[Any]


@dataclass
class _Write:
    guard: F
    group: str | None          # None: back to the default group (put of null or "")
    source: _Source
    label: str


def convert_rules(text: str, *, default_group: str = "adhoc", default_priority: int | None = None,
                  legacy_easy_rules: bool = False) -> Conversion:
    """Convert the MVEL rules in ``text``. Raises ``InputError`` for unreadable input."""
    conv = Conversion()
    if default_priority is None:
        default_priority = EASY_RULES_DEFAULT_PRIORITY if legacy_easy_rules else 0
    sources = _load(text, conv, default_priority)
    conv.source_rules = len(sources) + len(conv.not_converted)
    if legacy_easy_rules:
        order = sorted(sources, key=lambda s: (s.priority, s.name))
        kept: list[_Source] = []
        for s in order:
            if kept and (kept[-1].priority, kept[-1].name) == (s.priority, s.name):
                # easy-rules keeps rules in a TreeSet: an equal (priority, name) is dropped
                conv.notes.append(Problem(s.name, s.line, "same name and priority as an earlier rule; "
                                          "the easy-rules engine ignores it, so it is not converted"))
                continue
            kept.append(s)
        order = kept
    else:
        order = sorted(sources, key=lambda s: (s.priority, s.index))   # stable, like Collections.sort

    writes: list[_Write] = []
    for src in order:
        translator = Translator()
        try:
            rule_writes = _rule_writes(src, translator)
            for w in rule_writes:
                if w.group is not None and not _GROUP_NAME.match(w.group):
                    raise Unconvertible(f"routing group {w.group!r} is not a valid group name here "
                                        "(1-128 letters, digits, '.', '_' or '-')")
        except Unconvertible as exc:
            conv.not_converted.append(Problem(src.name, src.line, exc.reason))
            continue
        except MvelSyntaxError as exc:
            conv.not_converted.append(Problem(src.name, src.line, f"cannot parse: {exc}"))
            continue
        except Exception as exc:  # noqa: BLE001 - a converter bug costs one rule, never the file
            conv.not_converted.append(Problem(src.name, src.line, f"internal error while converting "
                                              f"({type(exc).__name__}: {exc}); please report this"))
            continue
        conv.notes.extend(Problem(src.name, src.line, n) for n in translator.notes)
        if not rule_writes:
            conv.notes.append(Problem(src.name, src.line, "never writes a routing group; nothing to convert"))
        writes.extend(rule_writes)
    conv.not_converted.sort(key=lambda p: (p.line or 0))
    _emit(list(reversed(writes)), conv, default_group)
    return conv


def _load(text: str, conv: Conversion, default_priority: int) -> list[_Source]:
    loader = yaml.SafeLoader(text)
    sources: list[_Source] = []
    try:
        index = 0
        while loader.check_node():
            node = loader.get_node()
            if node is None:
                continue
            line = node.start_mark.line + 1
            value = loader.construct_document(node)
            if value is None:
                continue
            # trino-gateway's GET /webapp/getRoutingRules answers {"data": [rules...]}; a plain
            # JSON/YAML list of rules is accepted too.
            if isinstance(value, dict) and isinstance(value.get("data"), list) and "condition" not in value:
                value = value["data"]
            for item in value if isinstance(value, list) else [value]:
                index += 1
                if not isinstance(item, dict):
                    raise InputError(f"line {line}: a rule is a YAML mapping with name, condition and "
                                     f"actions, got {type(item).__name__}")
                src = _source(item, index, line, default_priority, conv)
                if src is not None:
                    sources.append(src)
    except yaml.YAMLError as exc:
        raise InputError(f"not valid YAML: {exc}") from None
    finally:
        loader.dispose()
    return sources


def _source(value: dict[Any, Any], index: int, line: int, default_priority: int,
            conv: Conversion) -> _Source | None:
    raw_name = value.get("name")
    name = str(raw_name) if raw_name is not None else f"#{index}"

    def skip(message: str) -> None:
        conv.not_converted.append(Problem(name, line, message))

    if raw_name is None or not str(raw_name).strip():
        skip("the rule has no name (trino-gateway requires one)")
        return None
    if "compositeRuleType" in value or "composingRules" in value:
        skip("composite rules (easy-rules ActivationRuleGroup / ConditionalRuleGroup) are not "
             "converted; write them as plain rules with priorities or if/else actions")
        return None
    unknown = sorted(str(k) for k in value if k not in _RULE_KEYS)
    if unknown:
        conv.notes.append(Problem(name, line, f"ignored unknown keys: {', '.join(unknown)}"))
    priority = value.get("priority", default_priority)
    if priority is None:
        priority = default_priority
    if isinstance(priority, bool) or not isinstance(priority, int):
        skip(f"priority must be an integer, got {priority!r}")
        return None
    condition = value.get("condition")
    if condition is None or not isinstance(condition, (str, bool)):
        skip("the rule needs a condition (an MVEL expression)")
        return None
    actions = value.get("actions")
    if isinstance(actions, str):
        actions = [actions]
    if not isinstance(actions, list) or not all(isinstance(a, str) or a is None for a in actions):
        skip("the rule needs a list of actions (MVEL statements)")
        return None
    description = value.get("description")
    return _Source(index, line, name, "" if description is None else str(description), priority,
                   condition, [a or "" for a in actions])


def _rule_writes(src: _Source, translator: Translator) -> list[_Write]:
    if isinstance(src.condition, bool):
        guard: F = TRUE if src.condition else FALSE
    else:
        guard = translator.condition(parse_expression(src.condition)).t
    writes: list[_Write] = []
    dead: F = FALSE
    many_actions = sum(1 for a in src.actions if a.strip()) > 1
    for k, action in enumerate(src.actions, 1):
        stmts = parse_statements(action)
        label = [f"action {k}"] if many_actions else []
        dead = _walk(stmts, guard, dead, label, src, translator, writes)
    return writes


def _walk(stmts: tuple[Stmt, ...], guard: F, dead: F, label: list[str], src: _Source,
          translator: Translator, writes: list[_Write]) -> F:
    """Append the writes of ``stmts`` run under ``guard``; return when an exception happened so far.

    An exception in an action ends the rule's remaining actions (trino-gateway: the request
    fails; the older easy-rules engine: the rule stops), so later writes require ``not dead``.
    """
    for stmt in stmts:
        if isinstance(stmt, If):
            reach: F = TRUE
            exceptions: list[F] = []
            for i, (test, body) in enumerate(stmt.branches):
                c = translator.condition(test)
                exceptions.append(and_(guard, not_(dead), reach, c.e))
                part = "if" if i == 0 else f"else if {i}"
                dead_b = _walk(body, and_(guard, reach, c.t), dead, label + [part], src, translator, writes)
                exceptions.append(dead_b)
                reach = and_(reach, c.f)
            if stmt.orelse is not None:
                exceptions.append(_walk(stmt.orelse, and_(guard, reach), dead, label + ["else"],
                                        src, translator, writes))
            dead = or_(dead, *exceptions)
            continue
        expr = stmt.expr if isinstance(stmt, ExprStmt) else None
        if isinstance(expr, Lit):
            continue                                   # e.g. an empty action ""
        if isinstance(expr, Call) and isinstance(expr.obj, Name) and expr.obj.name == "result" \
                and expr.name == "put" and len(expr.args) == 2:
            writes.append(_Write(and_(guard, not_(dead)), _put_value(expr, translator), src,
                                 " / ".join(label)))
            continue
        shown = unparse(expr) if expr is not None else "?"
        if "state" in shown.split(".")[0:1]:
            raise Unconvertible(f"the action {shown} uses the shared 'state' map; our rules are "
                                "evaluated independently of each other")
        raise Unconvertible(f"the action {shown} is not result.put(\"routingGroup\", ...)")
    return dead


def _put_value(expr: Call, translator: Translator) -> str | None:
    key = translator.value(expr.args[0])
    if not isinstance(key, SLit) or key.value is None:
        raise Unconvertible(f"{unparse(expr)}: the key must be a string literal")
    if key.value == "routingCluster":
        raise Unconvertible(f"{unparse(expr)} pins a single cluster; rules here choose a routing "
                            "group (put the cluster in a group of its own)")
    if key.value != ROUTING_GROUP_KEY:
        raise Unconvertible(f"{unparse(expr)} writes the result key {key.value!r}, which this "
                            "converter does not know")
    value = expr.args[1]
    if not isinstance(value, Lit) or not (value.value is None or isinstance(value.value, str)):
        raise Unconvertible(f"{unparse(expr)}: the routing group must be a string literal")
    return value.value or None


def _clean_name(name: str) -> str:
    name = "".join(ch if ch.isprintable() else "?" for ch in name).strip()
    return name[:_MAX_NAME].strip() or "rule"


def _emit(writes: list[_Write], conv: Conversion, default_group: str) -> None:
    """``writes`` in our evaluation order → ``conv.rules``, dropping writes that never decide."""
    seen_conditions: dict[str, str] = {}
    live: list[tuple[_Write, str]] = []
    shadowed_by: str | None = None
    for w in writes:
        where = f"{w.source.name}" + (f" [{w.label}]" if w.label else "")
        if w.guard == FALSE:
            conv.notes.append(Problem(w.source.name, w.source.line,
                                      f"{'[' + w.label + '] ' if w.label else ''}can never apply; not emitted"))
            continue
        if shadowed_by is not None:
            conv.notes.append(Problem(w.source.name, w.source.line,
                                      f"{'[' + w.label + '] ' if w.label else ''}never decides because "
                                      f"'{shadowed_by}' always overrides it; not emitted"))
            continue
        text = render(w.guard)
        if text in seen_conditions:
            first = seen_conditions[text]
            by = "a later result.put of the same rule" if first == where else f"'{first}'"
            conv.notes.append(Problem(w.source.name, w.source.line,
                                      f"{'[' + w.label + '] ' if w.label else ''}a result.put that "
                                      f"{by} always overrides; not emitted"))
            continue
        seen_conditions[text] = where
        if w.guard == TRUE:
            shadowed_by = where
        live.append((w, text))

    used: set[str] = set()
    counts: dict[str, int] = {}
    for w, _ in live:
        counts[w.source.name] = counts.get(w.source.name, 0) + 1
    n = len(live)
    for i, (w, text) in enumerate(live):
        try:
            compile_condition(text)
        except ConditionError as exc:     # a converter bug: never emit a rule that does not load
            conv.not_converted.append(Problem(w.source.name, w.source.line,
                                              f"the converted condition does not compile ({exc.message}); "
                                              "please report this"))
            continue
        base = _clean_name(w.source.name)
        name = f"{base} [{w.label}]" if w.label and counts[w.source.name] > 1 else base
        if len(name) > 190:                       # our names are at most 200 characters
            name = name[:190].rstrip()
        unique, k = name, 2
        while unique in used:
            unique, k = f"{name} #{k}", k + 1
        used.add(unique)
        origin = f"from trino-gateway rule '{w.source.name}' (priority {w.source.priority}" + \
                 (f", {w.label})" if w.label else ")")
        desc = f"{w.source.description} ({origin})" if w.source.description else origin[0].upper() + origin[1:]
        conv.rules.append({
            "name": unique,
            "description": desc,
            "priority": (n - i) * _STEP,
            "condition": text,
            "routingGroup": w.group if w.group is not None else default_group,
        })
