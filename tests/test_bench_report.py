"""benchmarks/report.py judges absolute targets at the reference run's machine speed.

The speed is bare Tornado's POST/s in the same run next to the reference run's (5,767/s): a
machine at half speed doubles every time per request and halves every rate, and the verdict
must be about the gateway, not the day. Ratios are judged as measured."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import report  # noqa: E402


def _run(bare: list[float], gateway_post: list[float], gw_p50_us: list[float], direct_p50_us: list[float],
         routing_p50_us: float | None = None) -> dict:
    res: dict = {
        "throughput": {"POST": {"gateway": gateway_post, "bare-tornado": bare}},
        "latency": {"POST": {"gateway": {"p50_us": gw_p50_us, "p99_us": gw_p50_us},
                             "direct": {"p50_us": direct_p50_us, "p99_us": direct_p50_us}}},
    }
    if routing_p50_us is not None:
        res["routing"] = {"rules=100": {"plain-200B": {"p50_us": routing_p50_us}}}
    return res


def _rows(res: dict) -> dict[str, tuple[str, str, bool | None]]:
    return {name: (limit, shown, ok) for name, limit, shown, ok in report.targets(res)}


def test_speed_is_bare_tornado_now_over_the_reference_run() -> None:
    assert report.speed(_run([2000.0, 2883.5, 3000.0], [1.0], [1.0], [1.0])) == pytest.approx(0.5)
    assert report.speed({"throughput": {"POST": {"gateway": [1.0]}}}) is None
    assert report.speed({}) is None


def test_times_scale_with_the_speed_and_rates_against_it() -> None:
    assert report.at_reference(600.0, 0.5, rate=False) == pytest.approx(300.0)
    assert report.at_reference(1800.0, 0.5, rate=True) == pytest.approx(3600.0)
    assert report.at_reference(600.0, None, rate=False) == 600.0


def test_a_half_speed_machine_is_judged_at_reference_speed() -> None:
    # bare Tornado at half the reference rate; the gateway at 2,200 POST/s (4,400 at reference
    # speed) and 0.6 ms added (0.3 ms at reference speed): both absolute targets are met there.
    rows = _rows(_run([2883.5], [2200.0], [700.0], [100.0], routing_p50_us=80.0))
    assert rows["machine speed vs the reference run"][1:] == ("0.50×", None)
    assert rows["POST/s, one worker"][1:] == ("2,200/s; 4,400/s at reference speed", True)
    assert rows["added latency POST p50"][1:] == ("0.600 ms; 0.300 ms at reference speed", True)
    assert rows["routing decision p50, 100 rules"][1:] == ("80.0 µs; 40.0 µs at reference speed", True)
    assert rows["POST/s vs bare Tornado"][1:] == ("76%", True)   # a ratio: judged as measured


def test_a_gateway_too_slow_for_its_machine_misses_at_any_speed() -> None:
    rows = _rows(_run([2883.5], [1800.0], [900.0], [100.0]))
    assert rows["POST/s, one worker"][1:] == ("1,800/s; 3,600/s at reference speed", False)
    assert rows["added latency POST p50"][1:] == ("0.800 ms; 0.400 ms at reference speed", False)


def test_a_faster_machine_makes_absolute_targets_harder_not_easier() -> None:
    rows = _rows(_run([11534.0], [6000.0], [400.0], [100.0]))   # twice the reference speed
    assert rows["POST/s, one worker"][1:] == ("6,000/s; 3,000/s at reference speed", False)
    assert rows["added latency POST p50"][1:] == ("0.300 ms; 0.600 ms at reference speed", False)


def test_without_bare_tornado_absolute_targets_are_judged_as_measured() -> None:
    res = _run([], [4100.0], [400.0], [100.0])
    rows = _rows(res)
    assert "machine speed vs the reference run" not in rows
    assert rows["POST/s, one worker"][1:] == ("4,100/s", True)
    assert rows["added latency POST p50"][1:] == ("0.300 ms", True)
