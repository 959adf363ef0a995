"""The router: a new statement's routing context → rules → routing group → backend candidates.

All fallbacks live here (a rule's group without a healthy backend falls back to the default
group unless the group is strict; no group at all is a Trino-shaped "no nodes" failure), and so
does explain: ``route(..., dry_run=True)`` answers exactly as a real statement would, without
touching live state (the balancer's round-robin position, its random generator).

A statement pinned to a backend (inside a transaction, ``kill_query`` of a known query) is
still decided here, for its reject rules and its history row (``pinned``): the backend stays
the pinned one, a reject still rejects.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

from tornado.httputil import HTTPHeaders

from gateway.backends.state import Backend, Health, Registry
from gateway.config import Config
from gateway.routing.balancer import Balancer
from gateway.routing.context import build_context
from gateway.routing.decision import Decision, decide
from gateway.routing.rules import Ruleset
from gateway.routing.sql import SqlFacts

__all__ = ["Route", "Router"]


@dataclass
class Route:
    """What routing decided for one new statement."""
    group: str | None
    backends: list[Backend]
    reject: str | None = None
    rule: str | None = None
    reason: str = ""
    user: str | None = None
    context: dict[str, Any] = field(default_factory=dict)
    decision_seconds: float = 0.0
    queue_priority: int = 0
    pinned: bool = False            # the backend was given (transaction, kill_query), not chosen
    note: str | None = None         # e.g. SQL facts unknown because analysis ran out of budget

    @property
    def history_rule(self) -> str | None:
        """The rule as history shows it: with the note when the decision was made without SQL facts."""
        return f"{self.rule or '-'} [{self.note}]" if self.note else self.rule


class Router:
    def __init__(self, config: Config, registry: Registry, balancer: Balancer,
                 ruleset: Callable[[], Ruleset | None]) -> None:
        self.config = config
        self.registry = registry
        self.balancer = balancer
        self.ruleset = ruleset
        self.strict_groups = frozenset(g for g, c in config.groups.items() if c.fallback == "none")

    def groups_with_backends(self) -> set[str]:
        return {b.routingGroup for b in self.registry.all() if b.active}

    def decide(self, ctx: dict[str, Any], *, explain: bool = False) -> Decision:
        cfg = self.config.routing
        return decide(self.ruleset(), ctx, groups_with_backends=self.groups_with_backends(),
                      default_group=cfg.defaultGroup, allow_group_header=cfg.allowGroupHeader,
                      no_fallback_groups=self.strict_groups, explain=explain)

    def context(self, headers: HTTPHeaders, body: bytes, remote_ip: str, *,
                analyze_sql: bool = False, facts: SqlFacts | None = None) -> dict[str, Any]:
        """``facts``: SQL facts computed elsewhere (off the event loop, gateway/runtime/offload.py)."""
        ruleset = self.ruleset()
        return build_context(headers, body, remote_ip,
                             analyze_sql=analyze_sql or bool(ruleset is not None and ruleset.uses_sql),
                             max_sql_bytes=self.config.routing.maxSqlBytes, facts=facts)

    def route(self, headers: HTTPHeaders, body: bytes, remote_ip: str, *,
              pinned: Backend | None = None, dry_run: bool = False,
              facts: SqlFacts | None = None, note: str | None = None) -> Route:
        route = self._route(headers, body, remote_ip, pinned, dry_run, facts)
        if note:
            route.note = note
            route.reason = f"{route.reason}; {note}" if route.reason else note
        return route

    def _route(self, headers: HTTPHeaders, body: bytes, remote_ip: str, pinned: Backend | None,
               dry_run: bool, facts: SqlFacts | None) -> Route:
        t0 = time.perf_counter()
        ctx = self.context(headers, body, remote_ip, facts=facts)
        decision = self.decide(ctx)
        user = ctx.get("user")
        if decision.reject is not None:
            return Route(None, [], reject=decision.reject, rule=decision.rule, reason=decision.reason,
                         user=user, context=ctx, pinned=pinned is not None)
        if pinned is not None:
            return Route(pinned.routingGroup, [pinned], rule=decision.rule, user=user, context=ctx,
                         reason="pinned to the backend of its transaction or query",
                         decision_seconds=time.perf_counter() - t0, pinned=True)
        route = self._candidates(decision, ctx, user, dry_run)
        route.decision_seconds = time.perf_counter() - t0
        return route

    def _candidates(self, decision: Decision, ctx: dict[str, Any], user: str | None,
                    dry_run: bool) -> Route:
        cfg = self.config.routing
        group = decision.routing_group or cfg.defaultGroup
        reason = decision.reason
        available = self.registry.available(group)
        if not available and group != cfg.defaultGroup:
            if self.config.group(group).fallback == "none":
                return Route(group, [], rule=decision.rule, user=user, context=ctx,
                             reason=f"No healthy backend in routing group '{group}' "
                                    f"(strict isolation: this group does not fall back)")
            reason = f"{reason}; no healthy backend in '{group}', fell back to default group"
            group = cfg.defaultGroup
            available = self.registry.available(group)
        if not available:
            total = len(self.registry.in_group(group))
            why = (f"No healthy backend in routing group '{group}' "
                   f"({total} configured, none active and HEALTHY)" if total else
                   f"No backend is configured for routing group '{group}'")
            return Route(group, [], rule=decision.rule, reason=why, user=user, context=ctx)
        first = self.balancer.pick(available, self.registry.states, user, dry_run=dry_run)
        assert first is not None
        candidates = [first] + [b for b in available if b is not first]
        return Route(group, candidates, rule=decision.rule, reason=reason, user=user, context=ctx,
                     queue_priority=decision.queue_priority)

    def any_backend(self) -> Backend | None:
        """For requests tied to no query (/v1/info, the Trino UI): a backend of the default group."""
        group = self.config.routing.defaultGroup
        avail = self.registry.available(group) or [
            b for b in self.registry.all() if b.active and self.registry.state(b.name).health is Health.HEALTHY]
        return avail[0] if avail else None
