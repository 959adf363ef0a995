"""Rules plus fallbacks → the routing group of a new statement (pure).

1. The first matching rule decides. ``reject`` refuses the query with the rule's message.
   ``routingGroup`` names the group, if that group has backends; otherwise the query falls back
   like an unmatched one (unless the group's ``fallback`` is ``none``) and the reason says why.
2. No rule matched: the ``X-Trino-Routing-Group`` header, if allowed and that group has
   backends; otherwise the default group (even when it has no backends: the proxy then answers
   with a Trino-shaped "no backend" error).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Collection, Mapping

from gateway.routing.rules import RuleMatch, Ruleset

__all__ = ["Decision", "decide"]


@dataclass(frozen=True)
class Decision:
    routing_group: str | None          # None only when rejected
    rule: str | None                   # the deciding rule's name (kept even when its group fell back)
    reject: str | None                 # the message of a reject rule
    reason: str                        # human text for logs, explain and history
    queue_priority: int = 0
    # The evaluation behind the decision. Its trace and errors are built only when read
    # (explain, the CLI): the request path routes thousands of statements a second and never does.
    match: RuleMatch | None = field(default=None, repr=False, compare=False)

    @property
    def trace(self) -> list[dict[str, Any]]:
        """Each evaluated rule: ``{"rule", "priority", "matched", "error"}``, in order."""
        return self.match.trace if self.match is not None else []

    @property
    def errors(self) -> dict[str, str]:
        """Run-time errors by rule name."""
        return self.match.errors if self.match is not None else {}

    @property
    def rejected(self) -> bool:
        return self.reject is not None

    def to_dict(self) -> dict[str, Any]:
        return {"routingGroup": self.routing_group, "rule": self.rule, "reject": self.reject,
                "reason": self.reason, "queuePriority": self.queue_priority, "trace": self.trace}


def decide(ruleset: Ruleset | None, ctx: Mapping[str, Any], *, groups_with_backends: Collection[str],
           default_group: str, allow_group_header: bool, no_fallback_groups: Collection[str] = (),
           explain: bool = False) -> Decision:
    """Choose the routing group for ``ctx``.

    ``no_fallback_groups``: groups configured with ``fallback: none``; a rule naming one of them
    keeps it even without backends (strict isolation). ``explain`` evaluates without the rule
    index so the trace lists every rule above the decision.
    """
    match = ruleset.evaluate(ctx, explain=explain) if ruleset is not None else None
    rule = match.rule if match is not None else None
    if rule is not None:
        if rule.reject is not None:
            return Decision(None, rule.name, rule.reject, f"rule {rule.name} rejects the query",
                            rule.queue_priority, match)
        group = rule.routing_group or default_group
        if group in groups_with_backends:
            return Decision(group, rule.name, None, f"rule {rule.name}", rule.queue_priority, match)
        if group in no_fallback_groups:
            return Decision(group, rule.name, None,
                            f"rule {rule.name} named group '{group}' which has no backends; "
                            "its fallback is none", rule.queue_priority, match)
        fallback, why = _fallback(ctx, groups_with_backends, default_group, allow_group_header)
        return Decision(fallback, rule.name, None,
                        f"rule {rule.name} named group '{group}' which has no backends; fell back to {why}",
                        rule.queue_priority, match)
    group, why = _fallback(ctx, groups_with_backends, default_group, allow_group_header)
    reason = "group header" if why.startswith("group header") else why
    return Decision(group, None, None, reason, 0, match)


def _fallback(ctx: Mapping[str, Any], groups_with_backends: Collection[str], default_group: str,
              allow_group_header: bool) -> tuple[str, str]:
    header = ctx.get("routingGroupHeader")
    if header:
        if allow_group_header and header in groups_with_backends:
            return header, f"group header '{header}'"
        if not allow_group_header:
            return default_group, f"default group (routing group header '{header}' is not allowed)"
        return default_group, f"default group (routing group header '{header}' names a group without backends)"
    return default_group, "default group"
