"""MVEL conditions (trino-gateway) → rule-engine conditions (this gateway) with the same truth value.

Every MVEL boolean is translated to a pair of formulas (``Cond``): ``t``, "evaluates to true
without an exception", and ``e``, "throws" (a method called on a missing header, ``get()`` on an
empty Optional). The rule condition we emit is ``t``: it is false exactly when trino-gateway's
condition is false or throws, and it never raises itself (every atom is null-safe), so the
explain trace stays clean. Keeping ``e`` separate is what makes ``!`` and ``||`` exact: in Java
``!h.contains("x")`` throws on a null ``h`` instead of being true.

How values map (docs/migrating.md has the full table and the assumptions):

* ``request.getHeader("X-Trino-Source"|"-Catalog"|"-Schema"|"-Client-Info"|"-Routing-Group")``
  → ``source``, ``catalog``, ``schema``, ``clientInfo``, ``routingGroupHeader``; an empty header
  is null in those symbols, so tests that an empty value passes are written against
  ``headers&["..."]``. Every other header → ``headers&["lower-case-name"]``, including
  ``X-Trino-User`` (our ``user`` also reads credentials) and ``X-Trino-Client-Tags`` (MVEL tests
  the raw header text, not a list).
* ``trinoRequestUser`` → ``user``; ``trinoQueryProperties`` → ``catalogs``, ``schemas``,
  ``tables``, ``queryType`` (resource-group types; ``getQueryType()`` class names only where a
  predicate covers whole resource-group types), ``catalog``/``schema`` for the defaults.
* Finite domains (statement classes, resource-group types) are evaluated exhaustively: the
  predicate is computed for every possible value and the set becomes ``queryType in [...]``.

Anything else raises ``Unconvertible`` with the construct and the reason.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from gateway.javamigration.formula import FALSE, TRUE, Atom, Const, F, and_, not_, or_, quote
from gateway.javamigration.java_model import UnsupportedRegex
from gateway.javamigration.mvel import Attr, Binary, Call, Lit, Name, Node, Unary, unparse
from gateway.javamigration.values import (
    BoolV, Cond, IntV, ObjV, OptV, SChoice, SDomain, SetV, SHeader, SLit, StrV, Unconvertible, Value,
    apply_transforms, domain_bool, is_null, java_pred, negate, pred, with_e,
)
from gateway.routing.context import HIDDEN_HEADERS

__all__ = ["Unconvertible", "Cond", "Translator", "ROUTING_GROUP_KEY"]

ROUTING_GROUP_KEY = "routingGroup"
_KEY_CONSTANTS = {"FileBasedRoutingGroupSelector", "RulesRoutingGroupSelector",
                  "MVELFileRoutingGroupSelector"}
_SYMBOL_HEADERS = {"x-trino-source": "source", "x-trino-catalog": "catalog", "x-trino-schema": "schema",
                   "x-trino-client-info": "clientInfo", "x-trino-routing-group": "routingGroupHeader"}
_HEADER_NAME = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$")

# --- the translator ---------------------------------------------------------------------------

@dataclass
class Translator:
    """Translates MVEL AST nodes; ``notes`` collects remarks that are not failures."""
    notes: list[str] = field(default_factory=list)

    def condition(self, node: Node) -> Cond:
        v = self.value(node)
        if not isinstance(v, BoolV):
            raise Unconvertible(f"{unparse(node)} is not true/false")
        return v.cond

    # dispatch ----------------------------------------------------------------------------
    def value(self, node: Node) -> Value:
        if isinstance(node, Lit):
            if isinstance(node.value, bool):
                return BoolV(Cond(TRUE if node.value else FALSE))
            if isinstance(node.value, int):
                return IntV(node.value)
            return SLit(node.value)
        if isinstance(node, Name):
            return self.name(node.name)
        if isinstance(node, Attr):
            return self.attr(node)
        if isinstance(node, Call):
            if node.obj is None:
                raise Unconvertible(f"the function call {unparse(node)}")
            return self.call(node, self.value(node.obj), node.name, [self.value(a) for a in node.args])
        if isinstance(node, Unary):
            inner = self.value(node.operand)
            if node.op != "!" or not isinstance(inner, BoolV):
                raise Unconvertible(f"{unparse(node)}: '!' of something that is not true/false")
            return negate(inner, unparse(node))
        if isinstance(node, Binary):
            return self.binary(node)
        raise Unconvertible(f"unsupported construct {node!r}")

    def name(self, name: str) -> Value:
        if name in ("request", "trinoQueryProperties", "trinoRequestUser", "Optional", "java"):
            return ObjV(name)
        if name in _KEY_CONSTANTS:
            return ObjV("selector")
        if name == "state":
            raise Unconvertible("it uses the shared 'state' map, so it depends on other rules "
                                "having run; our rules are evaluated independently")
        if name == "result":
            raise Unconvertible("the condition reads 'result', i.e. what earlier rules decided")
        raise Unconvertible(f"unknown variable '{name}'")

    def attr(self, node: Attr) -> Value:
        obj = self.value(node.obj)
        if isinstance(obj, ObjV) and obj.name == "java" and node.name == "util":
            return ObjV("java.util")
        if isinstance(obj, ObjV) and obj.name == "java.util" and node.name == "Optional":
            return ObjV("Optional")
        if isinstance(obj, ObjV) and obj.name == "selector":
            if node.name == "RESULTS_ROUTING_GROUP_KEY":
                return SLit(ROUTING_GROUP_KEY)
            raise Unconvertible(f"unknown constant {unparse(node)}")
        # MVEL: `x.foo` is the bean property getFoo()/isFoo(), `x.getFoo` the method itself.
        cap = node.name[:1].upper() + node.name[1:]
        for method in (node.name, f"get{cap}", f"is{cap}"):
            if self.has_method(obj, method):
                return self.call(node, obj, method, [])
        raise Unconvertible(f"unknown property {unparse(node)}")

    @staticmethod
    def has_method(obj: Value, method: str) -> bool:
        table = {
            "request": {"getRemoteAddr", "getMethod", "getRequestURI", "getQueryString"},
            "trinoQueryProperties": {"getTables", "getCatalogs", "getSchemas", "getCatalogSchemas",
                                     "getQueryType", "getResourceGroupQueryType", "getDefaultCatalog",
                                     "getDefaultSchema", "isNewQuerySubmission", "getBody",
                                     "getErrorMessage", "errorMessage", "isQueryParsingSuccessful"},
            "trinoRequestUser": {"getUser", "getUserInfo"},
        }
        if isinstance(obj, ObjV):
            return method in table.get(obj.name, set())
        if isinstance(obj, (SLit, SHeader, SDomain, SChoice)):
            return method in ("toLowerCase", "toUpperCase", "trim", "isEmpty", "length")
        if isinstance(obj, OptV):
            return method in ("isPresent", "isEmpty", "get")
        if isinstance(obj, SetV):
            return method in ("isEmpty", "size")
        return False

    # calls -------------------------------------------------------------------------------
    def call(self, node: Node, obj: Value, method: str, args: list[Value]) -> Value:
        shown = unparse(node)
        if isinstance(obj, ObjV):
            return self.object_call(shown, obj.name, method, args)
        if isinstance(obj, (SLit, SHeader, SDomain, SChoice)):
            return self.string_call(shown, obj, method, args)
        if isinstance(obj, OptV):
            return self.optional_call(shown, obj, method, args)
        if isinstance(obj, SetV):
            return self.set_call(shown, obj, method, args)
        raise Unconvertible(f"{shown}: unsupported method call")

    def object_call(self, shown: str, obj: str, method: str, args: list[Value]) -> Value:
        if obj == "request":
            if method == "getHeader":
                name = self.literal_arg(shown, args)
                return self.header(name, shown)
            if method == "getRemoteAddr" and not args:
                return SHeader("remoteAddress", Atom("remoteAddress == null", "remoteAddress != null"), None)
            raise Unconvertible(f"{shown}: rules here only see new statements and their headers; "
                                f"request.{method}() has no equivalent")
        if obj == "trinoQueryProperties":
            return self.query_properties(shown, method, args)
        if obj == "trinoRequestUser":
            user = self.user_value()
            if method == "userExistsAndEquals":
                name = self.literal_arg(shown, args)
                return BoolV(Cond(pred(user, "eq", name, shown)))
            if method == "getUser" and not args:
                return OptV(user, not_(user.null))
            raise Unconvertible(f"{shown}: trinoRequestUser.{method}() has no equivalent")
        if obj == "Optional":
            if method == "of" and len(args) == 1 and isinstance(args[0], SLit) and args[0].value is not None:
                return OptV(args[0], TRUE)
            if method == "empty" and not args:
                return OptV(None, FALSE)
            if method == "ofNullable" and len(args) == 1 and isinstance(args[0], SLit):
                return OptV(args[0] if args[0].value is not None else None,
                            TRUE if args[0].value is not None else FALSE)
        raise Unconvertible(f"{shown}: unsupported call")

    def query_properties(self, shown: str, method: str, args: list[Value]) -> Value:
        if args and method != "tablesContains":
            raise Unconvertible(f"{shown}: unexpected arguments")
        if method == "tablesContains":
            return BoolV(Cond(self.table_test(shown, self.literal_arg(shown, args))))
        if method in ("getCatalogs", "getSchemas", "getCatalogSchemas"):
            return SetV({"getCatalogs": "catalogs", "getSchemas": "schemas",
                         "getCatalogSchemas": "catalogSchemas"}[method])
        if method == "getTables":
            return SetV("qualifiedNames")
        if method == "getQueryType":
            return SDomain("class")
        if method == "getResourceGroupQueryType":
            return SDomain("rgtype")
        if method in ("getDefaultCatalog", "getDefaultSchema"):
            h = self.header("X-Trino-Catalog" if method == "getDefaultCatalog" else "X-Trino-Schema", shown)
            return OptV(h, not_(h.null))
        if method == "isNewQuerySubmission":
            return BoolV(Cond(TRUE))      # our rules only ever see new statement submissions
        raise Unconvertible(f"{shown}: trinoQueryProperties.{method}() has no equivalent here")

    def header(self, name: str, shown: str) -> SHeader:
        key = name.strip().lower()
        if not _HEADER_NAME.match(key):
            raise Unconvertible(f"{shown}: {name!r} is not a header name")
        if key in HIDDEN_HEADERS:
            raise Unconvertible(f"{shown}: credentials ({name}) are hidden from rules here")
        raw = f"headers&[{quote(key)}]"
        null = Atom(f"{raw} == null", f"{raw} != null")
        if key in _SYMBOL_HEADERS:
            return SHeader(_SYMBOL_HEADERS[key], null, Atom(f'{raw} == ""', f'{raw} != ""'))
        return SHeader(raw, null, None)

    @staticmethod
    def user_value() -> SHeader:
        # trinoRequestUser: X-Trino-User (even empty), else Basic user, else token user; ours:
        # X-Trino-User unless empty, else X-Presto-User, Basic, JWT subject.
        empty = Atom('headers&["x-trino-user"] == ""', 'headers&["x-trino-user"] != ""')
        return SHeader("user", and_(Atom("user == null", "user != null"), not_(empty)), empty)

    def table_test(self, shown: str, name: str) -> F:
        if '"' in name:
            raise Unconvertible(f"{shown}: quoted identifiers cannot be matched exactly "
                                "(our tables are dot-joined names)")
        parts = name.split(".")
        if any(p.strip() == "" for p in parts):
            raise Unconvertible(f"{shown}: {name!r} has an empty name part")
        if len(parts) != 3:
            self.notes.append(f"{shown} is always false in trino-gateway (tables are "
                              "catalog.schema.table); converted as false")
            return FALSE
        return Atom(f"{quote(name.lower())} in tables")

    def literal_arg(self, shown: str, args: list[Value]) -> str:
        if len(args) != 1 or not isinstance(args[0], SLit) or args[0].value is None:
            raise Unconvertible(f"{shown}: expected one string literal argument")
        return args[0].value

    def string_call(self, shown: str, s: StrV, method: str, args: list[Value]) -> Value:
        throws = or_(s.e, is_null(s))           # any method on a null string throws
        if isinstance(s, SDomain) and method in ("equals", "contains", "startsWith", "endsWith",
                                                  "matches", "equalsIgnoreCase", "isEmpty"):
            if method == "isEmpty":
                return domain_bool(s, "isempty", "", shown)
            arg_v = args[0] if len(args) == 1 else None
            if not isinstance(arg_v, SLit):
                raise Unconvertible(f"{shown}: expected one string literal argument")
            if arg_v.value is None:
                if method == "equals":
                    return domain_bool(s, "eq", None, shown)
                raise Unconvertible(f"{shown}: a null argument throws")
            op = {"equals": "eq", "contains": "contains", "startsWith": "startswith", "endsWith": "endswith",
                  "matches": "matches", "equalsIgnoreCase": "eq_ic"}[method]
            try:
                return domain_bool(s, op, arg_v.value, shown)
            except (UnsupportedRegex, ValueError) as exc:
                raise Unconvertible(f"{shown}: {exc}") from None
        if method in ("toLowerCase", "toUpperCase", "trim") and not args:
            t = {"toLowerCase": "lower", "toUpperCase": "upper", "trim": "trim"}[method]
            return self.transformed(shown, s, t, throws)
        if method == "equals" and len(args) == 1:
            other = args[0]
            if isinstance(other, SLit):
                test = FALSE if other.value is None else pred(s, "eq", other.value, shown)
                return BoolV(Cond(and_(not_(s.e), test), throws))
            if isinstance(s, SLit) and s.value is not None and isinstance(other, (SHeader, SDomain, SChoice)):
                # "literal".equals(x): no exception, false for null
                return BoolV(Cond(and_(not_(s.e), not_(other.e), pred(other, "eq", s.value, shown)),
                                  or_(s.e, other.e)))
            raise Unconvertible(f"{shown}: equals() with something other than a string literal")
        ops = {"contains": "contains", "startsWith": "startswith", "endsWith": "endswith",
               "matches": "matches", "equalsIgnoreCase": "eq_ic", "isEmpty": "isempty"}
        if method in ops:
            op = ops[method]
            if op == "isempty":
                if args:
                    raise Unconvertible(f"{shown}: unexpected arguments")
                arg = ""
            else:
                arg = self.literal_arg(shown, args)
            # the predicate is false for a null string, so "not null" need not be repeated in t
            test = self.checked_pred(shown, s, op, arg)
            return BoolV(Cond(and_(not_(s.e), test), throws))
        raise Unconvertible(f"{shown}: String.{method}() is not supported by the converter")

    def transformed(self, shown: str, s: StrV, t: str, throws: F) -> StrV:
        if isinstance(s, SLit):
            if s.value is None:
                return SLit(None, TRUE)
            return SLit(apply_transforms(s.value, (t,)), throws)
        if isinstance(s, SHeader):
            return SHeader(s.expr, s.null, s.empty, s.transforms + (t,), throws)
        if isinstance(s, SDomain):
            return SDomain(s.domain, s.transforms + (t,), throws)
        return SChoice(s.cond, self.transformed(shown, s.a, t, FALSE),
                       self.transformed(shown, s.b, t, FALSE), throws)

    def checked_pred(self, shown: str, s: StrV, op: str, arg: str) -> F:
        try:
            return pred(s, op, arg, shown)
        except UnsupportedRegex as exc:
            raise Unconvertible(f"{shown}: the regular expression {arg!r} uses {exc}, which is "
                                "not translated") from None
        except ValueError as exc:
            raise Unconvertible(f"{shown}: {exc}") from None

    def optional_call(self, shown: str, o: OptV, method: str, args: list[Value]) -> Value:
        if method == "isPresent" and not args:
            return BoolV(Cond(and_(not_(o.e), o.present), o.e))
        if method == "isEmpty" and not args:
            return BoolV(Cond(and_(not_(o.e), not_(o.present)), o.e))
        if method == "get" and not args and o.inner is not None:
            return with_e(o.inner, or_(o.e, not_(o.present)))
        if method == "orElse" and len(args) == 1 and isinstance(args[0], SLit) and o.inner is not None:
            if args[0].value is None:
                return with_e(o.inner, o.e)
            return SChoice(o.present, o.inner, args[0], o.e)
        if method == "equals" and len(args) == 1 and isinstance(args[0], OptV):
            return BoolV(Cond(and_(not_(o.e), self.optional_equals(shown, o, args[0])), o.e))
        raise Unconvertible(f"{shown}: Optional.{method}() is not supported by the converter")

    def optional_equals(self, shown: str, o: OptV, other: OptV) -> F:
        if other.inner is None:
            return not_(o.present)
        if not isinstance(other.inner, SLit) or other.inner.value is None or o.inner is None:
            raise Unconvertible(f"{shown}: only comparisons with Optional.of(\"literal\") are supported")
        return pred(o.inner, "eq", other.inner.value, shown)   # false when absent

    def set_call(self, shown: str, s: SetV, method: str, args: list[Value]) -> Value:
        if method == "contains" and len(args) == 1:
            return BoolV(Cond(self.membership(shown, s, args[0])))
        raise Unconvertible(f"{shown}: {method}() on a set is not supported (our sets of names "
                            "are built differently; only contains(\"name\") is exact)")

    def membership(self, shown: str, s: SetV, item: Value) -> F:
        if not isinstance(item, SLit) or item.value is None:
            raise Unconvertible(f"{shown}: contains() needs a string literal")
        name = item.value
        if s.kind == "qualifiedNames":
            self.notes.append(f"{shown} is always false in trino-gateway (getTables() holds "
                              "QualifiedName objects, not strings; tablesContains was probably "
                              "meant); converted as false")
            return FALSE
        if name != name.lower() or not name or '"' in name:
            raise Unconvertible(f"{shown}: {name!r} is not a lower-case name; our catalogs and "
                                "schemas are lower-case, so it cannot be matched exactly")
        dots = name.count(".")
        if s.kind == "catalogs":
            if dots:
                raise Unconvertible(f"{shown}: a catalog name with a dot cannot be matched exactly")
            return Atom(f"{quote(name)} in catalogs")
        if s.kind == "schemas":
            if dots:
                raise Unconvertible(f"{shown}: a schema name with a dot cannot be matched exactly "
                                    "(our schemas also hold catalog.schema)")
            return Atom(f"{quote(name)} in schemas")
        if dots != 1 or "" in name.split("."):
            raise Unconvertible(f"{shown}: catalog schemas are written catalog.schema")
        return Atom(f"{quote(name)} in schemas")

    # operators -----------------------------------------------------------------------------
    def binary(self, node: Binary) -> Value:
        shown = unparse(node)
        if node.op in ("&&", "||"):
            a, b = self.value(node.left), self.value(node.right)
            if not isinstance(a, BoolV) or not isinstance(b, BoolV):
                raise Unconvertible(f"{shown}: '{node.op}' of something that is not true/false")
            if a.c is None and b.c is None and a.domain == b.domain:
                both = a.selected & b.selected if node.op == "&&" else a.selected | b.selected
                return BoolV(None, a.domain, both, shown)
            x, y = a.cond, b.cond
            if node.op == "&&":
                return BoolV(Cond(and_(x.t, y.t), or_(x.e, and_(x.t, y.e))))
            return BoolV(Cond(or_(x.t, and_(x.f, y.t)), or_(x.e, and_(x.f, y.e))))
        left, right = self.value(node.left), self.value(node.right)
        if node.op in ("==", "!="):
            if isinstance(left, SLit) and isinstance(right, SDomain):
                left, right = right, left
            if isinstance(left, SDomain) and isinstance(right, SLit):
                eq_b = domain_bool(left, "eq", right.value, shown)
            else:
                eq_b = BoolV(self.equality(shown, left, right))
            return eq_b if node.op == "==" else negate(eq_b, shown)
        if node.op == "contains":
            return self.contains_operator(shown, left, right)
        if node.op == "~=":
            return self.regex_operator(shown, left, right)
        raise Unconvertible(f"{shown}: the operator '{node.op}' is not supported by the converter")

    def equality(self, shown: str, a: Value, b: Value) -> Cond:
        if isinstance(a, SLit) and not isinstance(b, SLit):
            a, b = b, a
        strings = (SLit, SHeader, SDomain, SChoice)
        if isinstance(b, SLit) and isinstance(a, strings):
            e = or_(a.e, b.e)
            if b.value is None:
                return Cond(and_(not_(e), is_null(a)), e)
            return Cond(and_(not_(e), pred(a, "eq", b.value, shown)), e)
        if isinstance(b, SLit) and b.value is None and isinstance(a, (OptV, SetV, BoolV, IntV)):
            return Cond(FALSE, a.e if isinstance(a, OptV) else a.cond.e if isinstance(a, BoolV) else FALSE)
        if isinstance(a, BoolV) and isinstance(b, BoolV):
            x, y = a.cond, b.cond
            if isinstance(y.t, Const) and y.e == FALSE:
                return Cond(x.t if y.t.value else x.f, x.e)
            if isinstance(x.t, Const) and x.e == FALSE:
                return Cond(y.t if x.t.value else y.f, y.e)
        if isinstance(a, OptV) and isinstance(b, OptV):
            return Cond(and_(not_(a.e), self.optional_equals(shown, a, b)), a.e)
        if isinstance(a, IntV) and isinstance(b, IntV):
            return Cond(TRUE if a.value == b.value else FALSE)
        raise Unconvertible(f"{shown}: this comparison is not supported by the converter")

    def contains_operator(self, shown: str, a: Value, b: Value) -> Value:
        # MVEL: null contains x is false; a String tests a substring, a collection membership.
        if isinstance(a, SetV):
            return BoolV(Cond(self.membership(shown, a, b)))
        if isinstance(a, (SLit, SHeader, SDomain, SChoice)):
            if not isinstance(b, SLit) or b.value is None:
                raise Unconvertible(f"{shown}: 'contains' needs a string literal on the right")
            if isinstance(a, SDomain):
                return domain_bool(a, "contains", b.value, shown)
            return BoolV(Cond(and_(not_(a.e), self.checked_pred(shown, a, "contains", b.value)), a.e))
        raise Unconvertible(f"{shown}: 'contains' on this value is not supported")

    def regex_operator(self, shown: str, a: Value, b: Value) -> Value:
        # MVEL: Pattern.compile(right).matcher(String.valueOf(left)).matches(); null is "null".
        if not isinstance(a, (SLit, SHeader, SDomain, SChoice)) or not isinstance(b, SLit) or b.value is None:
            raise Unconvertible(f"{shown}: '~=' needs a string on the left and a pattern literal on the right")
        test = self.checked_pred(shown, a, "matches", b.value)
        null_matches = TRUE if java_pred("null", "matches", b.value) else FALSE
        return BoolV(Cond(and_(not_(a.e), or_(test, and_(is_null(a), null_matches))), a.e))
