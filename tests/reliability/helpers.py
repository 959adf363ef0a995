"""Helpers shared by the reliability tests: process figures, raw HTTP, metrics, client threads.

Sizes: every scenario runs at a CI size by default; the larger size of the same scenario is a
separate parameter marked ``slow`` (``pytest --runslow`` runs both). See docs/reliability.md.
"""
from __future__ import annotations

import os
import re
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import pytest


def sizes(ci: Any, large: Any) -> list[Any]:
    """Parameters for a scenario: the CI size, and the large size behind ``--runslow``.
    Tuples are spread over several argument names."""
    def args(v: Any) -> tuple[Any, ...]:
        return v if isinstance(v, tuple) else (v,)
    return [pytest.param(*args(ci), id="ci"),
            pytest.param(*args(large), id="large", marks=pytest.mark.slow)]


# ---------------------------------------------------------------------------------------------
# Figures of a process

def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for {pid}")


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


# ---------------------------------------------------------------------------------------------
# Metrics text

def metric(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels`` (0 if none)."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        m = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)", line)
        if not m or m.group(1) != name:
            continue
        got = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(2) or ""))
        if all(got.get(k) == v for k, v in labels.items()):
            total += float(m.group(3))
    return total


# ---------------------------------------------------------------------------------------------
# Raw HTTP over a socket (for input no HTTP library would send)

@dataclass
class RawResponse:
    status: int | None          # None: the gateway closed without answering
    head: bytes = b""
    body: bytes = b""
    closed: bool = False        # the gateway closed the connection after this answer
    raw: bytes = field(default=b"", repr=False)


def raw_exchange(port: int, data: bytes, *, timeout: float = 5.0, read_all: bool = False) -> RawResponse:
    """Send ``data`` on a new connection, read one response (or everything with ``read_all``)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        try:
            s.sendall(data)
        except OSError:
            pass  # the gateway may close on garbage before we finish writing
        buf = read_response_bytes(s, timeout, read_all=read_all)
    return parse_raw(buf)


def read_response_bytes(s: socket.socket, timeout: float, *, read_all: bool = False) -> bytes:
    """Read until one full response (Content-Length or chunked end) or EOF; bounded by ``timeout``."""
    s.settimeout(timeout)
    deadline = time.monotonic() + timeout
    buf = b""
    while time.monotonic() < deadline:
        try:
            chunk = s.recv(65536)
        except socket.timeout:
            break
        except OSError:
            break
        if not chunk:
            break
        buf += chunk
        if not read_all and _complete(buf):
            break
    return buf


def _complete(buf: bytes) -> bool:
    head, sep, body = buf.partition(b"\r\n\r\n")
    if not sep:
        return False
    m = re.search(rb"(?im)^content-length:\s*(\d+)", head)
    if m:
        return len(body) >= int(m.group(1))
    if re.search(rb"(?im)^transfer-encoding:\s*chunked", head):
        return body.endswith(b"0\r\n\r\n")
    return head.startswith(b"HTTP/1.1 1") or b" 204 " in head.split(b"\r\n", 1)[0] \
        or b" 304 " in head.split(b"\r\n", 1)[0]


def parse_raw(buf: bytes) -> RawResponse:
    if not buf:
        return RawResponse(None, closed=True, raw=buf)
    head, _, body = buf.partition(b"\r\n\r\n")
    m = re.match(rb"HTTP/1\.[01] (\d{3})", head)
    status = int(m.group(1)) if m else None
    closed = bool(re.search(rb"(?im)^connection:\s*close", head))
    return RawResponse(status, head, body, closed, buf)


def complete_responses(buf: bytes, methods: list[str]) -> list[int] | None:
    """Statuses of the complete responses to ``methods`` (in order) found in ``buf``; None while
    a response is still incomplete. Understands Content-Length, chunked and HEAD."""
    out: list[int] = []
    pos = 0
    for method in methods:
        end = buf.find(b"\r\n\r\n", pos)
        if end < 0:
            return out if pos == len(buf) else None
        head = buf[pos:end]
        m = re.match(rb"HTTP/1\.[01] (\d{3})", head)
        if not m:
            return None
        code = int(m.group(1))
        pos = end + 4
        if method != "HEAD" and code not in (204, 304) and not 100 <= code < 200:
            cl = re.search(rb"(?im)^content-length:\s*(\d+)", head)
            if cl:
                pos += int(cl.group(1))
            elif re.search(rb"(?im)^transfer-encoding:\s*chunked", head):
                while True:
                    line_end = buf.find(b"\r\n", pos)
                    if line_end < 0:
                        return None
                    size = int(buf[pos:line_end].split(b";")[0], 16)
                    pos = line_end + 2 + size + 2
                    if size == 0:
                        break
            if pos > len(buf):
                return None
        out.append(code)
    return out


# ---------------------------------------------------------------------------------------------
# Client threads

@dataclass
class RunResult:
    ok: int = 0
    errors: list[str] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    seconds: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add_ok(self, latency: float) -> None:
        with self.lock:
            self.ok += 1
            self.latencies.append(latency)

    def add_error(self, text: str) -> None:
        with self.lock:
            self.errors.append(text)

    def p(self, q: float) -> float:
        xs = sorted(self.latencies)
        return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else 0.0


def run_clients(n_clients: int, n_queries: int, one_query: Callable[[int, int, Any], None],
                make_state: Callable[[int], Any] = lambda i: None,
                close_state: Callable[[Any], None] = lambda s: None,
                timeout: float = 600.0, stop: threading.Event | None = None) -> RunResult:
    """``n_clients`` threads each run ``one_query(client, i, state)`` ``n_queries`` times.

    An exception is one error (its text kept). With ``stop``, a client stops early when set.
    """
    result = RunResult()
    start = threading.Barrier(n_clients + 1)

    def client(c: int) -> None:
        state = make_state(c)
        try:
            start.wait()
            for i in range(n_queries):
                if stop is not None and stop.is_set():
                    break
                t0 = time.perf_counter()
                try:
                    one_query(c, i, state)
                except Exception as exc:  # every failure is a finding
                    result.add_error(f"client {c} query {i}: {type(exc).__name__}: {exc}")
                else:
                    result.add_ok(time.perf_counter() - t0)
        finally:
            close_state(state)

    threads = [threading.Thread(target=client, args=(c,), daemon=True) for c in range(n_clients)]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join(max(0.0, timeout - (time.perf_counter() - t0)))
    result.seconds = time.perf_counter() - t0
    hung = sum(t.is_alive() for t in threads)
    if hung:
        result.add_error(f"{hung} client thread(s) still running after {timeout}s")
    return result


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------------------------------
# A TCP relay in front of a backend that can turn into a black hole

class ClientThreads:
    """Client threads that each repeat ``step`` until stopped (use as a context manager).

    Subclasses open a thread's connections in ``setup``, run one query in ``step`` and close
    in ``teardown``; an exception from ``step`` is recorded in ``errors`` and the loop goes on.
    """

    def __init__(self, clients: int) -> None:
        self.errors: list[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(c,), daemon=True) for c in range(clients)]

    def setup(self, c: int) -> Any:
        return None

    def step(self, state: Any, c: int, i: int) -> None:
        raise NotImplementedError

    def teardown(self, state: Any) -> None:
        pass

    def _run(self, c: int) -> None:
        state = self.setup(c)
        i = 0
        while not self._stop.is_set():
            try:
                self.step(state, c, i)
            except Exception as exc:   # recorded: the tests assert on what failed
                with self._lock:
                    self.errors.append(f"{type(exc).__name__}: {exc}")
            i += 1
        self.teardown(state)

    def __enter__(self) -> Any:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(30)


class BlackHoleRelay:
    """Relays TCP to ``upstream`` until ``swallow()``: from then on it accepts connections and
    reads requests but never answers (a frozen coordinator, a network partition). ``relay()``
    passes traffic again. ``connections`` counts connections accepted since the start.
    ``overflow()`` stops accepting and fills the accept queue (a coordinator swamped by a
    burst: the kernel drops new SYNs, connects time out); ``accept_again()`` ends it."""

    def __init__(self, upstream_port: int, backlog: int = 256) -> None:
        self.upstream_port = upstream_port
        self.hole = threading.Event()
        self.accepting = threading.Event()
        self.accepting.set()
        self._paused = threading.Event()
        self._fillers: list[socket.socket] = []
        self.connections = 0
        self.swallowed_requests = 0
        self._stop = threading.Event()
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(backlog)
        self._listener.settimeout(0.2)
        self.port = self._listener.getsockname()[1]
        self._socks: list[socket.socket] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def swallow(self) -> None:
        self.hole.set()

    def relay(self) -> None:
        self.hole.clear()

    def overflow(self) -> None:
        """Stop accepting and fill the accept queue until a connect times out."""
        self.accepting.clear()
        if not self._paused.wait(5):
            raise AssertionError("the relay did not stop accepting")
        while True:
            s = socket.socket()
            s.settimeout(0.3)
            try:
                s.connect(("127.0.0.1", self.port))
            except OSError:   # timed out: the queue is full, SYNs are dropped
                s.close()
                return
            self._fillers.append(s)

    def accept_again(self) -> None:
        self.accepting.set()

    def close(self) -> None:
        self._stop.set()
        self.accepting.set()
        self._listener.close()
        with self._lock:
            for s in self._socks + self._fillers:
                try:
                    s.close()
                except OSError:
                    pass

    def _track(self, s: socket.socket) -> None:
        with self._lock:
            self._socks.append(s)

    def _accept(self) -> None:
        while not self._stop.is_set():
            if not self.accepting.is_set():
                self._paused.set()
                self.accepting.wait(0.2)
                continue
            self._paused.clear()
            try:
                conn, _ = self._listener.accept()
            except (socket.timeout, OSError):
                continue
            self.connections += 1
            self._track(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        import select
        upstream: socket.socket | None = None
        try:
            while not self._stop.is_set():
                if self.hole.is_set():
                    # Read whatever arrives and never answer; keep the connection open.
                    r, _, _ = select.select([client], [], [], 0.2)
                    if r:
                        data = client.recv(65536)
                        if not data:
                            return
                        self.swallowed_requests += 1
                    continue
                if upstream is None:
                    upstream = socket.create_connection(("127.0.0.1", self.upstream_port), timeout=5)
                    upstream.settimeout(None)
                    self._track(upstream)
                r, _, _ = select.select([client, upstream], [], [], 0.2)
                for s in r:
                    data = s.recv(65536)
                    if not data:
                        return
                    if self.hole.is_set():
                        if s is client:
                            self.swallowed_requests += 1
                        continue  # a response in flight when the hole opened is lost
                    (upstream if s is client else client).sendall(data)
        except OSError:
            return
        finally:
            for s in (client, upstream):
                if s is not None:
                    try:
                        s.close()
                    except OSError:
                        pass


def tcp_peers(pid: int, fds: list[str] | None = None) -> dict[str, int]:
    """The process's TCP sockets by role: ``listen``, ``in:<local port>`` (accepted clients) or
    ``out:<remote port>`` (connections it opened), from /proc (for leak diagnostics)."""
    inodes = set()
    for fd in fds if fds is not None else os.listdir(f"/proc/{pid}/fd"):
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.add(link[8:-1])
    listening: set[int] = set()
    rows = []
    for table in ("tcp", "tcp6"):
        try:
            with open(f"/proc/{pid}/net/{table}") as fh:
                next(fh)
                for line in fh:
                    f = line.split()
                    local, remote, st, inode = f[1], f[2], f[3], f[9]
                    if inode in inodes:
                        rows.append((int(local.rsplit(":", 1)[1], 16), int(remote.rsplit(":", 1)[1], 16), st))
                        if st == "0A":
                            listening.add(int(local.rsplit(":", 1)[1], 16))
        except OSError:
            pass
    out: dict[str, int] = {}
    for lport, rport, st in rows:
        key = "listen" if st == "0A" else f"in:{lport}" if lport in listening else f"out:{rport}"
        out[key] = out.get(key, 0) + 1
    return out


def fd_kinds(pid: int) -> dict[str, int]:
    """``{"other": fds that are not TCP sockets, "in": accepted connections, "out": connections
    the process opened}``."""
    fds = os.listdir(f"/proc/{pid}/fd")   # one listing for both counts
    peers = tcp_peers(pid, fds)
    inbound = sum(v for k, v in peers.items() if k.startswith("in:"))
    outbound = sum(v for k, v in peers.items() if k.startswith("out:"))
    # a socket closed between the listing and the read of /proc/net/tcp counts as "other"
    return {"other": len(fds) - inbound - outbound - peers.get("listen", 0), "in": inbound, "out": outbound}
