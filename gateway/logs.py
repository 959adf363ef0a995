"""Logging setup: one line per event, as text or JSON, with secrets redacted.

Text lines read ``TIME [PID] LEVEL LOGGER: message``. JSON lines are one object per line with
``time``, ``level``, ``logger``, ``pid``, ``message`` and every field the code passed with
``extra=`` (for example a routed statement's ``query_id``, ``user``, ``group``, ``backend``,
``rule`` and ``decision_ms``), so log pipelines can filter without parsing the message.
Credentials (Authorization headers, passwords, passwords in URLs, UI and ID tokens) are replaced
by ``***`` in both formats, in the message, in extra fields and in tracebacks.
"""
from __future__ import annotations

import json
import logging
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


def setup_logging(cfg: LoggingConfig) -> None:
    # Neither format shows the source file, thread or multiprocessing names; not looking them
    # up saves about a third of each record's cost (a routed statement logs one line).
    logging._srcfile = None   # type: ignore[attr-defined]  # documented: skips findCaller
    logging.logThreads = False
    logging.logMultiprocessing = False
    handler = logging.StreamHandler(sys.stderr)
    if cfg.format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter("%(asctime)s [%(process)d] %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(cfg.level.upper())
    # Tornado logs every request at INFO; the gateway logs what matters itself.
    logging.getLogger("tornado.access").setLevel(logging.WARNING)
