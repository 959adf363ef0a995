"""Findings 1 and 8 of the hardening review: the login rate limiter is bounded (a 20 MB user name
is not kept, expired entries are pruned), and an unknown user costs the same hashing work as a
known one (no user enumeration by timing)."""
from __future__ import annotations

import hashlib
import time

import pytest

from gateway.admin import auth as A
from gateway.admin.session import LoginLimiter
from gateway.config import AuthConfig, UserConfig
MAX_USER_CHARS = 256   # gateway.limits.MAX_USER_CHARS
from tests.conftest import gateway_config, wait_for
from tests.reliability.helpers import rss_mb, sizes
from tests.security.support import csrf_session


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_the_login_limiter_keeps_capped_names_and_prunes_expired_ones():
    clock = Clock(0.0)
    lim = LoginLimiter(window=60, clock=clock)
    huge = "x" * (20 << 20)
    for i in range(40):
        lim.failed(f"{i}{huge}", "10.0.0.1")
    assert all(len(user) <= MAX_USER_CHARS for user, _ in lim._fails)
    assert sum(len(user) for user, _ in lim._fails) <= 41 * MAX_USER_CHARS
    # counting still works on the capped names
    assert lim.retry_after("0" + huge, "10.0.0.1") > 0   # the address is over its limit
    clock.t += 61
    lim.failed("someone", "10.0.0.2")                   # a later failure prunes what expired
    assert len(lim) == 2, list(lim._fails)[:3]


def test_each_key_keeps_only_its_limit_of_timestamps():
    lim = LoginLimiter(per_user=5, per_address=20, window=3600, clock=Clock(0.0))
    for _ in range(10_000):
        lim.failed("ops", "10.0.0.1")
    assert max(len(q) for q in lim._fails.values()) <= 20


def test_an_unknown_user_costs_the_same_hashing_as_a_known_one(monkeypatch):
    real = hashlib.pbkdf2_hmac
    rounds: list[int] = []

    def counting(name, password, salt, iterations, *a):
        rounds.append(iterations)
        return real(name, password, salt, 1)   # cheap: only the requested cost matters here
    stored = A.hash_password("right", iterations=123_456)
    monkeypatch.setattr(A.hashlib, "pbkdf2_hmac", counting)
    auth = A.Authenticator(AuthConfig(users={"ops": UserConfig(stored, ["admin"])}))
    assert auth.check("ops", "wrong") is None
    assert auth.check("nobody", "wrong") is None
    assert rounds == [123_456, 123_456]


@pytest.mark.parametrize("logins", sizes(6, 40))
def test_logins_with_20_mb_user_names_leave_no_memory_behind(logins, fresh_clusters, gateway_factory, tmp_path):
    """Before: 40 such logins took the process from 76 MB to ~2 GB, still held a minute later."""
    cfg = gateway_config(tmp_path, fresh_clusters)
    cfg["auth"] = {"users": {"ops": {"password": A.hash_password("pw", iterations=1000), "roles": ["admin"]}}}
    gw = gateway_factory(cfg)
    s, csrf = csrf_session(gw.url)
    s.post(gw.url + "/trino-gateway/login", data={"_csrf": csrf, "user": "warm-up", "password": "x"}, timeout=30)
    before = rss_mb(gw.proc.pid)
    t0 = time.monotonic()
    for i in range(logins):
        r = s.post(gw.url + "/trino-gateway/login", timeout=60,
                   data={"_csrf": csrf, "user": f"{i}" + "u" * (20 << 20), "password": "x"})
        assert r.status_code in (401, 429), r.status_code
    # freed memory goes back to the system within a sweep of the server (a second)
    wait_for(lambda: rss_mb(gw.proc.pid) - before <= 20, timeout=5, message="RSS back near the start")
    after = rss_mb(gw.proc.pid)
    print(f"MEMORY {logins} logins with 20 MB names in {time.monotonic() - t0:.1f}s: RSS {before:.1f} -> {after:.1f} MB")
    assert after - before <= 20, f"RSS grew {after - before:.0f} MB"


def test_the_balancer_cache_never_keeps_huge_user_names():
    """Bounded caches keyed by client input: ``user-hash`` caches weights per (user, backend)."""
    from gateway.routing import balancer
    balancer._weight.cache_clear()
    w1 = balancer.rendezvous_weight("u" * 60_000, "b1")
    assert balancer._weight.cache_info().currsize == 0
    assert w1 == balancer.rendezvous_weight("u" * 60_000, "b1")   # same weight, computed again
    balancer.rendezvous_weight("ann", "b1")
    assert balancer._weight.cache_info().currsize == 1
