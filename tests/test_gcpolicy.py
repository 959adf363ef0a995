"""Garbage-collector settings and full-collection scheduling of a worker (gateway/runtime/gcpolicy.py)."""
from __future__ import annotations

import asyncio
import gc

import pytest

from gateway.runtime import gcpolicy
from gateway.runtime.gcpolicy import FullCollections, GcPauses


@pytest.mark.parametrize("since,cpu,due", [
    (10, 0.0, False),      # too soon after the last one, however quiet
    (59.9, 0.1, False),
    (60, 0.1, True),       # quiet and long enough ago
    (120, 0.9, False),     # busy: wait for a gap between bursts
    (599, 1.0, False),
    (600, 1.0, True),      # at the latest, busy or not: cyclic garbage stays bounded
])
def test_full_collection_waits_for_a_quiet_loop_within_bounds(since, cpu, due):
    assert FullCollections(min_interval=60, max_interval=600, quiet_cpu=0.5).due(since, cpu) is due


def test_pauses_are_recorded_by_generation():
    pauses = GcPauses()
    gc.callbacks.append(pauses)
    try:
        gc.collect(0)
        gc.collect(2)
    finally:
        gc.callbacks.remove(pauses)
    got = pauses.drain()
    assert [g for g, _ in got] == [0, 2]
    assert all(s >= 0 for _, s in got) and pauses.longest == max(s for _, s in got)
    assert pauses.drain() == []


def _run_installed(policy: FullCollections, until) -> tuple[tuple[int, int, int], list[tuple[int, float]]]:
    seen: list[tuple[int, float]] = []

    async def main() -> tuple[int, int, int]:
        stop = gcpolicy.install(observe=lambda g, s: seen.append((g, s)), policy=policy)
        try:
            thresholds = gc.get_threshold()
            for _ in range(300):
                if until(seen):
                    break
                await asyncio.sleep(0.02)
            return thresholds
        finally:
            stop()
    return asyncio.run(main()), seen


def test_install_sets_proxy_thresholds_runs_due_full_collections_and_reports_them(monkeypatch):
    monkeypatch.delenv("TRINO_GATEWAY_GC", raising=False)
    before = gc.get_threshold()
    thresholds, seen = _run_installed(FullCollections(min_interval=0, max_interval=0),
                                      lambda s: any(g == 2 for g, _ in s))
    assert thresholds[:2] == (gcpolicy.YOUNG_THRESHOLD, gcpolicy.MIDDLE_THRESHOLD)
    assert thresholds[2] > 1_000_000           # no automatic full collection
    assert any(g == 2 for g, _ in seen)        # the scheduler's own, observed as a pause
    assert gc.get_threshold() == before        # stop() undoes the settings


def test_python_mode_keeps_pythons_settings(monkeypatch):
    monkeypatch.setenv("TRINO_GATEWAY_GC", "python")
    before = gc.get_threshold()
    thresholds, seen = _run_installed(FullCollections(min_interval=0, max_interval=0),
                                      lambda s: False)
    assert thresholds == before
    assert not any(g == 2 for g, _ in seen)    # no scheduled full collection
