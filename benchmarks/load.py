"""HTTP load generation: wrk when installed, else a small asyncio client; one result shape.

``run_load(spec, url, connections, seconds)`` returns a ``LoadResult`` with requests per
second, bytes per second and latency percentiles (µs). wrk is driven by a generated Lua script
whose ``done`` hook prints exact figures; the asyncio client (for machines without wrk) keeps
every latency and is itself slower, so its figures are only compared among themselves.
"""
from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit


@dataclass(frozen=True)
class RequestSpec:
    method: str
    path: str
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""


@dataclass
class LoadResult:
    requests: int
    seconds: float
    bytes: int
    errors: int
    p50_us: float
    p99_us: float
    tool: str
    error_kinds: str = ""     # what the errors were (wrk's counters, or the client's exceptions)

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def mb_per_s(self) -> float:
        return self.bytes / self.seconds / 1e6 if self.seconds else 0.0


class LoadError(RuntimeError):
    pass


def wrk_available() -> bool:
    return shutil.which("wrk") is not None


def _lua_string(b: bytes) -> str:
    return '"' + "".join(c if 32 <= ord(c) < 127 and c not in '"\\' else f"\\{ord(c):03d}"
                         for c in b.decode("latin-1")) + '"'


_LUA_DONE = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("RESULT requests=%d duration_us=%d bytes=%d errors=%d p50=%d p99=%d\\n",
    summary.requests, summary.duration, summary.bytes,
    e.connect + e.read + e.write + e.status + e.timeout,
    latency:percentile(50), latency:percentile(99)))
  io.write(string.format("ERRORS connect=%d read=%d write=%d status=%d timeout=%d\\n",
    e.connect, e.read, e.write, e.status, e.timeout))
end
"""


def wrk_script(spec: RequestSpec) -> str:
    lines = [f"wrk.method = {_lua_string(spec.method.encode())}",
             f"wrk.body = {_lua_string(spec.body)}" if spec.body else "wrk.body = nil"]
    for k, v in spec.headers.items():
        lines.append(f"wrk.headers[{_lua_string(k.encode())}] = {_lua_string(v.encode())}")
    return "\n".join(lines) + "\n" + _LUA_DONE


_RESULT = re.compile(r"RESULT requests=(\d+) duration_us=(\d+) bytes=(\d+) errors=(\d+) p50=(\d+) p99=(\d+)")


def run_wrk(spec: RequestSpec, base_url: str, connections: int, seconds: float) -> LoadResult:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(wrk_script(spec))
        script = f.name
    try:
        out = subprocess.run(
            ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--timeout", "10s",
             "-s", script, base_url + spec.path],
            capture_output=True, text=True, timeout=seconds + 60)
    finally:
        Path(script).unlink(missing_ok=True)
    m = _RESULT.search(out.stdout)
    if not m:
        raise LoadError(f"wrk gave no result: {out.stdout[-500:]} {out.stderr[-500:]}")
    req, dur, nbytes, errors, p50, p99 = (int(x) for x in m.groups())
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out.stdout)
    if non2xx:
        errors += int(non2xx.group(1))
    kinds = re.search(r"ERRORS (.*)", out.stdout)
    kinds_text = (kinds.group(1) if kinds else "") + (f" non-2xx={non2xx.group(1)}" if non2xx else "")
    return LoadResult(req, dur / 1e6, nbytes, errors, float(p50), float(p99), "wrk", kinds_text)


# ---------------------------------------------------------------------------------------------
# The asyncio fallback

async def _read_response(reader: asyncio.StreamReader) -> tuple[int, int]:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = -1
    chunked = False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        lname = name.strip().lower()
        if lname == b"content-length":
            length = int(value)
        elif lname == b"transfer-encoding" and b"chunked" in value.lower():
            chunked = True
    n = len(head)
    if chunked:
        while True:
            size_line = await reader.readuntil(b"\r\n")
            size = int(size_line.split(b";")[0], 16)
            await reader.readexactly(size + 2)
            n += len(size_line) + size + 2
            if size == 0:
                break
    elif length > 0:
        await reader.readexactly(length)
        n += length
    return status, n


async def _pyload(spec: RequestSpec, base_url: str, connections: int, seconds: float) -> LoadResult:
    u = urlsplit(base_url)
    host, port = u.hostname or "127.0.0.1", u.port or 80
    headers = {"Host": f"{host}:{port}", **spec.headers}
    if spec.body or spec.method in ("POST", "PUT"):
        headers["Content-Length"] = str(len(spec.body))
    raw = (f"{spec.method} {spec.path} HTTP/1.1\r\n"
           + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n").encode() + spec.body
    latencies: list[float] = []
    totals = {"bytes": 0, "errors": 0}
    stop_at = time.perf_counter() + seconds

    async def worker() -> None:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            while time.perf_counter() < stop_at:
                t0 = time.perf_counter()
                writer.write(raw)
                status, n = await _read_response(reader)
                latencies.append(time.perf_counter() - t0)
                totals["bytes"] += n
                if status >= 400:
                    totals["errors"] += 1
        finally:
            writer.close()

    started = time.perf_counter()
    results = await asyncio.gather(*(worker() for _ in range(connections)), return_exceptions=True)
    elapsed = time.perf_counter() - started
    failures = [r for r in results if isinstance(r, BaseException)]
    totals["errors"] += len(failures)
    if not latencies:
        raise LoadError(f"no request completed: {[r for r in results if r]}")
    latencies.sort()
    pct = lambda p: latencies[min(len(latencies) - 1, int(len(latencies) * p))] * 1e6  # noqa: E731
    kinds = sorted({f"{type(r).__name__}: {r}" for r in failures})
    if totals["errors"] > len(failures):
        kinds.append(f"status >= 400: {totals['errors'] - len(failures)}")
    return LoadResult(len(latencies), elapsed, totals["bytes"], totals["errors"], pct(0.5), pct(0.99),
                      "python", "; ".join(kinds)[:500])


def run_pyload(spec: RequestSpec, base_url: str, connections: int, seconds: float) -> LoadResult:
    return asyncio.run(_pyload(spec, base_url, connections, seconds))


def run_load(spec: RequestSpec, base_url: str, connections: int, seconds: float,
             tool: str = "wrk") -> LoadResult:
    if tool == "wrk":
        return run_wrk(spec, base_url, connections, seconds)
    return run_pyload(spec, base_url, connections, seconds)
