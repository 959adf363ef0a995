"""Which event loop a gateway process runs on: uvloop when it is installed, else asyncio's.

uvloop (``pip install 'trino-gateway[speed]'``) runs the same asyncio code with the loop,
sockets and transports in C: on the poll path it cut the gateway's CPU per forwarded request
(docs/benchmarks.md, issue 19). ``TRINO_GATEWAY_LOOP=asyncio`` keeps asyncio's own loop with
uvloop installed (an A/B, or a suspected uvloop problem); ``TRINO_GATEWAY_LOOP=uvloop``
insists on uvloop and fails at start-up without it.
"""
from __future__ import annotations

import asyncio
import logging
import os
from typing import Any, Callable, Coroutine, TypeVar

T = TypeVar("T")
log = logging.getLogger("gateway.server")
ENV = "TRINO_GATEWAY_LOOP"
CHOICES = ("auto", "uvloop", "asyncio")


class LoopChoiceError(RuntimeError):
    pass


def choose(setting: str | None, uvloop_available: bool) -> str:
    """``uvloop`` or ``asyncio`` for the value of TRINO_GATEWAY_LOOP (pure)."""
    value = (setting or "auto").strip().lower() or "auto"
    if value not in CHOICES:
        raise LoopChoiceError(f"{ENV}={setting!r}: expected one of {', '.join(CHOICES)}")
    if value == "auto":
        return "uvloop" if uvloop_available else "asyncio"
    if value == "uvloop" and not uvloop_available:
        raise LoopChoiceError(f"{ENV}=uvloop but uvloop is not installed "
                              "(pip install 'trino-gateway[speed]')")
    return value


def _uvloop() -> Any:
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
    """The constructor of this process's event loops (the workers' and the probe thread's)."""
    uvloop = _uvloop()
    if choose(os.environ.get(ENV), uvloop is not None) == "uvloop":
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
