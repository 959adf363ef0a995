"""TLS: HTTPS for clients (alone or beside HTTP), HTTPS to backends with a CA file or without
verification, and X-Forwarded-Proto from a load balancer that terminates TLS."""
from __future__ import annotations

import logging
import re
import ssl
import subprocess
import sys

import pytest
import requests
import trino
import yaml

from gateway.config import ConfigError, ServerConfig, config_from_dict
from gateway.runtime.serve import backend_ssl_context
from tests.conftest import gateway_config, wait_for
from tests.ops.support import TlsRelay, free_port, make_cert


@pytest.fixture
def cert(tmp_path):
    return make_cert(tmp_path)


def _https_ready(base: str, ca: str, names: list[str]) -> None:
    wait_for(lambda: requests.get(base + "/trino-gateway/readyz", verify=ca, timeout=5).status_code == 200,
             timeout=20, message="readyz over https")
    wait_for(lambda: all(requests.get(f"{base}/api/public/backends/{n}/state", verify=ca, timeout=5)
                         .json()["health"] == "HEALTHY" for n in names), timeout=20, message="backends HEALTHY")


def _post(base: str, sql: str, **kw) -> dict:
    """POST a statement, poll it to the end (so the gateway has nothing to drain); the first answer."""
    first = doc = requests.post(base + "/v1/statement", data=sql.encode(), headers={"X-Trino-User": "alice"},
                                timeout=10, **kw).json()
    while "nextUri" in doc:
        doc = requests.get(doc["nextUri"], headers={"X-Trino-User": "alice"}, timeout=10, **kw).json()
    return first


def test_https_only_with_the_trino_client(fresh_clusters, gateway_factory, tmp_path, cert):
    crt, key = cert
    gw = gateway_factory(gateway_config(tmp_path, fresh_clusters, groups={"adhoc-1": "adhoc"},
                                        server={"tls": {"certFile": str(crt), "keyFile": str(key)}}),
                         wait_ready=False)
    base = f"https://localhost:{gw.port}"
    _https_ready(base, str(crt), ["adhoc-1"])
    assert re.search(r"listening on 127.0.0.1:\d+ \(https\)", gw.log())
    session = requests.Session()
    session.verify = str(crt)
    session.trust_env = False   # else REQUESTS_CA_BUNDLE in the environment overrides verify
    conn = trino.dbapi.connect(host="localhost", port=gw.port, user="alice", http_scheme="https",
                               http_session=session)
    cur = conn.cursor()
    cur.execute("SELECT current_cluster()")
    assert cur.fetchall() == [["adhoc-1"]]
    doc = _post(base, "SELECT 1", verify=str(crt))
    assert doc["nextUri"].startswith(base + "/"), doc["nextUri"]
    assert doc["infoUri"].startswith(base + "/")
    with pytest.raises(requests.ConnectionError):   # no plain HTTP on the HTTPS port
        requests.get(f"http://127.0.0.1:{gw.port}/trino-gateway/livez", timeout=5)


def test_https_beside_plain_http(fresh_clusters, gateway_factory, tmp_path, cert):
    crt, key = cert
    tls_port = free_port()
    gw = gateway_factory(gateway_config(tmp_path, fresh_clusters, groups={"adhoc-1": "adhoc"},
                                        server={"tls": {"certFile": str(crt), "keyFile": str(key),
                                                        "port": tls_port}}))
    assert _post(gw.url, "SELECT 1")["nextUri"].startswith(gw.url + "/")
    secure = f"https://localhost:{tls_port}"
    assert _post(secure, "SELECT 1", verify=str(crt))["nextUri"].startswith(secure + "/")
    with pytest.raises(requests.exceptions.SSLError):   # the client checks the certificate
        requests.get(secure + "/trino-gateway/livez", timeout=5)


def test_a_bad_certificate_is_a_clear_start_error(tmp_path):
    bad = tmp_path / "bad.pem"
    bad.write_text("not a certificate\n")
    (tmp_path / "rules").mkdir()     # the configured rules folder exists: only the certificate is bad
    config = tmp_path / "gw.yaml"
    config.write_text(yaml.safe_dump(gateway_config(tmp_path, None, server={
        "tls": {"certFile": str(bad), "keyFile": str(bad)}})))
    proc = subprocess.run([sys.executable, "-m", "gateway.cli", "serve", "--config", str(config)],
                          capture_output=True, text=True, timeout=30, cwd=tmp_path)
    assert proc.returncode == 1
    assert "cannot load the TLS certificate or key" in proc.stderr


# -- HTTPS to backends ---------------------------------------------------------------------------

@pytest.fixture
def https_backend(fresh_clusters, cert):
    crt, key = cert
    relay = TlsRelay(fresh_clusters["adhoc-1"].port, crt, key)
    yield relay
    relay.close()


def _backend_cfg(tmp_path, relay, **server):
    cfg = gateway_config(tmp_path, None, server=server)
    cfg["backends"] = [{"name": "secure-1", "proxyTo": relay.url, "routingGroup": "adhoc"}]
    return cfg


def test_https_backend_trusted_through_a_ca_file(gateway_factory, tmp_path, https_backend, cert):
    gw = gateway_factory(_backend_cfg(tmp_path, https_backend, backendCaFile=str(cert[0])))
    cur = gw.connect().cursor()
    cur.execute("SELECT current_cluster()")
    assert cur.fetchall() == [["adhoc-1"]]
    assert "backendVerify is false" not in gw.log()


def test_https_backend_with_an_unknown_ca_is_unhealthy(gateway_factory, tmp_path, https_backend):
    gw = gateway_factory(_backend_cfg(tmp_path, https_backend), wait_ready=False)
    state = wait_for(lambda: (s := gw.api("GET", "/api/public/backends/secure-1/state").json())["health"]
                     == "UNHEALTHY" and s, timeout=20, message="the backend UNHEALTHY")
    assert "certificate" in (state["error"] or "").lower(), state
    doc = _post(gw.url, "SELECT 1")
    assert doc["error"]["errorName"] == "NO_NODES_AVAILABLE"


def test_https_backend_without_verification_warns(gateway_factory, tmp_path, https_backend):
    gw = gateway_factory(_backend_cfg(tmp_path, https_backend, backendVerify=False))
    cur = gw.connect().cursor()
    cur.execute("SELECT current_cluster()")
    assert cur.fetchall() == [["adhoc-1"]]
    assert re.search(r"WARNING gateway.server: server.backendVerify is false", gw.log())


def test_backend_tls_settings_unit(tmp_path, cert, caplog):
    assert backend_ssl_context(ServerConfig()) is None          # the system defaults
    ctx = backend_ssl_context(ServerConfig(backendCaFile=str(cert[0])))
    assert ctx is not None and ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    with caplog.at_level(logging.WARNING, logger="gateway.server"):
        off = backend_ssl_context(ServerConfig(backendVerify=False))
    assert off is not None and off.verify_mode == ssl.CERT_NONE
    assert "backendVerify is false" in caplog.text
    with pytest.raises(ConfigError, match="server.backendCaFile: .* is not a readable file"):
        config_from_dict({"server": {"backendCaFile": str(tmp_path / "nope.pem")}}, "gw.yaml")
    with pytest.raises(ConfigError, match="server.backendVerify: expected true or false"):
        config_from_dict({"server": {"backendVerify": "no"}}, "gw.yaml")


# -- a load balancer in front terminates TLS -----------------------------------------------------

def test_forwarded_proto_and_host_are_honoured_only_when_trusted(fresh_clusters, gateway_factory, tmp_path):
    headers = {"X-Trino-User": "alice", "X-Forwarded-Proto": "https", "X-Forwarded-Host": "trino.example.com"}
    trusted = gateway_factory(gateway_config(tmp_path, fresh_clusters, groups={"adhoc-1": "adhoc"},
                                             server={"trustForwardedHeaders": True}))
    doc = requests.post(trusted.url + "/v1/statement", data=b"SELECT 1", headers=headers, timeout=10).json()
    assert doc["nextUri"].startswith("https://trino.example.com/"), doc["nextUri"]
    assert doc["infoUri"].startswith("https://trino.example.com/")
    # the follow-up, as the load balancer would forward it, keeps the scheme
    path = doc["nextUri"].split("trino.example.com", 1)[1]
    while path:
        nxt = requests.get(trusted.url + path, headers=headers, timeout=10).json()
        uri = nxt.get("nextUri")
        assert uri is None or uri.startswith("https://trino.example.com/"), uri
        path = uri.split("trino.example.com", 1)[1] if uri else None
    assert nxt["stats"]["state"] == "FINISHED"

    untrusted = gateway_factory(gateway_config(tmp_path, fresh_clusters, groups={"adhoc-1": "adhoc"}))
    doc = requests.post(untrusted.url + "/v1/statement", data=b"SELECT 1", headers=headers, timeout=10).json()
    assert doc["nextUri"].startswith(untrusted.url + "/"), doc["nextUri"]
    while "nextUri" in doc:
        doc = requests.get(doc["nextUri"], headers=headers, timeout=10).json()
