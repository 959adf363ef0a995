"""Which event loop a gateway process runs on: asyncio's, or uvloop on request.

``TRINO_GATEWAY_LOOP=uvloop`` (with ``pip install uvloop``) runs the workers and the probe
thread on uvloop, the loop, sockets and transports in C. It is not the default: in the
in-flight benchmark (issue 19) it did not lower the gateway's CPU per poll measurably on the
test machine (docs/benchmarks.md "CPU per poll"), whose Python code (HTTP layer, handler, URI
rewriting) dominates, and a loop in C is one more thing that can differ. The setting stays for
measuring it on other machines. An unknown value, or ``uvloop`` without uvloop installed,
stops the gateway at start-up with a clear error.
"""
from __future__ import annotations

import asyncio
import logging
import os
from typing import Any, Callable, Coroutine, TypeVar

T = TypeVar("T")
log = logging.getLogger("gateway.server")
ENV = "TRINO_GATEWAY_LOOP"
CHOICES = ("asyncio", "uvloop")


class LoopChoiceError(RuntimeError):
    pass


def choose(setting: str | None, uvloop_available: bool) -> str:
    """``uvloop`` or ``asyncio`` for the value of TRINO_GATEWAY_LOOP (pure)."""
    value = (setting or "asyncio").strip().lower() or "asyncio"
    if value not in CHOICES:
        raise LoopChoiceError(f"{ENV}={setting!r}: expected one of {', '.join(CHOICES)}")
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
    uvloop = _uvloop() if setting and setting.strip().lower() == "uvloop" else None
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
