"""Which event loop a gateway process runs on: uvloop when it is installed, else asyncio's.

uvloop (a dependency of the package on Linux and macOS) runs the loop, sockets and transports in
C. Since the poll's own Python path got lean (the fast path of gateway/proxy/follow.py, cheaper
essentials), the loop is a large part of what is left of a request that arrives on its own: in
the in-flight benchmark (issue 19) uvloop took 15 % off one worker's CPU per request at 1,000
queries in flight, and 0–10 % at 5,000 through two workers, where each loop turn carries many
requests anyway (docs/benchmarks.md, "uvloop by default"). ``TRINO_GATEWAY_LOOP`` chooses:
``auto`` (the default: uvloop when importable), ``uvloop`` (required: stop at start-up without
it) or ``asyncio``. An unknown value stops the gateway at start-up with a clear error.

On uvloop an accepted connection is started by a task awaiting ``connect_accepted_socket``
(gateway/runtime/accept.py): the selector loop's transport-at-accept is asyncio's own.
"""
from __future__ import annotations

import asyncio
import logging
import os
from typing import Any, Callable, Coroutine, TypeVar

T = TypeVar("T")
log = logging.getLogger("gateway.server")
ENV = "TRINO_GATEWAY_LOOP"
CHOICES = ("auto", "asyncio", "uvloop")


class LoopChoiceError(RuntimeError):
    pass


def _normalized(setting: str | None) -> str:
    """TRINO_GATEWAY_LOOP as compared: trimmed, lower case, ``auto`` when unset or empty."""
    return (setting or "auto").strip().lower() or "auto"


def choose(setting: str | None, uvloop_available: bool) -> str:
    """``uvloop`` or ``asyncio`` for the value of TRINO_GATEWAY_LOOP (pure)."""
    value = _normalized(setting)
    if value not in CHOICES:
        raise LoopChoiceError(f"{ENV}={setting!r}: expected one of {', '.join(CHOICES)}")
    if value == "auto":
        return "uvloop" if uvloop_available else "asyncio"
    if value == "uvloop" and not uvloop_available:
        raise LoopChoiceError(f"{ENV}=uvloop but uvloop is not installed (pip install uvloop)")
    return value


def _uvloop() -> Any:
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
    """The constructor of this process's event loops (the workers' and the probe thread's)."""
    setting = os.environ.get(ENV)
    # uvloop is imported only when the setting may choose it
    uvloop = _uvloop() if _normalized(setting) in ("auto", "uvloop") else None
    if choose(setting, uvloop is not None) == "uvloop":
        return uvloop.new_event_loop  # type: ignore[no-any-return]
    return asyncio.new_event_loop


def kind(loop: asyncio.AbstractEventLoop) -> str:
    """``uvloop`` or ``asyncio``: what a running loop is (logged at start-up)."""
    return "uvloop" if type(loop).__module__.startswith("uvloop") else "asyncio"


def run(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run`` on the chosen loop."""
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        # as asyncio's own loop says which selector it uses, at the same level
        log.debug("event loop: %s", kind(runner.get_loop()))
        return runner.run(main)
