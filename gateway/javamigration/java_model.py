"""Facts about trino-gateway's Java side that the converter needs to translate exactly.

* ``STATEMENT_CLASSES``: what ``trinoQueryProperties.getQueryType()`` returns (the simple class
  name of the parsed Trino statement) and the resource-group type each class has, as in
  trino-gateway's ``StatementUtils``. ``ExplainAnalyze`` has the type of the statement it runs.
  ``""`` means "not parsed" and ``Execute`` a prepared statement the gateway could not find;
  both are our ``UNKNOWN``.
* ``java_regex_to_python``: a Java regular expression (``String.matches``, MVEL's ``~=``) as
  the Python regular expression that accepts exactly the same strings, for a conservative
  subset of the syntax; anything else raises ``UnsupportedRegex``.
* ``ignore_case_pattern``: the regular expression that accepts exactly the strings Java's
  ``equalsIgnoreCase`` accepts for an ASCII literal (Java folds case one character at a time,
  so a few non-ASCII letters such as the Kelvin sign equal ASCII ones).
* ``java_trim``: ``String.trim()``.
"""
from __future__ import annotations

import re

__all__ = [
    "RESOURCE_GROUP_TYPES", "STATEMENT_CLASSES", "EXPLAIN_ANALYZE", "UNPARSED_CLASSES",
    "EXPLAIN_ANALYZE_TYPES", "UnsupportedRegex", "java_regex_to_python", "ignore_case_pattern",
    "java_trim",
]

RESOURCE_GROUP_TYPES = ("SELECT", "EXPLAIN", "DESCRIBE", "INSERT", "UPDATE", "DELETE", "MERGE",
                        "ANALYZE", "DATA_DEFINITION", "ALTER_TABLE_EXECUTE")

_BY_TYPE = {
    "SELECT": "Query",
    "EXPLAIN": "Explain",
    "DESCRIBE": "DescribeInput DescribeOutput ShowCatalogs ShowColumns ShowCreate ShowFunctions "
                "ShowGrants ShowRoleGrants ShowRoles ShowSchemas ShowSession ShowStats ShowTables",
    "ALTER_TABLE_EXECUTE": "TableExecute",
    "INSERT": "CreateTableAsSelect RefreshMaterializedView Insert",
    "UPDATE": "Update",
    "DELETE": "Delete",
    "MERGE": "Merge",
    "ANALYZE": "Analyze",
    "DATA_DEFINITION": "AddColumn Call Comment Commit CreateMaterializedView CreateCatalog "
                       "CreateFunction CreateRole CreateSchema CreateTable CreateView Deallocate Deny "
                       "DropCatalog DropColumn DropFunction DropMaterializedView DropRole DropSchema "
                       "DropTable DropView TruncateTable Grant GrantRoles Prepare RenameColumn "
                       "RenameMaterializedView RenameSchema RenameTable RenameView ResetSession "
                       "ResetSessionAuthorization Revoke RevokeRoles Rollback SetColumnType "
                       "DropNotNullConstraint SetPath SetRole SetSchemaAuthorization SetSession "
                       "SetSessionAuthorization SetProperties SetTableAuthorization SetTimeZone "
                       "SetViewAuthorization StartTransaction Use",
}
STATEMENT_CLASSES: dict[str, str] = {cls: rg for rg, names in _BY_TYPE.items() for cls in names.split()}
EXPLAIN_ANALYZE = "ExplainAnalyze"
# getQueryType() when the body did not parse (""), or EXECUTE named an unknown prepared statement.
UNPARSED_CLASSES = ("", "Execute")
# Types of the statements Trino lets EXPLAIN ANALYZE run; for those our queryType cannot tell
# "EXPLAIN ANALYZE x" from "x" (both are typed as x), while getQueryType() can.
EXPLAIN_ANALYZE_TYPES = frozenset({"SELECT", "INSERT", "UPDATE", "DELETE", "MERGE"})


def java_trim(s: str) -> str:
    """Java's ``String.trim()``: strips characters up to U+0020 at both ends."""
    i, j = 0, len(s)
    while i < j and s[i] <= " ":
        i += 1
    while j > i and s[j - 1] <= " ":
        j -= 1
    return s[i:j]


# --- case folding -----------------------------------------------------------------------------

# Characters that Java's per-character case-insensitive comparison equates with an ASCII letter
# besides its two ASCII cases: toUpperCase('ı') == 'I', toLowerCase('İ') == 'i',
# toUpperCase('ſ') == 'S', toLowerCase('K' KELVIN SIGN) == 'k'.
_EXTRA_CASES = {"i": "\u0131\u0130", "s": "\u017f", "k": "\u212a"}


def ignore_case_pattern(literal: str) -> str:
    """Python regex (full match) for the strings ``s`` with ``s.equalsIgnoreCase(literal)``.

    ``literal`` must be ASCII; raises ValueError otherwise.
    """
    if not literal.isascii():
        raise ValueError("equalsIgnoreCase with a non-ASCII literal")
    parts: list[str] = []
    for ch in literal:
        if ch.isalpha():
            members = ch.lower() + ch.upper() + _EXTRA_CASES.get(ch.lower(), "")
            parts.append("[" + "".join(re.escape(m) for m in members) + "]")
        else:
            parts.append(re.escape(ch))
    return "".join(parts) + r"\Z"


# --- Java regular expressions -------------------------------------------------------------------

class UnsupportedRegex(ValueError):
    """A Java regular expression outside the subset translated exactly."""


# Java's '.' excludes every line terminator, Python's only '\n'.
_JAVA_DOT = "[^\\n\\r\\x85\\u2028\\u2029]"
_CLASS_ESCAPES = set("dDwWsS")
_LITERAL_ESCAPES = set("\\.-*+?()[]{}|^$/ ")
_CONTROL_ESCAPES = {"t": "\\t", "n": "\\n", "r": "\\r", "f": "\\f"}
_QUANT = re.compile(r"\{(\d+)(,(\d*))?\}")


def java_regex_to_python(pattern: str) -> str:
    """A Python pattern that, used with ``re.match``, accepts exactly what Java's
    ``Pattern.matches(pattern, s)`` accepts (a full match), or ``UnsupportedRegex``."""
    flags = "a"
    body = pattern
    if body.startswith("(?i)"):
        flags += "i"
        body = body[4:]
    out: list[str] = []
    i, n = 0, len(body)
    depth = 0
    can_quantify = False
    while i < n:
        c = body[i]
        if c == "\\":
            piece, i = _escape(body, i, in_class=False)
            out.append(piece)
            can_quantify = True
            continue
        if c == "[":
            piece, i = _char_class(body, i)
            out.append(piece)
            can_quantify = True
            continue
        if c == "(":
            if body.startswith("(?:", i):
                out.append("(?:")
                i += 3
            elif body.startswith("(?", i):
                raise UnsupportedRegex(f"the group construct at {body[i:i + 4]!r}...")
            else:
                out.append("(")
                i += 1
            depth += 1
            can_quantify = False
            continue
        if c == ")":
            if depth == 0:
                raise UnsupportedRegex("an unbalanced ')'")
            depth -= 1
            out.append(")")
            i += 1
            can_quantify = True
            continue
        if c in "*+?{":
            if not can_quantify:
                raise UnsupportedRegex(f"a quantifier {c!r} with nothing to repeat")
            if c == "{":
                m = _QUANT.match(body, i)
                if not m:
                    raise UnsupportedRegex("a '{' that is not a {n,m} quantifier")
                out.append(m.group(0))
                i = m.end()
            else:
                out.append(c)
                i += 1
            if i < n and body[i] == "?":        # lazy: same meaning in both
                out.append("?")
                i += 1
            elif i < n and body[i] == "+":
                raise UnsupportedRegex("possessive quantifiers")
            can_quantify = False
            continue
        if c == ".":
            out.append(_JAVA_DOT)
        elif c in "|^$":
            out.append(c)
            can_quantify = False
            i += 1
            continue
        else:
            out.append(re.escape(c))
        i += 1
        can_quantify = True
    if depth:
        raise UnsupportedRegex("an unbalanced '('")
    text = "".join(out)
    if not re.search(r"\\[dDwWsS]", text) and "i" not in flags:
        flags = flags.replace("a", "")           # ASCII mode only matters for \d \w \s and (?i)
    grouped = f"(?:{text})" if "|" in text else text
    result = (f"(?{flags})" if flags else "") + grouped + "\\Z"
    try:
        re.compile(result)
    except re.error as exc:
        raise UnsupportedRegex(f"not a valid pattern ({exc})") from None
    return result


def _escape(body: str, i: int, *, in_class: bool) -> tuple[str, int]:
    if i + 1 >= len(body):
        raise UnsupportedRegex("a trailing backslash")
    e = body[i + 1]
    if e in _CLASS_ESCAPES or e in _LITERAL_ESCAPES:
        return "\\" + e, i + 2
    if e in _CONTROL_ESCAPES:
        return _CONTROL_ESCAPES[e], i + 2
    if e == "x":
        m = re.compile(r"[0-9a-fA-F]{2}").match(body, i + 2)
        if m:
            return "\\x" + m.group(0), m.end()
    if e == "u":
        m = re.compile(r"[0-9a-fA-F]{4}").match(body, i + 2)
        if m:
            return "\\u" + m.group(0), m.end()
    if not e.isalnum():
        return re.escape(e), i + 2        # Java: a backslash before a non-letter quotes it
    raise UnsupportedRegex(f"the escape \\{e}")


def _char_class(body: str, i: int) -> tuple[str, int]:
    out = ["["]
    i += 1
    if i < len(body) and body[i] == "^":
        out.append("^")
        i += 1
    first = True
    while i < len(body):
        c = body[i]
        if c == "]" and not first:
            out.append("]")
            return "".join(out), i + 1
        if c == "]" or c == "[":
            raise UnsupportedRegex("nested or empty character classes")
        if body.startswith("&&", i):
            raise UnsupportedRegex("character class intersection (&&)")
        if c == "\\":
            piece, i = _escape(body, i, in_class=True)
            out.append(piece)
        elif c == "-":
            out.append("-")
            i += 1
        else:
            out.append(re.escape(c) if not c.isalnum() else c)
            i += 1
        first = False
    raise UnsupportedRegex("an unterminated character class")
