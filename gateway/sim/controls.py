"""Test controls of a simulated cluster: what `/_sim/control` reads and changes.

Fields:
  slow              seconds added before every response of the statement protocol
  fail              every `POST /v1/statement` answers 500 text/plain
  starting          `/v1/info` says `starting: true`; new queries fail SERVER_STARTING_UP
  workers           active workers reported (`/ui/api/stats` activeWorkers, `nodes`, and the
                    ActiveNodeCount metric, which the fake reports as `workers`)
  queued, running   reported query counts; when not null they replace the real counts
  user_queued       {"alice": 3}: extra QUEUED entries for these users in `/ui/api/query`
                    (and in the queued count unless `queued` is set)
  hang              accept connections but never answer statement requests
  process_forwarded honour X-Forwarded-* (else any X-Forwarded-* header gets 406)
  page_rows         rows per result page
  queued_polls      queued pages before `executing/<qid>/<slug>/0`
  spooling          answer with spooled segments when the client asks for `json`
  spool_inline_bytes  segments up to this size are sent inline (0: never)
  head_supported    HEAD on a nextUri answers 200 (False: 405, as before Trino 475)
  client_timeout    seconds without a poll before a query fails ABANDONED_QUERY
  auth              None, "basic", "jwt" or "oauth2"
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

AUTH_MODES = (None, "basic", "jwt", "oauth2")


class ControlError(ValueError):
    """A bad control setting; the message names the key and what is wrong."""


@dataclass
class Control:
    slow: float = 0.0
    fail: bool = False
    starting: bool = False
    workers: int = 1
    queued: int | None = None
    running: int | None = None
    user_queued: dict[str, int] = field(default_factory=dict)
    hang: bool = False
    process_forwarded: bool = False
    page_rows: int = 100
    queued_polls: int = 1
    spooling: bool = False
    spool_inline_bytes: int = 0
    head_supported: bool = True
    client_timeout: float = 300.0
    auth: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def update(self, changes: dict[str, Any]) -> None:
        """Validate every change first, then apply them all (or none)."""
        if not isinstance(changes, dict):
            raise ControlError("control body must be a JSON object")
        checked = {key: _check(key, value) for key, value in changes.items()}
        for key, value in checked.items():
            setattr(self, key, value)


_NAMES = {f.name for f in fields(Control)}
_BOOLS = {"fail", "starting", "hang", "process_forwarded", "spooling", "head_supported"}
_COUNTS = {"workers": 0, "page_rows": 1, "queued_polls": 0, "spool_inline_bytes": 0}
_OPTIONAL_COUNTS = {"queued", "running"}
_SECONDS = {"slow", "client_timeout"}


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check(key: str, value: Any) -> Any:
    if key not in _NAMES:
        raise ControlError(f"unknown control {key!r}; known: {', '.join(sorted(_NAMES))}")
    if key in _BOOLS:
        if not isinstance(value, bool):
            raise ControlError(f"control {key!r} must be true or false, got {value!r}")
        return value
    if key in _COUNTS:
        if not _is_int(value) or value < _COUNTS[key]:
            raise ControlError(f"control {key!r} must be an integer >= {_COUNTS[key]}, "
                               f"got {value!r}")
        return value
    if key in _OPTIONAL_COUNTS:
        if value is not None and (not _is_int(value) or value < 0):
            raise ControlError(f"control {key!r} must be null or an integer >= 0, got {value!r}")
        return value
    if key in _SECONDS:
        if not (_is_int(value) or isinstance(value, float)) or value < 0:
            raise ControlError(f"control {key!r} must be a number of seconds >= 0, "
                               f"got {value!r}")
        return float(value)
    if key == "user_queued":
        if not isinstance(value, dict) or not all(
                isinstance(k, str) and _is_int(v) and v >= 0 for k, v in value.items()):
            raise ControlError("control 'user_queued' must map user names to integers >= 0, "
                               f"got {value!r}")
        return dict(value)
    if key == "auth":
        if value not in AUTH_MODES:
            raise ControlError(f"control 'auth' must be one of {AUTH_MODES}, got {value!r}")
        return value
    raise ControlError(f"control {key!r} cannot be changed")  # pragma: no cover
