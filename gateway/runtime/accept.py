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
(one at a time when they trickle in: bursts still spread) and at most ``MAX_BATCH``. The cap
keeps the kernel's queue as back-pressure for a worker that is behind, so an iteration's new
work stays small next to the answers it relays. Without it (128 per wake-up) a worker took
6,862 connections of a 10,000-query ramp in a few seconds and could not read their request
heads within ``server.headerTimeout`` (10 s): all were closed. 16 per wake-up (1,600 new
connections per second per worker at 10 ms per iteration) still left the kernel's queue long
under load: one worker at 5,000 queries in flight (``benchmarks/inflight.py``) had an accept
queue p90 of 563 and dropped 175 SYNs; with 64, p90 19 and none dropped. So 64 (6,400 per
second at 10 ms per iteration), half of the 128 that lost the 10,000-query ramp; that ramp
has not been measured with 64 (docs/benchmarks.md says what has).

The batch is also bounded by the descriptors left (``ConnectionLimits.headroom``). An accepted
socket holds a descriptor for a few loop turns (a TLS handshake: seconds) before admission
counts it or refuses it with a 503, so without the bound each wake-up took another 64 while
earlier ones waited, and under a 300-descriptor limit ``accept`` itself failed with EMFILE
(``tests/security/test_sec_connections.py``). Accepted sockets are ``pending`` in the limits
until their admission ran or they closed, refused ones ``closing`` until closed, and each
wake-up takes at most the room left before ``server.reservedDescriptors`` (and
``server.maxConnections``). With no room left, a wake-up still takes one, when no other
accepted socket is in flight: the client gets admission's 503 naming the limit at once, as
before the bound, rather than waiting unanswered in the kernel's queue (and having its SYNs
dropped when that is full). That one socket is the most the batch takes beyond the reserve,
so with a reserve of at least 1 the batch cannot run the process out of descriptors
(``test_accepted_sockets_stay_within_the_descriptors_left``: 50 at once with room for 10 are
never more than 11 held). While a socket is in flight and there is no room, the acceptor
stops reading the listening socket (it stays readable) until one settles, or 0.2 s later
(connections released elsewhere make room too).
"""
from __future__ import annotations

import asyncio
import errno
import logging
import socket
import ssl
import struct
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from gateway.limits import ConnectionLimits

__all__ = ["Acceptor", "accept_batch", "waiting", "MAX_BATCH"]

log = logging.getLogger("gateway.server")

MAX_BATCH = 64               # connections one wake-up accepts at most (see above)
_RETRY_AFTER = 1.0           # seconds without accepting after running out of descriptors
_RECHECK = 0.2               # seconds without accepting when there is no room (see above)
_OUT_OF = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)
# struct tcp_info: 8 one-byte fields, then rto, ato, snd_mss, rcv_mss, unacked, sacked (u32).
# For a listening socket tcpi_unacked is the accept queue's length (what ``ss`` shows as Recv-Q).
_UNACKED = struct.Struct("=I")
_UNACKED_AT = 24
_TCP_INFO = getattr(socket, "TCP_INFO", None)


def accept_batch(waiting: int, workers: int, headroom: int | None = None, in_flight: int = 0) -> int:
    """How many connections one wake-up accepts: this worker's share of the ``waiting`` ones.
    With several workers, half a share: the workers are not woken at once, and the second
    to wake finds what the first left, so smaller bites split a burst more evenly. wrk's 32
    connections over two workers, a few tries each: 16/16 to 18/14 like this; 25/7, 16/16,
    16/16 with one accept per wake-up; 25/7, 24/8, 5/27 with a whole share per wake-up.

    At most ``headroom`` (None: unbounded); with none left, 1 when no accepted socket is
    ``in_flight`` (not yet admitted, or refused and not yet closed), else 0 (see above)."""
    waiting = max(0, waiting)
    share = waiting if workers <= 1 else -(-waiting // (2 * workers))
    batch = max(1, min(MAX_BATCH, share))
    if headroom is None or batch <= headroom:
        return batch
    return headroom if headroom > 0 else 0 if in_flight else 1


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
    ``loop.create_server(sock=...)`` would, with the batch above). ``limits`` (optional) bound
    the batch and learn of each accepted socket until its admission ran (``accepted``,
    ``admit`` or ``dropped``, ``headroom``)."""

    def __init__(self, sock: socket.socket, protocol_factory: Callable[[], asyncio.Protocol], *,
                 ssl_context: ssl.SSLContext | None, workers: int,
                 limits: ConnectionLimits | None = None) -> None:
        self.sock = sock
        self.factory = protocol_factory
        self.ssl_context = ssl_context
        self.workers = workers
        self.limits = limits
        if limits is not None:
            limits.on_settled.append(self._settled)
        self.loop = asyncio.get_running_loop()
        self.closed = False
        self.reading = True
        self.no_room = False          # paused for want of room (not for EMFILE)
        self._timer: asyncio.TimerHandle | None = None
        # The selector loop's transport factory (a private asyncio method, stable since 3.4);
        # uvloop and TLS go through connect_accepted_socket instead.
        self._plain = (getattr(self.loop, "_make_socket_transport", None)
                       if ssl_context is None else None)
        sock.setblocking(False)
        self.loop.add_reader(sock.fileno(), self._accept)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            if self.limits is not None and self._settled in self.limits.on_settled:
                self.limits.on_settled.remove(self._settled)
            if self._timer is not None:
                self._timer.cancel()
            if self.reading:
                self.loop.remove_reader(self.sock.fileno())
            self.sock.close()

    def _batch(self) -> int:
        lim = self.limits
        if lim is None:
            return accept_batch(waiting(self.sock), self.workers)
        return accept_batch(waiting(self.sock), self.workers, lim.headroom(), lim.in_flight())

    def _accept(self) -> None:
        batch = self._batch()
        if batch == 0:
            self._pause(_RECHECK, no_room=True)
            return
        for _ in range(batch):
            try:
                conn, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                return
            except OSError as exc:
                if exc.errno not in _OUT_OF:
                    raise
                # Out of descriptors (used by something else than the batch): stop for a moment
                # (the queued connections wait) instead of spinning on a socket that stays
                # readable; asyncio does the same.
                log.error("cannot accept connections (%s); trying again in %gs", exc.strerror,
                          _RETRY_AFTER)
                self._pause(_RETRY_AFTER, no_room=False)
                return
            conn.setblocking(False)
            if self.limits is not None:
                self.limits.accepted()
            if self._plain is not None:
                self._start_plain(conn)
            else:
                self.loop.create_task(self._start(conn))

    def _pause(self, seconds: float, *, no_room: bool) -> None:
        if self.reading:
            self.reading = False
            self.loop.remove_reader(self.sock.fileno())
        self.no_room = no_room
        if self._timer is None:
            self._timer = self.loop.call_later(seconds, self._resume)

    def _resume(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.no_room = False
        if not self.closed and not self.reading:
            self.reading = True
            self.loop.add_reader(self.sock.fileno(), self._accept)

    def _start_plain(self, conn: socket.socket) -> None:
        """A plain (non-TLS) connection's transport, made here rather than in a task awaiting
        ``connect_accepted_socket``: that task, its coroutine and its waiter cost each new
        connection two more loop turns before its request could be read, each as long as a
        turn that relays hundreds of answers on a loaded worker (issue 19: ``select 1`` p99
        during a ramp of new queries). The transport schedules ``connection_made`` (where the
        server admits or refuses it) and its reader for the next turn, as it does there."""
        self._plain(conn, self.factory())   # type: ignore[misc]

    def _settled(self) -> None:
        """``limits.on_settled``: a socket in flight settled or a connection closed."""
        if self.no_room:
            self._resume()   # the room may have changed

    async def _start(self, conn: socket.socket) -> None:
        try:
            # Returns once the protocol's connection_made ran (after the TLS handshake), where
            # the server admits or refuses the connection (it leaves ``pending`` then); it
            # raises when connection_made did not run.
            await self.loop.connect_accepted_socket(self.factory, conn, ssl=self.ssl_context)
        except (OSError, ssl.SSLError, asyncio.TimeoutError) as exc:
            # a client that left, or a failed TLS handshake: nothing to serve
            log.debug("connection not started: %s", exc)
            conn.close()
            if self.limits is not None:
                self.limits.dropped()
