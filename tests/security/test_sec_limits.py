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
    assert [admit(lim, "a") for _ in range(3)] == [None] * 3
    assert "maxConnectionsPerAddress 3" in admit(lim, "a")
    assert admit(lim, "b") is None and admit(lim, "b") is None
    assert "maxConnections 5" in admit(lim, "c")
    lim.release("a")
    assert admit(lim, "c") is None and lim.open == 5 and lim.refused == 2
    # descriptors: below half the limit only counting; above, the process's real count decides
    fds = [0]
    t = [0.0]
    lim = ConnectionLimits(max_connections=None, per_address=0, reserve=20, descriptor_limit=100,
                           clock=lambda: t[0], open_descriptors=lambda: fds[0])
    fds[0] = 1000   # would refuse if asked
    assert all(admit(lim, "a") is None for _ in range(29))   # open + this one + reserve < 50: not asked
    fds[0] = 75     # counted once per 0.2 s (this socket among them); connections opened since are added
    assert [admit(lim, "a") for _ in range(6)] == [None] * 6   # up to 75 + 5 + 20 = 100: the reserve stays free
    assert "descriptor limit 100" in admit(lim, "a")           # 75 + 6 + 20 > 100
    t[0] += 1
    fds[0] = 81
    assert "descriptor limit 100" in admit(lim, "a")
    assert lim.pending == 0 and lim.closing == 2 and lim.refused == 2


def admit(lim: ConnectionLimits, address: str) -> str | None:
    """As the server admits: the socket was accepted (pending) before."""
    lim.accepted()
    return lim.admit(address)


def test_headroom_counts_the_sockets_accepted_and_refused_but_not_closed():
    assert ConnectionLimits(max_connections=None, per_address=0, reserve=10, descriptor_limit=None).headroom() is None
    lim = ConnectionLimits(max_connections=5, per_address=1, reserve=10, descriptor_limit=None)
    assert lim.headroom() == 5
    lim.accepted()
    lim.accepted()
    assert lim.headroom() == 3
    assert lim.admit("a") is None
    assert lim.headroom() == 3                                  # one open, one pending
    assert "maxConnectionsPerAddress 1" in lim.admit("a")
    assert (lim.open, lim.pending, lim.closing, lim.headroom()) == (1, 0, 1, 4)
    lim.refused_closed()
    assert lim.closing == 0
    # descriptors (100, 20 reserved): counted no more often than admission counts them
    asked: list[float] = []
    fds = [0]
    t = [0.0]
    lim = ConnectionLimits(max_connections=None, per_address=0, reserve=20, descriptor_limit=100,
                           clock=lambda: t[0], open_descriptors=lambda: asked.append(t[0]) or fds[0])
    assert lim.headroom() == 30 and not asked                   # below half: the room up to half
    for _ in range(12):
        lim.accepted()
    assert lim.headroom() == 18 and not asked
    for _ in range(18):
        lim.accepted()
    fds[0] = 60                                                 # 30 others and the 30 pending
    assert lim.headroom() == 20 and asked == [0.0]              # 100 - 20 - 60
    for _ in range(10):
        assert lim.admit("a") is None
    assert lim.headroom() == 20 and asked == [0.0]              # pending became open: as many in use
    lim.per_address = 10
    assert "maxConnectionsPerAddress" in lim.admit("a")
    assert lim.headroom() == 20                                 # pending became closing
    lim.refused_closed()
    assert lim.headroom() == 1 and asked == [0.0]               # below half again: the room up to half
    for _ in range(20):
        lim.accepted()
    assert lim.headroom() == 1 and asked == [0.0]               # 30 others + 10 open + 39 pending + 20
    t[0] = 0.2
    fds[0] = 70                                                 # some went: counted again
    assert lim.headroom() == 10 and asked == [0.0, 0.2]
    lim.max_connections = 45
    assert lim.headroom() == -4                                 # the smaller room: 45 - 10 open - 39 pending
