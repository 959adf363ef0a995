"""Pick one backend inside a routing group (pure: no I/O, no clock).

The caller passes the candidates, already filtered to active HEALTHY backends
(``Registry.available(group)``), and the live states the monitor keeps. Policies
(``routing.policy``):

``least-queued`` (default)
    Order by (this user's queued queries, all queued queries, running queries). The total
    queued count includes the queries this process routed since the last probe
    (``note_routed``), so a burst between two probes spreads out instead of piling onto the
    backend the last probe found emptiest; the user's count is the monitor's alone, so an
    overloaded backend does not win back a user's queries because they went elsewhere. Ties rotate round-robin, so equal backends share
    work evenly and the choice stays deterministic for tests.
``round-robin``
    Each backend of the group in turn.
``random``
    Uniformly at random.
``user-hash``
    Rendezvous (highest-random-weight) hashing of (user, backend name): a user stays on the
    same backend while it is available, and when a backend leaves only its users move.
    The hash is stable across processes and restarts. Requests without a user go random.
"""
from __future__ import annotations

import hashlib
import random
from functools import lru_cache
from typing import Mapping, Sequence

from gateway.backends.state import Backend, BackendState
from gateway.limits import MAX_USER_CHARS

__all__ = ["Balancer", "POLICIES", "rendezvous_weight"]

POLICIES = ("least-queued", "round-robin", "random", "user-hash")

_EMPTY = BackendState()


def rendezvous_weight(user: str, backend_name: str) -> int:
    """A stable 64-bit weight for (user, backend); see ``_weight``. Only user names of normal
    length are cached: a cache keyed by 64 KB header values would hold gigabytes."""
    if len(user) > MAX_USER_CHARS:
        return _weight.__wrapped__(user, backend_name)
    return _weight(user, backend_name)


@lru_cache(maxsize=65536)
def _weight(user: str, backend_name: str) -> int:
    """A stable 64-bit weight for (user, backend); the highest weight wins.

    blake2b rather than ``hash()`` because ``hash()`` of strings differs between processes,
    and every gateway worker and replica must send a user to the same backend. Cached since
    the same few (user, backend) pairs repeat all day.
    """
    digest = hashlib.blake2b(f"{user}\x00{backend_name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


class Balancer:
    """Chooses a backend with one policy; keeps only round-robin positions per group."""

    def __init__(self, policy: str = "least-queued", rng: random.Random | None = None) -> None:
        if policy not in POLICIES:
            raise ValueError(f"unknown routing policy {policy!r}; expected one of {', '.join(POLICIES)}")
        self.policy = policy
        self._rng = rng or random.Random()
        # Round-robin position per routing group (for round-robin and least-queued ties).
        self._turn: dict[str, int] = {}
        self._pick = {
            "least-queued": self._least_queued,
            "round-robin": self._round_robin,
            "random": self._random,
            "user-hash": self._user_hash,
        }[policy]

    def pick(self, candidates: Sequence[Backend], states: Mapping[str, BackendState],
             user: str | None, *, dry_run: bool = False) -> Backend | None:
        """The backend for a new query of ``user``, or None when there is no candidate.

        ``dry_run`` (explain) answers what the next real pick would be and changes nothing:
        neither the round-robin position nor the live random generator."""
        if not candidates:
            return None
        if len(candidates) == 1:
            return candidates[0]
        if dry_run:
            shadow = Balancer(self.policy, random.Random())
            shadow._turn = dict(self._turn)
            return shadow._pick(candidates, states, user)
        return self._pick(candidates, states, user)

    @staticmethod
    def note_routed(backend_name: str, user: str | None, states: Mapping[str, BackendState]) -> None:
        """Count a query routed to ``backend_name``; the monitor resets this on the next probe."""
        st = states.get(backend_name)
        if st is None:
            return
        st.routed_since_probe += 1
        if user:
            st.user_routed_since_probe[user] = st.user_routed_since_probe.get(user, 0) + 1

    # -- policies -------------------------------------------------------------------------

    def _next_turn(self, group: str) -> int:
        turn = self._turn.get(group, 0)
        self._turn[group] = turn + 1
        return turn

    def _least_queued(self, candidates: Sequence[Backend], states: Mapping[str, BackendState],
                      user: str | None) -> Backend:
        best_key: tuple[int, int, int] | None = None
        ties: list[Backend] = []
        for b in candidates:
            st = states.get(b.name) or _EMPTY
            # The user's queue is what the monitor saw queued; queries routed since the probe
            # count towards the backend's total only. Counting them for the user too would
            # send the user's next query to a backend with a long queue (ping-pong).
            mine = st.user_queued.get(user, 0) if user else 0
            key = (mine, st.queued + st.routed_since_probe, st.running)
            if best_key is None or key < best_key:
                best_key = key
                ties = [b]
            elif key == best_key:
                ties.append(b)
        if len(ties) == 1:
            return ties[0]
        return ties[self._next_turn(candidates[0].routingGroup) % len(ties)]

    def _round_robin(self, candidates: Sequence[Backend], states: Mapping[str, BackendState],
                     user: str | None) -> Backend:
        return candidates[self._next_turn(candidates[0].routingGroup) % len(candidates)]

    def _random(self, candidates: Sequence[Backend], states: Mapping[str, BackendState],
                user: str | None) -> Backend:
        return candidates[self._rng.randrange(len(candidates))]

    def _user_hash(self, candidates: Sequence[Backend], states: Mapping[str, BackendState],
                   user: str | None) -> Backend:
        if not user:
            return self._random(candidates, states, user)
        # The name breaks (astronomically rare) equal weights so every process agrees.
        return max(candidates, key=lambda b: (rendezvous_weight(user, b.name), b.name))
