"""The balancer's policies: which backend of a group takes a new query."""
from __future__ import annotations

import os
import random
import subprocess
import sys
import timeit
from collections import Counter

import pytest

from gateway.backends.state import Backend, BackendState
from gateway.routing.balancer import POLICIES, Balancer, rendezvous_weight

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def group(n: int, name: str = "adhoc") -> list[Backend]:
    return [Backend(f"trino-{i}", f"http://trino-{i}:8080", routingGroup=name) for i in range(1, n + 1)]


def states_for(backends: list[Backend], **per_name: BackendState) -> dict[str, BackendState]:
    return {b.name: per_name.get(b.name.replace("-", "_"), BackendState()) for b in backends}


# -- common ------------------------------------------------------------------------------

@pytest.mark.parametrize("policy", POLICIES.builtin_names())
def test_no_candidates_gives_none(policy: str) -> None:
    assert Balancer(policy).pick([], {}, "alice") is None


@pytest.mark.parametrize("policy", POLICIES.builtin_names())
def test_single_candidate_is_chosen(policy: str) -> None:
    [only] = group(1)
    assert Balancer(policy).pick([only], {}, "alice") is only


@pytest.mark.parametrize("policy", POLICIES.builtin_names())
def test_every_pick_is_a_candidate_even_without_states(policy: str) -> None:
    backends = group(4)
    bal = Balancer(policy, rng=random.Random(7))
    for user in ["alice", "bob", None, ""] * 5:
        assert bal.pick(backends, {}, user) in backends


def test_unknown_policy_is_rejected_with_the_choices() -> None:
    with pytest.raises(ValueError, match="least-busy.*least-queued, round-robin, random, user-hash"):
        Balancer("least-busy")


def test_note_routed_counts_total_and_per_user() -> None:
    st = {"trino-1": BackendState()}
    Balancer.note_routed("trino-1", "alice", st)
    Balancer.note_routed("trino-1", "alice", st)
    Balancer.note_routed("trino-1", None, st)
    Balancer.note_routed("gone", "alice", st)      # a removed backend is ignored
    assert st["trino-1"].routed_since_probe == 3
    assert st["trino-1"].user_routed_since_probe == {"alice": 2}


# -- least-queued --------------------------------------------------------------------------

def test_least_queued_prefers_fewest_queued_of_this_user_first() -> None:
    b1, b2, b3 = backends = group(3)
    st = states_for(backends,
                    trino_1=BackendState(queued=0, running=0, user_queued={"alice": 2}),
                    trino_2=BackendState(queued=9, running=9, user_queued={"alice": 0, "bob": 9}),
                    trino_3=BackendState(queued=1, running=0, user_queued={"alice": 1}))
    assert Balancer("least-queued").pick(backends, st, "alice") is b2
    # bob has 9 queued on trino-2 and none elsewhere: the tie on his queue goes to total queue.
    assert Balancer("least-queued").pick(backends, st, "bob") is b1


def test_least_queued_then_fewest_queued_then_fewest_running() -> None:
    b1, b2, b3 = backends = group(3)
    st = states_for(backends,
                    trino_1=BackendState(queued=3, running=0),
                    trino_2=BackendState(queued=1, running=7),
                    trino_3=BackendState(queued=1, running=5))
    assert Balancer("least-queued").pick(backends, st, "carol") is b3
    st["trino-3"].queued = 2
    assert Balancer("least-queued").pick(backends, st, "carol") is b2


def test_least_queued_without_user_ignores_per_user_counts() -> None:
    b1, b2 = backends = group(2)
    st = states_for(backends,
                    trino_1=BackendState(queued=5, user_queued={"alice": 0}),
                    trino_2=BackendState(queued=0, user_queued={"alice": 5}))
    assert Balancer("least-queued").pick(backends, st, None) is b2
    assert Balancer("least-queued").pick(backends, st, "alice") is b1


def test_least_queued_counts_locally_routed_queries() -> None:
    b1, b2 = backends = group(2)
    st = states_for(backends, trino_1=BackendState(queued=2), trino_2=BackendState(queued=0))
    st["trino-2"].routed_since_probe = 3      # 0 + 3 > 2
    assert Balancer("least-queued").pick(backends, st, "alice") is b1


def test_least_queued_user_routed_queries_do_not_pull_work_to_an_overloaded_backend() -> None:
    b1, b2 = backends = group(2)
    st = states_for(backends, trino_1=BackendState(queued=40), trino_2=BackendState(queued=0))
    bal = Balancer("least-queued")
    assert [b.name for b in (bal.pick(backends, st, "alice") for _ in range(1))] == ["trino-2"]
    picks = burst(bal, backends, st, "alice", 10)
    assert set(picks) == {"trino-2"}  # 0 + 10 routed is still below 40 queued
    # the monitor's per-user queue still decides first
    st["trino-2"].user_queued = {"alice": 1}
    assert bal.pick(backends, st, "alice") is b1


@pytest.mark.parametrize("user", ["alice", None])
def test_least_queued_burst_between_probes_spreads_evenly(user: str | None) -> None:
    backends = group(3)
    st = states_for(backends)
    bal = Balancer("least-queued")
    picks = []
    for _ in range(30):
        b = bal.pick(backends, st, user)
        assert b is not None
        bal.note_routed(b.name, user, st)
        picks.append(b.name)
    assert Counter(picks) == {"trino-1": 10, "trino-2": 10, "trino-3": 10}


def burst(bal: Balancer, backends: list[Backend], st: dict[str, BackendState],
          user: str | None, n: int) -> list[str]:
    picks = []
    for _ in range(n):
        b = bal.pick(backends, st, user)
        assert b is not None
        bal.note_routed(b.name, user, st)
        picks.append(b.name)
    return picks


def test_least_queued_burst_fills_the_emptiest_backend_first() -> None:
    backends = group(3)
    st = states_for(backends, trino_1=BackendState(queued=4), trino_2=BackendState(queued=2),
                    trino_3=BackendState(queued=0))
    picks = burst(Balancer("least-queued"), backends, st, None, 12)
    # The emptiest fills first, then the queues even out: 4+2 = 2+4 = 0+6.
    assert picks[:2] == ["trino-3", "trino-3"]
    assert Counter(picks) == {"trino-1": 2, "trino-2": 4, "trino-3": 6}


def test_least_queued_burst_of_one_user_fills_the_emptiest_backend_first() -> None:
    backends = group(3)
    st = states_for(backends, trino_1=BackendState(queued=4), trino_2=BackendState(queued=2),
                    trino_3=BackendState(queued=0))
    picks = burst(Balancer("least-queued"), backends, st, "alice", 12)
    # queries routed since the probe count towards the backend's queue, not alice's own
    # (which only the monitor reports), so one user's burst fills the emptiest first too
    assert picks[:2] == ["trino-3", "trino-3"]
    assert Counter(picks) == {"trino-1": 2, "trino-2": 4, "trino-3": 6}


def test_least_queued_ties_rotate_even_without_note_routed() -> None:
    backends = group(3)
    st = states_for(backends)
    bal = Balancer("least-queued")
    picks = [bal.pick(backends, st, "alice").name for _ in range(6)]
    assert Counter(picks) == {"trino-1": 2, "trino-2": 2, "trino-3": 2}


# -- round-robin and random ------------------------------------------------------------------

def test_round_robin_takes_each_backend_in_turn() -> None:
    backends = group(3)
    bal = Balancer("round-robin")
    picks = [bal.pick(backends, {}, "alice").name for _ in range(7)]
    assert picks == ["trino-1", "trino-2", "trino-3", "trino-1", "trino-2", "trino-3", "trino-1"]


def test_round_robin_keeps_a_turn_per_group() -> None:
    adhoc, etl = group(2, "adhoc"), group(3, "etl")
    bal = Balancer("round-robin")
    assert bal.pick(adhoc, {}, None) is adhoc[0]
    assert bal.pick(etl, {}, None) is etl[0]
    assert bal.pick(adhoc, {}, None) is adhoc[1]
    assert bal.pick(etl, {}, None) is etl[1]


def test_round_robin_ignores_load() -> None:
    b1, b2 = backends = group(2)
    st = states_for(backends, trino_1=BackendState(queued=100), trino_2=BackendState())
    bal = Balancer("round-robin")
    assert [bal.pick(backends, st, None) for _ in range(2)] == [b1, b2]


def test_random_uses_every_backend_roughly_evenly() -> None:
    backends = group(3)
    bal = Balancer("random", rng=random.Random(42))
    counts = Counter(bal.pick(backends, {}, "alice").name for _ in range(3000))
    assert set(counts) == {"trino-1", "trino-2", "trino-3"}
    assert all(800 < n < 1200 for n in counts.values()), counts


# -- user-hash ---------------------------------------------------------------------------------

USERS = [f"user{i}" for i in range(300)]


def test_user_hash_keeps_a_user_on_one_backend() -> None:
    backends = group(4)
    bal = Balancer("user-hash")
    for user in USERS[:50]:
        first = bal.pick(backends, {}, user)
        assert all(bal.pick(backends, {}, user) is first for _ in range(5))


def test_user_hash_is_stable_across_balancers_and_candidate_order() -> None:
    backends = group(5)
    a, b = Balancer("user-hash"), Balancer("user-hash")
    for user in USERS[:100]:
        assert a.pick(backends, {}, user).name == b.pick(list(reversed(backends)), {}, user).name


def test_user_hash_spreads_users_over_the_group() -> None:
    backends = group(3)
    counts = Counter(Balancer("user-hash").pick(backends, {}, u).name for u in USERS)
    assert set(counts) == {"trino-1", "trino-2", "trino-3"}
    assert all(60 < n < 140 for n in counts.values()), counts


def test_user_hash_moves_only_the_users_of_a_backend_that_leaves() -> None:
    backends = group(4)
    bal = Balancer("user-hash")
    before = {u: bal.pick(backends, {}, u).name for u in USERS}
    remaining = [b for b in backends if b.name != "trino-2"]
    after = {u: bal.pick(remaining, {}, u).name for u in USERS}
    moved = {u for u in USERS if before[u] != after[u]}
    assert moved == {u for u in USERS if before[u] == "trino-2"}
    assert moved, "some users lived on trino-2"
    # ...and they spread over the rest instead of piling onto one backend.
    assert len({after[u] for u in moved}) == 3
    # When it comes back, exactly those users return.
    assert {u: bal.pick(backends, {}, u).name for u in USERS} == before


def test_user_hash_without_user_is_random() -> None:
    backends = group(3)
    bal = Balancer("user-hash", rng=random.Random(1))
    seen = {bal.pick(backends, {}, None).name for _ in range(60)} | \
           {bal.pick(backends, {}, "").name for _ in range(60)}
    assert seen == {"trino-1", "trino-2", "trino-3"}


def test_user_hash_choice_does_not_depend_on_the_process_hash_seed() -> None:
    # Every worker process and replica must send a user to the same backend.
    code = ("from gateway.backends.state import Backend;from gateway.routing.balancer import Balancer;"
            "bs=[Backend(f't{i}', f'http://t{i}:1') for i in range(5)];"
            "print([Balancer('user-hash').pick(bs, {}, f'u{i}').name for i in range(40)])")
    outs = set()
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        out = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT,
                             capture_output=True, text=True, check=True).stdout
        outs.add(out)
    assert len(outs) == 1
    here = [Balancer("user-hash").pick(group_named(5), {}, f"u{i}").name for i in range(40)]
    assert outs == {f"{here}\n"}


def group_named(n: int) -> list[Backend]:
    return [Backend(f"t{i}", f"http://t{i}:1") for i in range(n)]


def test_rendezvous_weight_differs_per_backend_and_user() -> None:
    ws = {rendezvous_weight(u, b) for u in ("alice", "bob") for b in ("trino-1", "trino-2")}
    assert len(ws) == 4


# -- speed -------------------------------------------------------------------------------------

@pytest.mark.parametrize("policy", POLICIES.builtin_names())
def test_pick_takes_a_few_microseconds_for_ten_backends(policy: str) -> None:
    backends = group(10)
    st = {b.name: BackendState(queued=i % 3, running=i, user_queued={"alice": i % 2})
          for i, b in enumerate(backends)}
    bal = Balancer(policy)
    n = 20000
    per_pick = min(timeit.repeat(lambda: bal.pick(backends, st, "alice"), number=n, repeat=3)) / n
    assert per_pick < 20e-6, f"{policy}: {per_pick * 1e6:.1f} µs per pick"


def test_a_dry_run_answers_the_next_pick_and_changes_nothing():
    """Finding 6 of issue 14: explain went through the live balancer and moved round-robin on."""
    cands = [Backend(n, f"http://{n}:1", None, "g", True) for n in ("a", "b", "c")]
    bal = Balancer("round-robin")
    assert bal.pick(cands, {}, "u").name == "a"
    for _ in range(5):
        assert bal.pick(cands, {}, "u", dry_run=True).name == "b"   # always the next one
    assert bal.pick(cands, {}, "u").name == "b"                     # the live position did not move
    assert bal.pick(cands, {}, "u").name == "c"
