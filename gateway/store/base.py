"""The store's interface and its records.

The store keeps what must outlive a process or be shared between processes: backends (edited
through the REST API), query history, and sticky mappings (query/transaction/spool/OAuth id →
backend) that another worker process may need. ``Store`` methods are synchronous and are called
from one dedicated thread (see ``writer.AsyncStore``), so the event loop never waits on them.
The one implementation is ``sql.SqlStore`` (SQLite and PostgreSQL).
"""
from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any, Sequence
from urllib.parse import urlsplit, urlunsplit

from gateway.backends.state import Backend

__all__ = ["StoreError", "DuplicateBackend", "HistoryRow", "Store", "STICKY_KINDS", "redact_url"]


# "oauth-initiate": the sha256 of an OAuth2 auth id (/oauth2/token/initiate/<hash>), learned
# with "oauth" from the same 401 challenge and needed by whichever process gets the browser.
STICKY_KINDS = ("query", "transaction", "spool", "oauth", "oauth-initiate")


class StoreError(RuntimeError):
    """The store cannot do what was asked (bad URL, database unreachable, SQL failed).

    ``permanent`` is true when retrying the same call cannot help (the database refused the
    data itself); false when the database may come back (down, locked, connection lost).
    """

    def __init__(self, message: str, *, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent

    def __reduce__(self) -> Any:
        # Keep the class, message and ``permanent`` across the store process's pipe (the
        # default would call ``cls(*args)``, which subclasses with other signatures break).
        return (_rebuild_error, (type(self), self.args, self.__dict__))


def _rebuild_error(cls: type, args: tuple[Any, ...], state: dict[str, Any]) -> "StoreError":
    exc = cls.__new__(cls)
    exc.args = args
    exc.__dict__.update(state)
    return exc


class DuplicateBackend(StoreError):
    """``add_backend`` was given a name that already exists."""

    def __init__(self, name: str) -> None:
        super().__init__(f"a backend named {name!r} already exists")
        self.name = name


@dataclass
class HistoryRow:
    """One query the gateway routed (or rejected), as kept in ``query_history``."""
    query_id: str
    submitted_at: float                  # unix seconds
    user: str | None = None
    source: str | None = None
    client_tags: tuple[str, ...] = ()
    sql: str | None = None
    routing_group: str | None = None
    backend: str | None = None
    rule: str | None = None
    final_state: str | None = None       # None until the gateway sees the query finish
    error: str | None = None
    queued_ms: int | None = None         # time spent in the gateway's admission queue
    finished_at: float | None = None     # when the final state was seen (unix seconds)

    @property
    def duration(self) -> float | None:
        """Seconds from submission (or from entering the gateway queue) to the final state."""
        if self.finished_at is None:
            return None
        return max(0.0, self.finished_at - self.submitted_at)

    def __reduce__(self) -> Any:
        # Pickled as a plain tuple: 8x faster than the dataclass default, which matters for the
        # batches the gateway sends to its store process.
        return (HistoryRow, (self.query_id, self.submitted_at, self.user, self.source,
                             self.client_tags, self.sql, self.routing_group, self.backend,
                             self.rule, self.final_state, self.error, self.queued_ms,
                             self.finished_at))

    def to_json(self) -> dict[str, Any]:
        return {
            "queryId": self.query_id,
            "user": self.user,
            "source": self.source,
            "clientTags": list(self.client_tags),
            "sql": self.sql,
            "routingGroup": self.routing_group,
            "backend": self.backend,
            "rule": self.rule,
            "submittedAt": self.submitted_at,
            "finalState": self.final_state,
            "error": self.error,
            "queuedMs": self.queued_ms,
            "finishedAt": self.finished_at,
        }


@dataclass(frozen=True)
class HeldRow:
    """A statement held in the gateway queue, as every process sees it (``held_queries``).
    ``statement`` and ``answer`` are JSON written and read by gateway/admission/shared.py."""
    query_id: str
    slug: str
    holder: str
    holder_seen: float
    routing_group: str
    enqueued_at: float
    last_poll: float
    state: str                    # QUEUED | DISPATCHING | DISPATCHED | ENDED
    cancel_requested: bool
    statement: str
    answer: str | None = None

    def params(self) -> tuple[Any, ...]:
        return (self.query_id, self.slug, self.holder, float(self.holder_seen), self.routing_group,
                float(self.enqueued_at), float(self.last_poll), self.state, int(self.cancel_requested),
                self.statement, self.answer)

    @classmethod
    def of(cls, r: Sequence[Any]) -> "HeldRow":
        return cls(r[0], r[1], r[2], float(r[3]), r[4], float(r[5]), float(r[6]), r[7], bool(r[8]),
                   r[9], r[10])


def redact_url(url: str) -> str:
    """The URL with its password replaced, for error messages and logs."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
        return urlunsplit(parts._replace(netloc=netloc))
    except ValueError:
        return "<unparseable URL>"



class Store(abc.ABC):
    """What the gateway needs from a database. Synchronous; call from one thread."""

    url: str

    @abc.abstractmethod
    def migrate(self) -> list[int]:
        """Apply pending migrations; return the versions applied now (empty: up to date)."""

    @abc.abstractmethod
    def schema_version(self) -> int:
        """The highest applied migration version (0 before any)."""

    # backends
    @abc.abstractmethod
    def list_backends(self) -> list[Backend]: ...
    @abc.abstractmethod
    def add_backend(self, b: Backend) -> None:
        """Insert; raises ``DuplicateBackend`` if the name exists."""
    @abc.abstractmethod
    def upsert_backend(self, b: Backend) -> None: ...
    @abc.abstractmethod
    def delete_backend(self, name: str) -> bool: ...
    @abc.abstractmethod
    def set_backend_active(self, name: str, active: bool) -> bool: ...
    @abc.abstractmethod
    def backends_stamp(self) -> str:
        """A cheap value that changes whenever any backend row changes."""

    # history
    @abc.abstractmethod
    def insert_history(self, rows: Sequence[HistoryRow]) -> None: ...
    @abc.abstractmethod
    def update_history_states(self, updates: Sequence[tuple[Any, ...]]) -> None:
        """(query_id, state, error) or (query_id, state, error, finished_at) per query."""
    @abc.abstractmethod
    def query_history(self, *, limit: int = 100, before: tuple[float, str] | None = None,
                      after: tuple[float, str] | None = None,
                      **filters: Any) -> list[HistoryRow]:
        """Newest first; ``before``/``after`` page older/newer than a (submitted_at, query_id)
        position; filters as ``history_filter_sql``."""
    @abc.abstractmethod
    def count_history(self, *, cap: int | None = None, **filters: Any) -> int:
        """Rows matching; with ``cap``, counting stops after ``cap + 1`` ("more than cap")."""
    @abc.abstractmethod
    def unresolved_history(self, before: float, limit: int,
                           after: tuple[float, str] | None = None) -> list[HistoryRow]:
        """Rows without a final state submitted before ``before``, oldest first, from just
        after the (submitted_at, query_id) position ``after``."""
    @abc.abstractmethod
    def insert_metric_samples(self, instance: str, ts: float,
                              samples: Sequence[tuple[str, str, float]], keep_after: float) -> int:
        """Store (name, labels JSON, value) samples taken at ``ts`` unless this instance already
        has that time; delete samples older than ``keep_after``. Returns rows written."""
    @abc.abstractmethod
    def metric_series(self, instance: str, name: str, since: float) -> list[tuple[str, float, float]]:
        """(labels JSON, ts, value) of one metric since ``since``, in time order."""
    @abc.abstractmethod
    def metric_instances(self, since: float) -> list[str]: ...
    @abc.abstractmethod
    def history_per_minute(self, since: float) -> list[tuple[float, int]]: ...
    @abc.abstractmethod
    def history_by_backend(self, since: float) -> dict[str, int]: ...
    @abc.abstractmethod
    def history_per_minute_by_backend(self, since: float) -> list[tuple[float, str, int]]:
        """(minute, backend, queries) since ``since``: the dashboard's per-backend chart."""
    @abc.abstractmethod
    def delete_history_before(self, ts: float) -> int: ...
    @abc.abstractmethod
    def unfinished_by_backend(self, since: float) -> dict[str, int]:
        """Queries submitted since ``since`` whose final state is not recorded, per backend."""

    # sticky mappings
    @abc.abstractmethod
    def acquire_lease(self, lease_id: str, group: str, user: str | None,
                      candidates: Sequence[tuple[str, int]], cap: int | None,
                      user_cap: int | None, now: float, ttl: float) -> str | None: ...
    @abc.abstractmethod
    def bind_lease(self, lease_id: str, query_id: str) -> None: ...
    @abc.abstractmethod
    def renew_leases(self, query_ids: Sequence[str], expires_at: float) -> None: ...
    @abc.abstractmethod
    def release_leases(self, ids: Sequence[str]) -> None: ...
    @abc.abstractmethod
    def lease_counts(self, now: float) -> dict[str, int]: ...

    @abc.abstractmethod
    def put_sticky(self, rows: Sequence[tuple[str, str, str, float]]) -> None: ...
    @abc.abstractmethod
    def get_sticky(self, kind: str, key: str, now: float) -> str | None: ...
    @abc.abstractmethod
    def delete_expired_sticky(self, now: float) -> int: ...

    # held queries (the gateway queue's statements, shared by every process; admission.md)
    @abc.abstractmethod
    def put_held(self, row: HeldRow) -> None: ...
    @abc.abstractmethod
    def poll_held(self, query_id: str, slug: str, now: float, *, cancel: bool = False) -> HeldRow | None:
        """The row of a held query whose nextUri names ``slug`` (None: no such query), after
        recording a poll at ``now`` (and, with ``cancel``, the client's cancel)."""
    @abc.abstractmethod
    def sync_held(self, holder: str, now: float) -> list[tuple[str, float, bool]]:
        """The holder's heartbeat: (query id, last poll, cancel requested) of its rows."""
    @abc.abstractmethod
    def answer_held(self, query_id: str, state: str, answer: str) -> None: ...
    @abc.abstractmethod
    def claim_held(self, query_id: str, holder: str) -> bool:
        """Before the holder sends a held query: False if another process adopted it."""
    @abc.abstractmethod
    def adopt_held(self, query_id: str, holder: str, stale_before: float, now: float) -> bool:
        """Make ``holder`` the holder if the current one's heartbeat is older than
        ``stale_before``; True for exactly one of several processes trying at once."""
    @abc.abstractmethod
    def delete_held(self, query_ids: Sequence[str], stale_before: float) -> int:
        """Forget these rows, and every row whose holder was last seen before ``stale_before``."""

    @abc.abstractmethod
    def shared_secret(self, name: str, candidate: str, now: float) -> str:
        """The deployment's secret ``name``: ``candidate`` if this call created it, else the
        value the first process stored (every worker and replica gets the same)."""

    @abc.abstractmethod
    def ping(self) -> None:
        """Raise ``StoreError`` unless the database answers."""
    @abc.abstractmethod
    def close(self) -> None: ...
