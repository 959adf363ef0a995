"""Helpers of the hardening tests: watch the event loop from outside, log in through the form."""
from __future__ import annotations

import re
import subprocess
import sys
import threading
from typing import Any

import requests


class LoopWatch:
    """Polls ``/trino-gateway/livez`` back to back from a separate process (so the test's own
    work cannot delay it) and keeps each answer's latency: any stall of the gateway's event
    loop shows up as one slow answer."""

    _SCRIPT = """
import sys, time, http.client
host, port = sys.argv[1], int(sys.argv[2])
conn = None
while True:
    t0 = time.perf_counter()
    try:
        if conn is None:
            conn = http.client.HTTPConnection(host, port, timeout=30)
        conn.request("GET", "/trino-gateway/livez")
        r = conn.getresponse()
        r.read()
        line = f"{time.perf_counter() - t0:.6f}" if r.status == 200 else f"error {r.status}"
    except Exception as exc:
        conn = None
        line = f"error {exc}"
    print(line, flush=True)
    time.sleep(0.01)
"""

    def __init__(self, url: str) -> None:
        host, port = url.split("://", 1)[1].rsplit(":", 1)
        self._args = [sys.executable, "-c", self._SCRIPT, host, port]
        self._lines: list[str] = []
        self._proc: subprocess.Popen[str] | None = None
        self._reader: threading.Thread | None = None

    def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for line in self._proc.stdout:
            self._lines.append(line.strip())

    def __enter__(self) -> "LoopWatch":
        self._proc = subprocess.Popen(self._args, stdout=subprocess.PIPE, text=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        assert self._proc is not None and self._reader is not None
        self._proc.terminate()
        self._proc.wait(10)
        self._reader.join(10)

    @property
    def latencies(self) -> list[float]:
        return [float(x) for x in list(self._lines) if x and not x.startswith("error")]

    @property
    def errors(self) -> list[str]:
        return [x for x in list(self._lines) if x.startswith("error")]

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
