"""Logging setup: one line per event, as text or JSON, with secrets redacted."""
from __future__ import annotations

import json
import logging
import re
import sys
import time

from gateway.config import LoggingConfig

# Credentials that may appear in URLs or header dumps never reach the log.
_SECRETS = (
    (re.compile(r"(?i)(authorization\s*[:=]\s*)(basic|bearer)\s+[A-Za-z0-9._~+/=-]+"), r"\1\2 ***"),
    (re.compile(r"(?i)(password\s*[:=]\s*)[^\s,;&]+"), r"\1***"),
    (re.compile(r"(//[^:/@\s]+):[^@/\s]*@"), r"\1:***@"),
    (re.compile(r"(?i)(Trino-UI-Token=|__Secure-Trino-ID-Token=)[^;\s]+"), r"\1***"),
)


def redact(text: str) -> str:
    for pattern, repl in _SECRETS:
        text = pattern.sub(repl, text)
    return text


class _TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
                    + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "pid": record.process,
            "message": redact(record.getMessage()),
        }
        if record.exc_info:
            doc["exception"] = redact(self.formatException(record.exc_info))
        return json.dumps(doc, separators=(",", ":"))


def setup_logging(cfg: LoggingConfig) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if cfg.format == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(_TextFormatter("%(asctime)s [%(process)d] %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(cfg.level.upper())
    # Tornado logs every request at INFO; the gateway logs what matters itself.
    logging.getLogger("tornado.access").setLevel(logging.WARNING)
