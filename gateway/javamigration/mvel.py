"""A parser for the MVEL subset that trino-gateway routing rules are written in.

trino-gateway compiles each rule's ``condition`` and ``actions`` with MVEL, a Java-like
expression language. Rules in practice use a small part of it: literals, variables
(``request``, ``trinoQueryProperties``, ``trinoRequestUser``, ``result``, ``state``), method
calls and bean properties, ``!``, ``&&``, ``||``, comparisons, MVEL's ``contains`` and ``~=``
operators, and in actions ``if (...) {...} else if (...) {...} else {...}``.

This module only parses: text → an immutable AST (``parse_expression``, ``parse_statements``).
What the AST means is decided elsewhere (``translate.py`` for the conversion, and the test
suite's reference interpreter). Anything outside the subset is a ``MvelSyntaxError`` naming the
construct and its column, so the converter can report the rule as not converted.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Union

__all__ = [
    "MvelSyntaxError", "Lit", "Name", "Attr", "Call", "Unary", "Binary", "Node",
    "ExprStmt", "If", "Stmt", "parse_expression", "parse_statements", "unparse",
]


class MvelSyntaxError(ValueError):
    """Text outside the supported MVEL subset; ``pos`` is the 0-based offset in the text."""

    def __init__(self, message: str, pos: int, text: str) -> None:
        line = text.count("\n", 0, pos) + 1
        col = pos - (text.rfind("\n", 0, pos) + 1) + 1
        where = f"line {line}, column {col}" if "\n" in text else f"column {col}"
        super().__init__(f"{message} ({where})")
        self.pos = pos


# --- AST ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Lit:
    """A literal: str, int, bool or None (``null``)."""
    value: Union[str, int, bool, None]


@dataclass(frozen=True)
class Name:
    """A bare identifier: a variable (``request``) or a class name (``Optional``)."""
    name: str


@dataclass(frozen=True)
class Attr:
    """``obj.name`` without parentheses: an MVEL bean property or a parameterless method."""
    obj: "Node"
    name: str


@dataclass(frozen=True)
class Call:
    """``obj.name(args)``; ``obj`` is None for a bare function call ``name(args)``."""
    obj: Union["Node", None]
    name: str
    args: tuple["Node", ...]


@dataclass(frozen=True)
class Unary:
    op: str            # "!" or "-"
    operand: "Node"


@dataclass(frozen=True)
class Binary:
    op: str            # && || == != < > <= >= contains ~=
    left: "Node"
    right: "Node"


Node = Union[Lit, Name, Attr, Call, Unary, Binary]


@dataclass(frozen=True)
class ExprStmt:
    expr: Node


@dataclass(frozen=True)
class If:
    """``if (c1) {..} else if (c2) {..} else {..}``: ``branches`` in order, ``orelse`` or None."""
    branches: tuple[tuple[Node, tuple["Stmt", ...]], ...]
    orelse: Union[tuple["Stmt", ...], None]


Stmt = Union[ExprStmt, If]


# --- tokens ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Tok:
    kind: str          # str, num, ident, op, eof
    value: object
    pos: int


_OPS = ("&&", "||", "==", "!=", "<=", ">=", "~=", "?.", "!", "<", ">", ".", "(", ")", "{", "}",
        ";", ",", "[", "]", "=", "+", "-", "*", "/", "?", ":", "%", "#", "@", "$", "&", "|")
_SIMPLE_ESCAPES = {"b": "\b", "t": "\t", "n": "\n", "f": "\f", "r": "\r", '"': '"', "'": "'", "\\": "\\"}


def _tokenize(text: str) -> list[_Tok]:
    toks: list[_Tok] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c.isspace():
            i += 1
            continue
        if text.startswith("//", i):
            j = text.find("\n", i)
            i = n if j == -1 else j + 1
            continue
        if text.startswith("/*", i):
            j = text.find("*/", i + 2)
            if j == -1:
                raise MvelSyntaxError("unterminated /* comment", i, text)
            i = j + 2
            continue
        if c in "\"'":
            value, i2 = _string(text, i)
            toks.append(_Tok("str", value, i))
            i = i2
            continue
        if c.isdigit():
            j = i
            while j < n and text[j].isdigit():
                j += 1
            if j < n and (text[j].isalpha() or text[j] in "._"):
                raise MvelSyntaxError(f"unsupported number literal {text[i:j + 1]!r}...", i, text)
            toks.append(_Tok("num", int(text[i:j]), i))
            i = j
            continue
        if c.isalpha() or c in "_$":
            j = i + 1
            while j < n and (text[j].isalnum() or text[j] in "_$"):
                j += 1
            toks.append(_Tok("ident", text[i:j], i))
            i = j
            continue
        for op in _OPS:
            if text.startswith(op, i):
                toks.append(_Tok("op", op, i))
                i += len(op)
                break
        else:
            raise MvelSyntaxError(f"unexpected character {c!r}", i, text)
    toks.append(_Tok("eof", None, n))
    return toks


def _string(text: str, start: int) -> tuple[str, int]:
    """A Java string literal in either quote style starting at ``start``; (value, end)."""
    quote = text[start]
    out: list[str] = []
    i, n = start + 1, len(text)
    while i < n:
        c = text[i]
        if c == quote:
            return "".join(out), i + 1
        if c == "\\":
            if i + 1 >= n:
                break
            e = text[i + 1]
            if e in _SIMPLE_ESCAPES:
                out.append(_SIMPLE_ESCAPES[e])
                i += 2
            elif e == "u":
                j = i + 1
                while j < n and text[j] == "u":      # Java allows \uuuu0041
                    j += 1
                digits = text[j:j + 4]
                if len(digits) != 4 or any(d not in "0123456789abcdefABCDEF" for d in digits):
                    raise MvelSyntaxError("invalid \\u escape in a string", i, text)
                out.append(chr(int(digits, 16)))
                i = j + 4
            elif e in "01234567":
                j = i + 1
                limit = 3 if e in "0123" else 2
                while j < n and j - (i + 1) < limit and text[j] in "01234567":
                    j += 1
                out.append(chr(int(text[i + 1:j], 8)))
                i = j
            else:
                raise MvelSyntaxError(f"invalid escape \\{e} in a string", i, text)
            continue
        out.append(c)
        i += 1
    raise MvelSyntaxError("unterminated string", start, text)


# --- parser ---------------------------------------------------------------------------------

_UNSUPPORTED_WORDS = {
    "new": "object creation (new ...)", "def": "function definitions (def ...)",
    "function": "function definitions", "foreach": "loops", "for": "loops", "while": "loops",
    "do": "loops", "until": "loops", "return": "return", "with": "with blocks",
    "import": "import", "var": "variable declarations", "instanceof": "instanceof",
    "is": "the 'is' operator", "soundslike": "the 'soundslike' operator",
    "strsim": "the 'strsim' operator", "assert": "assert", "isdef": "isdef",
}
_COMPARISON = ("==", "!=", "<", ">", "<=", ">=", "~=")


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.toks = _tokenize(text)
        self.i = 0

    # helpers
    @property
    def tok(self) -> _Tok:
        return self.toks[self.i]

    def error(self, message: str, tok: _Tok | None = None) -> MvelSyntaxError:
        return MvelSyntaxError(message, (tok or self.tok).pos, self.text)

    def at_op(self, *ops: str) -> bool:
        return self.tok.kind == "op" and self.tok.value in ops

    def at_word(self, *words: str) -> bool:
        return self.tok.kind == "ident" and self.tok.value in words

    def expect_op(self, op: str) -> None:
        if not self.at_op(op):
            raise self.error(f"expected {op!r}, found {self.describe(self.tok)}")
        self.i += 1

    def describe(self, tok: _Tok) -> str:
        if tok.kind == "eof":
            return "the end of the text"
        if tok.kind == "str":
            return f"string {tok.value!r}"
        return repr(str(tok.value))

    # expressions
    def expression(self) -> Node:
        node = self.and_expr()
        while self.at_op("||") or self.at_word("or"):
            self.i += 1
            node = Binary("||", node, self.and_expr())
        return node

    def and_expr(self) -> Node:
        node = self.comparison()
        while self.at_op("&&") or self.at_word("and"):
            self.i += 1
            node = Binary("&&", node, self.comparison())
        return node

    def comparison(self) -> Node:
        node = self.unary()
        while True:
            if self.tok.kind == "op" and self.tok.value in _COMPARISON:
                op = str(self.tok.value)
            elif self.at_word("contains"):
                op = "contains"
            elif self.tok.kind == "ident" and self.tok.value in _UNSUPPORTED_WORDS:
                raise self.error(f"unsupported: {_UNSUPPORTED_WORDS[str(self.tok.value)]}")
            elif self.at_op("+", "-", "*", "/", "%"):
                raise self.error("unsupported: arithmetic and string concatenation")
            else:
                return node
            self.i += 1
            node = Binary(op, node, self.unary())

    def unary(self) -> Node:
        if self.at_op("!"):
            self.i += 1
            return Unary("!", self.unary())
        if self.at_op("-"):
            tok = self.tok
            self.i += 1
            operand = self.unary()
            if isinstance(operand, Lit) and type(operand.value) is int:
                return Lit(-operand.value)
            raise self.error("unsupported: arithmetic", tok)
        return self.postfix()

    def postfix(self) -> Node:
        node = self.primary()
        while True:
            if self.at_op(".", "?."):
                if self.tok.value == "?.":
                    raise self.error("unsupported: null-safe navigation '?.'")
                self.i += 1
                if self.at_op("?"):
                    raise self.error("unsupported: null-safe navigation '.?'")
                if self.tok.kind != "ident":
                    raise self.error(f"expected a method or property name after '.', found {self.describe(self.tok)}")
                name = str(self.tok.value)
                self.i += 1
                if self.at_op("("):
                    node = Call(node, name, self.arguments())
                else:
                    node = Attr(node, name)
            elif self.at_op("["):
                raise self.error("unsupported: indexing with [...]")
            else:
                return node

    def arguments(self) -> tuple[Node, ...]:
        self.expect_op("(")
        args: list[Node] = []
        if not self.at_op(")"):
            args.append(self.expression())
            while self.at_op(","):
                self.i += 1
                args.append(self.expression())
        self.expect_op(")")
        return tuple(args)

    def primary(self) -> Node:
        tok = self.tok
        if tok.kind == "str":
            self.i += 1
            return Lit(str(tok.value))
        if tok.kind == "num":
            self.i += 1
            return Lit(int(tok.value))  # type: ignore[call-overload]
        if tok.kind == "ident":
            word = str(tok.value)
            if word in ("true", "false"):
                self.i += 1
                return Lit(word == "true")
            if word in ("null", "nil"):
                self.i += 1
                return Lit(None)
            if word in _UNSUPPORTED_WORDS:
                raise self.error(f"unsupported: {_UNSUPPORTED_WORDS[word]}")
            if word in ("if", "else"):
                raise self.error(f"'{word}' is a statement, not allowed inside an expression")
            self.i += 1
            if self.at_op("("):
                return Call(None, word, self.arguments())
            return Name(word)
        if self.at_op("("):
            self.i += 1
            node = self.expression()
            self.expect_op(")")
            return node
        if tok.kind == "op" and tok.value in ("[", "{"):
            raise self.error("unsupported: inline lists and maps")
        raise self.error(f"expected a value, found {self.describe(tok)}")

    # statements
    def statements(self, *, until_brace: bool) -> tuple[Stmt, ...]:
        out: list[Stmt] = []
        while True:
            while self.at_op(";"):
                self.i += 1
            if self.tok.kind == "eof" or (until_brace and self.at_op("}")):
                return tuple(out)
            out.append(self.statement())
            if not (self.at_op(";", "}") or self.tok.kind == "eof" or self.at_word("if")):
                if isinstance(out[-1], If):
                    continue      # "if (..) {..} result.put(..)" needs no separator
                if self.at_op("="):
                    raise self.error("unsupported: assignment")
                raise self.error(f"expected ';' or the end of the action, found {self.describe(self.tok)}")

    def statement(self) -> Stmt:
        if self.at_word("if"):
            return self.if_statement()
        if self.at_op("{"):
            raise self.error("unsupported: a bare block { ... }")
        return ExprStmt(self.expression())

    def if_statement(self) -> If:
        branches: list[tuple[Node, tuple[Stmt, ...]]] = []
        orelse: tuple[Stmt, ...] | None = None
        while True:
            self.i += 1                               # 'if'
            self.expect_op("(")
            cond = self.expression()
            self.expect_op(")")
            branches.append((cond, self.body()))
            if not self.at_word("else"):
                break
            self.i += 1
            if self.at_word("if"):
                continue
            orelse = self.body()
            break
        return If(tuple(branches), orelse)

    def body(self) -> tuple[Stmt, ...]:
        if self.at_op("{"):
            self.i += 1
            stmts = self.statements(until_brace=True)
            self.expect_op("}")
            return stmts
        return (self.statement(),)


def parse_expression(text: str) -> Node:
    """Parse one MVEL expression (a rule condition); a trailing ``;`` is allowed."""
    p = _Parser(text)
    if p.tok.kind == "eof":
        raise p.error("the expression is empty")
    node = p.expression()
    while p.at_op(";"):
        p.i += 1
    if p.tok.kind != "eof":
        if p.at_op("="):
            raise p.error("unsupported: assignment")
        raise p.error(f"unexpected {p.describe(p.tok)} after the expression")
    return node


def parse_statements(text: str) -> tuple[Stmt, ...]:
    """Parse one rule action: statements separated by ``;`` (may be empty)."""
    p = _Parser(text)
    stmts = p.statements(until_brace=False)
    if p.tok.kind != "eof":
        raise p.error(f"unexpected {p.describe(p.tok)}")
    return stmts


# --- unparse (for messages) -----------------------------------------------------------------

def unparse(node: Node) -> str:
    """Canonical MVEL text of ``node`` (used to quote constructs in the conversion report)."""
    if isinstance(node, Lit):
        if node.value is None:
            return "null"
        if isinstance(node.value, bool):
            return "true" if node.value else "false"
        if isinstance(node.value, int):
            return str(node.value)
        escaped = node.value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        return f'"{escaped}"'
    if isinstance(node, Name):
        return node.name
    if isinstance(node, Attr):
        return f"{unparse(node.obj)}.{node.name}"
    if isinstance(node, Call):
        args = ", ".join(unparse(a) for a in node.args)
        return f"{unparse(node.obj)}.{node.name}({args})" if node.obj is not None else f"{node.name}({args})"
    if isinstance(node, Unary):
        inner = unparse(node.operand)
        return f"{node.op}({inner})" if isinstance(node.operand, Binary) else f"{node.op}{inner}"
    if isinstance(node, Binary):
        def side(n: Node) -> str:
            return f"({unparse(n)})" if isinstance(n, Binary) and n.op in ("&&", "||") and n.op != node.op else unparse(n)
        return f"{side(node.left)} {node.op} {side(node.right)}"
    raise TypeError(f"not an MVEL node: {node!r}")
