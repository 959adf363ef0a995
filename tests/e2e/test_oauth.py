"""OAuth2 through the gateway with the official client: the 401 challenge points at the
gateway, the browser steps reach the backend that issued the challenge (by auth id, then by
the signed routing cookie on the callback), and the token works on every backend."""
from __future__ import annotations

import requests
import trino
from trino.auth import OAuth2Authentication

from tests.conftest import gateway_config, spawn_cluster


class Browser:
    """Plays the user's browser: opens the redirect URL and follows it to the callback."""

    def __init__(self, gateway_url: str) -> None:
        self.gateway_url = gateway_url
        self.visited: list[str] = []
        self.session = requests.Session()

    def __call__(self, url: str) -> None:
        self.visited.append(url)
        r = self.session.get(url, allow_redirects=False, timeout=10)
        assert r.status_code in (302, 303), r.text
        assert "trino-gateway-oauth" in r.cookies.get_dict(), "routing cookie missing"
        location = r.headers["Location"]
        self.visited.append(location)
        assert location.startswith(self.gateway_url + "/oauth2/callback")
        done = self.session.get(location, allow_redirects=False, timeout=10)
        assert done.status_code == 200, done.text


def test_oauth2_login_through_the_gateway(gateway_factory, tmp_path):
    a = spawn_cluster("oauth-a", 0, "--auth", "oauth2")
    b = spawn_cluster("oauth-b", 0, "--auth", "oauth2")
    try:
        cfg = gateway_config(tmp_path, {"oauth-a": a, "oauth-b": b},
                             groups={"oauth-a": "adhoc", "oauth-b": "adhoc"}, routing={"policy": "round-robin"})
        gw = gateway_factory(cfg)
        browser = Browser(gw.url)
        for _ in range(3):  # each login's challenge comes from whichever backend took the POST
            conn = trino.dbapi.connect(host="127.0.0.1", port=gw.port, user="alice", http_scheme="http",
                                       auth=OAuth2Authentication(redirect_auth_url_handler=browser),
                                       allow_insecure_auth=True)
            cur = conn.cursor()
            cur.execute("SELECT current_cluster()")
            assert cur.fetchall()[0][0] in ("oauth-a", "oauth-b")
        # the browser only ever talked to the gateway, and the login happened (then the token
        # was cached by the client and accepted by both backends)
        assert len(browser.visited) >= 2 and all(u.startswith(gw.url) for u in browser.visited)
        # a callback without the routing cookie is refused clearly, never guessed
        r = requests.get(gw.url + "/oauth2/callback?code=x&state=y", timeout=10)
        assert r.status_code == 400 and "routing cookie" in r.text
    finally:
        a.stop()
        b.stop()
