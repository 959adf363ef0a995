"""Boolean formulas over rule-engine atoms, simplified and printed as rule-engine conditions.

The converter builds a condition as a formula (``And``/``Or``/``Not`` of ``Atom`` texts such as
``source == "airflow"``) rather than as text, so that the bookkeeping it needs (null guards,
"this part would throw in Java") folds away: ``and_(x, TRUE)`` is ``x``, ``or_(x, FALSE)`` is
``x``, ``not_(not_(x))`` is ``x``. ``render`` prints the result with the parentheses
rule-engine's precedence needs (``not`` binds looser than comparisons, tighter than ``and``,
which binds tighter than ``or``). ``quote`` writes a rule-engine string literal.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Union

__all__ = ["Const", "Atom", "Not", "And", "Or", "F", "TRUE", "FALSE", "and_", "or_", "not_",
           "render", "quote", "atoms"]


@dataclass(frozen=True)
class Const:
    value: bool


@dataclass(frozen=True)
class Atom:
    """A rule-engine comparison, e.g. ``source == "x"``; ``neg`` is its negation when shorter."""
    text: str
    neg: Union[str, None] = None
    safe: bool = True          # False: raises at run time unless a guard before it holds


@dataclass(frozen=True)
class Not:
    f: "F"


@dataclass(frozen=True)
class And:
    fs: tuple["F", ...]


@dataclass(frozen=True)
class Or:
    fs: tuple["F", ...]


F = Union[Const, Atom, Not, And, Or]
TRUE = Const(True)
FALSE = Const(False)


def not_(f: F) -> F:
    if isinstance(f, Const):
        return FALSE if f.value else TRUE
    if isinstance(f, Not):
        return f.f
    if isinstance(f, Atom) and f.neg is not None:
        return Atom(f.neg, f.text, f.safe)
    return Not(f)


def _complements(a: F, b: F) -> bool:
    return not_(a) == b


def and_(*fs: F) -> F:
    out: list[F] = []
    for f in fs:
        parts = f.fs if isinstance(f, And) else (f,)
        for p in parts:
            if p == TRUE or p in out:
                continue
            if p == FALSE or any(_complements(p, q) for q in out):
                return FALSE
            out.append(p)
    # a and not (a and b)  ==  a and not b: drops the null guards a negation repeats. Only an
    # `a` to the left may go: rule-engine evaluates `and` left to right, and a guard must run
    # before the test it protects (`"x" in h` raises when h is null).
    for k, p in enumerate(out):
        if isinstance(p, Not) and isinstance(p.f, And):
            rest = [q for q in p.f.fs if q not in out[:k]]
            if _safe(and_(*rest)):
                rest = [q for q in rest if q not in out]
            if len(rest) < len(p.f.fs):
                return and_(*out[:k], not_(and_(*rest)), *out[k + 1:])
    if not out:
        return TRUE
    return out[0] if len(out) == 1 else And(tuple(out))


def or_(*fs: F) -> F:
    out: list[F] = []
    for f in fs:
        parts = f.fs if isinstance(f, Or) else (f,)
        for p in parts:
            if isinstance(p, And):
                # a or (not a and b)  ==  a or b; `or` only evaluates b when a is false, so a
                # dropped `not a` was never needed as a guard
                p = and_(*(q for q in p.fs if not any(_complements(q, r) for r in out)))
            if p == FALSE or p in out:
                continue
            if p == TRUE or any(_complements(p, q) for q in out):
                return TRUE
            out.append(p)
    if not out:
        return FALSE
    return out[0] if len(out) == 1 else Or(tuple(out))


def _safe(f: F) -> bool:
    if isinstance(f, Atom):
        return f.safe
    if isinstance(f, Not):
        return _safe(f.f)
    if isinstance(f, (And, Or)):
        return all(_safe(x) for x in f.fs)
    return True


def render(f: F) -> str:
    """The formula as a rule-engine condition."""
    return _render(f, 0)


def _render(f: F, outer: int) -> str:
    # levels: 1 or, 2 and, 3 not, 4 atom
    if isinstance(f, Const):
        return "true" if f.value else "false"
    if isinstance(f, Atom):
        return f.text
    if isinstance(f, Not):
        inner = f.f
        # parentheses even around a single comparison: `not (a == b)` reads unambiguously
        text = f"not ({_render(inner, 0)})"
        return text
    if isinstance(f, And):
        text = " and ".join(_render(x, 2) for x in f.fs)
        return f"({text})" if outer > 2 else text
    if isinstance(f, Or):
        # `a and b or c` is right, but parentheses make it readable: (a and b) or c
        text = " or ".join(_render(x, 3) if isinstance(x, And) else _render(x, 1) for x in f.fs)
        return f"({text})" if outer > 1 else text
    raise TypeError(f"not a formula: {f!r}")


def atoms(f: F) -> list[str]:
    """Texts of the atoms in ``f`` (for tests and messages)."""
    if isinstance(f, Atom):
        return [f.text]
    if isinstance(f, Not):
        return atoms(f.f)
    if isinstance(f, (And, Or)):
        return [a for x in f.fs for a in atoms(x)]
    return []


def quote(s: str) -> str:
    """``s`` as a rule-engine string literal.

    rule-engine decodes literals with Python's unicode-escape rules after re-escaping the text, so
    only plain printable ASCII is written as is; backslash, quote and everything else is escaped.
    """
    out: list[str] = []
    for ch in s:
        o = ord(ch)
        if ch == "\\":
            out.append("\\\\")
        elif ch == '"':
            out.append('\\"')
        elif 0x20 <= o < 0x7F:
            out.append(ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif o < 0x100:
            out.append(f"\\x{o:02x}")
        elif o < 0x10000:
            out.append(f"\\u{o:04x}")
        else:
            out.append(f"\\U{o:08x}")
    return '"' + "".join(out) + '"'
