"""A background task that does one thing every few seconds until stopped (the metrics sampler,
the resolver of abandoned queries)."""
from __future__ import annotations

import asyncio
import logging
from typing import Any

log = logging.getLogger("gateway")

__all__ = ["Periodic"]


class Periodic:
    """Subclasses set ``every`` (seconds; 0 or less: never started) and write ``tick``."""

    every: float = 0.0
    what = "background task"

    _task: asyncio.Task[None] | None = None

    async def tick(self) -> Any:
        raise NotImplementedError

    def delay(self) -> float:
        """Seconds until the next tick."""
        return self.every

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.delay())
            try:
                await self.tick()
            except Exception as exc:  # noqa: BLE001 - the store may be down; try next time
                log.debug("%s failed: %s", self.what, exc)

    def start(self) -> None:
        if self.every > 0 and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
