"""Compile one rule condition: type-check it, make it fast to evaluate, find its index key.

A condition is compiled once, at load time, with ``rule-engine`` and a typed context, so an
unknown symbol, a type mismatch or a syntax error is a load error. On top of rule-engine's own
checks we reject two silent-false mistakes: comparing values of different types
(``clientTags == "etl"``, ``user == 1``) and conditions that are not true/false (``user``).

rule-engine evaluates a simple ``user == "x"`` in ~4 µs and a regex-or-tag rule in ~15 µs, too
slow for hundreds of rules per query. ``_fast`` translates the common subset of the AST (and/or/
not, ==, !=, =~ family with a literal pattern, ``in``, symbols, literals, ``headers["x"]``,
``??``) into Python closures with exactly rule-engine's semantics (including which inputs raise);
anything else is evaluated by rule-engine itself. tests/routing/test_rules.py checks the two
agree on many expressions and contexts.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable

import rule_engine
import rule_engine.builtins
from rule_engine import DataType, errors
from rule_engine.ast import (
    ArrayExpression, BooleanExpression, ComparisonExpression, ContainsExpression, ExpressionBase,
    FloatExpression, FuzzyComparisonExpression, GetItemExpression, LogicExpression, NullExpression,
    StringExpression, SymbolExpression, UnaryExpression,
)
from rule_engine.ast.binary import CoalesceExpression

from gateway.routing.context import ARRAY_SYMBOLS, MAPPING_SYMBOLS, STRING_SYMBOLS, SYMBOLS

__all__ = ["ConditionError", "CompiledCondition", "compile_condition", "SYMBOL_TYPES", "INDEXABLE"]

# Strings are plain STRING, not NULLABLE(STRING): rule-engine 5 refuses `=~` on a nullable operand
# at load time, which would reject the most common rule (`source =~ "airflow.*"`). A null value
# still works at run time: `==`, `!=`, `=~`, `in [...]` treat it as "not equal / no match".
SYMBOL_TYPES: dict[str, Any] = {name: DataType.STRING for name in STRING_SYMBOLS}
SYMBOL_TYPES.update({name: DataType.ARRAY(DataType.STRING) for name in ARRAY_SYMBOLS})
SYMBOL_TYPES.update({name: DataType.MAPPING(DataType.STRING, DataType.STRING) for name in MAPPING_SYMBOLS})

# Symbols whose `symbol == "literal"` terms can index rules (any string symbol is exact).
INDEXABLE = frozenset(STRING_SYMBOLS)

Evaluator = Callable[[dict[str, Any]], bool]


class ConditionError(Exception):
    """A condition that does not compile; ``line`` is 1-based inside the condition text."""

    def __init__(self, message: str, line: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.line = line


@dataclass(frozen=True)
class CompiledCondition:
    text: str
    symbols: frozenset[str]                       # context symbols the condition reads
    evaluate: Evaluator                           # raises on run-time errors (caller catches)
    fast: bool                                    # True when evaluate is the closure translation
    index_key: tuple[str, frozenset[str]] | None  # (symbol, literals): matches only if symbol in literals
    volatile: bool = False                        # reads $now, $today or $random: not a function of the context


def compile_condition(text: str) -> CompiledCondition:
    """Compile ``text``; raise ``ConditionError`` with a message a rules author can act on."""
    if not isinstance(text, str) or not text.strip():
        raise ConditionError("condition is empty")
    used: set[str] = set()
    base_resolver = rule_engine.type_resolver_from_dict(SYMBOL_TYPES)

    def resolver(name: str) -> Any:
        used.add(name)
        return base_resolver(name)

    context = rule_engine.Context(type_resolver=resolver)
    try:
        rule = rule_engine.Rule(text, context=context)
    except errors.SymbolResolutionError as exc:
        hint = f" (did you mean '{exc.suggestion}'?)" if getattr(exc, "suggestion", None) else ""
        raise ConditionError(f"unknown symbol '{exc.symbol_name}'{hint}; symbols are: "
                             + ", ".join(SYMBOLS), line=_line_of_word(text, exc.symbol_name)) from None
    except errors.RuleSyntaxError as exc:
        token = getattr(exc, "token", None)
        if token is None:
            raise ConditionError("syntax error: the condition ends too early") from None
        # PLY's lineno is not reset between parses; the offset is reliable.
        line_start = text.rfind("\n", 0, token.lexpos) + 1
        raise ConditionError(f"syntax error near {str(token.value)!r} (column {token.lexpos - line_start + 1})",
                             line=text.count("\n", 0, token.lexpos) + 1) from None
    except errors.RegexSyntaxError as exc:
        raise ConditionError(f"invalid regular expression {exc.value!r}: {exc.error}") from None
    except errors.AttributeResolutionError as exc:
        hint = f" (did you mean '{exc.suggestion}'?)" if getattr(exc, "suggestion", None) else ""
        raise ConditionError(f"unknown attribute '{exc.attribute_name}'{hint}",
                             line=_line_of_word(text, exc.attribute_name)) from None
    except errors.EngineError as exc:
        raise ConditionError(f"type error: {exc.message or type(exc).__name__}") from None
    except Exception as exc:  # noqa: BLE001 - rule-engine internals; still a load error, never a crash
        raise ConditionError(f"cannot compile condition: {exc}") from None

    root = rule.statement.expression
    _check_types(root)
    rtype = DataType.NULLABLE.unwrap(root.result_type)
    if rtype not in (DataType.BOOLEAN, DataType.UNDEFINED):
        raise ConditionError(f"a condition must be true or false, this one is a {rtype.name} "
                             "(for example write user == \"alice\", not user)")
    fast = _fast(root)
    if fast is not None:
        f = fast
        evaluate: Evaluator = lambda thing: bool(f(thing))  # noqa: E731
    else:
        evaluate = rule.matches
    return CompiledCondition(text, frozenset(used & set(SYMBOLS)), evaluate, fast is not None,
                             _index_key(root), volatile=_reads_volatile_builtin(root))


_VOLATILE_BUILTINS = frozenset({"now", "today", "random"})


def _reads_volatile_builtin(node: Any) -> bool:
    if type(node) is SymbolExpression and node.scope == "built-in" and node.name in _VOLATILE_BUILTINS:
        return True
    return any(_reads_volatile_builtin(child) for child in _children(node))


def _line_of_word(text: str, word: str) -> int:
    """1-based line of the first whole-word occurrence of ``word`` (1 if not found)."""
    m = re.search(r"(?<![A-Za-z0-9_$])" + re.escape(str(word)) + r"(?![A-Za-z0-9_])", text)
    return text.count("\n", 0, m.start()) + 1 if m else 1


# --- stricter type checks -------------------------------------------------------------------

def _children(node: Any) -> list[Any]:
    out = []
    names: list[str] = []
    for cls in type(node).__mro__:
        names.extend(getattr(cls, "__slots__", ()))
    names.extend(getattr(node, "__dict__", {}).keys())
    for name in names:
        if name == "context":
            continue
        value = getattr(node, name, None)
        if isinstance(value, ExpressionBase):
            out.append(value)
        elif isinstance(value, (list, tuple)):
            out.extend(v for v in value if isinstance(v, ExpressionBase))
    return out


def _known(dt: Any) -> Any:
    dt = DataType.NULLABLE.unwrap(dt)
    return None if dt in (DataType.UNDEFINED, DataType.NULL) else dt


_BUILTINS = frozenset(rule_engine.builtins.Builtins.from_defaults().keys())


def _check_types(node: Any) -> None:
    if type(node) is SymbolExpression and node.scope == "built-in" and node.name not in _BUILTINS:
        # rule-engine resolves $names only when evaluating: make a typo a load error too
        raise ConditionError(f"unknown built-in '${node.name}'; built-ins are: "
                             + ", ".join("$" + n for n in sorted(_BUILTINS)))
    if type(node) is ComparisonExpression and node.type in ("eq", "ne"):
        left, right = _known(node.left.result_type), _known(node.right.result_type)
        if left is not None and right is not None and not DataType.is_compatible(left, right):
            hint = ""
            if DataType.is_type(left, DataType.ARRAY) or DataType.is_type(right, DataType.ARRAY):
                hint = '; to test membership write "value" in array'
            raise ConditionError(f"type error: {'==' if node.type == 'eq' else '!='} compares "
                                 f"{left.name} with {right.name}, which is never equal{hint}")
    if type(node) is ContainsExpression:
        container, member = _known(node.container.result_type), _known(node.member.result_type)
        if (container is not None and member is not None and DataType.is_type(container, DataType.ARRAY)
                and _known(container.value_type) is not None
                and not DataType.is_compatible(member, container.value_type)):
            raise ConditionError(f"type error: looking for a {member.name} in an array of "
                                 f"{container.value_type.name} is never true")
    for child in _children(node):
        _check_types(child)


# --- index key ------------------------------------------------------------------------------

def _conjuncts(node: Any) -> list[Any]:
    if type(node) is LogicExpression and node.type == "and":
        return _conjuncts(node.left) + _conjuncts(node.right)
    return [node]


def _symbol_name(node: Any) -> str | None:
    if type(node) is SymbolExpression and node.scope is None and node.name in INDEXABLE:
        return node.name
    return None


def _index_key(root: Any) -> tuple[str, frozenset[str]] | None:
    """A term every match needs: ``sym == "lit"`` or ``sym in ["a", "b"]`` at the top-level ``and``."""
    for term in _conjuncts(root):
        if type(term) is ComparisonExpression and term.type == "eq":
            for sym, lit in ((term.left, term.right), (term.right, term.left)):
                name = _symbol_name(sym)
                if name and type(lit) is StringExpression:
                    return name, frozenset([lit.value])
        if type(term) is ContainsExpression:
            name = _symbol_name(term.member)
            members = term.container.value if type(term.container) is ArrayExpression else None
            if name and members is not None and all(type(m) is StringExpression for m in members):
                return name, frozenset(m.value for m in members)
    return None


# --- fast evaluation ------------------------------------------------------------------------

def _fast(node: Any) -> Callable[[dict[str, Any]], Any] | None:  # noqa: C901 - one case per node type
    """A closure computing what ``node.evaluate`` computes, or None if the node is not covered."""
    t = type(node)
    if t is LogicExpression:
        left, right = _fast(node.left), _fast(node.right)
        if left is None or right is None:
            return None
        if node.type == "and":
            return lambda th: bool(left(th) and right(th))
        if node.type == "or":
            return lambda th: bool(left(th) or right(th))
        return None
    if t is ComparisonExpression and node.type in ("eq", "ne"):
        return _fast_equality(node)
    if t is FuzzyComparisonExpression and type(node.right) is StringExpression:
        return _fast_regex(node)
    if t is ContainsExpression:
        container, member = _fast(node.container), _fast(node.member)
        if container is None or member is None:
            return None

        def contains(th: dict[str, Any]) -> bool:
            c, m = container(th), member(th)
            if isinstance(c, (str, bytes)) and type(m) is not type(c):
                raise errors.EvaluationError("data type mismatch")
            return bool(m in c)   # a null container raises TypeError, as in rule-engine
        return contains
    if t is UnaryExpression and node.type == "not":
        inner = _fast(node.right)
        return None if inner is None else (lambda th: not inner(th))
    if t is SymbolExpression:
        if node.scope is not None or node.name not in SYMBOL_TYPES:
            return None
        name = node.name
        return lambda th: th[name]
    if t in (StringExpression, NullExpression, BooleanExpression, FloatExpression):
        value = node.value
        return lambda th: value
    if t is ArrayExpression:
        members = [_fast(m) for m in node.value]
        if any(m is None for m in members):
            return None
        if all(type(m) in (StringExpression, NullExpression, BooleanExpression, FloatExpression) for m in node.value):
            const = tuple(m.value for m in node.value)
            return lambda th: const
        return lambda th: tuple(m(th) for m in members)  # type: ignore[misc]
    if t is GetItemExpression:
        return _fast_getitem(node)
    if t is CoalesceExpression:
        left, right = _fast(node.left), _fast(node.right)
        if left is None or right is None:
            return None

        def coalesce(th: dict[str, Any]) -> Any:
            value = left(th)
            return right(th) if value is None else value
        return coalesce
    return None


def _fast_equality(node: Any) -> Callable[[dict[str, Any]], Any] | None:
    eq = node.type == "eq"
    # The hot case, `symbol == "literal"`, gets a closure without inner calls.
    for sym, lit in ((node.left, node.right), (node.right, node.left)):
        if (type(sym) is SymbolExpression and sym.scope is None and sym.name in SYMBOL_TYPES
                and type(lit) is StringExpression):
            name, const = sym.name, lit.value
            if eq:
                return lambda th: type(th[name]) is str and th[name] == const
            return lambda th: type(th[name]) is not str or th[name] != const
    left, right = _fast(node.left), _fast(node.right)
    if left is None or right is None:
        return None

    def equal(th: dict[str, Any]) -> bool:
        a, b = left(th), right(th)
        return type(a) is type(b) and a == b

    def not_equal(th: dict[str, Any]) -> bool:
        a, b = left(th), right(th)
        return type(a) is not type(b) or a != b
    return equal if eq else not_equal


def _fast_regex(node: Any) -> Callable[[dict[str, Any]], Any] | None:
    left = _fast(node.left)
    regex = getattr(node, "_right", None)
    if left is None or regex is None or node.type not in ("eq_fzm", "eq_fzs", "ne_fzm", "ne_fzs"):
        return None
    positive = node.type.startswith("eq")
    find = regex.match if node.type.endswith("fzm") else regex.search

    def fuzzy(th: dict[str, Any]) -> bool:
        value = left(th)
        if value is None:
            return not positive
        if not isinstance(value, str):
            raise errors.EvaluationError("data type mismatch")
        return (find(value) is not None) is positive
    return fuzzy


def _fast_getitem(node: Any) -> Callable[[dict[str, Any]], Any] | None:
    container = node.container
    if not (type(container) is SymbolExpression and container.scope is None
            and container.name in MAPPING_SYMBOLS and type(node.item) is StringExpression):
        return None
    name, key, safe = container.name, node.item.value, node.safe

    def getitem(th: dict[str, Any]) -> Any:
        mapping = th[name]
        try:
            return mapping[key]
        except KeyError:
            if safe:
                return None
            raise errors.LookupError(mapping, key) from None
    return getitem
