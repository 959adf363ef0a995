"""The store in a child process, so database work never competes with the proxy for the GIL.

``AsyncStore`` runs the store on a thread of the gateway process. SQLite and psycopg hold
Python's GIL while they bind parameters and convert rows, and a thread that keeps retaking it
delays the event loop: with history on, that cost about 15 % of statement throughput and added
1-2 ms to the 99th percentile latency (docs/benchmarks.md). ``ProcessStore`` has the same
interface (``call`` and the named coroutines) but sends each call to a child process
(``python -m gateway.store.process``) over a pipe, so the gateway process only pickles the
arguments.

Protocol: length-prefixed pickled frames on the child's stdin/stdout. The first request opens
the store; then ``(method, args, kwargs)`` in, ``(ok, value)`` out, strictly in order (the
child serves one call at a time, like the single store thread). The child ignores SIGINT and
SIGTERM, so the gateway's graceful shutdown still writes its last history batch, and exits when
its stdin closes, so it never outlives the gateway. If it dies anyway, pending and new calls
fail with a retryable ``StoreError`` and the next call starts a new child.
"""
from __future__ import annotations

import asyncio
import collections
import logging
import os
import pickle
import signal
import struct
import sys
import threading
import time
from typing import Any

from .base import Store, StoreError
from .writer import StoreCalls

__all__ = ["ProcessStore"]

log = logging.getLogger("gateway.store")

_HEADER = struct.Struct("!I")     # a frame: 4-byte big-endian length, then the pickle


def site_dirs() -> set[str]:
    import site
    dirs = set(site.getsitepackages())
    dirs.add(site.getusersitepackages())
    return {os.path.abspath(d) for d in dirs}


def _frame(obj: Any) -> bytes:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    return _HEADER.pack(len(data)) + data


class ProcessStore(StoreCalls):
    """A store served by a child process; every call is awaited from the event loop."""

    def __init__(self, url: str, open_kwargs: dict[str, Any], log_config: dict[str, str] | None) -> None:
        self.url = url
        self._open_kwargs = open_kwargs
        self._log_config = log_config
        self._proc: asyncio.subprocess.Process | None = None
        self._pending: collections.deque[asyncio.Future[Any]] = collections.deque()
        self._reader: asyncio.Task[None] | None = None
        self._starting: asyncio.Lock | None = None
        self._closed = False
        self._quiet_exit = False

    @classmethod
    async def open(cls, url: str, *, log_config: dict[str, str] | None = None,
                   **kwargs: Any) -> "ProcessStore":
        """Start the child and open (and migrate) the store in it; errors as ``StoreError``."""
        self = cls(url, kwargs, log_config)
        await self._start()
        return self

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    async def _start(self) -> None:
        if self._starting is None:
            self._starting = asyncio.Lock()
        async with self._starting:
            if self._proc is not None:
                return
            env = dict(os.environ)
            # The child must import this very gateway package (a checkout run from its folder
            # or through PYTHONPATH is not necessarily what the interpreter finds by itself).
            root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
            if root not in site_dirs():
                env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "gateway.store.process",
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, env=env)
            self._proc = proc
            self._reader = asyncio.get_running_loop().create_task(self._read_replies(proc))
            try:
                await self._send(("open", self.url, self._open_kwargs, self._log_config))
            except BaseException:
                self._quiet_exit = True      # the caller gets the error; no "exited" log too
                await self._kill()
                self._quiet_exit = False
                raise

    async def call(self, fn_name: str, *args: Any, **kwargs: Any) -> Any:
        """``await store.<fn_name>(*args, **kwargs)`` in the child process."""
        self._check_method(fn_name)
        if self._closed:
            raise StoreError("the store is closed")
        if self._proc is None:
            await self._start()
        return await self._send(("call", fn_name, args, kwargs))

    async def _send(self, request: tuple[Any, ...]) -> Any:
        proc = self._proc
        if proc is None or proc.stdin is None:
            raise StoreError("the store process is not running")
        data = _frame((time.monotonic(), request))   # before queueing: may fail to pickle
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending.append(fut)
        try:
            proc.stdin.write(data)
            await proc.stdin.drain()
        except (ConnectionError, RuntimeError) as exc:
            if not fut.done():
                fut.set_exception(StoreError(f"the store process is gone: {exc}"))
        return await fut

    async def _read_replies(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        try:
            while True:
                header = await proc.stdout.readexactly(_HEADER.size)
                (size,) = _HEADER.unpack(header)
                ok, value = pickle.loads(await proc.stdout.readexactly(size))
                fut = self._pending.popleft()
                if fut.done():
                    continue
                if ok:
                    fut.set_result(value)
                else:
                    fut.set_exception(value)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        except asyncio.CancelledError:
            raise
        except Exception:   # noqa: BLE001 - a garbled reply: restart rather than guess
            log.exception("unreadable reply from the store process; restarting it")
            proc.kill()
        code = await proc.wait()
        if self._proc is proc:
            self._proc = None
        if not self._closed and not self._quiet_exit:
            log.error("the store process exited (code %s); it is restarted on the next store call",
                      code)
        while self._pending:
            fut = self._pending.popleft()
            if not fut.done():
                fut.set_exception(StoreError(f"the store process exited (code {code})"))

    async def _kill(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.returncode is None:
            proc.kill()
            await proc.wait()
        if self._reader is not None:
            await asyncio.gather(self._reader, return_exceptions=True)

    async def close(self) -> None:
        """Close the store in the child and wait for the child to exit."""
        if self._closed:
            return
        try:
            if self._proc is not None:
                await self.call("close")
        except StoreError:
            pass
        finally:
            self._closed = True
            proc = self._proc
            if proc is not None and proc.stdin is not None:
                proc.stdin.close()
                try:
                    await asyncio.wait_for(proc.wait(), 10)
                except asyncio.TimeoutError:
                    log.warning("the store process did not exit; killing it")
            await self._kill()


# --- the child ----------------------------------------------------------------------------

def _reply_error(exc: BaseException) -> Any:
    """The exception itself when it survives pickling, else a StoreError saying what it was."""
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:   # noqa: BLE001 - driver exceptions do not always pickle
        return StoreError(f"{type(exc).__name__}: {exc}",
                          permanent=bool(getattr(exc, "permanent", False)))


class _Priority:
    """Run as the machine's background work, and step up when that starves the store.

    Under SCHED_IDLE the kernel preempts this process the moment the proxy, a backend or a
    client wants its CPU. At normal priority, even nice 19, a woken task can wait a millisecond
    or more behind a busy store process: on a 2-CPU machine that alone raised the 99th
    percentile latency of requests that never touch the gateway from 0.12 to 1.6 ms
    (docs/benchmarks.md). A machine that is never idle would starve an idle-class process,
    so when requests wait in the pipe for over a second it switches to normal scheduling
    (nice 10) until they are served promptly again.
    """

    STARVED, CAUGHT_UP = 1.0, 0.1     # seconds a request waited in the pipe

    def __init__(self) -> None:
        self._prompt = 0
        if self._reversible():
            self.idle = self._set(idle=True)
        else:
            # Leaving the idle class needs CAP_SYS_NICE or a raised RLIMIT_NICE (containers
            # usually have neither); stuck there, a busy machine could starve the store.
            log.info("store process runs at nice 10, not at idle priority: this process may "
                     "not leave the idle class again (docs/store.md, 'The store process')")
            self.idle = self._set(idle=False)

    @staticmethod
    def _reversible() -> bool:
        """Whether this process could step up from the idle class, tried on a throw-away
        thread (Linux schedules each thread on its own)."""
        ok: list[bool] = []

        def probe() -> None:
            try:
                os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
                os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
                ok.append(True)
            except (AttributeError, OSError):
                ok.append(False)
        t = threading.Thread(target=probe)
        t.start()
        t.join()
        return bool(ok and ok[0])

    @staticmethod
    def _set(*, idle: bool) -> bool:
        try:
            if idle:
                os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
            else:
                os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
                os.setpriority(os.PRIO_PROCESS, 0, 10)
            return idle
        except (AttributeError, OSError) as exc:   # not Linux, or not permitted
            log.debug("store process scheduling unchanged: %s", exc)
            return not idle

    def note_wait(self, waited: float) -> None:
        if self.idle and waited > self.STARVED:
            log.info("store process: requests waited %.1fs for the CPU; leaving idle priority", waited)
            self.idle = self._set(idle=False)
            self._prompt = 0
        elif not self.idle:
            self._prompt = self._prompt + 1 if waited < self.CAUGHT_UP else 0
            if self._prompt >= 100:
                self.idle = self._set(idle=True)


def main() -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)    # the parent decides when the store closes
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    priority: _Priority | None = None    # set after the open request configured logging
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr    # a stray print must never corrupt the reply stream
    store: Store | None = None
    while True:
        header = stdin.read(_HEADER.size)
        if len(header) < _HEADER.size:
            break                               # the gateway closed the pipe (or died)
        (size,) = _HEADER.unpack(header)
        sent_at, request = pickle.loads(stdin.read(size))
        if priority is not None:
            priority.note_wait(time.monotonic() - sent_at)
        try:
            if request[0] == "open":
                _, url, kwargs, log_config = request
                if log_config:
                    from gateway.config import LoggingConfig
                    from gateway.logs import setup_logging
                    setup_logging(LoggingConfig(**log_config))
                from . import open_store
                priority = priority or _Priority()
                store = open_store(url, **kwargs)
                reply: tuple[bool, Any] = (True, None)
            else:
                _, name, args, kwargs = request
                if store is None:
                    raise StoreError("the store is not open")
                reply = (True, getattr(store, name)(*args, **kwargs))
                if name == "close":
                    store = None
        except BaseException as exc:   # noqa: BLE001 - every failure goes back to the caller
            reply = (False, _reply_error(exc))
        try:
            data = _frame(reply)
        except Exception as exc:   # noqa: BLE001 - an unpicklable result
            data = _frame((False, StoreError(f"cannot send the store's answer: {exc}")))
        try:
            stdout.write(data)
            stdout.flush()
        except BrokenPipeError:      # the gateway is gone (e.g. stopped while it was starting)
            # Python flushes stdout again at exit; point it at /dev/null so that is quiet too.
            os.dup2(os.open(os.devnull, os.O_WRONLY), stdout.fileno())
            break
    if store is not None:
        store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
