"""Values of translated MVEL expressions, and string tests over them that never raise.

``translate.py`` evaluates an MVEL expression to one of these values: a string (a literal, a
header-like symbol, a finite domain such as statement classes, or a choice from
``Optional.orElse``), an Optional, a set of names, a boolean (``Cond``: "true without an
exception" and "throws"), or an object like ``request``. ``pred(value, op, arg)`` is Java's
string test ``op`` (equals, contains, startsWith, endsWith, matches, equalsIgnoreCase, isEmpty)
as a formula over our symbols that is false whenever the Java string is null. For a finite
domain the test is computed for every value and the set becomes a ``queryType`` condition
(``domain_formula``), or an ``Unconvertible`` when our types cannot express it exactly.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Union

from gateway.javamigration.formula import FALSE, TRUE, Atom, F, and_, not_, or_, quote
from gateway.javamigration.java_model import (
    EXPLAIN_ANALYZE, EXPLAIN_ANALYZE_TYPES, RESOURCE_GROUP_TYPES, STATEMENT_CLASSES,
    UNPARSED_CLASSES, ignore_case_pattern, java_regex_to_python, java_trim,
)

__all__ = [
    "Unconvertible", "Cond", "SLit", "SHeader", "SDomain", "SChoice", "StrV", "OptV", "SetV",
    "BoolV", "IntV", "ObjV", "Value", "pred", "is_null", "with_e", "domain_bool", "negate",
    "domain_values", "apply_transforms", "java_pred",
]


class Unconvertible(Exception):
    """The MVEL text has no exact equivalent; ``reason`` says which construct and why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Cond:
    t: F                 # true, without an exception
    e: F = FALSE         # throws

    @property
    def f(self) -> F:
        """False, without an exception."""
        return and_(not_(self.t), not_(self.e))


# --- values -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SLit:
    value: Union[str, None]
    e: F = FALSE


@dataclass(frozen=True)
class SHeader:
    """A header-like string. ``expr`` is our expression for it; ``null`` is exactly "Java sees
    null"; ``empty`` is exactly "the header is sent empty" when ``expr`` is null for an empty
    value (the ``source``-style symbols), None when ``expr`` itself is ``""`` then."""
    expr: str
    null: F
    empty: Union[F, None]
    transforms: tuple[str, ...] = ()
    e: F = FALSE


@dataclass(frozen=True)
class SDomain:
    """A string with a finite set of values: ``class`` (getQueryType) or ``rgtype``."""
    domain: str
    transforms: tuple[str, ...] = ()
    e: F = FALSE


@dataclass(frozen=True)
class SChoice:
    """``cond ? a : b`` (from ``Optional.orElse``); both branches are non-null strings."""
    cond: F
    a: "StrV"
    b: "StrV"
    e: F = FALSE


StrV = Union[SLit, SHeader, SDomain, SChoice]


@dataclass(frozen=True)
class OptV:
    """``Optional<String>``: ``inner`` when ``present``; ``literal`` set for ``Optional.of("x")``."""
    inner: Union[StrV, None]
    present: F
    e: F = FALSE


@dataclass(frozen=True)
class SetV:
    kind: str            # catalogs, schemas, catalogSchemas, qualifiedNames


@dataclass(frozen=True)
class BoolV:
    """A boolean. A predicate over a finite domain keeps its set of values (``selected``) so
    that ``!``, ``&&`` and ``||`` of such predicates combine exactly before being mapped to
    ``queryType``: ``startsWith("Show") || startsWith("Describe")`` covers a whole type even
    though neither side does."""
    c: Union[Cond, None] = None
    domain: Union[str, None] = None
    selected: frozenset[str] = frozenset()
    what: str = ""

    @property
    def cond(self) -> Cond:
        if self.c is not None:
            return self.c
        return Cond(domain_formula(str(self.domain), set(self.selected), self.what))


@dataclass(frozen=True)
class IntV:
    value: int


@dataclass(frozen=True)
class ObjV:
    name: str            # request, trinoQueryProperties, trinoRequestUser, Optional, selector


Value = Union[SLit, SHeader, SDomain, SChoice, OptV, SetV, BoolV, IntV, ObjV]


# --- string predicates ------------------------------------------------------------------------

def apply_transforms(s: str, transforms: tuple[str, ...]) -> str:
    for t in transforms:
        s = s.lower() if t == "lower" else s.upper() if t == "upper" else java_trim(s)
    return s


def java_pred(s: str, op: str, arg: str) -> bool:
    """What Java computes for a non-null string ``s``."""
    if op == "eq":
        return s == arg
    if op == "contains":
        return arg in s
    if op == "startswith":
        return s.startswith(arg)
    if op == "endswith":
        return s.endswith(arg)
    if op == "matches":
        return re.match(java_regex_to_python(arg), s) is not None
    if op == "eq_ic":
        return re.match(ignore_case_pattern(arg), s) is not None
    if op == "isempty":
        return s == ""
    raise AssertionError(op)


def domain_values(domain: str) -> list[str]:
    if domain == "rgtype":
        return [*RESOURCE_GROUP_TYPES, ""]
    return [*STATEMENT_CLASSES, EXPLAIN_ANALYZE, *UNPARSED_CLASSES]


ALL_TYPES = (*RESOURCE_GROUP_TYPES, "UNKNOWN")


def query_type_formula(types: set[str]) -> F:
    ordered = [t for t in ALL_TYPES if t in types]
    rest = [t for t in ALL_TYPES if t not in types]
    if not rest:
        return TRUE
    if not ordered:
        return FALSE

    def positive(items: list[str]) -> F:
        if len(items) == 1:
            return Atom(f"queryType == {quote(items[0])}", f"queryType != {quote(items[0])}")
        return Atom("queryType in [" + ", ".join(quote(t) for t in items) + "]")
    return positive(ordered) if len(ordered) <= len(rest) else not_(positive(rest))


def domain_formula(domain: str, selected: set[str], what: str) -> F:
    if domain == "rgtype":
        return query_type_formula({d or "UNKNOWN" for d in selected})
    types: set[str] = set()
    for rg in RESOURCE_GROUP_TYPES:
        classes = {c for c, t in STATEMENT_CLASSES.items() if t == rg}
        hit = classes & selected
        if hit == classes:
            types.add(rg)
        elif hit:
            raise Unconvertible(
                f"{what} holds for the statement classes {', '.join(sorted(hit))} but not for "
                f"{', '.join(sorted(classes - hit))}, and our queryType gives all of them the "
                f"one type {rg}; if that difference does not matter write queryType == \"{rg}\"")
    ea = EXPLAIN_ANALYZE in selected
    for rg in sorted(EXPLAIN_ANALYZE_TYPES):
        if (rg in types) != ea:
            raise Unconvertible(
                f"{what} {'holds' if rg in types else 'does not hold'} for {rg} statements but "
                f"{'holds' if ea else 'does not hold'} for EXPLAIN ANALYZE of them (class "
                f"ExplainAnalyze), while our queryType types EXPLAIN ANALYZE x as x; if that "
                f"difference does not matter use queryType")
    unparsed = {c in selected for c in UNPARSED_CLASSES}
    if len(unparsed) == 2:
        raise Unconvertible(f"{what} tells an unparsable statement from an EXECUTE of an unknown "
                            "prepared statement; both are queryType UNKNOWN here")
    if True in unparsed:
        types.add("UNKNOWN")
    return query_type_formula(types)


def domain_bool(v: SDomain, op: str, arg: str | None, what: str) -> BoolV:
    """``op`` (or, with ``arg`` None, ``== null``) for every value of the domain."""
    values = domain_values(v.domain)
    if arg is None:
        return BoolV(None, v.domain, frozenset(), what)
    return BoolV(None, v.domain, frozenset(d for d in values
                                           if java_pred(apply_transforms(d, v.transforms), op, arg)), what)


def negate(b: BoolV, what: str) -> BoolV:
    if b.c is None:
        return BoolV(None, b.domain, frozenset(domain_values(str(b.domain))) - b.selected, what)
    return BoolV(Cond(b.c.f, b.c.e))


def header_atoms(v: SHeader, op: str, arg: str) -> F:
    """Our test of ``op`` on the header when it is non-null (false when it is null)."""
    base = v.expr
    suffix = "".join({"lower": ".as_lower", "upper": ".as_upper"}.get(t, "") for t in v.transforms)
    value = base + suffix
    not_null = Atom(f"{base} != null", f"{base} == null")
    symbol_like = v.empty is not None
    if op in ("contains", "startswith", "endswith") and arg == "":
        return not_null                                     # every non-null string qualifies
    if op == "isempty":
        return FALSE if symbol_like else Atom(f'{base} == ""', f'{base} != ""')
    if op == "eq":
        if arg == "" and symbol_like:
            return FALSE                                    # the symbol is null, never ""
        atom = Atom(f"{value} == {quote(arg)}", f"{value} != {quote(arg)}")
    elif op == "contains":
        return and_(not_null, Atom(f"{quote(arg)} in {value}", safe=False))
    elif op == "startswith":
        atom = Atom(f"{value} =~ {quote(re.escape(arg) + '.*')}")
    elif op == "endswith":
        atom = Atom(f"{value} =~ {quote('(?s).*' + re.escape(arg) + chr(92) + 'Z')}")
    elif op == "matches":
        atom = Atom(f"{value} =~ {quote(java_regex_to_python(arg))}")
    elif op == "eq_ic":
        atom = Atom(f"{value} =~ {quote(ignore_case_pattern(arg))}")
    else:
        raise AssertionError(op)
    # `x.as_lower` raises on null; `==`, `!=` and `=~` are null-safe on their own.
    if suffix:
        return and_(not_null, Atom(atom.text, atom.neg, safe=False))
    return atom


def pred(v: StrV, op: str, arg: str, what: str) -> F:
    """True exactly when ``v`` is non-null and Java's ``op`` holds; never true for null."""
    if isinstance(v, SLit):
        if v.value is None:
            return FALSE
        return TRUE if java_pred(v.value, op, arg) else FALSE
    if isinstance(v, SDomain):
        selected = {d for d in domain_values(v.domain)
                    if java_pred(apply_transforms(d, v.transforms), op, arg)}
        return domain_formula(v.domain, selected, what)
    if isinstance(v, SChoice):
        return or_(and_(v.cond, pred(v.a, op, arg, what)), and_(not_(v.cond), pred(v.b, op, arg, what)))
    ours = header_atoms(v, op, arg)
    if v.empty is None:
        return ours
    on_empty = TRUE if java_pred(apply_transforms("", v.transforms), op, arg) else FALSE
    return or_(and_(v.empty, on_empty), ours)


def is_null(v: StrV) -> F:
    if isinstance(v, SLit):
        return TRUE if v.value is None else FALSE
    if isinstance(v, SHeader):
        return v.null
    if isinstance(v, SDomain):
        return FALSE
    return or_(and_(v.cond, is_null(v.a)), and_(not_(v.cond), is_null(v.b)))


def with_e(v: StrV, e: F) -> StrV:
    return type(v)(**{**v.__dict__, "e": or_(v.e, e)})  # type: ignore[arg-type]
