"""Fixtures for the side-by-side tests: trino-gateway (Java) started by ``launcher``.

Mandatory in CI: with ``CI=true`` (or ``TRINO_GATEWAY_REQUIRE_JAVAGW=1``, which .ci/run sets) a
trino-gateway that cannot be fetched or started fails the test with the launcher's reason;
elsewhere the tests are skipped with that reason.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from tests.javagw import launcher


def unavailable(reason: str) -> None:
    if os.environ.get("CI", "").lower() == "true" or os.environ.get("TRINO_GATEWAY_REQUIRE_JAVAGW") == "1":
        pytest.fail(f"trino-gateway (Java) is required here (CI=true or TRINO_GATEWAY_REQUIRE_JAVAGW=1): {reason}",
                    pytrace=False)
    pytest.skip(f"trino-gateway (Java) unavailable: {reason}")


@pytest.fixture
def java_gateway_factory(tmp_path: Path) -> Iterator[Callable[..., launcher.JavaGateway]]:
    """``make(**launcher.start kwargs)`` starts one trino-gateway; all are stopped afterwards."""
    started: list[launcher.JavaGateway] = []

    def make(**kw: Any) -> launcher.JavaGateway:
        try:
            gw = launcher.start(tmp_path / f"java-{len(started)}", **kw)
        except launcher.JavaGatewayUnavailable as exc:
            unavailable(str(exc))
            raise  # unreachable: unavailable() fails or skips
        started.append(gw)
        return gw

    yield make
    for gw in started:
        gw.stop()
