"""Access decisions of gateway/admin/auth.py: roles, SQL visibility, cross-site requests, the
verification cache."""
from __future__ import annotations

import pytest

from gateway.admin.auth import Authenticator, hash_password, is_cross_site, page_access, sql_visible
from gateway.config import AuthConfig, UserConfig


@pytest.mark.parametrize("enabled, roles, loopback, read, write", [
    (False, None, True, True, True),          # no users: loopback may change things
    (False, None, False, True, False),        # no users: everyone else reads only
    (True, None, True, False, False),         # users configured: loopback is no login
    (True, ["admin"], False, True, True),
    (True, ["user"], True, True, False),
    (True, ["api"], False, False, False),     # the api role is for the REST API only
    (True, ["api", "user"], False, True, False),
])
def test_page_access_by_role(enabled, roles, loopback, read, write):
    a = page_access(enabled, roles, loopback)
    assert (a.read, a.write) == (read, write)
    if not (read and write):
        assert a.reason   # a refusal always says why


def test_user_role_sees_only_own_sql_unless_configured():
    assert sql_visible("alice", "alice", ["user"], auth_enabled=True, show_all=False)
    assert not sql_visible("bob", "alice", ["user"], auth_enabled=True, show_all=False)
    assert not sql_visible(None, "alice", ["user"], auth_enabled=True, show_all=False)
    assert sql_visible("bob", "alice", ["user"], auth_enabled=True, show_all=True)
    assert sql_visible("bob", "ops", ["admin"], auth_enabled=True, show_all=False)
    assert sql_visible("bob", None, None, auth_enabled=False, show_all=False)


@pytest.mark.parametrize("headers, cross", [
    ({}, False),                                               # a script
    ({"Origin": "http://gw.example:8080"}, False),
    ({"Origin": "http://evil.example"}, True),
    ({"Origin": "null"}, True),
    ({"Origin": "http://gw.example"}, True),                   # other port
    ({"Sec-Fetch-Site": "same-origin", "Origin": "http://gw.example:8080"}, False),
    ({"Sec-Fetch-Site": "cross-site"}, True),
    ({"Sec-Fetch-Site": "same-site"}, True),
    ({"Sec-Fetch-Site": "none"}, False),                       # typed into the address bar
])
def test_cross_site_detection(headers, cross):
    assert is_cross_site(headers, {"gw.example:8080"}) is cross


def test_cross_site_default_ports():
    assert not is_cross_site({"Origin": "https://gw.example"}, {"gw.example:443"})
    assert not is_cross_site({"Origin": "https://gw.example"}, {"gw.example"})
    assert is_cross_site({"Origin": "https://gw.example"}, {"gw.example:80"})


def test_authenticator_checks_and_remembers_only_successes():
    cfg = AuthConfig(users={"ops": UserConfig(hash_password("right", iterations=2000), ["admin"])})
    auth = Authenticator(cfg)
    assert auth.check("ops", "wrong") is None
    assert auth.check("nobody", "right") is None
    assert auth.check("ops", "right") == ["admin"]
    assert auth.check("ops", "right") == ["admin"]       # from the cache
    assert auth.check("ops", "wrong") is None            # the cache does not leak to other passwords
    # a changed hash (new password in the config) misses the cache
    cfg.users["ops"] = UserConfig(hash_password("new", iterations=2000), ["admin"])
    assert auth.check("ops", "right") is None
    assert auth.check("ops", "new") == ["admin"]
