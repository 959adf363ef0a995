"""A reference interpreter of trino-gateway's routing rules, written independently of the converter.

It evaluates the MVEL AST (``gateway.javamigration.mvel`` is only the parser) with Java's meaning over
a described request: ``request.getHeader`` returns the first header value or null, methods on
null throw, ``==`` is null-safe, MVEL's ``contains`` is null-safe, ``~=`` matches
``String.valueOf(left)`` (so null is ``"null"``), and the engine runs every rule whose condition
holds in ascending priority (ties in file order), the last ``result.put("routingGroup", ...)``
winning. A Java exception either fails the request (``on_error="fail"``, current trino-gateway)
or makes the condition false / stops the rule's actions (``on_error="false"``, the easy-rules
engine); the converter promises the latter, which equals the former wherever the former routes.

``TrinoFacts`` are what trino-gateway's own SQL parser would report, written by hand per test
statement, so comparing with our ``decide()`` also checks our SQL analyser agrees on them.
"""
from __future__ import annotations

import base64
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import yaml

from gateway.javamigration.mvel import Attr, Binary, Call, ExprStmt, If, Lit, Name, Unary, parse_expression, parse_statements


class JavaException(Exception):
    pass


ERROR = "<request fails>"


@dataclass(frozen=True)
class QName:
    parts: tuple[str, ...]


class JOptional:
    def __init__(self, value: Optional[str]) -> None:
        self.value = value

    def __eq__(self, other: object) -> bool:
        return isinstance(other, JOptional) and self.value == other.value

    def __hash__(self) -> int:
        return hash(self.value)

    def isPresent(self) -> bool:
        return self.value is not None

    def isEmpty(self) -> bool:
        return self.value is None

    def get(self) -> str:
        if self.value is None:
            raise JavaException("NoSuchElementException")
        return self.value

    def orElse(self, other: Any) -> Any:
        return self.value if self.value is not None else other

    def equals(self, other: Any) -> bool:
        return self == other


class _OptionalClass:
    def of(self, v: Any) -> JOptional:
        if v is None:
            raise JavaException("NullPointerException")
        return JOptional(v)

    def empty(self) -> JOptional:
        return JOptional(None)

    def ofNullable(self, v: Any) -> JOptional:
        return JOptional(v)


class _Namespace:
    def __init__(self, **attrs: Any) -> None:
        self.__dict__.update(attrs)


@dataclass
class TrinoFacts:
    """What TrinoQueryProperties holds for one statement and session."""
    query_class: str = ""
    rg_type: str = ""
    catalogs: frozenset = frozenset()
    schemas: frozenset = frozenset()
    catalog_schemas: frozenset = frozenset()
    tables: frozenset = frozenset()          # of QName


class JRequest:
    def __init__(self, headers: list[tuple[str, str]], remote: str) -> None:
        self.headers = headers
        self.remote = remote

    def getHeader(self, name: str) -> Optional[str]:
        for k, v in self.headers:
            if k.lower() == name.lower():
                return v
        return None

    def getRemoteAddr(self) -> str:
        return self.remote


class JQueryProperties:
    def __init__(self, facts: TrinoFacts, request: JRequest) -> None:
        self.f = facts
        self.request = request

    def getQueryType(self) -> str:
        return self.f.query_class

    def getResourceGroupQueryType(self) -> str:
        return self.f.rg_type

    def getCatalogs(self) -> frozenset:
        return self.f.catalogs

    def getSchemas(self) -> frozenset:
        return self.f.schemas

    def getCatalogSchemas(self) -> frozenset:
        return self.f.catalog_schemas

    def getTables(self) -> frozenset:
        return self.f.tables

    def tablesContains(self, name: str) -> bool:
        parts = tuple(p.lower() for p in name.split("."))
        return QName(parts) in self.f.tables

    def getDefaultCatalog(self) -> JOptional:
        return JOptional(self.request.getHeader("X-Trino-Catalog"))

    def getDefaultSchema(self) -> JOptional:
        return JOptional(self.request.getHeader("X-Trino-Schema"))

    def isNewQuerySubmission(self) -> bool:
        return True


class JRequestUser:
    def __init__(self, request: JRequest) -> None:
        user = request.getHeader("X-Trino-User")
        if user is None:
            auth = request.getHeader("Authorization") or ""
            if "Basic" in auth:
                user = base64.b64decode(auth.split(" ")[1]).decode().split(":")[0]
        self.user = user

    def userExistsAndEquals(self, name: str) -> bool:
        return self.user is not None and self.user == name

    def getUser(self) -> JOptional:
        return JOptional(self.user)


# --- Java strings -------------------------------------------------------------------------------

def _simple_upper(c: str) -> str:
    u = c.upper()
    return u if len(u) == 1 else c


def _simple_lower(c: str) -> str:
    if c == "\u0130":                   # Character.toLowerCase('İ') == 'i'
        return "i"
    low = c.lower()
    return low if len(low) == 1 else c


def _equals_ignore_case(a: str, b: str) -> bool:
    if len(a) != len(b):
        return False
    for x, y in zip(a, b):
        if x == y:
            continue
        ux, uy = _simple_upper(x), _simple_upper(y)
        if ux == uy or _simple_lower(ux) == _simple_lower(uy):
            continue
        return False
    return True


def _trim(s: str) -> str:
    return s.strip("".join(chr(i) for i in range(33)))


_STRING_METHODS: dict[str, Callable[..., Any]] = {
    "equals": lambda s, o: isinstance(o, str) and s == o,
    "equalsIgnoreCase": lambda s, o: isinstance(o, str) and _equals_ignore_case(s, o),
    "contains": lambda s, o: o in s if o is not None else _npe(),
    "startsWith": lambda s, o: s.startswith(o),
    "endsWith": lambda s, o: s.endswith(o),
    "isEmpty": lambda s: s == "",
    "toLowerCase": lambda s: s.lower(),
    "toUpperCase": lambda s: s.upper(),
    "trim": _trim,
    "matches": lambda s, r: re.fullmatch(r, s) is not None,
    "length": lambda s: len(s),
}


def _npe() -> Any:
    raise JavaException("NullPointerException")


def _java_equals(a: Any, b: Any) -> bool:
    if a is None or b is None:
        return a is None and b is None
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if type(a) is not type(b) and not (isinstance(a, JOptional) and isinstance(b, JOptional)):
        return False
    return a == b


def _contains_check(container: Any, item: Any) -> bool:
    if container is None:
        return False
    if isinstance(container, str):
        return ("null" if item is None else str(item)) in container
    if isinstance(container, (set, frozenset)):
        return any(_java_equals(x, item) for x in container)
    if isinstance(container, dict):
        return item in container
    return False


# --- interpreter --------------------------------------------------------------------------------

class Interpreter:
    def __init__(self, env: dict[str, Any]) -> None:
        self.env = env

    def ev(self, node: Any) -> Any:
        if isinstance(node, Lit):
            return node.value
        if isinstance(node, Name):
            if node.name not in self.env:
                raise JavaException(f"unresolvable variable {node.name}")
            return self.env[node.name]
        if isinstance(node, Attr):
            obj = self.ev(node.obj)
            if obj is None:
                raise JavaException("NullPointerException")
            if isinstance(obj, _Namespace) or hasattr(type(obj), node.name) and not callable(getattr(obj, node.name)):
                return getattr(obj, node.name)
            cap = node.name[:1].upper() + node.name[1:]
            for m in (node.name, "get" + cap, "is" + cap):
                if isinstance(obj, str) and m in _STRING_METHODS:
                    return _STRING_METHODS[m](obj)
                if hasattr(obj, m) and callable(getattr(obj, m)):
                    return getattr(obj, m)()
            raise JavaException(f"no property {node.name}")
        if isinstance(node, Call):
            obj = self.ev(node.obj)
            args = [self.ev(a) for a in node.args]
            if obj is None:
                raise JavaException("NullPointerException")
            if isinstance(obj, str):
                return _STRING_METHODS[node.name](obj, *args)
            if isinstance(obj, (set, frozenset)):
                if node.name == "contains":
                    return any(_java_equals(x, args[0]) for x in obj)
                if node.name == "isEmpty":
                    return not obj
                if node.name == "add":
                    raise JavaException("immutable")
            if isinstance(obj, dict):
                if node.name == "put":
                    obj[args[0]] = args[1]
                    return None
                if node.name == "get":
                    return obj.get(args[0])
            return getattr(obj, node.name)(*args)
        if isinstance(node, Unary):
            v = self.ev(node.operand)
            if node.op == "!":
                return not v
            return -v
        if isinstance(node, Binary):
            if node.op == "&&":
                return bool(self.ev(node.left)) and bool(self.ev(node.right))
            if node.op == "||":
                return bool(self.ev(node.left)) or bool(self.ev(node.right))
            a, b = self.ev(node.left), self.ev(node.right)
            if node.op == "==":
                return _java_equals(a, b)
            if node.op == "!=":
                return not _java_equals(a, b)
            if node.op == "contains":
                return _contains_check(a, b)
            if node.op == "~=":
                return re.fullmatch(str(b), "null" if a is None else str(a)) is not None
        raise AssertionError(f"reference interpreter: unsupported {node!r}")

    def run(self, stmts: Any) -> None:
        for s in stmts:
            if isinstance(s, If):
                for test, body in s.branches:
                    if self.ev(test):
                        self.run(body)
                        break
                else:
                    if s.orelse is not None:
                        self.run(s.orelse)
            elif isinstance(s, ExprStmt):
                self.ev(s.expr)


# --- the engine ---------------------------------------------------------------------------------

@dataclass
class RefRule:
    name: str
    priority: int
    index: int
    condition: Any
    actions: list[Any]


def load_ref_rules(text: str, skip: set[str] = frozenset(), default_priority: int = 0) -> list[RefRule]:
    out = []
    for i, doc in enumerate(d for d in yaml.safe_load_all(text) if d is not None):
        name = str(doc["name"])
        if name in skip:
            continue
        cond = doc["condition"]
        cond_ast = Lit(cond) if isinstance(cond, bool) else parse_expression(cond)
        actions = [parse_statements(a or "") for a in doc["actions"]]
        out.append(RefRule(name, doc.get("priority", default_priority), i, cond_ast, actions))
    return out


@dataclass
class Request:
    headers: list[tuple[str, str]]
    sql: str = ""
    facts: Optional[TrinoFacts] = None       # None: trino-gateway cannot build the properties
    remote: str = "10.0.0.7"
    label: str = field(default="", compare=False)


def route(rules: list[RefRule], req: Request, *, on_error: str = "false", default_group: str = "adhoc",
          order: str = "file") -> str:
    """The routing group trino-gateway chooses, or ERROR when the request fails."""
    if req.facts is None:
        return ERROR
    jreq = JRequest(req.headers, req.remote)
    result: dict[str, Any] = {}
    env = {
        "request": jreq, "trinoQueryProperties": JQueryProperties(req.facts, jreq),
        "trinoRequestUser": JRequestUser(jreq), "result": result, "state": {},
        "FileBasedRoutingGroupSelector": _Namespace(RESULTS_ROUTING_GROUP_KEY="routingGroup"),
        "Optional": _OptionalClass(), "java": _Namespace(util=_Namespace(Optional=_OptionalClass())),
    }
    interp = Interpreter(env)
    key = (lambda r: (r.priority, r.index)) if order == "file" else (lambda r: (r.priority, r.name))
    for rule in sorted(rules, key=key):
        try:
            fired = bool(interp.ev(rule.condition))
        except JavaException:
            if on_error == "fail":
                return ERROR
            fired = False
        if not fired:
            continue
        try:
            for action in rule.actions:
                interp.run(action)
        except JavaException:
            if on_error == "fail":
                return ERROR
    group = result.get("routingGroup")
    return group if group else default_group
