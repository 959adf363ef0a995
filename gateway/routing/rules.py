"""Rules files → a compiled, immutable ``Ruleset`` that turns a routing context into a matching rule.

Files and folders are read in the configured order; a folder contributes its ``*.yaml`` /
``*.yml`` files sorted by name, non-recursively and skipping hidden names (a Kubernetes
ConfigMap mount holds ``..data`` and timestamped copies of every file in hidden sub-folders).
Each YAML document is one rule; empty documents are skipped. Every problem is collected, with
file and line, into one ``RulesError``; a ruleset is either entirely valid or not built at all.

Evaluation: rules sorted by priority (highest first), ties in file order; the first rule whose
condition is true decides and later rules are not evaluated. A condition that fails at run time
(``headers["x"]`` without the header, a method on a null string) counts as not matched and the
error goes into the trace. An index skips rules that cannot match: a rule whose condition is a
top-level ``and`` containing ``user == "x"`` (or ``source``/``routingGroupHeader``/... ``==`` or
``in [...]`` of string literals) is only evaluated when the context's value is one of them.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import os
import re
import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

import yaml

from gateway.routing.context import (ARRAY_SYMBOLS, MAPPING_SYMBOLS, SQL_SYMBOLS, STRING_SYMBOLS,
                                     RoutingContext)
from gateway.routing.rules_compile import CompiledCondition, ConditionError, compile_condition

__all__ = [
    "Rule", "RuleMatch", "RuleProblem", "RulesError", "Ruleset", "load_ruleset", "read_sources",
    "parse_ruleset", "sources_version", "RULE_KEYS", "RULE_FILE_SUFFIXES",
]

RULE_FILE_SUFFIXES = (".yaml", ".yml")
RULE_KEYS = ("name", "description", "priority", "condition", "routingGroup", "reject",
             "queuePriority", "enabled")
_GROUP_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")   # same as config group names
_MAX_NAME = 200


@dataclass(frozen=True)
class RuleProblem:
    """One load problem. ``line`` is None for whole-file problems (missing, unreadable)."""
    file: str
    line: int | None
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.message}" if self.line else f"{self.file}: {self.message}"


class RulesError(Exception):
    """A ruleset that cannot be loaded; ``errors`` lists every problem found."""

    def __init__(self, problems: list[RuleProblem]) -> None:
        self.errors = list(problems)
        super().__init__("\n".join(str(p) for p in self.errors))


@dataclass(frozen=True)
class Rule:
    name: str
    condition: str
    priority: int = 0
    description: str | None = None
    routing_group: str | None = None
    reject: str | None = None
    queue_priority: int = 0
    enabled: bool = True
    file: str = "<memory>"
    line: int = 1
    compiled: CompiledCondition | None = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        """The rule as the REST API shows it (contract key names)."""
        return {
            "name": self.name, "description": self.description, "priority": self.priority,
            "condition": self.condition, "routingGroup": self.routing_group, "reject": self.reject,
            "queuePriority": self.queue_priority, "enabled": self.enabled,
            "file": self.file, "line": self.line,
        }


class RuleMatch:
    """The deciding rule (or None) and the trace of evaluated rules, built lazily."""

    __slots__ = ("rule", "_evaluated", "_errors", "_trace")

    def __init__(self, rule: Rule | None, evaluated: list[Rule], errors: dict[int, str] | None) -> None:
        self.rule = rule
        self._evaluated = evaluated
        self._errors = errors
        self._trace: list[dict[str, Any]] | None = None

    @property
    def trace(self) -> list[dict[str, Any]]:
        """``[{"rule", "priority", "matched", "error"}]`` for each evaluated rule, in order."""
        if self._trace is None:
            errs = self._errors or {}
            last = len(self._evaluated) - 1
            self._trace = [
                {"rule": r.name, "priority": r.priority,
                 "matched": self.rule is not None and i == last, "error": errs.get(i)}
                for i, r in enumerate(self._evaluated)
            ]
        return self._trace

    @property
    def errors(self) -> dict[str, str]:
        """Run-time errors by rule name (empty when every evaluated condition ran cleanly)."""
        return {self._evaluated[i].name: e for i, e in (self._errors or {}).items()}

    def __repr__(self) -> str:
        return f"RuleMatch(rule={self.rule.name if self.rule else None!r}, evaluated={len(self._evaluated)})"


_DECISION_CACHE_SIZE = 4096   # distinct contexts remembered per ruleset


class Ruleset:
    """An immutable compiled ruleset. Swapped as a whole on reload; safe to share across threads."""

    def __init__(self, rules: list[Rule], *, files: Iterable[str] = (), version: str = "",
                 loaded_at: float | None = None) -> None:
        order = {id(r): i for i, r in enumerate(rules)}
        self.rules: tuple[Rule, ...] = tuple(sorted(rules, key=lambda r: (-r.priority, order[id(r)])))
        self.files: tuple[str, ...] = tuple(files)
        self.version = version or sources_version([])
        self.loaded_at = time.time() if loaded_at is None else loaded_at
        for r in self.rules:
            if r.compiled is None:
                raise ValueError(f"rule {r.name!r} has no compiled condition")
        self._active: tuple[Rule, ...] = tuple(r for r in self.rules if r.enabled)
        self.uses_sql: bool = any(r.compiled.symbols & SQL_SYMBOLS for r in self._active)  # type: ignore[union-attr]
        # Decisions are remembered per distinct context (the values of the symbols the rules
        # read): a dashboard or a scheduler sends the same user, source and tags again and again.
        # Not when a condition reads the clock or $random, or the raw SQL text (too varied).
        used: set[str] = set()
        for r in self._active:
            used |= r.compiled.symbols  # type: ignore[union-attr]
        cacheable = not any(r.compiled.volatile for r in self._active) and "query" not in used  # type: ignore[union-attr]
        self._key_symbols: tuple[str, ...] | None = tuple(sorted(used)) if cacheable else None
        self._decisions: dict[tuple[Any, ...], RuleMatch] = {}
        self._by_name = {r.name: r for r in self.rules}
        self._build_index()

    @classmethod
    def empty(cls) -> "Ruleset":
        return cls([])

    def __len__(self) -> int:
        return len(self.rules)

    def get(self, name: str) -> Rule | None:
        return self._by_name.get(name)

    def _build_index(self) -> None:
        always: list[int] = []
        index: dict[str, dict[str, list[int]]] = {}
        for pos, rule in enumerate(self._active):
            key = rule.compiled.index_key  # type: ignore[union-attr]
            if key is None:
                always.append(pos)
                continue
            symbol, literals = key
            buckets = index.setdefault(symbol, {})
            for literal in literals:
                buckets.setdefault(literal, []).append(pos)
        self._always = always
        self._index = tuple(index.items())
        self._all = list(range(len(self._active)))

    def _candidates(self, thing: Mapping[str, Any]) -> list[int]:
        extra: list[int] | None = None
        for symbol, buckets in self._index:
            value = thing[symbol]
            if value is not None:
                hit = buckets.get(value)
                if hit:
                    extra = hit if extra is None else extra + hit
        if extra is None:
            return self._always
        return sorted(self._always + extra)   # positions are unique: one index key per rule

    def evaluate(self, ctx: Mapping[str, Any], *, explain: bool = False) -> RuleMatch:
        """The first matching enabled rule. ``explain=True`` skips the index so the trace lists
        every rule above the decision (the decision itself is the same)."""
        thing = prepare_context(ctx)
        if explain:
            return self._evaluate(thing, self._all)
        names = self._key_symbols
        if names is None:
            return self._evaluate(thing, self._candidates(thing))
        key = tuple(tuple(sorted(thing[n].items())) if n == "headers" else thing[n] for n in names)
        match = self._decisions.get(key)
        if match is None:
            match = self._evaluate(thing, self._candidates(thing))
            if len(self._decisions) >= _DECISION_CACHE_SIZE:
                self._decisions.clear()   # rare: more distinct clients than entries
            self._decisions[key] = match
        return match

    def _evaluate(self, thing: Mapping[str, Any], positions: Iterable[int]) -> RuleMatch:
        active = self._active
        evaluated: list[Rule] = []
        errs: dict[int, str] | None = None
        for pos in positions:
            rule = active[pos]
            evaluated.append(rule)
            try:
                if rule.compiled.evaluate(thing):  # type: ignore[union-attr]
                    return RuleMatch(rule, evaluated, errs)
            except Exception as exc:  # noqa: BLE001 - a broken condition never stops routing
                if errs is None:
                    errs = {}
                errs[len(evaluated) - 1] = _runtime_error(exc)
        return RuleMatch(None, evaluated, errs)

    def to_dict(self) -> dict[str, Any]:
        """``{"version", "loadedAt", "files", "rules"}`` for ``GET /api/rules``."""
        return {
            "version": self.version,
            "loadedAt": _dt.datetime.fromtimestamp(self.loaded_at, _dt.timezone.utc).isoformat(),
            "files": list(self.files),
            "rules": [r.to_dict() for r in self.rules],
        }

    def __repr__(self) -> str:
        return f"Ruleset(version={self.version!r}, rules={len(self.rules)}, files={len(self.files)})"


def prepare_context(ctx: Mapping[str, Any]) -> dict[str, Any]:
    """The context with every symbol present and of its declared type (arrays as tuples).
    A ``RoutingContext`` (``build_context``) is that already and is used as it is."""
    if type(ctx) is RoutingContext:
        return ctx
    thing: dict[str, Any] = {}
    get = ctx.get
    for name in STRING_SYMBOLS:
        v = get(name)
        thing[name] = v if v is None or type(v) is str else str(v)
    for name in ARRAY_SYMBOLS:
        v = get(name)
        if not v:
            thing[name] = ()
        elif type(v) is tuple and all(type(x) is str for x in v):
            thing[name] = v
        else:
            thing[name] = tuple(str(x) for x in v)
    for name in MAPPING_SYMBOLS:
        v = get(name)
        thing[name] = {str(k).lower(): str(x) for k, x in v.items()} if v else {}
    return thing


def _runtime_error(exc: Exception) -> str:
    from rule_engine import errors as re_errors
    if isinstance(exc, re_errors.LookupError):
        key = getattr(exc, "item", None)
        return (f"no key {key!r} (use headers&[{key!r}] or \"{key}\" in headers "
                "for optional headers)" if isinstance(key, str) else "lookup error")
    if isinstance(exc, re_errors.AttributeResolutionError):
        return f"attribute '{exc.attribute_name}' of a null value (use ?? \"\" for optional values)"
    message = getattr(exc, "message", None) or str(exc)
    return f"{type(exc).__name__}: {message}"


# --- loading ----------------------------------------------------------------------------------

def load_ruleset(paths: Iterable[str], *, missing_ok: bool = False) -> Ruleset:
    """Read, parse and compile rules from files and folders; raise ``RulesError`` listing every problem.

    ``missing_ok`` makes a missing path count as empty (used for the default ``rules/``).
    """
    sources, problems = read_sources(paths, missing_ok=missing_ok)
    return parse_ruleset(sources, problems)


def read_sources(paths: Iterable[str], *, missing_ok: bool = False) -> tuple[list[tuple[str, bytes]], list[RuleProblem]]:
    """The rules files' bytes in load order, and the problems met finding or reading them."""
    files: list[str] = []
    problems: list[RuleProblem] = []
    seen: set[str] = set()
    for path in paths:
        path = str(path)
        if os.path.isdir(path):
            try:
                names = sorted(n for n in os.listdir(path)
                               if n.endswith(RULE_FILE_SUFFIXES) and not n.startswith("."))
            except OSError as exc:
                problems.append(RuleProblem(path, None, f"cannot list folder: {exc.strerror}"))
                continue
            candidates = [os.path.join(path, n) for n in names]
            candidates = [c for c in candidates if os.path.isfile(c)]
        elif os.path.exists(path):
            candidates = [path]
        else:
            if not missing_ok:
                problems.append(RuleProblem(path, None, "no such file or folder"))
            continue
        for c in candidates:
            key = os.path.realpath(c)
            if key not in seen:
                seen.add(key)
                files.append(c)
    sources: list[tuple[str, bytes]] = []
    for f in files:
        try:
            with open(f, "rb") as fh:
                sources.append((f, fh.read()))
        except OSError as exc:
            problems.append(RuleProblem(f, None, f"cannot read: {exc.strerror}"))
    return sources, problems


def sources_version(sources: Iterable[tuple[str, bytes]]) -> str:
    """Short content hash of the rules files (names and bytes, in load order)."""
    h = hashlib.sha256()
    for path, data in sources:
        h.update(path.encode("utf-8", "surrogateescape") + b"\0")
        h.update(len(data).to_bytes(8, "big"))
        h.update(data)
    return h.hexdigest()[:12]


def parse_ruleset(sources: list[tuple[str, bytes]], problems: list[RuleProblem] | None = None,
                  *, loaded_at: float | None = None) -> Ruleset:
    problems = list(problems or [])
    rules: list[Rule] = []
    first_seen: dict[str, Rule] = {}
    for path, data in sources:
        for rule in _parse_file(path, data, problems):
            prior = first_seen.get(rule.name)
            if prior is not None:
                problems.append(RuleProblem(path, rule.line, f"duplicate rule name '{rule.name}' "
                                            f"(first defined at {prior.file}:{prior.line})"))
                continue
            first_seen[rule.name] = rule
            rules.append(rule)
    if problems:
        order = {path: i for i, (path, _) in enumerate(sources)}
        problems.sort(key=lambda p: (order.get(p.file, -1), p.line or 0))
        raise RulesError(problems)
    return Ruleset(rules, files=[p for p, _ in sources], version=sources_version(sources),
                   loaded_at=loaded_at)


def _decode(path: str, data: bytes, problems: list[RuleProblem]) -> str | None:
    nul = data.find(b"\0")
    if nul != -1:
        problems.append(RuleProblem(path, data.count(b"\n", 0, nul) + 1,
                                    "binary data (a NUL byte); a rules file is UTF-8 YAML text"))
        return None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        problems.append(RuleProblem(path, data.count(b"\n", 0, exc.start) + 1,
                                    f"not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start})"))
        return None
    return text[1:] if text.startswith("\ufeff") else text


def _parse_file(path: str, data: bytes, problems: list[RuleProblem]) -> list[Rule]:
    text = _decode(path, data, problems)
    if text is None:
        return []
    rules: list[Rule] = []
    loader = _Loader(text)
    try:
        while True:
            try:
                if not loader.check_node():
                    break
                node = loader.get_node()
                value = loader.construct_document(node) if node is not None else None
            except yaml.MarkedYAMLError as exc:
                problems.append(_yaml_problem(path, exc))
                break
            except yaml.YAMLError as exc:
                problems.append(RuleProblem(path, None, f"invalid YAML: {exc}"))
                break
            if node is None or value is None:
                continue   # an empty document (a file of comments, a trailing ---)
            rule = _build_rule(path, node, value, problems)
            if rule is not None:
                rules.append(rule)
    finally:
        dispose = getattr(loader, "dispose", None)
        if dispose is not None:
            dispose()
    return rules


def _yaml_problem(path: str, exc: yaml.MarkedYAMLError) -> RuleProblem:
    what = " ".join(x for x in (exc.problem, exc.context) if x) or "syntax error"
    mark = exc.problem_mark or exc.context_mark
    # "while scanning a quoted scalar / simple key": the start of the thing is where the typo is
    # (an unclosed quote, a key without ':'); the problem mark is often the end of the file.
    if exc.context_mark is not None and (exc.context or "").startswith("while scanning"):
        if mark is not None and mark.line != exc.context_mark.line:
            what += f" (reached line {mark.line + 1})"
        mark = exc.context_mark
    return RuleProblem(path, mark.line + 1 if mark else None, f"invalid YAML: {what}")


# libyaml when available: 3x faster, same nodes and marks.
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _build_rule(path: str, node: yaml.Node, value: Any, problems: list[RuleProblem]) -> Rule | None:
    doc_line = node.start_mark.line + 1
    if not isinstance(node, yaml.MappingNode) or not isinstance(value, dict):
        problems.append(RuleProblem(path, doc_line, "a rule is a mapping with name, condition and "
                                    f"routingGroup or reject, got {type(value).__name__}"))
        return None
    n_before = len(problems)
    keys: dict[str, tuple[yaml.Node, yaml.Node]] = {}
    for knode, vnode in node.value:
        key = knode.value if isinstance(knode, yaml.ScalarNode) else None
        line = knode.start_mark.line + 1
        if not isinstance(key, str):
            problems.append(RuleProblem(path, line, "rule keys are plain names"))
        elif key in keys:
            problems.append(RuleProblem(path, line, f"duplicate key '{key}'"))
        elif key not in RULE_KEYS:
            problems.append(RuleProblem(path, line, f"unknown key '{key}' (rule keys: {', '.join(RULE_KEYS)})"))
        else:
            keys[key] = (knode, vnode)

    def line_of(key: str) -> int:
        return keys[key][1].start_mark.line + 1 if key in keys else doc_line

    def problem(key: str, message: str) -> None:
        problems.append(RuleProblem(path, line_of(key), message))

    def get_str(key: str, required: bool = False) -> str | None:
        v = value.get(key) if key in keys else None
        vnode = keys[key][1] if key in keys else None
        if (isinstance(v, (bool, int, float)) and key != "reject" and isinstance(vnode, yaml.ScalarNode)
                and not vnode.style):
            v = vnode.value   # YAML 1.1 turns `name: off` or `routingGroup: 2024` into non-strings
        if v is None:
            if required and key not in keys:
                problems.append(RuleProblem(path, doc_line, f"missing required key '{key}'"))
            elif key in keys:
                problem(key, f"'{key}' needs a value")
            return None
        if not isinstance(v, str):
            problem(key, f"'{key}' must be a string, got {_yaml_type(v)}")
            return None
        return v

    def get_int(key: str, default: int) -> int:
        v = value.get(key, default) if key in keys else default
        if isinstance(v, bool) or not isinstance(v, int):
            problem(key, f"'{key}' must be an integer, got {_yaml_type(v)}")
            return default
        return v

    name = get_str("name", required=True)
    if name is not None:
        if not name.strip() or name != name.strip() or len(name) > _MAX_NAME or not name.isprintable():
            problem("name", f"rule name {name!r} must be 1-{_MAX_NAME} printable characters "
                    "without leading or trailing spaces")
            name = None
    condition = get_str("condition", required=True)
    compiled = None
    if condition is not None:
        try:
            compiled = compile_condition(condition)
        except ConditionError as exc:
            problems.append(RuleProblem(path, _condition_line(keys["condition"][1], exc.line),
                                        f"rule '{name or '?'}': condition: {exc.message}"))
    description = get_str("description")
    priority = get_int("priority", 0)
    queue_priority = get_int("queuePriority", 0)
    enabled = value.get("enabled", True) if "enabled" in keys else True
    if not isinstance(enabled, bool):
        problem("enabled", f"'enabled' must be true or false, got {_yaml_type(enabled)}")
        enabled = True
    group = get_str("routingGroup")
    if group is not None and not _GROUP_NAME.match(group):
        problem("routingGroup", f"routing group {group!r} must be 1-128 letters, digits, '.', '_' or '-'")
    reject = get_str("reject")
    if reject is not None and not reject.strip():
        problem("reject", "'reject' needs a message telling the user why the query is refused")
    if ("routingGroup" in keys) == ("reject" in keys):
        who = f"rule '{name}'" if name else "a rule"
        problems.append(RuleProblem(path, doc_line, f"{who} needs exactly one of 'routingGroup' or 'reject'"))
    if len(problems) != n_before or name is None or compiled is None:
        return None
    return Rule(name=name, condition=condition, priority=priority, description=description,  # type: ignore[arg-type]
                routing_group=group, reject=reject, queue_priority=queue_priority, enabled=enabled,
                file=path, line=doc_line, compiled=compiled)


def _condition_line(vnode: yaml.Node, line_in_condition: int) -> int:
    start = vnode.start_mark.line + 1
    style = getattr(vnode, "style", None)
    if style in ("|", ">"):
        return start + line_in_condition       # block scalars start on the line after '|'
    return start + max(0, line_in_condition - 1)


def _yaml_type(v: Any) -> str:
    if v is None:
        return "nothing"
    if isinstance(v, bool):
        return f"{str(v).lower()} (a boolean)"
    if isinstance(v, (int, float)):
        return f"{v} (a number)"
    if isinstance(v, str):
        return f"{v!r} (a string)"
    return {"dict": "a mapping", "list": "a list"}.get(type(v).__name__, type(v).__name__)
