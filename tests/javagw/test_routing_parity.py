"""Routing parity: trino-gateway with its MVEL rules vs ours with the converted rules.

One trino-gateway (Java), one of ours and one simulated coordinator; every routing group has a
backend of its own on both gateways, all pointing at that coordinator. For each phase of
``parity_rules.PHASES`` trino-gateway loads the MVEL file as it is (hot reload,
``rulesRefreshPeriod``) and ours loads what ``trino-gateway rules convert`` made of it (watched
rules folder); a sentinel rule tells when both have the phase's rules. The same statement
submissions then go through both, and the routing group each chose is read from each one's query
history (trino-gateway's ``query_history`` table, our ``/api/queries``) by query id.

Every request must land in the same group, except those counted separately:
- *not exactly convertible*: trino-gateway routed it by a rule the converter reported (those
  rules, and only they, write ``UNCONVERTIBLE_GROUP``, with priorities above the others);
- *fails in trino-gateway*: trino-gateway answers with an error (a condition threw, or it could
  not analyse the SQL), where ours routes.
"""
from __future__ import annotations

import collections
import os
import re
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

import pytest
import requests as http

from tests.conftest import REPO, gateway_config, spawn_cluster, wait_for
from tests.javagw import launcher
from tests.javagw.parity_rules import (ALL_GROUPS, PHASES, SENTINEL_GROUP, SENTINEL_HEADER, UNCONVERTIBLE_GROUP,
                                      UNCONVERTIBLE_RULES, requests, with_sentinel)
from tests.javamigration.reference import ERROR, Request, load_ref_rules, route

pytestmark = pytest.mark.javagw

N_REQUESTS = sum(count for _, _, count in PHASES)   # 1,000: each request goes through once


def convert(java_rules: Path, out: Path) -> set[str]:
    """Run ``trino-gateway rules convert``; the names of the rules it reports as not converted."""
    tmp = out.with_suffix(".tmp")
    proc = subprocess.run([sys.executable, "-m", "gateway.cli", "rules", "convert", str(java_rules), "-o", str(tmp)],
                          capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode in (0, 1), f"rules convert failed ({proc.returncode}): {proc.stderr}"
    os.replace(tmp, out)   # the watched folder sees one complete file
    return set(re.findall(r"^not converted: rule '([^']+)'", proc.stderr, re.M))


def write_atomically(path: Path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class Java:
    def __init__(self, gw: launcher.JavaGateway) -> None:
        import psycopg
        self.gw = gw
        self.db = psycopg.connect(launcher.pg_admin_url().rsplit("/", 1)[0] + "/" + gw.database, autocommit=True)

    def groups(self, ids: list[str]) -> dict[str, str]:
        rows = self.db.execute("SELECT query_id, routing_group FROM query_history WHERE query_id = ANY(%s)",
                               (ids,)).fetchall()
        return {qid: group for qid, group in rows}


def ours_groups(url: str) -> dict[str, str]:
    rows = http.get(f"{url}/api/queries", params={"limit": 10000}, timeout=30).json()
    return {r["queryId"]: r["routingGroup"] for r in rows}


_local = threading.local()


def submit(url: str, req: Request, extra: dict[str, str] | None = None) -> str | None:
    """POST the statement; its query id, or None when the gateway answered with an error."""
    s = getattr(_local, "session", None) or http.Session()
    _local.session = s
    headers: dict[str, str] = {}
    for k, v in req.headers:
        headers[k] = v
    headers.update(extra or {})
    r = s.post(f"{url}/v1/statement", data=req.sql.encode(), headers=headers, timeout=60)
    if r.status_code != 200:
        return None
    try:
        return r.json().get("id")
    except ValueError:
        return None


def java_loaded(java: Java, phase: str) -> bool:
    qid = submit(java.gw.url, Request([("X-Trino-User", "parity")], "SELECT 1"), {SENTINEL_HEADER: phase})
    return qid is not None and wait_for(lambda: java.groups([qid]), timeout=10,
                                        message="trino-gateway's history row")[qid] == SENTINEL_GROUP


def ours_loaded(url: str, phase: str) -> bool:
    r = http.post(f"{url}/api/routing/explain", json={"user": "parity", "headers": {SENTINEL_HEADER: phase}},
                  timeout=10)
    return r.status_code == 200 and r.json()["routingGroup"] == SENTINEL_GROUP


@pytest.mark.timeout(900)   # trino-gateway's start and cold JIT on a busy machine
def test_routing_parity(java_gateway_factory: Callable[..., launcher.JavaGateway],
                        gateway_factory: Callable[..., Any], tmp_path: Path) -> None:
    sim = spawn_cluster("parity", 0, "--process-forwarded")   # trino-gateway sends X-Forwarded-*
    try:
        java_file = tmp_path / "routing_rules.yml"
        ours_dir = tmp_path / "rules"
        ours_dir.mkdir()
        first_phase, first_text, _ = PHASES[0]
        java_file.write_text(with_sentinel(first_text, first_phase))
        java = Java(java_gateway_factory(
            backends=[launcher.Backend(f"g-{g}", sim.url, g) for g in ALL_GROUPS], rules_file=java_file,
            extra_config={"routingRules": {"rulesRefreshPeriod": "1s"}}))
        cfg = gateway_config(tmp_path, None, rules=[str(ours_dir)], routing={"allowGroupHeader": False},
                             backends=[{"name": f"g-{g}", "proxyTo": sim.url, "routingGroup": g} for g in ALL_GROUPS])
        ours = gateway_factory(cfg)
        reqs = requests(N_REQUESTS)
        start = 0
        totals: collections.Counter[str] = collections.Counter()
        mismatches: list[str] = []
        seen_groups: set[str] = set()
        with ThreadPoolExecutor(8) as pool:
            for phase, text, count in PHASES:
                source = with_sentinel(text, phase)
                write_atomically(java_file, source)
                not_converted = convert(java_file, ours_dir / "parity.yaml")
                wait_for(lambda: ours_loaded(ours.url, phase), timeout=30, message=f"ours to load {phase}")
                wait_for(lambda: java_loaded(java, phase), timeout=60, interval=0.5,
                         message=f"trino-gateway to load {phase}")
                t0 = time.monotonic()
                batch, start = reqs[start:start + count], start + count
                jids = list(pool.map(lambda r: submit(java.gw.url, r), batch))
                t_java = time.monotonic() - t0
                oids = list(pool.map(lambda r: submit(ours.url, r), batch))
                want = [i for i in oids if i]
                ogroups = wait_for(lambda: (lambda g: g if all(i in g for i in want) else None)(ours_groups(ours.url)),
                                   timeout=30, message=f"our history rows ({len(want)} ids)")
                jgroups = wait_for(lambda: (lambda g: g if all(i in g for i in jids if i) else None)(
                    java.groups([i for i in jids if i])), timeout=30, message="trino-gateway's history rows")
                print(f"{phase}: {len(batch)} requests through trino-gateway in {t_java:.1f}s, "
                      f"through ours in {time.monotonic() - t0 - t_java:.1f}s")
                assert not_converted == (UNCONVERTIBLE_RULES if phase == "generated" else set()), \
                    f"{phase}: the converter reported {not_converted}"
                for req, jid, oid in zip(batch, jids, oids):
                    totals[f"{phase}: sent"] += 1
                    if jid is None:
                        totals[f"{phase}: fails in trino-gateway"] += 1
                        continue
                    assert oid is not None, f"ours refused a request trino-gateway routed: {req.label}"
                    jg, og = jgroups[jid], ogroups[oid]
                    seen_groups.add(jg)
                    if jg == UNCONVERTIBLE_GROUP:
                        totals[f"{phase}: not exactly convertible"] += 1
                        continue
                    totals[f"{phase}: compared"] += 1
                    if jg != og:
                        mismatches.append(f"[{phase}] {req.label}: trino-gateway -> {jg}, ours -> {og}")
        print("\nrouting parity:", dict(sorted(totals.items())), "groups seen:", sorted(seen_groups))
        assert not mismatches, f"{len(mismatches)} requests routed differently:\n" + "\n".join(mismatches[:20])
        compared = sum(v for k, v in totals.items() if k.endswith("compared"))
        sent = sum(v for k, v in totals.items() if k.endswith("sent"))
        assert compared >= 0.8 * sent, f"too few requests compared: {dict(totals)}"
        assert totals["generated: not exactly convertible"] > 0, "no request exercised the reported rules"
        assert len(seen_groups) >= 6, f"the requests reach too few routing groups to show much: {seen_groups}"
    finally:
        sim.stop()


def test_unconvertible_rules_decide_in_reference_semantics() -> None:
    """The reported rules do decide some of the requests (trino-gateway's semantics as
    tests/javamigration/reference.py models them), so the separate count is not always zero."""
    text = with_sentinel(PHASES[-1][1], PHASES[-1][0])
    ref_all = load_ref_rules(text)
    ref_conv = load_ref_rules(text, skip=UNCONVERTIBLE_RULES)
    affected = [r for r in requests(N_REQUESTS)[N_REQUESTS - PHASES[-1][2]:] if route(ref_all, r) == UNCONVERTIBLE_GROUP
                and route(ref_conv, r) not in (ERROR, UNCONVERTIBLE_GROUP)]
    assert len(affected) >= 10
