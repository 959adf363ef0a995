"""Cookie sessions, CSRF cookies and the login rate limit (gateway/admin/session.py)."""
from __future__ import annotations

import base64

import pytest

from gateway.admin.session import LoginLimiter, SessionManager, tokens_equal
from gateway.admin.auth import hash_password
from gateway.config import AuthConfig, UserConfig


class Clock:
    def __init__(self, t: float = 1_700_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def make(clock: Clock, ttl: float = 600.0, secret: str | None = "s3cret") -> tuple[AuthConfig, SessionManager]:
    cfg = AuthConfig(users={"ops": UserConfig(hash_password("pw", iterations=1000), ["admin"]),
                            "ann": UserConfig(hash_password("pw2", iterations=1000), ["user"])},
                     sessionSecret=secret, sessionTtl=ttl)
    return cfg, SessionManager(cfg, clock=clock)


def test_issued_session_reads_back_with_roles_from_config():
    clock = Clock()
    cfg, mgr = make(clock)
    value, s = mgr.issue("ops")
    got = mgr.read(value)
    assert got is not None and got.user == "ops" and got.roles == ["admin"] and got.csrf == s.csrf
    cfg.users["ops"].roles = ["user"]        # roles follow the configuration
    assert mgr.read(value).roles == ["user"]


def test_session_expires_after_ttl():
    clock = Clock()
    _, mgr = make(clock, ttl=60)
    value, _ = mgr.issue("ops")
    clock.t += 59
    assert mgr.read(value) is not None
    clock.t += 2
    assert mgr.read(value) is None


@pytest.mark.parametrize("tamper", ["payload", "signature", "name", "garbage", "empty"])
def test_tampered_cookie_is_refused(tamper):
    clock = Clock()
    _, mgr = make(clock)
    value, _ = mgr.issue("ann")
    parts = value.split("|")
    if tamper == "payload":   # make ann an admin-looking "ops" by rewriting the payload
        raw = base64.b64decode(parts[4].split(":", 1)[1]).replace(b'"ann"', b'"ops"')
        enc = base64.b64encode(raw).decode()
        parts[4] = f"{len(enc)}:{enc}"
        value = "|".join(parts)
    elif tamper == "signature":
        value = value[:-1] + ("0" if value[-1] != "0" else "1")
    elif tamper == "name":    # a CSRF cookie is no session cookie
        value = mgr.new_csrf_cookie()[0]
    elif tamper == "garbage":
        value = "not-a-cookie"
    else:
        value = ""
    assert mgr.read(value) is None


def test_other_secret_and_random_secret_refuse():
    clock = Clock()
    _, a = make(clock, secret="one")
    _, b = make(clock, secret="two")
    value, _ = a.issue("ops")
    assert b.read(value) is None
    _, r1 = make(clock, secret=None)
    _, r2 = make(clock, secret=None)
    assert r1.secret_is_random and r1.secret != r2.secret
    assert r2.read(r1.issue("ops")[0]) is None


def test_removed_user_or_changed_password_ends_sessions():
    clock = Clock()
    cfg, mgr = make(clock)
    v_ops, _ = mgr.issue("ops")
    v_ann, _ = mgr.issue("ann")
    cfg.users["ops"] = UserConfig(hash_password("changed", iterations=1000), ["admin"])
    del cfg.users["ann"]
    assert mgr.read(v_ops) is None
    assert mgr.read(v_ann) is None


def test_csrf_cookie_and_flash_round_trip():
    clock = Clock()
    _, mgr = make(clock)
    value, token = mgr.new_csrf_cookie()
    assert mgr.read_csrf_cookie(value) == token
    assert mgr.read_csrf_cookie(value + "x") is None
    assert mgr.read_flash(mgr.flash("Saved <b>", "ok")) == ("ok", "Saved <b>")
    assert mgr.read_flash("forged") is None
    assert tokens_equal("a", "a") and not tokens_equal("a", "b") and not tokens_equal(None, None)
    assert not tokens_equal("", "")


def test_login_limiter_blocks_after_five_failures_per_user_and_address():
    clock = Clock(1000.0)
    lim = LoginLimiter(per_user=5, per_address=20, window=60, clock=clock)
    for i in range(5):
        assert lim.retry_after("ops", "10.0.0.1") == 0
        lim.failed("ops", "10.0.0.1")
        clock.t += 1
    wait = lim.retry_after("ops", "10.0.0.1")
    assert 0 < wait <= 60
    assert lim.retry_after("OPS", "10.0.0.1") == wait        # user names are not case games
    assert lim.retry_after("ops", "10.0.0.2") == 0           # another address is not blocked
    assert lim.retry_after("ann", "10.0.0.1") == 0           # nor another user
    clock.t += wait
    assert lim.retry_after("ops", "10.0.0.1") == 0           # the window slides


def test_login_limiter_per_address_and_success_reset():
    clock = Clock(1000.0)
    lim = LoginLimiter(per_user=5, per_address=8, window=60, clock=clock)
    for i in range(8):
        lim.failed(f"user{i}", "10.0.0.9")
    assert lim.retry_after("someone-new", "10.0.0.9") > 0   # spraying many names from one address
    lim2 = LoginLimiter(per_user=3, window=60, clock=clock)
    lim2.failed("ops", "a")
    lim2.failed("ops", "a")
    lim2.succeeded("ops", "a")
    lim2.failed("ops", "a")
    assert lim2.retry_after("ops", "a") == 0


def test_login_limiter_memory_is_bounded():
    clock = Clock(0.0)
    lim = LoginLimiter(window=60, clock=clock, max_keys=100)
    for i in range(1000):
        lim.failed(f"u{i}", f"ip{i}")
    assert len(lim._fails) <= 100 + 2
