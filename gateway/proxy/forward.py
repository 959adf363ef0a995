"""The one forwarding path: every request the gateway sends to a backend on a client's behalf.

Statements from the proxy handler, statements the gateway queue dispatches later
(``gateway.admission.control``), follow-ups, the repeat after a 406 for ``X-Forwarded-*`` headers, and
the next candidate after a backend that could not be reached (failover): all go through
``Forwarder.send`` / ``Forwarder.submit``, except a token follow-up sent directly on a pooled
connection (gateway/proxy/follow.py), which calls the parts of ``send`` it needs
(``headers_for``, ``attempt_started``, ``timed``, ``failed``, ``refused_by``; it catches the
406 itself) and hands anything else back to ``send``. Response handling (headers, URIs, what an answer
teaches) is one pure function set, ``gateway.proxy.exchange``, applied by the sinks.
"""
from __future__ import annotations

import logging
import time
from typing import Any, Awaitable, Callable, Sequence

from tornado.httputil import HTTPHeaders

from gateway import protocol as P
from gateway.backends.state import Backend
from gateway.runtime.overload import EXCUSED
from gateway.proxy.client import BackendClient, BackendError, ResponseSink

__all__ = ["Forwarder", "StatementLost", "NoBackendReached"]

log = logging.getLogger("gateway.proxy")


class StatementLost(Exception):
    """The backend failed after the statement was sent: it may exist; never send it again."""

    def __init__(self, backend: Backend, exc: BackendError) -> None:
        super().__init__(str(exc))
        self.backend = backend
        self.exc = exc


class NoBackendReached(Exception):
    """No candidate backend could be connected to (nothing was sent)."""

    def __init__(self, tried: list[str]) -> None:
        super().__init__("; ".join(tried))
        self.tried = tried


class _Refused406:
    """Passes a response to the sink, unless it is the 406 a coordinator gives for
    ``X-Forwarded-*`` headers it does not process (then nothing was created: send again)."""

    __slots__ = ("sink", "refused")

    def __init__(self, sink: ResponseSink) -> None:
        self.sink = sink
        self.refused = False

    def on_headers(self, code: int, reason: str, headers: HTTPHeaders) -> Awaitable[None] | None:
        if code == 406:
            self.refused = True
            return None
        return self.sink.on_headers(code, reason, headers)

    def on_chunk(self, chunk: bytes) -> Awaitable[None] | None:
        return None if self.refused else self.sink.on_chunk(chunk)

    def on_end(self) -> Awaitable[None] | None:
        return None if self.refused else self.sink.on_end()


class Forwarder:
    """Sends client requests to backends; owns which backends refuse ``X-Forwarded-*``.

    A connect that timed out sent nothing, so the request may be sent again: ``send`` and
    ``submit`` do so for up to ``retry_for`` seconds (``server.backendRequestTimeout``) while
    the backend is still ``healthy`` (the probe the failure started has not found it down), the
    gateway is not ``stopping`` and the client has not gone (``sink.gone``, if the sink has it).
    A backend's accept queue that overflowed in a burst must not fail a query (issue 19). A
    refused connect is not tried again: the backend is down (failover, or fail fast)."""

    def __init__(self, client: BackendClient, *, x_forwarded: bool, trust_forwarded: bool,
                 on_failure: Callable[[Backend, BackendError, float, float], str | None],
                 timing: Any = None, lag: Any = None, retry_for: float = 0.0,
                 healthy: Callable[[Backend], bool] | None = None,
                 stopping: Callable[[], bool] | None = None) -> None:
        self.client = client
        self.x_forwarded = x_forwarded
        self.trust_forwarded = trust_forwarded
        self.on_failure = on_failure
        self.timing = timing                  # Metrics: backend time per request
        self.lag = lag                        # overload.LoopLag: loop stalls during an attempt
        self.retry_for = retry_for            # seconds a timed-out connect is tried again (0: never)
        self.healthy = healthy                # is the backend still worth trying (monitor's view)
        self.stopping = stopping              # the gateway is shutting down
        self.no_forwarded: set[str] = set()   # backends that answered 406 to X-Forwarded-*

    def forwards(self, backend: Backend) -> bool:
        """Whether ``backend`` gets ``X-Forwarded-*`` lines (configured, and it did not refuse them)."""
        return self.x_forwarded and backend.name not in self.no_forwarded

    def headers_for(self, backend: Backend, client_headers: Sequence[tuple[str, str]], *,
                    base: str, remote_ip: str) -> tuple[list[tuple[str, str]], bool]:
        forwarded = self.forwards(backend)
        return P.forward_header_pairs(client_headers, remote_ip=remote_ip, base=base, forwarded=forwarded,
                                      trust_forwarded=self.trust_forwarded), forwarded

    def may_retry(self, exc: BackendError, sink: Any, give_up: float) -> bool:
        """Whether a request that failed with ``exc`` may be sent again, before the backend's
        health is asked: only a connect that timed out (nothing sent), before ``give_up``
        (a ``time.monotonic()``), while the gateway runs and the client waits."""
        return (exc.timeout and not exc.sent and time.monotonic() < give_up
                and not getattr(sink, "gone", False)
                and not (self.stopping is not None and self.stopping()))

    def _still_healthy(self, backend: Backend) -> bool:
        return self.healthy is None or self.healthy(backend)

    async def send(self, backend: Backend, method: str, uri: str,
                   client_headers: Sequence[tuple[str, str]], body: bytes | None, sink: ResponseSink,
                   *, base: str, remote_ip: str, patient: bool = True) -> int:
        """Forward one request and stream the answer into ``sink``; the status code.

        ``sink.begin(backend)`` (if it has one) runs before each attempt. A failure is noted for
        passive health, with the attempt's duration and how long the event loop stalled during
        it (``on_failure(backend, exc, elapsed, lag)``), and raised as ``BackendError``. When
        that verdict is ``excused`` (the connect timed out while the loop stalled: we did not
        get to it) and nothing was sent, the request is sent once more. When ``patient``, a
        connect that timed out is tried again (see the class); the last failure is raised."""
        stalled_once = False
        give_up = 0.0
        if not isinstance(client_headers, list):
            client_headers = list(client_headers)   # read again after a 406
        while True:
            headers, forwarded = self.headers_for(backend, client_headers, base=base, remote_ip=remote_ip)
            if hasattr(sink, "begin"):   # looked up each time: no bound method held while waiting
                sink.begin(backend)
            relay = self.guarded(sink, forwarded)
            t0, stalled = self.attempt_started(sink)
            try:
                call = self.client.fetch(backend.proxyTo, method, uri, headers, body, relay)
                del headers   # not held by this frame for the whole long poll (garbage collector)
                code = await call
            except BackendError as exc:
                elapsed = time.perf_counter() - t0
                verdict = self.failed(backend, exc, sink, t0, stalled)
                if verdict == EXCUSED and not exc.sent and not stalled_once:
                    stalled_once = True
                    log.info("backend %s: %s while the event loop stalled; trying once more",
                             backend.name, exc)
                    continue
                if patient:
                    if give_up == 0.0:   # from the first attempt: no clock read per request
                        give_up = time.monotonic() - elapsed + self.retry_for
                    if self.may_retry(exc, sink, give_up) and self._still_healthy(backend):
                        log.info("backend %s: connect timed out for %s %s; trying again",
                                 backend.name, method, uri.split("?", 1)[0])
                        continue
                raise
            self.timed(sink, t0, None)
            if self.refused(relay, backend):
                continue
            return code

    # -- the parts of ``send`` a direct exchange (gateway/proxy/follow.py) calls too --------------

    def attempt_started(self, sink: Any) -> tuple[float, float]:
        """Before an attempt: the metrics' start mark; (start time, loop stall so far)."""
        if self.timing is not None:
            self.timing.backend_start(sink)
        lag = self.lag
        return time.perf_counter(), (lag.stalled() if lag is not None else 0.0)

    def failed(self, backend: Backend, exc: BackendError, sink: Any, t0: float, stalled: float) -> str | None:
        """An attempt that started at ``t0`` (``perf_counter``), with the loop stalled for
        ``stalled`` seconds so far, failed: timed, and noted for passive health; the verdict."""
        elapsed = time.perf_counter() - t0
        self.timed(sink, t0, f"{backend.proxyTo}: {exc}")
        lag = self.lag
        return self.on_failure(backend, exc, elapsed, lag.stalled() - stalled if lag is not None else 0.0)

    @staticmethod
    def guarded(sink: Any, forwarded: bool) -> Any:
        """The sink an attempt feeds: when it sent ``X-Forwarded-*`` lines, wrapped so that a
        406 for them does not reach ``sink`` (see ``refused``)."""
        return _Refused406(sink) if forwarded else sink

    def refused(self, relay: Any, backend: Backend) -> bool:
        """Whether the attempt that fed ``relay`` (from ``guarded``) got the 406 for its
        ``X-Forwarded-*`` lines; then they are never sent to ``backend`` again, and the request
        is to be sent once more."""
        if not isinstance(relay, _Refused406) or not relay.refused:
            return False
        self.refused_by(backend)
        return True

    def refused_by(self, backend: Backend) -> None:
        """``backend`` answered 406 to ``X-Forwarded-*`` lines: never send them to it again."""
        self.no_forwarded.add(backend.name)
        log.warning("backend %s refuses X-Forwarded-* headers (406); sending without them "
                    "and rewriting URIs instead", backend.name)

    def timed(self, sink: Any, t0: float, error: str | None) -> None:
        if self.timing is not None:
            self.timing.backend_end(sink, time.perf_counter() - t0, error)

    async def submit(self, candidates: Sequence[Backend], uri: str,
                     client_headers: Sequence[tuple[str, str]], body: bytes, sink: ResponseSink,
                     *, base: str, remote_ip: str) -> Backend:
        """POST a new statement to the first candidate that can be reached (failover only while
        nothing was sent: a POST that reached a backend may have created the query, §7.3).
        When no candidate could be reached, the candidates whose connect timed out (not
        refused) and that are still HEALTHY are tried again, in order, until ``retry_for``
        (see the class): a burst that overflowed the only backend's accept queue must not fail
        a new statement with ``NO_NODES_AVAILABLE``.

        The backend that answered; ``StatementLost`` or ``NoBackendReached`` otherwise."""
        tried: dict[str, str] = {}   # backend name: its last failure
        if not isinstance(client_headers, list):
            client_headers = list(client_headers)
        give_up = time.monotonic() + self.retry_for
        while True:
            timed_out: list[Backend] = []
            for backend in candidates:
                try:
                    await self.send(backend, "POST", uri, client_headers, body, sink, base=base,
                                    remote_ip=remote_ip, patient=False)
                except BackendError as exc:
                    if exc.sent:
                        raise StatementLost(backend, exc) from exc
                    tried[backend.name] = str(exc)
                    if self.may_retry(exc, sink, give_up):
                        timed_out.append(backend)
                    continue
                return backend
            candidates = [b for b in timed_out if self._still_healthy(b)]
            if not candidates:
                raise NoBackendReached([f"{name}: {why}" for name, why in tried.items()])
            log.info("new statement: the connect to %s timed out; trying again",
                     ", ".join(b.name for b in candidates))
