"""The cluster monitor: probe every backend each ``monitor.interval`` and keep its state.

Probes run concurrently with ``monitor.timeout`` each, so a hung coordinator delays nobody.
In the gateway the rounds and their probes run on a thread with an event loop of their own
(``own_thread``, ``gateway/backends/probe_thread.py``), so a busy proxy loop can neither delay a round
nor fire a probe's deadline late; results are applied on the proxy's loop. What an answer
*means* lives in ``gateway/backends/probes.py`` (pure functions); this module only does the
HTTP and writes results into the registry's ``BackendState`` objects, which the balancer reads
on the request path.

Monitor types (``monitor.type``):

* ``info-api``: ``GET /v1/info`` (public; no credentials).
* ``ui-api``: form login at ``/ui/login`` (``monitor.username``, default ``trino-gateway``,
  and ``monitor.password``, default empty), keeping the ``Trino-UI-Token`` cookie per backend
  and logging in again on 401; then ``/ui/api/stats`` and ``/ui/api/query?state=QUEUED``.
* ``metrics``: ``GET /metrics`` with ``X-Trino-User`` (and Basic auth when a password is set).
* ``noop``: no requests; every backend is HEALTHY.
* a plugin's type (entry-point group ``trino_gateway.monitor_types``): a factory called with the
  ``monitor`` configuration that returns an object with ``async probe(backend, fetch) ->
  ProbeResult``; ``await fetch(url, **HTTPRequest options)`` is the monitor's own fetch, within
  ``monitor.timeout`` (docs/extending.md).

Every health change is logged on ``gateway.monitor`` at INFO, e.g.
``backend trino-2 HEALTHY -> UNHEALTHY: connection refused``.

A probe that timed out while this worker's event loop stalled (``lag``, a
``gateway.runtime.overload.LoopLag``) is inconclusive: "we did not get to it" is not "the backend did
not answer", so it changes no health (``gateway.runtime.overload.failure_counts``). A failed forward
asks for an early probe of its backend (``probe_soon``): the probe, not one failed request,
decides whether a backend is down.
"""
from __future__ import annotations

import asyncio
import inspect
import logging
import time
from http.cookies import CookieError, SimpleCookie
from typing import Any, Callable
from urllib.parse import urlencode

from tornado.httpclient import AsyncHTTPClient, HTTPRequest, HTTPResponse
from tornado.ioloop import IOLoop

from gateway.backends.state import Backend, Health, Registry
from gateway.config import MonitorConfig
from gateway.plugins import Plugins
from gateway.backends.probes import (
    NODES_METRIC, QUEUED_METRIC, RUNNING_METRIC, ProbeResult, Transition, apply_probe,
    describe_error, discount_routed, is_timeout, parse_info, parse_metrics, parse_queued_users,
    parse_stats,
)
from gateway.runtime.overload import EXCUSED, LoopLag, failure_counts
from gateway.backends.probe_thread import ProbeThread

__all__ = ["Monitor", "DEFAULT_MONITOR_USER", "MONITOR_TYPES"]

log = logging.getLogger("gateway.monitor")

DEFAULT_MONITOR_USER = "trino-gateway"
_USER_AGENT = "trino-gateway-monitor"
_UI_COOKIE = "Trino-UI-Token"
# Probe types whose answers carry no load counts: the locally routed counters are cleared
# every round instead, so least-queued balances per interval rather than over all time.
_COUNTLESS = ("info-api", "noop")
_METRICS_QUERY = urlencode([("name[]", m) for m in (RUNNING_METRIC, QUEUED_METRIC, NODES_METRIC)])

# monitor.type -> the built-ins (implemented by ``Monitor`` itself) and plugin factories.
MONITOR_TYPES: Plugins[Any] = Plugins("trino_gateway.monitor_types", "monitor type",
                                      {t: t for t in ("info-api", "ui-api", "metrics", "noop")})

RoundCallback = Callable[["Monitor"], Any]
TransitionCallback = Callable[[Transition], Any]


class _ProbeFailed(Exception):
    """A probe step failed with a message already fit for ``state.error``."""

    def __init__(self, message: str, *, timeout: bool = False) -> None:
        super().__init__(message)
        self.timeout = timeout


class Monitor:
    """Probes the registry's backends; ``first_round_done`` turns true after the first round."""

    def __init__(self, registry: Registry, cfg: MonitorConfig,
                 http_client: AsyncHTTPClient | None = None, *,
                 clock: Callable[[], float] = time.time, own_thread: bool = False,
                 http_defaults: dict[str, Any] | None = None) -> None:
        self.registry = registry
        self.cfg = cfg
        self.first_round_done = False
        self._first_round = asyncio.Event()   # set with first_round_done, on the proxy loop
        self.rounds = 0
        self._clock = clock
        self._own_client = http_client is None
        self._client = http_client
        self._http_defaults = http_defaults
        # Probes on a thread of their own (see the module docstring); not with a given client,
        # which belongs to the loop it was made on.
        self._probes: ProbeThread | None = ProbeThread() if own_thread and http_client is None else None
        self._ui_cookies: dict[tuple[str, str], str] = {}   # (name, proxyTo) -> Cookie header
        self._round_callbacks: list[RoundCallback] = []
        self._transition_callbacks: list[TransitionCallback] = []
        self._task: asyncio.Task[None] | None = None
        self._stopping: asyncio.Event | None = None
        self._early: dict[str, asyncio.Task[Any]] = {}   # backend name -> its early probe
        self.lag: LoopLag | None = None   # the event loop's lag (set by the gateway)
        self.on_excused: Callable[[], Any] | None = None  # a probe timeout was not counted
        self._plugin: Any = None                 # a plugin monitor type's probe object

    @property
    def username(self) -> str:
        return self.cfg.username or DEFAULT_MONITOR_USER

    def on_round(self, callback: RoundCallback) -> None:
        """Call ``callback(monitor)`` after every completed round (sync or async)."""
        self._round_callbacks.append(callback)

    def on_transition(self, callback: TransitionCallback) -> None:
        """Call ``callback(transition)`` whenever a probe changes a backend's health."""
        self._transition_callbacks.append(callback)

    # -- rounds ---------------------------------------------------------------------------

    async def run_round(self) -> list[Transition]:
        """Probe every backend once, concurrently; return the health changes."""
        backends = self.registry.all()
        outcomes = await asyncio.gather(*(self._probe_and_apply(b) for b in backends))
        transitions = [t for t in outcomes if t is not None]
        self._round_done(backends)
        for cb in self._round_callbacks:
            await self._call(cb, self)
        return transitions

    async def wait_first_round(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the first round to finish; whether it did."""
        try:
            await asyncio.wait_for(self._first_round.wait(), timeout)
        except asyncio.TimeoutError:
            pass
        return self.first_round_done

    def _round_done(self, backends: list[Backend]) -> None:
        live = {(b.name, b.proxyTo) for b in backends}
        for key in [k for k in list(self._ui_cookies) if k not in live]:   # list(): probes may add
            self._ui_cookies.pop(key, None)
        self.rounds += 1
        self.first_round_done = True
        self._first_round.set()

    async def _probe_and_apply(self, backend: Backend) -> Transition | None:
        state = self.registry.states.get(backend.name)
        if state is None:
            return None
        routed, user_routed = state.routed_since_probe, dict(state.user_routed_since_probe)
        result = await self.probe(backend)
        transition = self._apply(backend, state, routed, user_routed, result, self._clock())
        if transition is not None:
            for cb in self._transition_callbacks:
                await self._call(cb, transition)
        return transition

    def _apply(self, backend: Backend, state: Any, routed: int, user_routed: dict[str, int],
               result: ProbeResult, now: float) -> Transition | None:
        """Fold a probe result that completed at ``now`` into the backend's state (on the
        proxy's loop); the transition."""
        # The backend may have been removed or re-pointed while the probe was in flight.
        current = self.registry.get(backend.name)
        if current is None or current.proxyTo != backend.proxyTo \
                or self.registry.states.get(backend.name) is not state:
            return None
        transition = apply_probe(backend.name, state, result, self.cfg, now)
        # A plugin type that reports no counts is countless too (cleared every round).
        if result.queued is not None or (result.ok and (self.cfg.type in _COUNTLESS or self._plugin is not None)):
            discount_routed(state, routed, user_routed)
        if transition is not None:
            log.info(transition.message(), extra={
                "backend": backend.name, "health_from": transition.old.value,
                "health_to": transition.new.value, "health_error": transition.error})
        return transition

    # -- rounds on the probe thread -------------------------------------------------------

    async def _rounds_on_thread(self, main: asyncio.AbstractEventLoop) -> None:
        """The rounds, on the probe thread: their cadence and their probes never wait for the
        proxy loop. Each result is applied on the proxy loop (``main``) as it arrives."""
        assert self._probes is not None
        lag = self._probes.lag
        while True:
            started = time.monotonic()
            try:
                await self._round_on_thread(main, lag)
            except Exception:  # noqa: BLE001 - keep probing whatever happened
                log.exception("monitor round failed")
            await asyncio.sleep(max(0.0, self.cfg.interval - (time.monotonic() - started)))

    async def _round_on_thread(self, main: asyncio.AbstractEventLoop, lag: LoopLag | None) -> None:
        backends = self.registry.all()

        async def one(backend: Backend) -> None:
            state = self.registry.states.get(backend.name)
            if state is None:
                return
            # Read on this thread: an int and a copy made in one C call (the GIL makes both whole).
            routed, user_routed = state.routed_since_probe, dict(state.user_routed_since_probe)
            result = await self._probe_here(backend, lag)
            main.call_soon_threadsafe(self._apply_and_notify, backend, state, routed, user_routed,
                                      result, self._clock())

        await asyncio.gather(*(one(b) for b in backends))
        main.call_soon_threadsafe(self._round_done_and_notify, backends)

    def _apply_and_notify(self, backend: Backend, state: Any, routed: int,
                          user_routed: dict[str, int], result: ProbeResult, now: float) -> None:
        transition = self._apply(backend, state, routed, user_routed, result, now)
        if transition is not None and self._transition_callbacks:
            asyncio.get_running_loop().create_task(self._notify(self._transition_callbacks, transition))

    def _round_done_and_notify(self, backends: list[Backend]) -> None:
        self._round_done(backends)
        if self._round_callbacks:
            asyncio.get_running_loop().create_task(self._notify(self._round_callbacks, self))

    async def _notify(self, callbacks: list[Callable[[Any], Any]], arg: Any) -> None:
        for cb in callbacks:
            await self._call(cb, arg)

    async def probe(self, backend: Backend) -> ProbeResult:
        """One probe of one backend with the configured type; never raises."""
        probes = self._probes
        if probes is not None and probes.loop is not None:
            return await probes.run(self._probe_here(backend, probes.lag))
        return await self._probe_here(backend, self.lag)

    async def _probe_here(self, backend: Backend, lag: LoopLag | None) -> ProbeResult:
        """``probe`` on the running loop; ``lag`` is that loop's."""
        if self.cfg.type == "noop":
            return ProbeResult(Health.HEALTHY)
        step = {"info-api": self._probe_info, "ui-api": self._probe_ui,
                "metrics": self._probe_metrics}.get(self.cfg.type) or self._plugin_step()
        if step is None:
            return ProbeResult(Health.UNHEALTHY, f"unknown monitor type {self.cfg.type!r}")
        if lag is not None:
            lag.hold()   # the probe thread's sampler ticks only while a probe is under way
        try:
            started = time.monotonic()
            stalled = lag.stalled() if lag is not None else 0.0
            deadline = started + self.cfg.timeout
            try:
                # Each request gets what is left of the deadline, so Tornado's own timeouts end a
                # slow probe; wait_for is only a safety net (cancelling a fetch makes Tornado log).
                return await asyncio.wait_for(step(backend, deadline), self.cfg.timeout + 1.0)
            except _ProbeFailed as exc:
                return self._failed(str(exc), exc.timeout, started, lag, stalled)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - any failure is an UNHEALTHY result, not a crash
                log.debug("probe of %s failed", backend.name, exc_info=True)
                return self._failed(describe_error(exc, self.cfg.timeout), is_timeout(exc), started,
                                    lag, stalled)
        finally:
            if lag is not None:
                lag.release()

    def _failed(self, error: str, timeout: bool, started: float, lag: LoopLag | None,
                stalled: float) -> ProbeResult:
        """A failed probe's result: UNHEALTHY, or inconclusive when it timed out while the
        event loop stalled (the backend never had its ``monitor.timeout``)."""
        if timeout and lag is not None and not failure_counts(
                timeout=True, elapsed=time.monotonic() - started,
                lag=lag.stalled() - stalled, budget=self.cfg.timeout):
            if self.on_excused is not None:
                self.on_excused()
            return ProbeResult(Health.UNHEALTHY, f"{error} ({EXCUSED}: the gateway's event loop "
                               "stalled during the probe)", inconclusive=True)
        return ProbeResult(Health.UNHEALTHY, error)

    def probe_soon(self, name: str) -> None:
        """Probe one backend now, outside the rounds (a forward to it failed), unless its early
        probe is already under way or the monitor is not running."""
        if self._task is None or name in self._early or self.cfg.type == "noop":
            return   # (noop: a probe that says HEALTHY whatever happens tells nothing)
        backend = self.registry.get(name)
        if backend is None:
            return
        task = asyncio.get_running_loop().create_task(self._probe_and_apply(backend),
                                                      name=f"gateway-monitor-early-{name}")
        self._early[name] = task
        task.add_done_callback(lambda _t: self._early.pop(name, None))

    @staticmethod
    async def _call(cb: Callable[[Any], Any], arg: Any) -> None:
        try:
            out = cb(arg)
            if inspect.isawaitable(out):
                await out
        except Exception:  # noqa: BLE001 - a broken hook must not stop the monitor
            log.exception("monitor callback %r failed", cb)

    # -- probe types ----------------------------------------------------------------------

    def _http(self) -> AsyncHTTPClient:
        if self._client is None:
            # Our own instance, made inside the running loop: the shared default allows 10
            # connections, which would queue (and time out) probes of larger fleets.
            self._client = AsyncHTTPClient(force_instance=True, max_clients=256,
                                           defaults=self._http_defaults)
        return self._client

    async def _fetch(self, url: str, deadline: float, **kw: Any) -> HTTPResponse:
        left = deadline - time.monotonic()
        if left <= 0:
            raise _ProbeFailed(describe_error(TimeoutError(), self.cfg.timeout), timeout=True)
        headers = {"User-Agent": _USER_AGENT, **kw.pop("headers", {})}
        request = HTTPRequest(url, headers=headers, connect_timeout=left, request_timeout=left,
                              follow_redirects=False, **kw)
        response = await self._http().fetch(request, raise_error=False)
        if response.code == 599:   # no HTTP answer: refused, timed out, reset, TLS...
            error = response.error or OSError("no response")
            raise _ProbeFailed(describe_error(error, self.cfg.timeout), timeout=is_timeout(error))
        return response

    def _plugin_step(self) -> Callable[[Backend, float], Any] | None:
        """The probe of a plugin's monitor type (None: no such type; config validation says so)."""
        if self._plugin is None:
            if self.cfg.type not in MONITOR_TYPES:
                return None
            self._plugin = MONITOR_TYPES.get(self.cfg.type)(self.cfg)
        plugin = self._plugin

        async def step(backend: Backend, deadline: float) -> ProbeResult:
            async def fetch(url: str, **kw: Any) -> HTTPResponse:
                return await self._fetch(url, deadline, **kw)
            return await plugin.probe(backend, fetch)
        return step

    async def _probe_info(self, backend: Backend, deadline: float) -> ProbeResult:
        response = await self._fetch(backend.proxyTo + "/v1/info", deadline)
        return parse_info(response.code, response.body or b"")

    async def _probe_metrics(self, backend: Backend, deadline: float) -> ProbeResult:
        kw: dict[str, Any] = {"headers": {"X-Trino-User": self.username}}
        if self.cfg.password:
            kw.update(auth_username=self.username, auth_password=self.cfg.password, auth_mode="basic")
        response = await self._fetch(f"{backend.proxyTo}/metrics?{_METRICS_QUERY}", deadline, **kw)
        return parse_metrics(response.code, (response.body or b"").decode("utf-8", "replace"), self.cfg)

    async def _probe_ui(self, backend: Backend, deadline: float) -> ProbeResult:
        stats = await self._ui_get(backend, "/ui/api/stats", deadline)
        result = parse_stats(stats.code, stats.body or b"")
        if not result.ok:
            return result
        listing = await self._ui_get(backend, "/ui/api/query?state=QUEUED", deadline)
        users = parse_queued_users(listing.code, listing.body or b"")
        if isinstance(users, str):
            return ProbeResult(Health.UNHEALTHY, users)
        return ProbeResult(Health.HEALTHY, queued=result.queued, running=result.running,
                           workers=result.workers, user_queued=users)

    async def _ui_get(self, backend: Backend, path: str, deadline: float) -> HTTPResponse:
        """GET a UI API path with the backend's UI cookie, logging in first or again on 401."""
        key = (backend.name, backend.proxyTo)
        for attempt in (1, 2):
            cookie = self._ui_cookies.get(key)
            if cookie is None:
                cookie = self._ui_cookies[key] = await self._ui_login(backend, deadline)
            response = await self._fetch(backend.proxyTo + path, deadline, headers={"Cookie": cookie})
            # 401 (or a redirect to the login page): the token expired or the coordinator restarted.
            if response.code == 401 or 300 <= response.code < 400:
                self._ui_cookies.pop(key, None)
                if attempt == 1:
                    continue
                raise _ProbeFailed(f"UI login as {self.username!r} not accepted by {path}")
            return response
        raise AssertionError("unreachable")

    async def _ui_login(self, backend: Backend, deadline: float) -> str:
        body = urlencode({"username": self.username, "password": self.cfg.password or "",
                          "redirectPath": "/ui/"})
        response = await self._fetch(
            backend.proxyTo + "/ui/login", deadline, method="POST", body=body,
            headers={"Content-Type": "application/x-www-form-urlencoded"})
        cookies = []
        for header in response.headers.get_list("Set-Cookie"):
            jar: SimpleCookie = SimpleCookie()
            try:
                jar.load(header)
            except CookieError:
                continue
            # Over HTTPS the name may carry a __Secure- prefix.
            cookies += [f"{k}={m.value}" for k, m in jar.items() if k.endswith(_UI_COOKIE) and m.value]
        if not cookies:
            if response.code >= 400 and response.code not in (401, 403):
                raise _ProbeFailed(f"HTTP {response.code} from /ui/login")
            raise _ProbeFailed(f"UI login as {self.username!r} failed "
                               "(no Trino-UI-Token cookie; check monitor.username/password)")
        return "; ".join(cookies)

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        """Probe now, then every ``interval`` (rounds never overlap)."""
        if self._task is not None:
            return
        try:
            asyncio.get_running_loop()
        except RuntimeError:   # not inside the loop yet: start as soon as it runs
            IOLoop.current().add_callback(self.start)
            return
        if self._probes is not None:
            self._probes.start()
        self._stopping = asyncio.Event()
        self._task = asyncio.create_task(self._loop(self._stopping), name="gateway-monitor")

    async def _loop(self, stopping: asyncio.Event) -> None:
        if self._probes is not None and self._probes.loop is not None:
            await self._probes.run(self._rounds_on_thread(asyncio.get_running_loop()))
            return
        while not stopping.is_set():
            started = time.monotonic()
            try:
                await self.run_round()
            except Exception:  # noqa: BLE001 - keep probing whatever happened
                log.exception("monitor round failed")
            pause = max(0.0, self.cfg.interval - (time.monotonic() - started))
            try:
                await asyncio.wait_for(stopping.wait(), pause)
            except asyncio.TimeoutError:
                pass

    async def stop(self) -> None:
        """Stop probing (an in-flight round is cancelled) and close our HTTP client."""
        task, self._task = self._task, None
        if self._stopping is not None:
            self._stopping.set()
        for early in list(self._early.values()):
            early.cancel()
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
        client, self._client = self._client, None
        if self._probes is not None:
            if self._own_client and client is not None:
                self._probes.call(client.close)   # on the loop it was made on
            self._probes.stop()
        elif self._own_client and client is not None:
            client.close()
