"""Rules faults during load: truncated, binary, conflicting and half-written rules files.

Clients keep routing the whole time; every query must succeed *and* land where the last good
ruleset sends it. Each fault must be reported (``GET /api/rules`` error, the log,
``trino_gateway_rules_error``) and the fixed files picked up.
"""
from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import gateway_config, wait_for
from tests.reliability.helpers import ClientThreads, metric, sizes

GOOD = """\
name: etl-source
priority: 10
condition: source == "etl-src"
routingGroup: etl
---
name: big-tag
condition: '"big" in clientTags'
routingGroup: etl
"""
NEW_RULE = """\
---
name: new-source
condition: source == "new-src"
routingGroup: etl
"""


class RoutingLoad(ClientThreads):
    """Clients alternating sources; each answer says which cluster ran the query."""

    def __init__(self, gw: Any, clients: int) -> None:
        super().__init__(clients)
        self.gw = gw
        self.seen: list[tuple[str, str]] = []

    def setup(self, c: int) -> Any:
        return {s: self.gw.connect(source=s) for s in ("etl-src", "other")}

    def step(self, conns: Any, c: int, i: int) -> None:
        source = "etl-src" if (c + i) % 2 else "other"
        cur = conns[source].cursor()
        cur.execute("SELECT current_cluster()")
        name = cur.fetchall()[0][0]
        with self._lock:
            self.seen.append((source, name))

    def misrouted(self) -> list[tuple[str, str]]:
        with self._lock:
            return [(s, n) for s, n in self.seen
                    if (s == "etl-src") != (n == "etl-1")]


def _rules(gw: Any) -> dict[str, Any]:
    return gw.api("GET", "/api/rules").json()


def _error_metric(gw: Any) -> float:
    return metric(gw.api("GET", "/metrics").text, "trino_gateway_rules_error")


@pytest.mark.parametrize("clients,rounds", sizes((4, 1), (16, 5)))
def test_broken_rules_files_during_load_keep_the_last_good_ruleset(
        clients, rounds, fresh_clusters, gateway_factory, tmp_path, record_property):
    rules = tmp_path / "rules"
    rules.mkdir()
    a = rules / "a.yaml"
    a.write_text(GOOD)
    gw = gateway_factory(gateway_config(tmp_path, fresh_clusters))
    good = _rules(gw)
    assert good["error"] is None and len(good["rules"]) == 2
    v1 = good["version"]
    faults = 0

    def reload_errors() -> float:
        return metric(gw.api("GET", "/metrics").text, "trino_gateway_rule_reloads_total", outcome="error")

    def fault(what: str, needle: str, write: Any) -> None:
        """Make the files broken with ``write()``; wait for that very reload to fail."""
        nonlocal faults
        faults += 1
        errors_before, logged_before = reload_errors(), gw.log().count("rules reload failed")
        write()
        wait_for(lambda: reload_errors() > errors_before, timeout=10, message=f"the {what} reload to fail")
        st = _rules(gw)
        assert st["error"] and needle in st["error"], (what, st["error"])
        assert st["version"] == v1, f"{what}: the last good ruleset was not kept"
        assert len(st["rules"]) == 2
        assert _error_metric(gw) == 1
        wait_for(lambda: gw.log().count("rules reload failed") > logged_before,
                 message=f"the {what} error in the log")

    def expect_good(version: str | None = None) -> dict[str, Any]:
        st = wait_for(lambda: (r := _rules(gw))["error"] is None and (version is None or r["version"] == version)
                      and r, timeout=10, message="the fixed rules picked up")
        assert _error_metric(gw) == 0
        return st

    with RoutingLoad(gw, clients) as load:
        for _ in range(rounds):
            # 1. truncated in the middle of a rule
            fault("truncated", "a.yaml", lambda: a.write_text(GOOD[: GOOD.index("etl-src") + 4]))
            # 2. binary garbage
            fault("binary", "a.yaml", lambda: a.write_bytes(bytes(range(256)) * 4))
            # 3. back to good, then a second file with a conflicting rule name
            a.write_text(GOOD)
            expect_good(v1)
            b = rules / "b.yaml"
            fault("conflicting", "etl-source",
                  lambda: b.write_text("name: etl-source\ncondition: 'true'\nroutingGroup: adhoc\n"))
            b.unlink()
            expect_good(v1)
        # 4. half-written: the first half (cut inside a rule) sits on disk for a while
        full = GOOD + NEW_RULE
        cut = full.index("condition", len(GOOD)) + 6
        with open(a, "w") as fh:
            fault("half-written", "a.yaml", lambda: (fh.write(full[:cut]), fh.flush()))
            fh.write(full[cut:])
        v2 = expect_good()["version"]
        assert v2 != v1
    assert not load.errors, f"{len(load.errors)} failed queries: {load.errors[:5]}"
    assert load.seen, "no query ran during the faults"
    assert load.misrouted() == [], load.misrouted()[:5]
    assert len(_rules(gw)["rules"]) == 3
    cur = gw.connect(source="new-src").cursor()
    cur.execute("SELECT current_cluster()")
    assert cur.fetchall() == [["etl-1"]]
    text = gw.api("GET", "/metrics").text
    record_property("faults", faults)
    record_property("queries", len(load.seen))
    print(f"\nRULES: {faults} broken states during {len(load.seen)} queries: 0 failed, 0 misrouted; "
          f"reloads ok={metric(text, 'trino_gateway_rule_reloads_total', outcome='ok'):g} "
          f"error={metric(text, 'trino_gateway_rule_reloads_total', outcome='error'):g}")
    assert metric(text, "trino_gateway_rule_reloads_total", outcome="error") >= faults
