"""Pure Trino protocol pieces of the simulated coordinator (no I/O).

Query ids (`YYYYMMDD_HHMMSS_NNNNN_ccccc`), slugs, error documents, column descriptions,
statement stats, airlift durations, and the compact JSON encoding of result pages. See
sections 1 and 4 of shared/trino-protocol.md.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import math
import random
import re
import time
from typing import Any, Callable

COORDINATOR_ID_ALPHABET = "abcdefghijkmnpqrstuvwxyz23456789"
QUERY_ID_RE = re.compile(r"^\d{8}_\d{6}_\d{5}_[a-z2-9]{5}$")

# Slug contexts: a slug valid for a queued URI is not valid for an executing one.
QUEUED = "QUEUED_QUERY"
EXECUTING = "EXECUTING_QUERY"

UNBOUNDED_VARCHAR = 2147483647

# name -> (code, type) as in io.trino.spi.StandardErrorCode.
ERROR_CODES: dict[str, tuple[int, str]] = {
    "GENERIC_USER_ERROR": (0, "USER_ERROR"),
    "SYNTAX_ERROR": (1, "USER_ERROR"),
    "ABANDONED_QUERY": (2, "USER_ERROR"),
    "USER_CANCELED": (3, "USER_ERROR"),
    "NOT_FOUND": (5, "USER_ERROR"),
    "NOT_SUPPORTED": (13, "USER_ERROR"),
    "UNKNOWN_TRANSACTION": (20, "USER_ERROR"),
    "NOT_IN_TRANSACTION": (21, "USER_ERROR"),
    "PROCEDURE_NOT_FOUND": (29, "USER_ERROR"),
    "INVALID_PROCEDURE_ARGUMENT": (30, "USER_ERROR"),
    "ADMINISTRATIVELY_KILLED": (38, "USER_ERROR"),
    "INVALID_PARAMETER_USAGE": (52, "USER_ERROR"),
    "GENERIC_INTERNAL_ERROR": (65536, "INTERNAL_ERROR"),
    "SERVER_STARTING_UP": (65548, "INTERNAL_ERROR"),
}

_SQL_STATES = {"SYNTAX_ERROR": "42000", "USER_CANCELED": "57014",
               "ADMINISTRATIVELY_KILLED": "57014", "UNKNOWN_TRANSACTION": "25000",
               "NOT_IN_TRANSACTION": "25000", "SERVER_STARTING_UP": "08000"}

_FAILURE_TYPES = {"SYNTAX_ERROR": "io.trino.sql.parser.ParsingException"}


class QueryIdGenerator:
    """Query ids as `QueryIdGenerator` makes them: UTC second, daily counter, coordinator id."""

    def __init__(self, coordinator_id: str | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        if coordinator_id is None:
            coordinator_id = "".join(random.choice(COORDINATOR_ID_ALPHABET) for _ in range(5))
        if len(coordinator_id) != 5 or any(c not in COORDINATOR_ID_ALPHABET for c in coordinator_id):
            raise ValueError(f"coordinator id must be 5 characters of {COORDINATOR_ID_ALPHABET!r}, "
                             f"got {coordinator_id!r}")
        self.coordinator_id = coordinator_id
        self._clock = clock
        self._day = ""
        self._counter = 0

    def next(self) -> str:
        stamp = time.strftime("%Y%m%d_%H%M%S", time.gmtime(self._clock()))
        if stamp[:8] != self._day:  # the counter restarts every day
            self._day, self._counter = stamp[:8], 0
        number = self._counter % 100_000
        self._counter += 1
        return f"{stamp}_{number:05d}_{self.coordinator_id}"


def make_slug(key: bytes, context: str, token: int) -> str:
    """`y` + hex HMAC-SHA1 over context and token (Trino's `Slug.makeSlug`)."""
    return "y" + hmac.new(key, f"{context}{token}".encode(), hashlib.sha1).hexdigest()


def slug_ok(key: bytes, context: str, token: int, slug: str) -> bool:
    return hmac.compare_digest(make_slug(key, context, token), slug)


def query_error(name: str, message: str, *, line: int | None = None,
                column: int | None = None) -> dict[str, Any]:
    """A full QueryError document (`error` of a FAILED result)."""
    code, error_type = ERROR_CODES.get(name, ERROR_CODES["GENERIC_USER_ERROR"])
    failure: dict[str, Any] = {"type": _FAILURE_TYPES.get(name, "io.trino.spi.TrinoException"),
                               "message": message, "suppressed": [], "stack": []}
    error: dict[str, Any] = {"message": message, "sqlState": _SQL_STATES.get(name, "HY000"),
                             "errorCode": code, "errorName": name, "errorType": error_type}
    if line is not None:
        location = {"lineNumber": line, "columnNumber": column or 1}
        error["errorLocation"] = location
        failure["errorLocation"] = location
    error["failureInfo"] = failure
    return error


def column(name: str, trino_type: str) -> dict[str, Any]:
    """A Column document; `trino_type` is one of bigint, double, boolean, varchar,
    varchar(n), varbinary, unknown."""
    match = re.fullmatch(r"varchar(?:\((\d+)\))?", trino_type)
    if match:
        length = int(match.group(1)) if match.group(1) else UNBOUNDED_VARCHAR
        return {"name": name, "type": trino_type,
                "typeSignature": {"rawType": "varchar",
                                  "arguments": [{"kind": "LONG", "value": length}]}}
    return {"name": name, "type": trino_type,
            "typeSignature": {"rawType": trino_type, "arguments": []}}


def type_of_value(value: Any) -> str | None:
    """The Trino type a SQLite value maps to, or None for NULL."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "bigint"
    if isinstance(value, float):
        return "double"
    if isinstance(value, (bytes, bytearray, memoryview)):
        return "varbinary"
    return "varchar"


def _json_value(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(value)).decode("ascii")
    return value


def dumps(doc: Any) -> bytes:
    """Compact JSON bytes, as Trino sends them (UTF-8, no spaces)."""
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def encode_rows(rows: list[list[Any]]) -> bytes:
    """The JSON array of rows, with Trino's encoding of binary and non-finite doubles."""
    try:
        return json.dumps(rows, separators=(",", ":"), ensure_ascii=False,
                          allow_nan=False).encode("utf-8")
    except (ValueError, TypeError):
        fixed = [[_json_value(v) for v in row] for row in rows]
        return json.dumps(fixed, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def results_body(head: dict[str, Any], data: bytes | None, tail: dict[str, Any]) -> bytes:
    """A QueryResults document from its fields before `data`, the pre-encoded `data` value,
    and its fields after `data`; the (possibly huge) data is spliced in, never re-parsed."""
    first = dumps(head)
    last = dumps(tail)
    if data is None:
        return first[:-1] + b"," + last[1:]
    return first[:-1] + b',"data":' + data + b"," + last[1:]


def statement_stats(*, state: str, created: float, dispatched: float | None,
                    ended: float | None, now: float, nodes: int, rows: int,
                    nbytes: int) -> dict[str, Any]:
    """StatementStats with every required field (times in ms since the POST)."""
    end = ended if ended is not None else now
    elapsed = max(0, int((end - created) * 1000))
    queued_ms = max(0, int(((dispatched if dispatched is not None else end) - created) * 1000))
    run_ms = max(0, elapsed - queued_ms)
    scheduled = dispatched is not None and state != "QUEUED"
    done = state in ("FINISHED", "FAILED")
    stats: dict[str, Any] = {
        "state": state, "queued": state == "QUEUED", "scheduled": scheduled,
        "nodes": nodes if scheduled else 0,
        "totalSplits": 1 if scheduled else 0, "queuedSplits": 0,
        "runningSplits": 1 if scheduled and not done else 0,
        "completedSplits": 1 if scheduled and done else 0,
        "cpuTimeMillis": run_ms, "wallTimeMillis": run_ms, "queuedTimeMillis": queued_ms,
        "elapsedTimeMillis": elapsed, "processedRows": rows, "processedBytes": nbytes,
        "physicalInputBytes": nbytes, "peakMemoryBytes": 0, "spilledBytes": 0,
    }
    if state == "FINISHED":
        stats["progressPercentage"] = 100.0
    return stats


_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ns|us|ms|s|m|h|d)\s*$")
_UNIT_SECONDS = {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0,
                 "d": 86400.0}


def parse_duration(text: str) -> float:
    """Seconds in an airlift Duration such as `500ms` or `1.5s`; ValueError otherwise."""
    match = _DURATION_RE.match(text)
    if not match:
        raise ValueError(f"invalid duration {text!r}: expected a number followed by one of "
                         "ns, us, ms, s, m, h, d")
    return float(match.group(1)) * _UNIT_SECONDS[match.group(2)]


def format_duration(seconds: float) -> str:
    """An airlift Duration string in the largest unit that keeps the value >= 1."""
    for unit in ("d", "h", "m", "s"):
        if seconds >= _UNIT_SECONDS[unit]:
            return f"{seconds / _UNIT_SECONDS[unit]:.2f}{unit}"
    return f"{seconds * 1000:.2f}ms"
