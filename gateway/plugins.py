"""Extension points: built-in choices plus what installed distributions add through entry points.

Three settings name one of a set of implementations: ``routing.policy`` (balancing policies,
``gateway.routing.balancer.POLICIES``), ``monitor.type`` (``gateway.backends.monitor.MONITOR_TYPES``)
and the scheme of ``store.url`` (``gateway.store.STORE_KINDS``). Each set is a ``Plugins``: the
built-in implementations, and the entry points of its group that installed distributions declare,
for example in a plugin's ``pyproject.toml``::

    [project.entry-points."trino_gateway.policies"]
    fewest-running = "my_plugin:FewestRunning"

A user adds a policy, a monitor type or a store kind by installing such a distribution; the
gateway's package is not edited. The configuration is checked against ``names()``, and a plugin
is loaded (imported) once, when the configuration names it: a plugin that fails to import or is
not callable is a configuration error naming the entry point and its distribution
(docs/extending.md).
"""
from __future__ import annotations

import threading
from importlib.metadata import EntryPoint, entry_points
from typing import Any, Generic, Mapping, TypeVar

__all__ = ["Plugins", "PluginError"]

T = TypeVar("T")


class PluginError(ValueError):
    """An unknown name, or a plugin that could not be loaded; the message says which and why.
    ``detail`` is the message without the name of the setting (for ``key: detail`` messages)."""

    def __init__(self, what: str, detail: str) -> None:
        super().__init__(f"{what} {detail}")
        self.detail = detail


class Plugins(Generic[T]):
    """The implementations of one extension point, by name: built-ins first, then plugins.

    ``group`` is the entry-point group (``trino_gateway.policies``); ``what`` names the setting
    in messages (``routing policy``). A plugin cannot replace a built-in: the built-in name wins,
    and ``plugins()`` lists the shadowed entry point so ``describe()`` can say so."""

    def __init__(self, group: str, what: str, builtins: Mapping[str, T]) -> None:
        self.group = group
        self.what = what
        self._builtins = dict(builtins)
        self._loaded: dict[str, T] = {}
        self._lock = threading.Lock()

    def builtin_names(self) -> tuple[str, ...]:
        return tuple(self._builtins)

    def plugins(self) -> dict[str, EntryPoint]:
        """The entry points of this group (read afresh: installing a plugin needs no restart of
        a test process), by name; the first one wins when two distributions use a name."""
        found: dict[str, EntryPoint] = {}
        for ep in entry_points(group=self.group):
            found.setdefault(ep.name, ep)
        return found

    def names(self) -> tuple[str, ...]:
        return self.builtin_names() + tuple(n for n in self.plugins() if n not in self._builtins)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and (name in self._builtins or name in self.plugins())

    def describe(self) -> str:
        """The known choices for an error message: built-ins, and plugins with their origin."""
        text = ", ".join(self.builtin_names())
        plugins = self.plugins()
        if not plugins:
            return f"{text} (no plugins installed in entry-point group {self.group})"
        items = []
        for name, ep in sorted(plugins.items()):
            note = " (ignored: a built-in has this name)" if name in self._builtins else ""
            items.append(f"{name} = {ep.value} from {_distribution(ep)}{note}")
        return f"{text}; plugins in entry-point group {self.group}: {'; '.join(items)}"

    def get(self, name: str) -> T:
        """The implementation called ``name``; ``PluginError`` if unknown or if loading fails."""
        if name in self._builtins:
            return self._builtins[name]
        with self._lock:
            if name in self._loaded:
                return self._loaded[name]
            ep = self.plugins().get(name)
            if ep is None:
                raise PluginError(self.what, f"{name!r} is not one of {self.describe()}")
            try:
                obj: Any = ep.load()
            except Exception as exc:  # any error of third-party code at import time
                raise PluginError(self.what, f"{name!r}: the plugin entry point {ep.name} = {ep.value} "
                                  f"(group {self.group}, from {_distribution(ep)}) failed to load: "
                                  f"{type(exc).__name__}: {exc}") from None
            if not callable(obj):
                raise PluginError(self.what, f"{name!r}: the plugin entry point {ep.name} = {ep.value} "
                                  f"(group {self.group}, from {_distribution(ep)}) is a "
                                  f"{type(obj).__name__}, not a class or function")
            self._loaded[name] = obj
            return obj


def _distribution(ep: EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    if dist is None:
        return "an unknown distribution"
    return f"{dist.metadata['Name']} {dist.version}"
