"""The pure bounds of ``gateway.limits``: exact unit tests (the end-to-end tests beside this file
attack a running gateway)."""
from __future__ import annotations

from dataclasses import dataclass

import pytest

from gateway.config import GroupConfig
from gateway.limits import (ConnectionLimits, cap_user, control_chars, loads_json, mask_credentials,
                            queue_refusal, utf8)


def test_loads_json_refuses_deep_nesting_but_not_brackets_in_strings():
    assert loads_json('{"a": [1, {"b": "[[[[[[["}]}') == {"a": [1, {"b": "[[[[[[["}]}
    assert loads_json('"' + "[" * 10_000 + '"') == "[" * 10_000
    assert loads_json("[" * 64 + "]" * 64) is not None
    with pytest.raises(ValueError, match="nested deeper"):
        loads_json("[" * 65 + "]" * 65)
    with pytest.raises(ValueError):
        loads_json(b"\xff")


def test_small_helpers():
    assert cap_user(None) is None and cap_user("ann") == "ann" and len(cap_user("x" * 1000)) == 256
    assert control_chars("a\r\nb") and control_chars("\x7f") and not control_chars("http://h:1/ü")
    assert utf8("é".encode()) and not utf8(b"\xff\xfe\x00binary")
    assert mask_credentials("http://svc:S3cret@h:1") == "http://svc:***@h:1"
    assert mask_credentials("cannot reach http://u:p@h:1 (refused)") == "cannot reach http://u:***@h:1 (refused)"
    assert mask_credentials("http://h:1") == "http://h:1"


@dataclass
class H:
    user: str | None
    remote_ip: str


def test_queue_refusal_counts_per_user_and_per_address():
    cfg = GroupConfig(maxQueuedPerUser=2, maxQueuedPerAddress=3)
    held = [H(None, "10.0.0.1"), H(None, "10.0.0.1")]
    name, message = queue_refusal(held, None, "10.0.0.9", "etl", cfg)
    assert name == "maxQueuedPerUser" and "without a user" in message and "'etl'" in message
    assert queue_refusal(held, "ann", "10.0.0.1", "etl", cfg) is None
    held.append(H("bob", "10.0.0.1"))
    name, message = queue_refusal(held, "ann", "10.0.0.1", "etl", cfg)
    assert name == "maxQueuedPerAddress" and "10.0.0.1" in message
    assert queue_refusal(held, "ann", "10.0.0.2", "etl", cfg) is None


def test_connection_limits_per_address_total_and_descriptors():
    lim = ConnectionLimits(max_connections=5, per_address=3, reserve=10, descriptor_limit=None)
    assert [lim.admit("a") for _ in range(3)] == [None] * 3
    assert "maxConnectionsPerAddress 3" in lim.admit("a")
    assert lim.admit("b") is None and lim.admit("b") is None
    assert "maxConnections 5" in lim.admit("c")
    lim.release("a")
    assert lim.admit("c") is None and lim.open == 5 and lim.refused == 2
    # descriptors: below half the limit only counting; above, the process's real count decides
    fds = [0]
    t = [0.0]
    lim = ConnectionLimits(max_connections=None, per_address=0, reserve=20, descriptor_limit=100,
                           clock=lambda: t[0], open_descriptors=lambda: fds[0])
    fds[0] = 1000   # would refuse if asked
    assert all(lim.admit("a") is None for _ in range(30))   # open + reserve < 50: not asked
    fds[0] = 75     # counted once per 0.2 s; connections opened since are added to it
    assert [lim.admit("a") for _ in range(5)] == [None] * 5    # 75 + 4 + 20 < 100
    assert "descriptor limit 100" in lim.admit("a")            # 75 + 5 + 20 = 100
    t[0] += 1
    fds[0] = 80
    assert "descriptor limit 100" in lim.admit("a")
