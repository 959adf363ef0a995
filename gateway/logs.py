"""Logging setup: one line per event, as text or JSON, with secrets redacted.

Text lines read ``TIME [PID] LEVEL LOGGER: message``. JSON lines are one object per line with
``time``, ``level``, ``logger``, ``pid``, ``message`` and every field the code passed with
``extra=`` (for example a routed statement's ``query_id``, ``user``, ``group``, ``backend``,
``rule`` and ``decision_ms``), so log pipelines can filter without parsing the message.
Credentials (Authorization headers, passwords, passwords in URLs, UI and ID tokens) are replaced
by ``***`` in both formats, in the message, in extra fields and in tracebacks.

``text_lines.info`` writes the one line per routed statement directly when the text handler
installed here is the only destination (see ``_TextLines``); anything else uses ``logging``.
"""
from __future__ import annotations

import json
import logging
import os
import re
import sys
import time
from typing import Any

from gateway.config import LoggingConfig

__all__ = ["redact", "setup_logging", "JsonFormatter", "TextFormatter"]

# Credentials that may appear in URLs, header dumps or reprs never reach the log.
_Q = r"""['"]?"""   # an optional quote, as in a dict repr or JSON
_SECRETS = (
    (re.compile(rf"(?i)(authorization{_Q}\s*[:=]\s*{_Q})(basic|bearer|negotiate)\s+[^\s'\",;]+"), r"\1\2 ***"),
    (re.compile(rf"(?i)((?:password|passwd|secret|token){_Q}\s*[:=]\s*{_Q})[^\s,;&'\"}}]+"), r"\1***"),
    (re.compile(r"(//[^:/@\s]+):[^@/\s]*@"), r"\1:***@"),
    (re.compile(r"(?i)((?:__Secure-)?Trino-UI-Token=|__Secure-Trino-ID-Token=|Trino-OAuth2-Token=)[^;\s'\"]+"), r"\1***"),
    (re.compile(rf"(?i)(X-Trino-Extra-Credential{_Q}\s*[:=]\s*{_Q}[^=\s'\"]+=)[^\s,'\"]+"), r"\1***"),
)

# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}


# Every pattern above needs one of these (lower-case) words, or an "@": a line without any is
# returned as is. Scanning for them costs a microsecond; the five patterns, about 18 on each
# routed statement's log line (docs/benchmarks.md).
_NEEDLES = ("authorization", "passw", "secret", "token", "credential")


def redact(text: str) -> str:
    if "@" not in text:
        low = text.lower()
        if not any(n in low for n in _NEEDLES):
            return text
    for pattern, repl in _SECRETS:
        text = pattern.sub(repl, text)
    return text


def _field(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float)):
        return value
    return redact(str(value))


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
                    + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "pid": record.process,
            "message": redact(record.getMessage()),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_") and key not in doc:
                doc[key] = _field(value)
        if record.exc_info:
            doc["exception"] = redact(self.formatException(record.exc_info))
        return json.dumps(doc, separators=(",", ":"), default=str)


# Kept for code that imported the private names.
_TextFormatter = TextFormatter
_JsonFormatter = JsonFormatter


TEXT_FORMAT = "%(asctime)s [%(process)d] %(levelname)s %(name)s: %(message)s"


class _TextLines:
    """Text lines written without a ``LogRecord``, for the one INFO line per routed statement.

    Python's logging machinery (a record of some 25 attributes, two lock round trips, a
    formatter) cost about 20 µs per line inside a busy gateway, 9 % of its statement throughput
    (docs/benchmarks.md). When the text handler ``setup_logging`` installed is the only
    destination (no other handler, filter or level in the way), ``info`` writes the identical
    line itself; otherwise (JSON format, a test capturing records, a custom setup) it returns
    False and the caller logs the usual way.
    """

    def __init__(self) -> None:
        self.handler: logging.StreamHandler | None = None    # set by setup_logging
        self._second = -1
        self._stamp = ""
        self._pid = os.getpid()
        os.register_at_fork(after_in_child=self._forked)

    def _forked(self) -> None:
        self._second, self._pid = -1, os.getpid()   # a worker's lines carry its own pid

    def info(self, logger: logging.Logger, message: str) -> bool:
        h = self.handler
        root = logging.root
        if h is None or len(root.handlers) != 1 or root.handlers[0] is not h or h.filters \
                or h.level > logging.INFO or logger.filters or logger.handlers or not logger.propagate:
            return False
        parent = logger.parent
        while parent is not None and parent is not root:
            if parent.handlers or parent.filters or not parent.propagate:
                return False
            parent = parent.parent
        now = time.time()
        second = int(now)
        if second != self._second:          # the date part changes once a second
            self._second, self._stamp = second, time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now))
        line = (f"{self._stamp},{int((now - second) * 1000):03d} [{self._pid}] INFO "
                f"{logger.name}: {redact(message)}\n")
        h.acquire()
        try:
            h.stream.write(line)
            h.stream.flush()
        except Exception:   # noqa: BLE001 - as logging does: a failed write never fails a query
            return True
        finally:
            h.release()
        return True


text_lines = _TextLines()


def setup_logging(cfg: LoggingConfig) -> None:
    # Neither format shows the source file, thread or multiprocessing names; not looking them
    # up saves about a third of each record's cost (a routed statement logs one line).
    logging._srcfile = None   # type: ignore[attr-defined]  # documented: skips findCaller
    logging.logThreads = False
    logging.logMultiprocessing = False
    handler = logging.StreamHandler(sys.stderr)
    if cfg.format == "json":
        handler.setFormatter(JsonFormatter())
        text_lines.handler = None
    else:
        handler.setFormatter(TextFormatter(TEXT_FORMAT))
        text_lines.handler = handler
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(cfg.level.upper())
    # Tornado logs every request at INFO; the gateway logs what matters itself.
    logging.getLogger("tornado.access").setLevel(logging.WARNING)
