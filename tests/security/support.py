"""Helpers of the hardening tests: watch the event loop from outside, log in through the form."""
from __future__ import annotations

import re
import threading
import time
from typing import Any

import requests


class LoopWatch:
    """Polls ``/trino-gateway/livez`` back to back on a thread and keeps each answer's latency:
    any stall of the gateway's event loop shows up as one slow answer."""

    def __init__(self, url: str) -> None:
        self.url = url + "/trino-gateway/livez"
        self.latencies: list[float] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        s = requests.Session()
        while not self._stop.is_set():
            t0 = time.perf_counter()
            try:
                s.get(self.url, timeout=30).raise_for_status()
            except requests.RequestException as exc:
                self.errors.append(str(exc))
            self.latencies.append(time.perf_counter() - t0)
            self._stop.wait(0.01)

    def __enter__(self) -> "LoopWatch":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(35)

    @property
    def worst(self) -> float:
        return max(self.latencies, default=0.0)

    def p(self, q: float) -> float:
        xs = sorted(self.latencies)
        return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else 0.0


def csrf_session(url: str, page: str = "/trino-gateway/login") -> tuple[requests.Session, str]:
    s = requests.Session()
    text = s.get(url + page, timeout=10).text
    return s, re.search(r'name="_csrf" value="([^"]+)"', text).group(1)
