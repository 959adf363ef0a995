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

More policies come from plugins (entry-point group ``trino_gateway.policies``, see
``gateway.plugins`` and docs/extending.md): a factory called with ``rng`` (a
``random.Random``) that returns an object with the ``Policy.pick`` method below.
"""
from __future__ import annotations

import copy
import hashlib
import random
from functools import lru_cache
from typing import Callable, Mapping, Protocol, Sequence

from gateway.backends.state import Backend, BackendState
from gateway.limits import MAX_USER_CHARS
from gateway.plugins import Plugins

__all__ = ["Balancer", "Policy", "POLICIES", "rendezvous_weight"]

_EMPTY = BackendState()


class Policy(Protocol):
    """What a balancing policy does (the built-ins below, or a plugin's)."""

    def pick(self, candidates: Sequence[Backend], states: Mapping[str, BackendState],
             user: str | None) -> Backend:
        """One of ``candidates`` (at least two, all of one routing group, all available) for a
        new query of ``user``. ``states`` are the monitor's live counts by backend name."""
        ...


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


class _Turns:
    """Round-robin positions per routing group (round-robin, and least-queued ties)."""

    def __init__(self) -> None:
        self._turn: dict[str, int] = {}

    def next(self, group: str) -> int:
        turn = self._turn.get(group, 0)
        self._turn[group] = turn + 1
        return turn


class LeastQueued(_Turns):
    def __init__(self, rng: random.Random) -> None:
        super().__init__()

    def pick(self, candidates: Sequence[Backend], states: Mapping[str, BackendState],
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
        return ties[self.next(candidates[0].routingGroup) % len(ties)]


class RoundRobin(_Turns):
    def __init__(self, rng: random.Random) -> None:
        super().__init__()

    def pick(self, candidates: Sequence[Backend], states: Mapping[str, BackendState],
             user: str | None) -> Backend:
        return candidates[self.next(candidates[0].routingGroup) % len(candidates)]


class RandomChoice:
    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def pick(self, candidates: Sequence[Backend], states: Mapping[str, BackendState],
             user: str | None) -> Backend:
        return candidates[self.rng.randrange(len(candidates))]


class UserHash(RandomChoice):
    def pick(self, candidates: Sequence[Backend], states: Mapping[str, BackendState],
             user: str | None) -> Backend:
        if not user:
            return super().pick(candidates, states, user)
        # The name breaks (astronomically rare) equal weights so every process agrees.
        return max(candidates, key=lambda b: (rendezvous_weight(user, b.name), b.name))


# routing.policy -> a factory taking ``rng`` and returning a ``Policy``.
POLICIES: Plugins[Callable[..., Policy]] = Plugins("trino_gateway.policies", "routing policy", {
    "least-queued": LeastQueued,
    "round-robin": RoundRobin,
    "random": RandomChoice,
    "user-hash": UserHash,
})


class Balancer:
    """Chooses a backend with one policy; the policy keeps whatever state it needs."""

    def __init__(self, policy: str = "least-queued", rng: random.Random | None = None) -> None:
        self.policy = policy
        self._policy: Policy = POLICIES.get(policy)(rng=rng or random.Random())

    def pick(self, candidates: Sequence[Backend], states: Mapping[str, BackendState],
             user: str | None, *, dry_run: bool = False) -> Backend | None:
        """The backend for a new query of ``user``, or None when there is no candidate.

        ``dry_run`` (explain) answers what the next real pick would be and changes nothing:
        it asks a copy of the policy (its round-robin positions, its random generator)."""
        if not candidates:
            return None
        if len(candidates) == 1:
            return candidates[0]
        policy = copy.deepcopy(self._policy) if dry_run else self._policy
        return policy.pick(candidates, states, user)

    @staticmethod
    def note_routed(backend_name: str, user: str | None, states: Mapping[str, BackendState]) -> None:
        """Count a query routed to ``backend_name``; the monitor resets this on the next probe."""
        st = states.get(backend_name)
        if st is None:
            return
        st.routed_since_probe += 1
        if user:
            st.user_routed_since_probe[user] = st.user_routed_since_probe.get(user, 0) + 1
