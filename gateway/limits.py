"""Bounds on what one client can make the gateway hold or parse (see docs/security.md).

Small pure helpers the request path, the REST API and the admin pages share:

- ``cap_user``: user names are cut to ``MAX_USER_CHARS`` before they key a limiter, a cache or
  a queue count, so a 20 MB "user name" costs 256 characters of memory, not 20 MB per try;
- ``loads_json``: ``json.loads`` that refuses deeply nested documents with a ``ValueError``
  (the C decoder raises ``RecursionError`` around 1,000 levels, which was a 500);
- ``control_chars``: CR, LF, NUL and the other C0/DEL characters have no place in a URL or a
  name; one in a stored ``proxyTo`` broke the audit log line and every probe.
"""
from __future__ import annotations

import json
import re
from typing import Any, Iterable

__all__ = ["MAX_USER_CHARS", "MAX_JSON_DEPTH", "cap_user", "loads_json", "control_chars", "utf8"]

MAX_USER_CHARS = 256
MAX_JSON_DEPTH = 64
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_BRACKETS = re.compile(r"[\[\]{}]")


def cap_user(user: str | None) -> str | None:
    """The user name as limiters, caches and queue counts key it: at most ``MAX_USER_CHARS``."""
    if user is None or len(user) <= MAX_USER_CHARS:
        return user
    return user[:MAX_USER_CHARS]


def utf8(data: bytes) -> bool:
    """True when ``data`` is valid UTF-8 (a statement that is not cannot be SQL)."""
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def control_chars(text: str) -> bool:
    """True when ``text`` holds a C0 control character or DEL (CR, LF, NUL, TAB ...)."""
    return _CONTROL.search(text) is not None


def _depth(text: str) -> int:
    """Deepest bracket nesting outside strings (a cheap scan; strings are skipped roughly by
    removing their contents first)."""
    if "[" not in text and "{" not in text:
        return 0
    stripped = re.sub(r'"(?:[^"\\]|\\.)*"', '""', text)
    depth = deepest = 0
    for m in _BRACKETS.finditer(stripped):
        if m.group() in "[{":
            depth += 1
            if depth > deepest:
                deepest = depth
        else:
            depth -= 1
    return deepest


def loads_json(data: bytes | str, *, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """``json.loads`` for input from clients: ``ValueError`` for bad JSON, including JSON nested
    deeper than ``max_depth`` (no API document of the gateway nests more than a few levels)."""
    text = data.decode("utf-8") if isinstance(data, (bytes, bytearray)) else data
    if _depth(text) > max_depth:
        raise ValueError(f"JSON nested deeper than {max_depth} levels")
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError(f"JSON nested deeper than {max_depth} levels") from None


# -- memory the allocator keeps --------------------------------------------------------------
#
# glibc serves a freed large block's size from its heap next time (its mmap threshold grows up
# to 32 MB), and heap memory goes back to the system only from the top: 40 refused 20 MB logins
# left 400 MB resident with no Python object alive. A fixed threshold keeps request-body-sized
# blocks in their own mappings (returned when freed), and ``trim_memory`` hands back what the
# heap still holds after a large body was dropped.

_M_MMAP_THRESHOLD = -3
_libc: Any = None


def _glibc() -> Any:
    global _libc
    if _libc is None:
        try:
            import ctypes
            import ctypes.util
            _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            _libc.malloc_trim  # noqa: B018 - glibc only; AttributeError elsewhere
        except (OSError, AttributeError):
            _libc = False
    return _libc


def bound_allocator(threshold: int = 1 << 20) -> bool:
    """Serve blocks of ``threshold`` bytes or more from their own mappings (glibc; no-op elsewhere)."""
    libc = _glibc()
    return bool(libc) and libc.mallopt(_M_MMAP_THRESHOLD, threshold) == 1


def trim_memory() -> None:
    """Give freed heap memory back to the system (glibc; no-op elsewhere)."""
    libc = _glibc()
    if libc:
        libc.malloc_trim(0)


# -- credentials in URLs ---------------------------------------------------------------------

_USERINFO = re.compile(r"//([^:/@\s]+):[^@/\s]*@")


def mask_credentials(text: str) -> str:
    """``http://user:secret@host`` → ``http://user:***@host`` wherever it occurs in ``text``."""
    return _USERINFO.sub(r"//\1:***@", text) if "@" in text else text


# -- the gateway queue -----------------------------------------------------------------------

def queue_refusal(held: Iterable[Any], user: str | None, address: str, group: str,
                  cfg: Any) -> tuple[str, str] | None:
    """Why a new statement of ``user`` from ``address`` may not join ``group``'s gateway queue,
    as (the limit's name, the message for the client), or None when it may.

    Statements are held before any cluster authenticates them, so without these caps 1,001
    anonymous statements filled a group's queue and the next legitimate user got
    ``QUERY_QUEUE_FULL``. Anonymous statements count as one user. ``held`` are the queued
    items (``.user``, ``.remote_ip``); counting them costs one pass over at most ``maxQueued``.
    """
    per_user, per_address = cfg.maxQueuedPerUser, cfg.maxQueuedPerAddress
    mine = from_there = 0
    for h in held:
        mine += h.user == user
        from_there += h.remote_ip == address
    if mine >= per_user:
        who = f"User '{cap_user(user)}'" if user else "Statements without a user"
        return ("maxQueuedPerUser", f"{who} already ha{'s' if user else 've'} {mine} queries waiting in "
                f"the gateway queue of routing group '{group}' (maxQueuedPerUser {per_user}); "
                "try again when some have run")
    if from_there >= per_address:
        return ("maxQueuedPerAddress", f"Client address {address} already has {from_there} queries "
                f"waiting in the gateway queue of routing group '{group}' (maxQueuedPerAddress "
                f"{per_address}); try again when some have run")
    return None


# -- client connections ----------------------------------------------------------------------

def descriptor_limit() -> int | None:
    """This process's limit of open files, raised to the hard limit first (Linux/Unix)."""
    try:
        import resource
    except ImportError:
        return None
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return None if soft == resource.RLIM_INFINITY else int(soft)


def _open_descriptors() -> int | None:
    try:
        import os
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return None


class ConnectionLimits:
    """How many client connections one worker process accepts, in all and per client address,
    keeping ``reserve`` descriptors for everything else (backend connections, the monitor's
    probes, the store and offload processes, rules reloads).

    400 half-open connections from one client under a 300-descriptor limit once made the
    gateway unreachable and its monitor mark the backend UNHEALTHY ("too many open files").
    ``admit`` answers why a new connection is refused (the server sends a 503 and closes it).
    Below half the descriptor limit it only counts; above, it also counts the process's open
    descriptors (at most every 0.2 s), since backend connections use them too.

    Client sockets hold descriptors before and after admission too: ``pending`` ones were
    accepted and have not reached ``admit`` yet (a TLS handshake, a loop turn or two otherwise;
    ``accepted``, then ``admit`` or ``dropped``), ``closing`` ones were refused and are not
    closed yet (``refused_closed``). ``headroom`` says how many more the listening sockets may
    take now (``gateway.runtime.accept`` bounds each wake-up's batch by it): without them
    counted, a wake-up took 64 while earlier ones still waited for admission, and ``accept``
    hit EMFILE. One instance serves all of a worker's listening sockets (HTTP and HTTPS), so
    they share these counts.
    """

    def __init__(self, *, max_connections: int | None, per_address: int, reserve: int,
                 descriptor_limit: int | None, clock: Any = None,
                 open_descriptors: Any = _open_descriptors) -> None:
        import time
        self.max_connections = max_connections or 0
        self.per_address = per_address
        self.reserve = reserve
        self.fd_limit = descriptor_limit
        self.by_address: dict[str, int] = {}
        self.open = 0
        self.pending = 0
        self.closing = 0
        self.refused = 0
        # Called when a socket in flight settles or a connection closes (the acceptors: one
        # that stopped for want of room reads its listening socket again).
        self.on_settled: list[Any] = []
        self._clock = clock or time.monotonic
        self._fds = open_descriptors
        self._others = 0        # descriptors at the last count, less the client sockets in flight
        self._fds_at = -1.0
        self._opened_since = 0

    def in_flight(self) -> int:
        """Client sockets accepted and not admitted yet, or refused and not closed yet: they hold
        descriptors that the count below knows of (not those admitted)."""
        return self.pending + self.closing

    def _in_use(self) -> int | None:
        """The process's descriptors in use, estimated; None below half the limit (not counted
        there: a few thousand client connections and nothing else)."""
        limit = self.fd_limit
        if limit is None or self.open + self.in_flight() + self.reserve < limit // 2:
            return None
        now = self._clock()
        if now - self._fds_at >= 0.2:
            seen = self._fds()
            # the sockets in flight now are counted apart (they settle or close one by one)
            self._others = (seen if seen is not None else self.open + self.reserve + self.in_flight()) \
                - self.in_flight()
            self._fds_at = now
            self._opened_since = 0
        # connections admitted since the count are added; those closed since are not taken
        # off (a wrong count errs on the safe side until the next count)
        return self._others + self._opened_since + self.in_flight()

    def _descriptors_short(self) -> bool:
        # the socket being admitted is in use already (still ``pending``): admitting it leaves
        # the reserve free when in_use + reserve == limit
        in_use = self._in_use()
        return in_use is not None and in_use + self.reserve > self.fd_limit  # type: ignore[operator]

    def headroom(self) -> int | None:
        """How many more client sockets may be accepted now without using the ``reserve``
        (counting those ``pending`` and ``closing``), None when nothing bounds them; 0 or less
        when there is no room. Below half the descriptor limit, the room up to half (where
        counting starts); the process's descriptors are counted no more often than ``admit``
        counts them."""
        room = None
        if self.max_connections:
            room = self.max_connections - self.open - self.pending
        limit = self.fd_limit
        if limit is not None:
            in_use = self._in_use()
            fd_room = limit - self.reserve - in_use if in_use is not None \
                else limit // 2 - self.reserve - self.open - self.in_flight()
            room = fd_room if room is None else min(room, fd_room)
        return room

    def accepted(self) -> None:
        """A client socket was accepted; then ``admit`` (or ``dropped``)."""
        self.pending += 1

    def dropped(self) -> None:
        """An accepted socket closed before its admission (a client that left, a failed TLS
        handshake)."""
        self.pending -= 1
        self._settled()

    def _settled(self) -> None:
        for callback in self.on_settled:
            callback()

    def _refuse(self, why: str) -> str:
        self.pending -= 1
        self.refused += 1
        self.closing += 1
        return why

    def admit(self, address: str) -> str | None:
        """None (and the connection counted as open) or why it is refused (then counted as
        closing until ``refused_closed``). The socket was ``accepted`` before: it leaves
        ``pending`` in the same step, so it is never counted twice (with 10 admissions due in
        one loop turn, counting it twice refused 9 of them)."""
        if self.per_address and self.by_address.get(address, 0) >= self.per_address:
            return self._refuse(f"too many connections from {address} (server.maxConnectionsPerAddress "
                                f"{self.per_address})")
        if self.max_connections and self.open >= self.max_connections:
            return self._refuse(f"too many open connections (server.maxConnections {self.max_connections})")
        if self._descriptors_short():
            return self._refuse(f"too many open connections for the descriptor limit {self.fd_limit} "
                                f"(server.reservedDescriptors {self.reserve} are kept for backends, the "
                                "monitor and the store)")
        self.pending -= 1
        self.open += 1
        self._opened_since += 1
        self.by_address[address] = self.by_address.get(address, 0) + 1
        self._settled()
        return None

    def release(self, address: str) -> None:
        """An admitted connection closed."""
        self.open -= 1
        n = self.by_address.get(address, 0) - 1
        if n > 0:
            self.by_address[address] = n
        else:
            self.by_address.pop(address, None)
        self._settled()

    def refused_closed(self) -> None:
        """A refused connection's socket closed."""
        self.closing -= 1
        self._settled()
