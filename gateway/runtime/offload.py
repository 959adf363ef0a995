"""CPU-heavy work off the event loop, with a time budget: SQL analysis, rules checks, passwords.

One worker process serves the proxy, the admin pages and the health checks on one event loop,
so a 1 MB ``IN (1,1,...)`` statement parsed by sqlglot (3-4 s) or an 800 KB rule condition
compiled by rule-engine (15 s) froze every client of that process. Both are pure Python and
hold the GIL, so a thread would not help; they run in a child process instead
(``python -m gateway.runtime.offload``, one per gateway process, started at start-up). A task that
outlives its budget is abandoned: the child is killed and a new one started, and the caller
gets ``OverBudget`` (routing then treats the SQL facts as unknown; a rules check answers that
it took too long). Only one task runs at a time in the child; a task that cannot get the child
within its budget is over budget too, so a flood of large statements costs the flooder its SQL
facts and nobody else anything: statements of up to ``INLINE_SQL_CHARS`` are still analysed on
the loop (a few milliseconds at most), and analysis results are cached in the gateway process.

Password hashing (PBKDF2) releases the GIL, so it runs on two threads of the gateway process;
at most ``MAX_PASSWORD_WAITERS`` checks wait for them, more are refused as busy.

Protocol with the child: length-prefixed pickled frames on stdin/stdout, ``(task, args)`` in,
``(ok, value)`` out, as in ``gateway.store.process``.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import pickle
import signal
import struct
import sys
import time
from typing import Any, Callable

from gateway.routing import sql as sqlmod
from gateway.routing.sql import UNKNOWN_FACTS, SqlFacts

__all__ = ["Offload", "OverBudget", "Busy", "INLINE_SQL_CHARS", "PasswordChecks"]

log = logging.getLogger("gateway.offload")

_HEADER = struct.Struct("!I")
INLINE_SQL_CHARS = 4096          # analysed on the loop: sqlglot needs at most a few ms for these
MAX_PASSWORD_WAITERS = 16


class OverBudget(Exception):
    """The task did not finish (or could not start) within its time budget."""


class Busy(Exception):
    """Too many tasks of this kind are waiting already."""


def _frame(obj: Any) -> bytes:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    return _HEADER.pack(len(data)) + data


class Offload:
    """One child process for CPU-heavy tasks; ``await run(task, *args, budget=s)``."""

    def __init__(self) -> None:
        self._proc: asyncio.subprocess.Process | None = None
        self._lock: asyncio.Lock | None = None      # one task at a time in the child
        self._starting: asyncio.Task[None] | None = None
        self._closed = False
        self.over_budget = 0                          # tasks abandoned (a figure for tests and logs)

    def start(self) -> None:
        """Start the child in the background (start-up must not wait for its imports)."""
        if self._starting is None or self._starting.done():
            self._starting = asyncio.get_running_loop().create_task(self._spawn())

    async def _spawn(self) -> None:
        if self._closed or (self._proc is not None and self._proc.returncode is None):
            return
        from gateway.store.process import site_dirs
        env = dict(os.environ)
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        if root not in site_dirs():
            env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "gateway.runtime.offload", stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE, env=env)
            await self._read(proc)    # "ready": its imports are done
        except (OSError, asyncio.IncompleteReadError) as exc:
            # e.g. out of descriptors: tasks are over budget until a later start works
            log.warning("cannot start the offload process: %s", exc)
            return
        self._proc = proc

    async def run(self, task: str, *args: Any, budget: float) -> Any:
        """Run ``task`` in the child; ``OverBudget`` when it takes longer than ``budget`` seconds
        (including the wait for the child). Exceptions of the task are raised here."""
        deadline = time.monotonic() + budget
        if self._lock is None:
            self._lock = asyncio.Lock()
        try:
            await asyncio.wait_for(self._lock.acquire(), budget)
        except asyncio.TimeoutError:
            self.over_budget += 1
            raise OverBudget(f"waited {budget:g}s for the analysis process") from None
        try:
            if self._proc is None or self._proc.returncode is not None:
                self.start()
                assert self._starting is not None
                await asyncio.wait_for(asyncio.shield(self._starting), max(0.0, deadline - time.monotonic()))
            proc = self._proc
            if proc is None or proc.stdin is None or proc.stdout is None:
                raise OverBudget("the analysis process is not running")
            proc.stdin.write(_frame((task, args)))
            reply = asyncio.ensure_future(self._read(proc))
            try:
                ok, value = await asyncio.wait_for(reply, max(0.0, deadline - time.monotonic()))
            except asyncio.TimeoutError:
                self.over_budget += 1
                self._abandon(proc)
                raise OverBudget(f"{task} took longer than {budget:g}s") from None
            except (asyncio.IncompleteReadError, ConnectionError) as exc:
                self._abandon(proc)
                raise OverBudget(f"the analysis process failed: {exc}") from None
        except asyncio.TimeoutError:
            self.over_budget += 1
            raise OverBudget(f"the analysis process did not start within {budget:g}s") from None
        finally:
            self._lock.release()
        if not ok:
            raise value
        return value

    @staticmethod
    async def _read(proc: asyncio.subprocess.Process) -> tuple[bool, Any]:
        assert proc.stdout is not None
        (size,) = _HEADER.unpack(await proc.stdout.readexactly(_HEADER.size))
        return pickle.loads(await proc.stdout.readexactly(size))

    def _abandon(self, proc: asyncio.subprocess.Process) -> None:
        """Kill a child busy with an abandoned task; the next one starts at once."""
        if proc.returncode is None:
            proc.kill()
        if self._proc is proc:
            self._proc = None
        asyncio.get_running_loop().create_task(proc.wait())
        if not self._closed:
            self.start()

    async def close(self) -> None:
        self._closed = True
        if self._starting is not None:
            await asyncio.gather(self._starting, return_exceptions=True)
        proc, self._proc = self._proc, None
        if proc is not None and proc.returncode is None:
            if proc.stdin is not None:
                proc.stdin.close()
            try:
                await asyncio.wait_for(proc.wait(), 2)
            except asyncio.TimeoutError:
                proc.kill()
                await proc.wait()

    # -- SQL facts -----------------------------------------------------------------------

    async def sql_facts(self, sql: str, catalog: str | None, schema: str | None,
                        prepared: dict[str, str], *, budget: float) -> tuple[SqlFacts, str | None]:
        """The facts of ``sql`` and, when they are unknown because of the budget, why."""
        hit = sqlmod.cached(sql, catalog, schema, prepared)
        if hit is not None:
            return hit, None
        if len(sql) <= INLINE_SQL_CHARS:
            return sqlmod.analyze(sql, catalog, schema, prepared), None
        try:
            facts = await self.run("sql", sql, catalog, schema, prepared, budget=budget)
        except OverBudget as exc:
            log.info("SQL analysis of a %d-character statement abandoned (%s): routed with "
                     "SQL facts unknown", len(sql), exc)
            return UNKNOWN_FACTS, (f"SQL analysis ran out of its {budget:g}s budget: "
                                   f"routed with SQL facts unknown")
        except Exception as exc:   # noqa: BLE001 - a routing fact must never stop routing
            log.warning("SQL analysis failed in the offload process: %s", exc)
            return UNKNOWN_FACTS, "SQL analysis failed: routed with SQL facts unknown"
        sqlmod.remember(sql, catalog, schema, prepared, facts)
        return facts, None


class PasswordChecks:
    """PBKDF2 checks on two threads (the digest releases the GIL), never on the event loop."""

    def __init__(self, workers: int = 2) -> None:
        self._pool = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="password")
        self._waiting = 0

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        if self._waiting >= MAX_PASSWORD_WAITERS:
            raise Busy("too many password checks are waiting")
        self._waiting += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)
        finally:
            self._waiting -= 1

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


# --- the child ----------------------------------------------------------------------------

def _rules_check(paths: list[str], file: Any, content: Any, missing_ok: bool) -> dict[str, Any]:
    from gateway.admin.rules_files import check_rules_file
    return check_rules_file(paths, file, content, missing_ok=missing_ok).to_json()


def _rules_save(paths: list[str], file: Any, content: Any, base_version: str | None, check_base: bool,
                missing_ok: bool) -> dict[str, Any]:
    """Save like ``save_rules_file``; a refusal comes back as ``{"error", "code", "check"}``."""
    from gateway.admin.rules_files import RulesFileError, check_rules_file, save_rules_file
    try:
        result = save_rules_file(paths, file, content, base_version=base_version,
                                 check_base=check_base, missing_ok=missing_ok)
    except RulesFileError as exc:
        check = None
        if exc.code == 422:
            check = check_rules_file(paths, file, content, missing_ok=missing_ok).to_json()
        return {"error": str(exc), "code": exc.code, "check": check}
    return result.to_json()


def _rules_error(paths: list[str], file: Any, content: Any, missing_ok: bool) -> dict[str, Any]:
    """``_rules_check`` with a refused file name or content as ``{"error", "code"}``."""
    from gateway.admin.rules_files import RulesFileError
    try:
        return _rules_check(paths, file, content, missing_ok)
    except RulesFileError as exc:
        return {"error": str(exc), "code": exc.code}


_TASKS: dict[str, Callable[..., Any]] = {
    "sql": sqlmod.analyze,
    "rules_check": _rules_error,
    "rules_save": _rules_save,
}


def main() -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)    # the gateway decides when this process ends
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        os.nice(5)   # the proxy comes first when the CPU is short
    except OSError:
        pass
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr    # a stray print must never corrupt the reply stream
    import gateway.admin.rules_files  # noqa: F401 - imported before "ready", not on a task's budget
    stdout.write(_frame((True, "ready")))
    stdout.flush()
    while True:
        header = stdin.read(_HEADER.size)
        if len(header) < _HEADER.size:
            return 0                               # the gateway closed the pipe (or died)
        (size,) = _HEADER.unpack(header)
        task, args = pickle.loads(stdin.read(size))
        try:
            reply: tuple[bool, Any] = (True, _TASKS[task](*args))
        except Exception as exc:   # noqa: BLE001 - every failure goes back to the caller
            reply = (False, RuntimeError(f"{type(exc).__name__}: {exc}"))
        stdout.write(_frame(reply))
        stdout.flush()


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BrokenPipeError:    # the gateway went away (a failed start, a crash): nothing to say
        sys.exit(0)
