"""The layout keeps its narrow parts (issue 14): only the composition root, the proxy handler and
the runners see the ``Gateway``. Every other module gets the parts it uses (the admin surface an
``AdminParts``, the sampler and the resolver their store, registry, ...), so a module's
dependencies are in its signatures, not in whatever it can reach through ``gw``.

A module outside ``ALLOWED`` fails this test when it imports ``Gateway``, names it in an
annotation, or uses a ``gw`` name or attribute (``gw.config``, ``self.gw.store``,
``self.admission.gw.tokens``). An allowed module that no longer needs its entry fails too, so the
list only shrinks.
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# module -> why it may see the whole Gateway
ALLOWED = {
    "gateway/app.py": "builds the Gateway: the composition root",
    "gateway/proxy/handler.py": "the request path's orchestration (narrowed on its own)",
    "gateway/runtime/serve.py": "runs a Gateway in a worker: start, drain, SIGHUP, stop",
    "gateway/sim/demo.py": "runs a Gateway for `trino-gateway demo`: start, stop",
}


def _annotation_names(node: ast.expr | None) -> set[str]:
    """Names in an annotation, including one written as a string (``"Gateway"``)."""
    if node is None:
        return set()
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        try:
            node = ast.parse(node.value, mode="eval")
        except SyntaxError:
            return set()
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}


def reach_ins(source: str, filename: str = "<source>") -> list[str]:
    """Where a module's source sees the Gateway: ``line: what`` items (empty: it does not)."""
    found: list[str] = []
    for node in ast.walk(ast.parse(source, filename)):
        line = getattr(node, "lineno", 0)
        if isinstance(node, ast.ImportFrom) and node.module == "gateway.app":
            found += [f"{line}: imports Gateway" for a in node.names if a.name == "Gateway"]
        elif isinstance(node, ast.Name) and node.id == "gw":
            found.append(f"{line}: uses gw")
        elif isinstance(node, ast.Attribute) and node.attr == "gw":
            found.append(f"{line}: uses .gw")
        elif isinstance(node, ast.arg):
            if node.arg == "gw" or "Gateway" in _annotation_names(node.annotation):
                found.append(f"{line}: takes a Gateway ({node.arg})")
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            if "Gateway" in _annotation_names(node.returns):
                found.append(f"{line}: returns a Gateway ({node.name})")
    return sorted(set(found), key=lambda s: int(s.split(":")[0]))


def modules(root: Path = ROOT) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): p.read_text(encoding="utf-8")
            for p in sorted((root / "gateway").rglob("*.py"))}


def test_the_detector_finds_every_way_of_reaching_in():
    src = '''
from typing import TYPE_CHECKING
if TYPE_CHECKING:
    from gateway.app import Gateway
def f(gw):
    return gw.config
class H:
    def initialize(self, gateway: "Gateway") -> None:
        self.x = gateway
    def g(self):
        return self.admission.gw.tokens
def make() -> "Gateway": ...
'''
    found = reach_ins(src)
    assert [f.split(": ", 1)[1] for f in found] == [
        "imports Gateway", "takes a Gateway (gw)", "uses gw", "takes a Gateway (gateway)",
        "uses .gw", "returns a Gateway (make)"]
    assert reach_ins("def f(parts):\n    return parts.registry.get('a')\n") == []


def test_only_the_allowed_modules_see_the_gateway():
    offenders = {}
    for path, source in modules().items():
        if path in ALLOWED:
            continue
        found = reach_ins(source, path)
        if found:
            offenders[path] = found
    assert not offenders, (
        "these modules reach into the Gateway; give them the parts they use instead "
        "(see docs/internals.md, 'Who depends on what'):\n"
        + "\n".join(f"  {p}: {', '.join(f)}" for p, f in offenders.items()))


def test_the_allow_list_is_not_stale():
    mods = modules()
    missing = [p for p in ALLOWED if p not in mods]
    assert not missing, f"allowed modules that no longer exist: {missing}"
    no_longer = [p for p in ALLOWED if p != "gateway/app.py" and not reach_ins(mods[p], p)]
    assert not no_longer, f"these modules no longer see the Gateway; remove them from ALLOWED: {no_longer}"
