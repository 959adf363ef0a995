"""An event loop of its own, on a thread, for the monitor's probes.

A busy proxy loop (thousands of long polls, a burst of answers) runs every timer late. A probe
whose deadline lives on that loop "times out" although the backend answered in time, and a
probe that is not even sent until the loop gets to it measures the gateway, not the backend.
On this thread a probe's connect, request and deadline run on a loop that only probes: the
proxy loop cannot starve it. Results come back to the caller's loop with
``call_soon_threadsafe`` (``asyncio.wrap_future``), where the registry is updated, so backend
states are only ever written by the proxy's loop.

The thread still shares the GIL and stops with the process (a full garbage collection stops
it too); its own ``LoopLag`` sees such stalls, so a probe timeout during one is not counted
(``gateway.runtime.overload.failure_counts``). That sampler ticks only while a probe is under
way (``LoopLag.hold``, gateway/backends/monitor.py): between rounds the thread sleeps, instead
of waking 20 times a second and taking the GIL from a busy worker each time.
"""
from __future__ import annotations

import asyncio
import threading
from typing import Any, Awaitable, Callable, Coroutine, TypeVar

from gateway.runtime import loop as event_loop
from gateway.runtime.overload import LoopLag

__all__ = ["ProbeThread"]

T = TypeVar("T")


class ProbeThread:
    """A daemon thread running an asyncio loop; ``run(coro)`` awaits a coroutine run there."""

    def __init__(self, name: str = "gateway-probes") -> None:
        self.name = name
        self.loop: asyncio.AbstractEventLoop | None = None
        self.lag: LoopLag | None = None     # this loop's lag (read on this loop only)
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is not None:
            return
        ready = threading.Event()

        def main() -> None:
            loop = event_loop.loop_factory()()   # the same kind as the worker's loop
            asyncio.set_event_loop(loop)
            self.loop = loop
            self.lag = LoopLag()   # ticking only while a probe holds it
            loop.call_soon(ready.set)
            try:
                loop.run_forever()
            finally:
                try:
                    pending = asyncio.all_tasks(loop)
                    for task in pending:
                        task.cancel()
                    if pending:
                        loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
                finally:
                    loop.close()

        self._thread = threading.Thread(target=main, name=self.name, daemon=True)
        self._thread.start()
        ready.wait()

    def run(self, coro: Coroutine[Any, Any, T]) -> Awaitable[T]:
        """Run ``coro`` on the thread's loop; await the result on the calling loop (cancelling
        the await cancels the coroutine)."""
        assert self.loop is not None, "ProbeThread.start() first"
        return asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self.loop))

    def call(self, fn: Callable[[], Any]) -> None:
        """Call ``fn`` on the thread's loop (e.g. closing what was made there)."""
        if self.loop is not None and not self.loop.is_closed():
            self.loop.call_soon_threadsafe(fn)

    def stop(self, timeout: float = 5.0) -> None:
        thread, self._thread = self._thread, None
        if thread is None or self.loop is None:
            return
        if self.lag is not None:
            self.loop.call_soon_threadsafe(self.lag.stop)
        self.loop.call_soon_threadsafe(self.loop.stop)
        thread.join(timeout)
