"""What a probe's answer means, and how results change a backend's health (pure).

The monitor (``gateway/backends/monitor.py``) does the HTTP; everything here is plain functions of
status codes, bodies and configuration so each rule has an exact unit test:

* ``parse_info`` / ``parse_stats`` / ``parse_queued_users`` / ``parse_metrics`` turn one
  response into a ``ProbeResult`` (or counts);
* ``describe_error`` turns a failed request into a short human message;
* ``apply_probe`` folds a result into a ``BackendState`` with flap damping and returns the
  transition, if any.

Flap damping: a HEALTHY backend becomes not-HEALTHY only after ``unhealthyThreshold``
consecutive bad results, and an UNHEALTHY one becomes HEALTHY only after ``healthyThreshold``
consecutive good ones. From PENDING or UNKNOWN the first result applies at once (there is
nothing to protect yet), and moving between the non-routable states (UNHEALTHY <-> PENDING) is
immediate because it changes no routing. A backend marked UNHEALTHY by the proxy (passive
health) is restored by the next good probe: the proxy saw one failed request, the probe is the
authority.
"""
from __future__ import annotations

import asyncio
import json
import math
import socket
import ssl
from dataclasses import dataclass
from typing import Any

from tornado.httpclient import HTTPClientError
from tornado.iostream import StreamClosedError

from gateway.backends.state import BackendState, Health
from gateway.config import MonitorConfig

__all__ = [
    "ProbeResult", "Transition", "parse_info", "parse_stats", "parse_queued_users",
    "parse_metrics", "parse_openmetrics", "describe_error", "is_timeout", "http_error", "apply_probe",
    "discount_routed", "RUNNING_METRIC", "QUEUED_METRIC", "NODES_METRIC",
]

RUNNING_METRIC = "trino_execution_name_QueryManager_RunningQueries"
QUEUED_METRIC = "trino_execution_name_QueryManager_QueuedQueries"
NODES_METRIC = "trino_metadata_name_DiscoveryNodeManager_ActiveNodeCount"

_MAX_ERROR = 200   # state.error is shown in tables; keep it one line


@dataclass(frozen=True)
class ProbeResult:
    """One probe's verdict. Counts are None when this probe type does not report them."""
    health: Health
    error: str | None = None
    queued: int | None = None
    running: int | None = None
    workers: int | None = None
    user_queued: dict[str, int] | None = None
    # A probe that timed out while the gateway's own event loop stalled: it says nothing about
    # the backend (gateway/runtime/overload.py), so it changes nothing.
    inconclusive: bool = False

    @property
    def ok(self) -> bool:
        return self.health is Health.HEALTHY


@dataclass(frozen=True)
class Transition:
    backend: str
    old: Health
    new: Health
    error: str | None

    def message(self) -> str:
        text = f"backend {self.backend} {self.old.value} -> {self.new.value}"
        return f"{text}: {self.error}" if self.error and self.new is not Health.HEALTHY else text


def _bad(error: str) -> ProbeResult:
    return ProbeResult(Health.UNHEALTHY, _short(error))


def _short(text: str) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= _MAX_ERROR else text[: _MAX_ERROR - 3] + "..."


def http_error(status: int, where: str) -> str:
    """'HTTP 503 from /v1/info' (with a hint for the statuses operators can fix)."""
    hint = {401: " (check monitor.username/password)", 403: " (the monitor user lacks access)",
            404: " (not a Trino coordinator?)"}.get(status, "")
    return f"HTTP {status} from {where}{hint}"


def _json(body: bytes | str, where: str) -> tuple[Any, str | None]:
    try:
        return json.loads(body), None
    except (ValueError, UnicodeDecodeError):
        return None, f"{where} did not return JSON"


def parse_info(status: int, body: bytes | str) -> ProbeResult:
    """``GET /v1/info``: 200 and ``starting: false`` is HEALTHY, ``starting: true`` PENDING."""
    if status != 200:
        return _bad(http_error(status, "/v1/info"))
    doc, err = _json(body, "/v1/info")
    if err:
        return _bad(err)
    if not isinstance(doc, dict) or not isinstance(doc.get("starting"), bool):
        return _bad("/v1/info has no 'starting' flag (not a Trino coordinator?)")
    if doc["starting"]:
        return ProbeResult(Health.PENDING, "starting")
    return ProbeResult(Health.HEALTHY)


def _count(doc: dict[str, Any], key: str) -> int | None:
    value = doc.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        return None
    return int(value)


def parse_stats(status: int, body: bytes | str) -> ProbeResult:
    """``GET /ui/api/stats``: running, queued and active workers; zero workers is UNHEALTHY."""
    if status != 200:
        return _bad(http_error(status, "/ui/api/stats"))
    doc, err = _json(body, "/ui/api/stats")
    if err:
        return _bad(err)
    if not isinstance(doc, dict):
        return _bad("/ui/api/stats is not a JSON object")
    counts = {k: _count(doc, k) for k in ("runningQueries", "queuedQueries", "activeWorkers")}
    missing = [k for k, v in counts.items() if v is None]
    if missing:
        return _bad(f"/ui/api/stats lacks {', '.join(missing)}")
    running, queued, workers = counts["runningQueries"], counts["queuedQueries"], counts["activeWorkers"]
    health = Health.HEALTHY if workers else Health.UNHEALTHY
    return ProbeResult(health, None if workers else "0 active workers",
                       queued=queued, running=running, workers=workers)


def parse_queued_users(status: int, body: bytes | str) -> dict[str, int] | str:
    """``GET /ui/api/query?state=QUEUED``: queued queries per ``sessionUser``, or an error text."""
    if status != 200:
        return http_error(status, "/ui/api/query")
    doc, err = _json(body, "/ui/api/query")
    if err:
        return err
    if not isinstance(doc, list):
        return "/ui/api/query is not a JSON list"
    counts: dict[str, int] = {}
    for item in doc:
        if not isinstance(item, dict):
            continue
        # Filter again: an older coordinator may ignore ?state= and list every query.
        if item.get("state", "QUEUED") != "QUEUED":
            continue
        user = item.get("sessionUser")
        if user is None and isinstance(item.get("session"), dict):
            user = item["session"].get("user")
        if isinstance(user, str):
            counts[user] = counts.get(user, 0) + 1
    return counts


def parse_openmetrics(text: str) -> dict[str, float]:
    """Sample name -> value of an OpenMetrics / Prometheus text page (first sample wins).

    Labels are ignored: the three Trino gauges the monitor reads carry none.
    """
    samples: dict[str, float] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if "{" in line.split(" ", 1)[0]:
            name, _, rest = line.partition("{")
            close = rest.rfind("}")
            if close < 0:
                continue
            rest = rest[close + 1:]
        else:
            name, _, rest = line.partition(" ")
        fields = rest.split()
        if not fields:
            continue
        try:
            value = float(fields[0])
        except ValueError:
            continue
        samples.setdefault(name.strip(), value)
    return samples


def parse_metrics(status: int, text: str, cfg: MonitorConfig) -> ProbeResult:
    """``GET /metrics``: running, queued and active nodes, checked against the bounds."""
    if status != 200:
        return _bad(http_error(status, "/metrics"))
    samples = parse_openmetrics(text)
    names = {"running": RUNNING_METRIC, "queued": QUEUED_METRIC, "nodes": NODES_METRIC}
    values: dict[str, int] = {}
    missing: list[str] = []
    for key, metric in names.items():
        v = samples.get(metric)
        if v is None or math.isnan(v) or math.isinf(v) or v < 0:
            missing.append(metric)
        else:
            values[key] = int(v)
    if missing:
        return _bad(f"/metrics lacks {', '.join(missing)}")
    running, queued, nodes = values["running"], values["queued"], values["nodes"]
    problems = []
    if nodes < cfg.minActiveNodes:
        problems.append(f"{nodes} active nodes, fewer than minActiveNodes {cfg.minActiveNodes}")
    if cfg.maxQueued is not None and queued > cfg.maxQueued:
        problems.append(f"{queued} queued queries, more than maxQueued {cfg.maxQueued}")
    if cfg.maxRunning is not None and running > cfg.maxRunning:
        problems.append(f"{running} running queries, more than maxRunning {cfg.maxRunning}")
    # Counts are kept even when a bound is violated, so the state API shows why.
    return ProbeResult(Health.UNHEALTHY if problems else Health.HEALTHY,
                       _short("; ".join(problems)) if problems else None,
                       queued=queued, running=running, workers=nodes)


def _seconds(t: float) -> str:
    return f"{t:g}s"


def is_timeout(exc: BaseException | None) -> bool:
    """Whether a request failed because its time ran out (rather than an answer or a refusal)."""
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
        return True
    if isinstance(exc, HTTPClientError):
        return exc.code == 599 and "timeout" in str(exc.message or exc).lower()
    if isinstance(exc, StreamClosedError):
        return is_timeout(exc.real_error)
    return False


def describe_error(exc: BaseException, timeout: float) -> str:
    """A short message for a request that did not produce a response."""
    if is_timeout(exc) and not isinstance(exc, StreamClosedError):
        return f"timed out after {_seconds(timeout)}"
    if isinstance(exc, HTTPClientError):
        if exc.code == 599:
            return _short(str(exc.message or exc))
        return f"HTTP {exc.code}"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, ConnectionResetError):
        return "connection reset"
    if isinstance(exc, StreamClosedError):
        real = exc.real_error
        return describe_error(real, timeout) if real is not None else "connection closed"
    if isinstance(exc, socket.gaierror):
        return "cannot resolve host name"
    if isinstance(exc, ssl.SSLError):
        return _short(f"TLS error: {exc.reason or exc}")
    if isinstance(exc, OSError) and exc.strerror:
        return _short(exc.strerror.lower())
    return _short(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)


def discount_routed(state: BackendState, routed: int, user_routed: dict[str, int]) -> None:
    """Forget the locally routed counts a fresh probe has seen.

    ``routed``/``user_routed`` are the counters as they were when the probe was sent; queries
    routed while the probe was in flight stay counted, since the answer may not include them.
    """
    state.routed_since_probe = max(0, state.routed_since_probe - routed)
    if user_routed:
        left = {}
        for user, n in state.user_routed_since_probe.items():
            rest = n - user_routed.get(user, 0)
            if rest > 0:
                left[user] = rest
        state.user_routed_since_probe = left
    # else: nothing was counted at send time, everything counted now arrived during the probe


def _is_passive_mark(state: BackendState) -> bool:
    # Registry.mark_unhealthy sets UNHEALTHY and zeroes consecutive_ok but, unlike a probe,
    # counts no bad result: a probe-made UNHEALTHY always has consecutive_bad >= 1, and a
    # recovering one has consecutive_ok >= 1.
    return state.health is Health.UNHEALTHY and state.consecutive_bad == 0 and state.consecutive_ok == 0


def apply_probe(name: str, state: BackendState, result: ProbeResult, cfg: MonitorConfig,
                now: float) -> Transition | None:
    """Fold one probe result into ``state``; return the health change, if any. An
    inconclusive result (see ``ProbeResult.inconclusive``) changes nothing."""
    if result.inconclusive:
        return None
    old = state.health
    state.last_probe = now
    if result.queued is not None:
        state.queued = result.queued
    if result.running is not None:
        state.running = result.running
    if result.queued is not None or result.running is not None:
        state.counts_known = True
    if result.workers is not None:
        state.workers = result.workers
    if result.user_queued is not None:
        state.user_queued = dict(result.user_queued)

    if result.ok:
        passive = _is_passive_mark(state)
        state.consecutive_ok += 1
        state.consecutive_bad = 0
        if old is Health.HEALTHY:
            state.error = None
            return None
        if old in (Health.PENDING, Health.UNKNOWN) or passive \
                or state.consecutive_ok >= cfg.healthyThreshold:
            state.health = Health.HEALTHY
            state.error = None
            return Transition(name, old, Health.HEALTHY, None)
        state.error = f"recovering: {state.consecutive_ok} of {cfg.healthyThreshold} good probes"
        return None

    state.consecutive_bad += 1
    state.consecutive_ok = 0
    state.error = result.error
    if old is result.health:
        return None
    if old is not Health.HEALTHY or state.consecutive_bad >= cfg.unhealthyThreshold:
        state.health = result.health
        return Transition(name, old, result.health, result.error)
    # Still HEALTHY, damped: the error shows why it may soon leave.
    state.error = f"{result.error} ({state.consecutive_bad} of {cfg.unhealthyThreshold} bad probes)"
    return None
