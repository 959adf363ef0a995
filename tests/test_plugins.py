"""Plugins through real entry points: a policy, a monitor type and a store kind that an installed
distribution adds without editing the gateway (gateway/plugins.py, docs/extending.md).

A "distribution" here is what ``pip install`` leaves in site-packages: the module, and a
``*.dist-info`` folder with ``METADATA`` and ``entry_points.txt``. Putting that folder on the
path is all ``importlib.metadata`` needs to find the entry points, in this process or in a
gateway process started with it on ``PYTHONPATH``.
"""
from __future__ import annotations

import asyncio
import os
import textwrap
import uuid
from pathlib import Path

import pytest

from gateway import config as C
from gateway.backends.monitor import Monitor
from gateway.backends.state import Backend, Health, Registry
from gateway.routing.balancer import POLICIES, Balancer
from gateway.store import STORE_KINDS, StoreError, open_store
from tests.conftest import cluster_of, gateway_config, wait_for

PLUGIN_CODE = '''
from gateway.backends.probes import ProbeResult, parse_info
from gateway.backends.state import Health


class LastByName:
    """A policy: always the candidate with the greatest name."""

    def __init__(self, rng):
        self.rng = rng

    def pick(self, candidates, states, user):
        return max(candidates, key=lambda b: b.name)


class AlwaysHealthy:
    """A monitor type without counts that never makes a request."""

    def __init__(self, config):
        self.config = config

    async def probe(self, backend, fetch):
        return ProbeResult(Health.HEALTHY)


class InfoExceptEtl:
    """A monitor type: /v1/info like info-api, but backends of group etl are never healthy."""

    def __init__(self, config):
        self.config = config

    async def probe(self, backend, fetch):
        if backend.routingGroup == "etl":
            return ProbeResult(Health.UNHEALTHY, "plugin says no")
        response = await fetch(backend.proxyTo + "/v1/info")
        return parse_info(response.code, response.body or b"")


def file_store(url, *, pool_size, timeout):
    """A store kind: ``plainfile:///path`` is a SQLite file."""
    from gateway.store.sqlite import SqliteStore
    return SqliteStore("sqlite:///" + url.split(":///", 1)[1], timeout=timeout)


def not_a_store(url, *, pool_size, timeout):
    return object()


NOT_CALLABLE = 42
'''


def make_distribution(site: Path, entry_points: str, code: str = PLUGIN_CODE) -> str:
    """Install a plugin distribution into ``site`` as pip would; return its module name."""
    module = f"gw_plugin_{uuid.uuid4().hex[:8]}"      # fresh per test: no sys.modules reuse
    (site / module).mkdir(parents=True)
    (site / module / "__init__.py").write_text(code)
    info = site / f"{module}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(textwrap.dedent(entry_points).format(m=module))
    return module


ENTRY_POINTS = """\
    [trino_gateway.policies]
    last-by-name = {m}:LastByName
    numbers = {m}:NOT_CALLABLE
    missing = {m}_nowhere:Policy

    [trino_gateway.monitor_types]
    info-except-etl = {m}:InfoExceptEtl
    always-healthy = {m}:AlwaysHealthy

    [trino_gateway.store_kinds]
    plainfile = {m}:file_store
    notastore = {m}:not_a_store
"""


@pytest.fixture
def plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    site = tmp_path / "site"
    module = make_distribution(site, ENTRY_POINTS)
    monkeypatch.syspath_prepend(str(site))
    return module


def _config(tmp_path: Path, text: str) -> C.Config:
    path = tmp_path / "gw.yaml"
    path.write_text(textwrap.dedent(text))
    return C.load_config(str(path))


def test_without_the_distribution_the_names_are_unknown(tmp_path: Path) -> None:
    assert "last-by-name" not in POLICIES
    with pytest.raises(C.ConfigError) as err:
        _config(tmp_path, "routing:\n  policy: last-by-name\n")
    assert "gw.yaml:2: routing.policy: 'last-by-name' is not one of least-queued" in str(err.value)
    assert "no plugins installed in entry-point group trino_gateway.policies" in str(err.value)


def test_a_config_naming_a_plugin_policy_loads_and_the_balancer_picks_with_it(tmp_path: Path, plugin: str) -> None:
    cfg = _config(tmp_path, "routing:\n  policy: last-by-name\n")
    assert cfg.routing.policy == "last-by-name"
    bal = Balancer(cfg.routing.policy)
    backends = [Backend(name=n, proxyTo=f"http://{n}:8080", routingGroup="g") for n in ("b", "c", "a")]
    assert [bal.pick(backends, {}, "alice").name for _ in range(3)] == ["c", "c", "c"]
    assert bal.pick(backends, {}, "alice", dry_run=True).name == "c"
    assert "last-by-name" in POLICIES.names()


def test_an_unknown_name_lists_the_built_ins_and_the_installed_plugins(tmp_path: Path, plugin: str) -> None:
    with pytest.raises(C.ConfigError) as err:
        _config(tmp_path, "server:\n  port: 8080\nrouting:\n  policy: fastest\n")
    message = str(err.value)
    assert "gw.yaml:4: routing.policy: 'fastest' is not one of least-queued, round-robin, random, user-hash" in message
    assert f"last-by-name = {plugin}:LastByName from {plugin} 0.1" in message


def test_a_plugin_that_fails_to_import_is_a_config_error_naming_the_entry_point(tmp_path: Path, plugin: str) -> None:
    with pytest.raises(C.ConfigError) as err:
        _config(tmp_path, "routing:\n  policy: missing\n")
    message = str(err.value)
    assert message.startswith(f"{tmp_path / 'gw.yaml'}:2: routing.policy: 'missing': the plugin entry point "
                              f"missing = {plugin}_nowhere:Policy (group trino_gateway.policies, from {plugin} 0.1) "
                              "failed to load: ModuleNotFoundError"), message


def test_a_plugin_that_is_not_callable_is_a_config_error(tmp_path: Path, plugin: str) -> None:
    with pytest.raises(C.ConfigError) as err:
        _config(tmp_path, "routing:\n  policy: numbers\n")
    assert f"numbers = {plugin}:NOT_CALLABLE" in str(err.value)
    assert "is a int, not a class or function" in str(err.value)


def test_monitor_type_and_store_kind_are_checked_against_their_registries(tmp_path: Path, plugin: str) -> None:
    cfg = _config(tmp_path, f"monitor:\n  type: info-except-etl\nstore:\n  url: plainfile:///{tmp_path}/s.db\n")
    assert cfg.monitor.type == "info-except-etl"
    with pytest.raises(C.ConfigError) as err:
        _config(tmp_path, "monitor:\n  type: ping\n")
    assert "gw.yaml:2: monitor.type: 'ping' is not one of info-api, ui-api, metrics, noop; plugins in " \
           "entry-point group trino_gateway.monitor_types: always-healthy = " in str(err.value)
    assert f"info-except-etl = {plugin}:InfoExceptEtl from {plugin} 0.1" in str(err.value)
    with pytest.raises(C.ConfigError) as err:
        _config(tmp_path, "store:\n  url: mysql://u@h/db\n")
    assert "gw.yaml:2: store.url: 'mysql' is not one of sqlite, postgresql, postgres; plugins" in str(err.value)


def test_a_plugin_monitor_type_probes_and_countless_answers_clear_the_routed_counters(plugin: str) -> None:
    reg = Registry([Backend("trino-1", "http://127.0.0.1:9")])   # nothing listens: no request is made
    st = reg.state("trino-1")
    st.routed_since_probe, st.user_routed_since_probe = 5, {"alice": 5}
    mon = Monitor(reg, C.MonitorConfig(type="always-healthy", timeout=1))
    asyncio.run(mon.run_round())
    assert st.health is Health.HEALTHY
    assert (st.routed_since_probe, st.user_routed_since_probe) == (0, {})   # as info-api: per round


def test_a_plugin_store_kind_opens_and_a_wrong_one_is_refused(tmp_path: Path, plugin: str) -> None:
    store = open_store(f"plainfile:///{tmp_path}/s.db")
    try:
        store.ping()
    finally:
        store.close()
    assert (tmp_path / "s.db").is_file()
    assert "plainfile" in STORE_KINDS
    with pytest.raises(StoreError) as err:
        open_store("notastore:///x")
    assert "the store kind 'notastore' made a object, not a gateway.store.Store" in str(err.value)


def test_a_gateway_routes_probes_and_stores_with_plugins_from_an_installed_distribution(
        fresh_clusters, gateway_factory, tmp_path: Path) -> None:
    site = tmp_path / "site"
    make_distribution(site, ENTRY_POINTS)
    cfg = gateway_config(tmp_path, fresh_clusters, store_url=f"plainfile:///{tmp_path}/plugin-store.db",
                         routing={"policy": "last-by-name"}, monitor={"type": "info-except-etl"})
    path = os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])
    gw = gateway_factory(cfg, wait_ready=False, env={"PYTHONPATH": path})

    def health(name: str) -> dict:
        return gw.api("GET", f"/api/public/backends/{name}/state").json()
    wait_for(lambda: health("adhoc-1")["health"] == "HEALTHY" and health("adhoc-2")["health"] == "HEALTHY",
             timeout=20, message="adhoc backends HEALTHY through the plugin monitor type")
    wait_for(lambda: health("etl-1")["health"] == "UNHEALTHY", timeout=20, message="etl-1 refused by the plugin")
    assert health("etl-1")["error"] == "plugin says no"
    # least-queued (the default) would alternate between the two idle adhoc backends
    cur = gw.connect().cursor()
    assert [cluster_of(cur) for _ in range(6)] == ["adhoc-2"] * 6
    assert (tmp_path / "plugin-store.db").is_file()
