"""Accepting client connections: each wake-up takes this worker's share of the waiting ones.

asyncio accepts a fixed number of connections (``backlog``) each time the listening socket is
readable, once per event-loop iteration. The gateway used 1, so that several worker processes
on one shared socket split a burst (with 100, the first awake took all 32 of wrk's connections
and the others idled). But a loaded worker's iteration runs every ready poll answer first
(tens of milliseconds at 5,000 queries in flight), so one accept per iteration capped a worker
at a few dozen new connections per second: at 500 new queries per second the kernel's accept
queue (1024) stayed full, a ``select 1`` waited seconds behind it, and SYNs beyond it were
dropped (the client tries again after 1, 3, 7 s). Measured in docs/benchmarks.md (issue 19,
``select 1`` p99 at 5,000 in flight).

So each wake-up takes ``accept_batch``: a share of the waiting connections (the listening
socket's queue length, from ``TCP_INFO`` on Linux) among the workers sharing it, at least 1
(one at a time when they trickle in: bursts still spread) and at most ``MAX_BATCH``. The cap keeps the
kernel's queue as back-pressure for a worker that is behind: new connections enter at most 16
per iteration, so an iteration's new work stays small next to the answers it relays. Without
it (128 per wake-up) a worker took 6,862 connections of a 10,000-query ramp in a few seconds
and could not read their request heads within ``server.headerTimeout`` (10 s): all were closed.
At 10 ms per iteration (5,000 queries in flight) 16 per wake-up is 1,600 new connections per
second per worker.
"""
from __future__ import annotations

import asyncio
import errno
import logging
import socket
import ssl
import struct
from typing import Callable

__all__ = ["Acceptor", "accept_batch", "waiting", "MAX_BATCH"]

log = logging.getLogger("gateway.server")

MAX_BATCH = 16               # connections one wake-up accepts at most (see above)
_RETRY_AFTER = 1.0           # seconds without accepting after running out of descriptors
_OUT_OF = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)
# struct tcp_info: 8 one-byte fields, then rto, ato, snd_mss, rcv_mss, unacked, sacked (u32).
# For a listening socket tcpi_unacked is the accept queue's length (what ``ss`` shows as Recv-Q).
_UNACKED = struct.Struct("=I")
_UNACKED_AT = 24
_TCP_INFO = getattr(socket, "TCP_INFO", None)


def accept_batch(waiting: int, workers: int) -> int:
    """How many connections one wake-up accepts: this worker's share of the ``waiting`` ones.
    With several workers, half a share: the workers are not woken at once, and the second
    to wake finds what the first left, so smaller bites split a burst more evenly. wrk's 32
    connections over two workers, a few tries each: 16/16 to 18/14 like this; 25/7, 16/16,
    16/16 with one accept per wake-up; 25/7, 24/8, 5/27 with a whole share per wake-up."""
    waiting = max(0, waiting)
    share = waiting if workers <= 1 else -(-waiting // (2 * workers))
    return max(1, min(MAX_BATCH, share))


def waiting(sock: socket.socket) -> int:
    """Connections in ``sock``'s accept queue; 1 where the platform does not say."""
    if _TCP_INFO is None:
        return 1
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, _TCP_INFO, 104)
        return _UNACKED.unpack_from(info, _UNACKED_AT)[0] if len(info) >= _UNACKED_AT + 4 else 1
    except OSError:
        return 1


class Acceptor:
    """Accepts connections on one listening socket for ``protocol_factory`` (as
    ``loop.create_server(sock=...)`` would, with the batch above)."""

    def __init__(self, sock: socket.socket, protocol_factory: Callable[[], asyncio.Protocol], *,
                 ssl_context: ssl.SSLContext | None, workers: int) -> None:
        self.sock = sock
        self.factory = protocol_factory
        self.ssl_context = ssl_context
        self.workers = workers
        self.loop = asyncio.get_running_loop()
        self.closed = False
        sock.setblocking(False)
        self.loop.add_reader(sock.fileno(), self._accept)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.loop.remove_reader(self.sock.fileno())
            self.sock.close()

    def _accept(self) -> None:
        for _ in range(accept_batch(waiting(self.sock), self.workers)):
            try:
                conn, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                return
            except OSError as exc:
                if exc.errno not in _OUT_OF:
                    raise
                # Out of descriptors: stop for a moment (the queued connections wait) instead of
                # spinning on a socket that stays readable; asyncio does the same.
                log.error("cannot accept connections (%s); trying again in %gs", exc.strerror,
                          _RETRY_AFTER)
                self.loop.remove_reader(self.sock.fileno())
                self.loop.call_later(_RETRY_AFTER, self._resume)
                return
            conn.setblocking(False)
            self.loop.create_task(self._start(conn))

    def _resume(self) -> None:
        if not self.closed:
            self.loop.add_reader(self.sock.fileno(), self._accept)

    async def _start(self, conn: socket.socket) -> None:
        try:
            await self.loop.connect_accepted_socket(self.factory, conn, ssl=self.ssl_context)
        except (OSError, ssl.SSLError, asyncio.TimeoutError) as exc:
            # a client that left, or a failed TLS handshake: nothing to serve
            log.debug("connection not started: %s", exc)
            conn.close()
