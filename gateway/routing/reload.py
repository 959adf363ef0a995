"""Hot reload of the rules files: watch, debounce, parse off the loop, swap atomically.

``RulesWatcher`` keeps ``current``, the ruleset in force. A change is noticed two ways:

* watchdog events on the folders holding the rules (folders, not files: editors and Kubernetes
  ConfigMaps save by writing a new file and renaming it over the old one, or by swapping a
  ``..data`` symlink, and a watch on the old file would be lost);
* a poll of the files' mtimes, sizes and inodes every ``poll_interval`` seconds, in case events
  are lost (network file systems, symlink swaps outside the watched folder, a folder recreated).

Events arrive on watchdog's thread and are handed to the Tornado IOLoop with ``add_callback``,
debounced (a burst of writes gives one reload), and the files are read, parsed and type-checked
in the loop's thread-pool executor; only the final swap (one reference assignment) happens on
the loop thread. A ruleset with errors never replaces a working one: the error is kept in
``last_error`` (``file:line: message`` lines) and logged. Unchanged contents (same version hash)
are not re-parsed.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any, Callable, Iterable

from tornado.ioloop import IOLoop, PeriodicCallback
from watchdog.events import EVENT_TYPE_CLOSED_NO_WRITE, EVENT_TYPE_OPENED, FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from gateway.routing.rules import (
    RULE_FILE_SUFFIXES, RuleProblem, RulesError, Ruleset, parse_ruleset, read_sources, sources_version,
)

__all__ = ["RulesWatcher"]

log = logging.getLogger("gateway.rules")

_IGNORED_EVENTS = {EVENT_TYPE_OPENED, EVENT_TYPE_CLOSED_NO_WRITE}   # our own reads cause these
_MAX_DEBOUNCE_DELAY = 0.5   # a steady stream of writes still reloads at least this often
_MAX_SETTLE_RETRIES = 20    # then a file that keeps changing is loaded as it is


class RulesWatcher:
    """Holds the current ruleset and reloads it when the rules files change."""

    def __init__(self, paths: Iterable[str], *, on_change: Callable[[Ruleset], Any] | None = None,
                 on_error: Callable[[str], Any] | None = None, debounce: float = 0.2,
                 missing_ok: bool = False, poll_interval: float = 1.0, settle: float | None = None) -> None:
        """``missing_ok``: paths that do not exist count as empty (the default ``rules/``);
        otherwise a missing path is a load error. ``settle``: a file modified less than this
        long ago may still be being written (truncated but not yet filled), so the reload waits
        for it to be quiet (default: the debounce, at least 0.1 s)."""
        self.paths = [str(p) for p in paths]
        self.on_change = on_change
        self.on_error = on_error
        self.debounce = debounce
        self.missing_ok = missing_ok
        self.poll_interval = poll_interval
        self.settle = settle if settle is not None else max(debounce, 0.1)
        self.current: Ruleset | None = None
        self.last_error: str | None = None
        self.last_error_at: float | None = None
        self.reloads_ok = 0
        self.reloads_failed = 0
        self._io_loop: IOLoop | None = None
        self._observer: Any = None
        self._poller: PeriodicCallback | None = None
        self._timer: object | None = None
        self._first_event_at = 0.0
        self._reloading = False
        self._pending = False
        self._stopped = False
        self._signature: tuple | None = None
        self._apply_lock = threading.Lock()
        self._last_problems: list[RuleProblem] = []
        self._unsettled_retries = 0

    @property
    def loaded_at(self) -> float | None:
        current = self.current
        return current.loaded_at if current is not None else None

    # -- public control

    def start(self, io_loop: IOLoop | None = None, *, fail_on_error: bool = True) -> None:
        """Load the rules (unless already loaded) and start watching.

        With ``fail_on_error`` (the default) a ruleset that does not load at start, including a
        configured path that does not exist, raises ``RulesError``: there is no last good
        ruleset to keep. Without it the watcher starts with ``current = None`` and the error
        recorded, and picks up the fix when the files change.
        """
        self._io_loop = io_loop or IOLoop.current()
        self._stopped = False
        if self.current is None and not self.reload_now() and fail_on_error:
            raise RulesError(self._last_problems)
        self._start_observer()
        if self.poll_interval > 0:
            # PeriodicCallback binds to IOLoop.current(): create it on the loop's own thread.
            self._io_loop.add_callback(self._start_poller)

    def _start_poller(self) -> None:
        if not self._stopped and self._poller is None:
            self._poller = PeriodicCallback(self._poll, self.poll_interval * 1000)
            self._poller.start()

    def stop(self) -> None:
        """Stop watching. Call on the loop thread (timers are not thread-safe)."""
        self._stopped = True
        if self._poller is not None:
            self._poller.stop()
            self._poller = None
        if self._timer is not None and self._io_loop is not None:
            self._io_loop.remove_timeout(self._timer)
            self._timer = None
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=5)
            self._observer = None

    def reload_now(self) -> bool:
        """Reload synchronously in the calling thread; True if the rules in force are the files'."""
        return self._apply(self._load(wait_for_quiet=False))

    def trigger(self) -> None:
        """Ask for a reload from any thread (e.g. a SIGHUP handler); it runs off the loop thread."""
        if self._io_loop is not None:
            self._io_loop.add_callback(self._schedule)

    # -- loading (runs in the executor or the caller's thread)

    def _load(self, wait_for_quiet: bool = True) -> tuple[str, Any, tuple | None]:
        signature = self._file_signature()
        if wait_for_quiet and self._recently_modified(signature):
            return "unsettled", None, None
        try:
            sources, problems = read_sources(self.paths, missing_ok=self.missing_ok)
            if wait_for_quiet and self._file_signature() != signature:
                return "unsettled", None, None    # written while we read: read again when quiet
            current = self.current
            if not problems and current is not None and current.version == sources_version(sources):
                return "same", None, signature
            return "ok", parse_ruleset(sources, problems), signature
        except RulesError as exc:
            return "error", exc, signature
        except Exception as exc:  # noqa: BLE001 - a reload bug must not kill the watcher
            log.exception("rules reload crashed")
            return "error", RulesError([RuleProblem(",".join(self.paths), None, f"reload failed: {exc}")]), signature

    def _recently_modified(self, signature: tuple) -> bool:
        # A writer that truncates then fills a file (echo >, some editors) leaves a window where
        # the file is empty or cut at a document boundary, which is a *valid* ruleset. Waiting
        # until the files have been quiet for `settle` keeps those states out. Future mtimes
        # (clock skew on network file systems) count as quiet so a reload can never stall.
        now = time.time()
        return any(len(entry) == 4 and 0 <= now - entry[1] / 1e9 < self.settle for entry in signature)

    def _apply(self, result: tuple[str, Any, tuple | None]) -> bool:
        kind, value, signature = result
        if kind == "unsettled":
            return False
        with self._apply_lock:
            self._signature = signature
            if kind == "same":
                if self.last_error is not None:
                    log.info("rules files are back to version %s; earlier error cleared", self.current.version)  # type: ignore[union-attr]
                self.last_error = None
                return True
            if kind == "ok":
                old = self.current
                self.current = value          # the atomic swap: one reference assignment
                self.reloads_ok += 1
                self.last_error = None
                log.info("rules loaded: version %s, %d rules from %d files%s", value.version, len(value.rules),
                         len(value.files), f" (was {old.version})" if old is not None else "")
            else:
                self._last_problems = value.errors
                self.reloads_failed += 1
                self.last_error = str(value)
                self.last_error_at = time.time()
                keeping = f"keeping version {self.current.version}" if self.current is not None else "no rules in force"
                log.error("rules reload failed (%s):\n%s", keeping, self.last_error)
        callback = self.on_change if kind == "ok" else self.on_error
        if callback is not None:
            try:
                callback(value if kind == "ok" else self.last_error)
            except Exception:  # noqa: BLE001
                log.exception("rules %s callback failed", "on_change" if kind == "ok" else "on_error")
        return kind == "ok"

    # -- change detection

    def _watch_dirs(self) -> set[str]:
        dirs = set()
        for p in self.paths:
            ap = os.path.abspath(p)
            if os.path.isdir(ap):
                dirs.add(ap)
            elif os.path.isdir(os.path.dirname(ap)) and os.path.exists(ap):
                dirs.add(os.path.dirname(ap))
        return dirs

    def _start_observer(self) -> None:
        dirs = self._watch_dirs()
        if not dirs:
            return   # nothing exists yet; the poller notices when it appears
        observer = Observer()
        handler = _Handler(self)
        for d in sorted(dirs):
            try:
                observer.schedule(handler, d, recursive=False)
            except OSError as exc:   # e.g. inotify watch limit reached: polling still works
                log.warning("cannot watch %s for rules changes (%s); relying on polling", d, exc)
        observer.daemon = True
        observer.start()
        self._observer = observer

    def _on_fs_event(self) -> None:
        """Called on watchdog's thread."""
        loop = self._io_loop
        if loop is None or self._stopped:
            return
        try:
            loop.add_callback(self._schedule)
        except RuntimeError:
            pass   # the loop is closing

    def _file_signature(self) -> tuple:
        """Cheap fingerprint of the rules files: names, mtimes, sizes and inodes (following links)."""
        sig: list[Any] = []
        for p in self.paths:
            try:
                if os.path.isdir(p):
                    names = sorted(n for n in os.listdir(p) if n.endswith(RULE_FILE_SUFFIXES) and not n.startswith("."))
                    files = [os.path.join(p, n) for n in names]
                else:
                    files = [p]
            except OSError:
                files = [p]
            for f in files:
                try:
                    st = os.stat(f)
                    sig.append((f, st.st_mtime_ns, st.st_size, st.st_ino))
                except OSError:
                    sig.append((f, None))
        return tuple(sig)

    def _poll(self) -> None:
        if self._stopped or self._reloading:
            return
        if self._file_signature() != self._signature:
            self._schedule()

    # -- debounce and background reload (loop thread)

    def _schedule(self) -> None:
        loop = self._io_loop
        if self._stopped or loop is None:
            return
        now = loop.time()
        if self._timer is not None:
            if now - self._first_event_at >= _MAX_DEBOUNCE_DELAY:
                return   # keep the pending timer so a stream of writes cannot postpone forever
            loop.remove_timeout(self._timer)
        else:
            self._first_event_at = now
        self._timer = loop.call_later(self.debounce, self._start_reload)

    def _start_reload(self) -> None:
        self._timer = None
        if self._stopped or self._io_loop is None:
            return
        if self._reloading:
            self._pending = True
            return
        self._reloading = True
        future = self._io_loop.run_in_executor(None, self._load)
        self._io_loop.add_future(future, self._reload_done)

    def _reload_done(self, future: Any) -> None:
        self._reloading = False
        try:
            result = future.result()
        except Exception as exc:  # noqa: BLE001
            result = ("error", RulesError([RuleProblem(",".join(self.paths), None, f"reload failed: {exc}")]), None)
        if self._stopped:
            return
        if result[0] == "unsettled":
            self._unsettled_retries += 1
            if self._unsettled_retries <= _MAX_SETTLE_RETRIES:
                if self._timer is None:   # else a newer event already scheduled the next attempt
                    self._timer = self._io_loop.call_later(self.settle, self._start_reload)  # type: ignore[union-attr]
                return
            result = self._load(wait_for_quiet=False)   # files never go quiet: take them as they are
        self._unsettled_retries = 0
        self._apply(result)
        if self._pending:
            self._pending = False
            self._schedule()


class _Handler(FileSystemEventHandler):
    def __init__(self, watcher: RulesWatcher) -> None:
        self._watcher = watcher

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type not in _IGNORED_EVENTS:
            self._watcher._on_fs_event()
