"""The gateway's event loop: uvloop when installed, else asyncio's; TRINO_GATEWAY_LOOP chooses
(gateway/runtime/loop.py). The pure choice, then a gateway serving queries on each loop."""
from __future__ import annotations

import importlib.util
import re

import pytest

from gateway.runtime import loop as L
from tests.conftest import gateway_config

HAVE_UVLOOP = importlib.util.find_spec("uvloop") is not None


@pytest.mark.parametrize("setting, available, expected", [
    (None, True, "uvloop"), (None, False, "asyncio"), ("", True, "uvloop"), ("", False, "asyncio"),
    ("auto", True, "uvloop"), (" Auto ", False, "asyncio"), ("asyncio", True, "asyncio"),
    ("ASYNCIO", True, "asyncio"), ("uvloop", True, "uvloop"), (" UVLoop ", True, "uvloop"),
])
def test_choice(setting, available, expected):
    assert L.choose(setting, available) == expected


def test_bad_choices_say_why():
    with pytest.raises(L.LoopChoiceError, match="TRINO_GATEWAY_LOOP='tokio': expected one of auto, asyncio, uvloop"):
        L.choose("tokio", True)
    with pytest.raises(L.LoopChoiceError, match=r"uvloop is not installed \(pip install uvloop\)"):
        L.choose("uvloop", False)


def test_run_uses_the_chosen_loop(monkeypatch):
    async def which() -> str:
        import asyncio
        return L.kind(asyncio.get_running_loop())

    monkeypatch.delenv(L.ENV, raising=False)
    assert L.run(which()) == ("uvloop" if HAVE_UVLOOP else "asyncio")   # the default: auto
    monkeypatch.setenv(L.ENV, "asyncio")
    assert L.run(which()) == "asyncio"
    if HAVE_UVLOOP:
        monkeypatch.setenv(L.ENV, "uvloop")
        assert L.run(which()) == "uvloop"


LOOPS = ["asyncio", pytest.param("uvloop", marks=pytest.mark.skipif(not HAVE_UVLOOP, reason="uvloop not installed"))]


@pytest.mark.parametrize("loop", LOOPS)
def test_gateway_serves_on_each_loop(loop, fresh_clusters, gateway_factory, tmp_path):
    """Statements, polls to FINISHED, the monitor's probes (their own thread and loop) and a
    graceful stop by signal, on each kind of loop."""
    gw = gateway_factory(gateway_config(tmp_path, fresh_clusters, server={"workers": 1}),
                         env={L.ENV: loop})
    assert re.search(rf"listening on \S+ \(http\) on the {loop} event loop", gw.log()), gw.log()[-2000:]
    cur = gw.connect().cursor()
    for _ in range(3):
        cur.execute("SELECT current_cluster()")
        assert cur.fetchall()[0][0] in ("adhoc-1", "adhoc-2")
    state = gw.api("GET", "/api/public/backends/adhoc-1/state").json()
    assert state["health"] == "HEALTHY"
    assert gw.stop() == 0
    assert "stopped" in gw.log()


def test_a_bad_setting_stops_the_gateway_with_a_clear_error(fresh_clusters, tmp_path):
    from tests.conftest import start_gateway
    with pytest.raises(AssertionError, match="TRINO_GATEWAY_LOOP='fast': expected one of"):
        start_gateway(tmp_path, gateway_config(tmp_path, fresh_clusters), env={L.ENV: "fast"})
