"""Fixtures for the admin-page tests in real headless Chromium (Debian's package, driven by
Playwright's Python API; no browser download). Without chromium the tests skip, unless
TRINO_GATEWAY_REQUIRE_BROWSER=1 (CI), which turns the skip into a failure."""
from __future__ import annotations

import os
from typing import Any, Iterator

import pytest

from tests.browser.support import admin_config, chromium_available, launch
from tests.conftest import ClusterProcess, GatewayProcess, spawn_cluster, start_gateway


def _unavailable(reason: str) -> None:
    if os.environ.get("TRINO_GATEWAY_REQUIRE_BROWSER") == "1":
        pytest.fail(f"browser tests are required (TRINO_GATEWAY_REQUIRE_BROWSER=1) but {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not chromium_available():
        _unavailable("Debian's chromium is not installed (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("the playwright Python package is not installed")
    pw = sync_playwright().start()
    try:
        b = launch(pw)
    except Exception as exc:  # noqa: BLE001
        pw.stop()
        _unavailable(f"chromium does not start: {exc}")
    yield b
    b.close()
    pw.stop()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    """A fresh browser context per test: no cookies carried over."""
    ctx = browser.new_context(viewport={"width": 1360, "height": 900})
    ctx.set_default_timeout(10_000)
    p = ctx.new_page()
    p.on("dialog", lambda d: d.accept())   # confirmations: the operator says yes
    yield p
    ctx.close()


@pytest.fixture(scope="module")
def spare() -> Iterator[ClusterProcess]:
    """A cluster of this module's own, to add, drain and stop."""
    c = spawn_cluster("spare-1")
    yield c
    c.stop()


@pytest.fixture(scope="module")
def admin_gw(clusters: dict[str, ClusterProcess], tmp_path_factory: Any) -> Iterator[GatewayProcess]:
    """A gateway with admin users and rules, in front of adhoc-1 and etl-1."""
    tmp = tmp_path_factory.mktemp("browser")
    chosen = {n: clusters[n] for n in ("adhoc-1", "etl-1")}
    for c in chosen.values():
        c.reset()
    gw = start_gateway(tmp, admin_config(tmp, chosen, {"adhoc-1": "adhoc", "etl-1": "etl"},
                                         store={"metricsInterval": "1s"}))
    yield gw
    gw.stop()
