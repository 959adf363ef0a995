"""The queries of one simulated cluster: registry, SQL in worker threads, pages and tokens.

`Engine` implements the statement protocol of shared/trino-protocol.md section 1 without
HTTP: each method takes the parsed request and returns a `Reply` (status, body, headers)
that the Tornado handlers write unchanged. Token rules (section 1.3):
  queued:    token == last -> the cached reply; token == last+1 -> next page; else 410
  executing: token == last -> the cached reply; token < last -> 410;
             token == last+1 while there is more -> next page; else 404
  unknown query or bad slug -> 404 "Query not found".
SQL runs on the cluster's SQLite database in a thread pool, one page per fetch, the next
page fetched ahead while the client reads the current one.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import os
import secrets
import sqlite3
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from . import protocol as proto
from .data import Database, FunctionContext, QueryInterrupted
from .controls import Control
from .runner import Batch, Runner
from .planner import Command, Outcome, Session, SqlError, ok, plan

QUEUED, RUNNING, FINISHED, FAILED = "QUEUED", "RUNNING", "FINISHED", "FAILED"
DONE = (FINISHED, FAILED)
MAX_QUERIES = 2000              # finished queries beyond this are forgotten, oldest first,
EVICT_BATCH = 200               # in batches of this many
BIG_REPLY_BYTES = 1 << 20       # final pages above this are dropped from the cache ...
BIG_REPLY_SECONDS = 30.0        # ... this long after the query ended
SPOOL_SECONDS = 300.0


@dataclass
class Reply:
    status: int
    body: bytes = b""
    content_type: str | None = "application/json"
    headers: list[tuple[str, str]] = field(default_factory=list)


def text_reply(status: int, message: str) -> Reply:
    return Reply(status, message.encode(), "text/plain; charset=utf-8")


NOT_FOUND = text_reply(404, "Query not found")


class SimQuery:
    """One query's state. The Engine changes it; other modules only read it."""

    def __init__(self, qid: str, sql: str, session: Session, headers: list[tuple[str, str]],
                 cluster_name: str, queued_polls: int, encoding: str | None) -> None:
        self.id = qid
        self.sql = sql
        self.session = session
        self.headers = headers
        self.key = os.urandom(16)
        self.created = time.time()
        self.last_seen = time.monotonic()
        self.requests = 1
        self.dispatched: float | None = None
        self.ended: float | None = None
        self.state = QUEUED
        self.error: dict[str, Any] | None = None
        self.queued_left = queued_polls
        self.queued_token = 0
        self.queued_reply: Reply | None = None
        self.exec_token = -1
        self.exec_reply: Reply | None = None
        self.has_next = True
        self.outcome: Outcome | None = None
        self.runner: Runner | None = None
        self.pending: asyncio.Future[Batch] | None = None
        self.columns: list[dict[str, Any]] | None = None
        self.update_type: str | None = None
        self.update_count: int | None = None
        self.rows_out = 0
        self.bytes_out = 0
        self.encoding = encoding
        self.ctx = FunctionContext(cluster_name)
        self.lock = asyncio.Lock()
        page_rows = session.properties.get("sim_page_rows", "")
        self.page_rows: int | None = int(page_rows) if page_rows.isdigit() and int(page_rows) else None

    def touch(self) -> None:
        self.last_seen = time.monotonic()
        self.requests += 1


def _consume(fut: asyncio.Future[Any]) -> None:
    """Retrieve a dropped future's exception so asyncio does not log it."""
    if not fut.cancelled():
        fut.exception()


class Engine:
    def __init__(self, name: str, control: Control, executor: concurrent.futures.Executor,
                 db: Database) -> None:
        self.name = name
        self.control = control
        self.pool = executor
        self.db = db
        self.ids = proto.QueryIdGenerator()
        self.queries: OrderedDict[str, SimQuery] = OrderedDict()
        self.active: dict[str, SimQuery] = {}
        self.transactions: dict[str, float] = {}
        self.spool: dict[str, tuple[bytes, float]] = {}

    # ------------------------------------------------------------ submission

    def create(self, sql: str, session: Session, headers: list[tuple[str, str]],
               encoding: str | None) -> SimQuery:
        q = SimQuery(self.ids.next(), sql, session, headers, self.name,
                     self.control.queued_polls, encoding)
        self.queries[q.id] = q
        self.active[q.id] = q
        if self.control.starting:
            self._fail(q, proto.query_error("SERVER_STARTING_UP",
                                            "Trino server is still initializing"))
        elif session.transaction_id and session.transaction_id not in self.transactions:
            self._fail(q, proto.query_error(
                "UNKNOWN_TRANSACTION",
                f"Unknown transaction ID: {session.transaction_id}. Possibly expired? "
                "Commands ignored until end of transaction block"))
        self._evict()
        return q

    def post_reply(self, q: SimQuery, base: str) -> Reply:
        """The POST answer: QUEUED with `queued/.../1` (or executing/0 with no queued polls)."""
        if q.queued_left <= 0 and q.state != FAILED:
            self._dispatch(q)
            next_uri = self._executing_uri(q, base, 0)
        else:
            next_uri = self._queued_uri(q, base, 1)
        head = {"id": q.id, "infoUri": self._info_uri(q, base), "nextUri": next_uri}
        tail = {"stats": self._stats(q, QUEUED), "warnings": []}
        reply = Reply(200, proto.results_body(head, None, tail), headers=self._headers(q))
        q.queued_reply = reply
        return reply

    def _dispatch(self, q: SimQuery) -> None:
        q.dispatched = time.time()
        q.state = RUNNING
        try:
            what = plan(q.sql, q.session)
            if isinstance(what, Command):
                what = self._command(q, what)
        except SqlError as e:
            self._fail(q, proto.query_error(e.name, e.message))
            return
        except Exception as e:  # a bug in the fake must still end the query visibly
            self._fail(q, proto.query_error("GENERIC_INTERNAL_ERROR", f"{type(e).__name__}: {e}"))
            return
        if isinstance(what, Outcome):
            q.outcome = what
            q.update_type = what.update_type
            return
        q.update_type = what.update_type
        q.runner = Runner(self.db, q.ctx, what)
        q.pending = self._start_fetch(q)

    def _start_fetch(self, q: SimQuery) -> asyncio.Future[Batch]:
        assert q.runner is not None
        rows = q.page_rows or self.control.page_rows
        return asyncio.get_running_loop().run_in_executor(self.pool, q.runner.fetch, rows)

    def _command(self, q: SimQuery, cmd: Command) -> Outcome:
        txn = q.session.transaction_id
        if cmd.kind == "start_transaction":
            if txn:
                raise SqlError("Nested transactions not supported", "NOT_SUPPORTED")
            new = str(uuid.uuid4())
            self.transactions[new] = time.time()
            return ok(cmd.update_type, [("X-Trino-Started-Transaction-Id", new)])
        if cmd.kind in ("commit", "rollback"):
            if not txn:
                raise SqlError("No transaction in progress", "NOT_IN_TRANSACTION")
            self.transactions.pop(txn, None)
            return ok(cmd.update_type, [("X-Trino-Clear-Transaction-Id", "true")])
        if cmd.kind == "kill_query":
            self.kill(cmd.args["query_id"], cmd.args.get("message"))
            return ok(cmd.update_type)
        raise SqlError(f"unsupported command {cmd.kind}", "NOT_SUPPORTED")  # pragma: no cover

    def kill(self, qid: str, message: str | None) -> None:
        """Fail query `qid` ADMINISTRATIVELY_KILLED; SqlError if unknown or finished."""
        target = self.queries.get(qid)
        if target is None:
            raise SqlError(f"Target query not found: {qid}", "NOT_FOUND")
        text = f"Query killed. Message: {message}" if message else "Query killed"
        if not self._fail(target, proto.query_error("ADMINISTRATIVELY_KILLED", text)):
            raise SqlError(f"Target query is not running: {qid}", "INVALID_PROCEDURE_ARGUMENT")

    # ------------------------------------------------------------ following

    def lookup(self, qid: str, slug: str, context: str, token: int) -> SimQuery | None:
        q = self.queries.get(qid)
        if q is None or not proto.slug_ok(q.key, context, token, slug):
            return None
        return q

    async def get_queued(self, qid: str, slug: str, token: int, base: str) -> Reply:
        q = self.lookup(qid, slug, proto.QUEUED, token)
        if q is None:
            return NOT_FOUND
        q.touch()
        async with q.lock:
            if token == q.queued_token and q.queued_reply is not None:
                return q.queued_reply
            if token != q.queued_token + 1:
                return text_reply(410, "Invalid token")
            head: dict[str, Any] = {"id": q.id, "infoUri": self._info_uri(q, base)}
            tail: dict[str, Any] = {"stats": self._stats(q, q.state)}
            if q.state == FAILED:
                tail["error"] = q.error
            else:
                if q.dispatched is None and q.queued_left > 1:
                    q.queued_left -= 1
                    head["nextUri"] = self._queued_uri(q, base, token + 1)
                else:
                    q.queued_left = 0
                    if q.dispatched is None:
                        self._dispatch(q)
                    head["nextUri"] = self._executing_uri(q, base, 0)
                # The queued endpoint reports only QUEUED or FAILED.
                tail["stats"] = self._stats(q, QUEUED)
            tail["warnings"] = []
            reply = Reply(200, proto.results_body(head, None, tail), headers=self._headers(q))
            q.queued_token, q.queued_reply = token, reply
            return reply

    async def get_executing(self, qid: str, slug: str, token: int, base: str,
                            max_wait: float) -> Reply:
        q = self.lookup(qid, slug, proto.EXECUTING, token)
        if q is None or q.dispatched is None:
            return NOT_FOUND
        q.touch()
        async with q.lock:
            if token == q.exec_token:
                return q.exec_reply or text_reply(410, "Result page no longer available")
            if token < q.exec_token:
                return text_reply(410, f"Token {token} is no longer available "
                                       f"(the current token is {q.exec_token})")
            if token != q.exec_token + 1 or not q.has_next:
                return text_reply(404, f"Query not found: no page {token} for query {qid}")
            reply = await self._next_page(q, token, base, max_wait)
            q.exec_token, q.exec_reply = token, reply
            return reply

    async def _next_page(self, q: SimQuery, token: int, base: str, max_wait: float) -> Reply:
        if q.state == FAILED:
            return self._page(q, token, base, None, final=True)
        if q.outcome is not None:
            outcome = q.outcome
            q.columns = outcome.columns
            q.update_count = outcome.update_count
            data = proto.encode_rows(outcome.rows) if outcome.rows else None
            self._count(q, len(outcome.rows), data)
            self._finish(q)
            return self._page(q, token, base, data, final=True, extra=outcome.headers,
                              rows=len(outcome.rows))
        fut = q.pending
        assert fut is not None
        done, _ = await asyncio.wait({fut}, timeout=max_wait)
        if q.state == FAILED:
            return self._page(q, token, base, None, final=True)
        if not done:
            return self._page(q, token, base, None, final=False)
        q.pending = None
        if fut.cancelled() or fut.exception() is not None:
            self._fail(q, self._error_for(q, None if fut.cancelled() else fut.exception()))
            return self._page(q, token, base, None, final=True)
        batch = fut.result()
        if batch.columns is not None:
            q.columns = batch.columns
        if batch.update_count is not None:
            q.update_count = batch.update_count
        self._count(q, batch.count, batch.data)
        if batch.more:
            q.pending = self._start_fetch(q)
            return self._page(q, token, base, batch.data, final=False, rows=batch.count)
        self._finish(q)
        return self._page(q, token, base, batch.data, final=True, rows=batch.count)

    @staticmethod
    def _count(q: SimQuery, rows: int, data: bytes | None) -> None:
        q.rows_out += rows
        q.bytes_out += len(data) if data else 0

    def _finish(self, q: SimQuery) -> None:
        q.state, q.ended = FINISHED, time.time()
        self.active.pop(q.id, None)

    def _page(self, q: SimQuery, token: int, base: str, data: bytes | None, *, final: bool,
              extra: list[tuple[str, str]] | None = None, rows: int = 0) -> Reply:
        head: dict[str, Any] = {"id": q.id, "infoUri": self._info_uri(q, base)}
        if not final:
            nxt = token + 1
            slug = proto.make_slug(q.key, proto.EXECUTING, nxt)
            head["partialCancelUri"] = (f"{base}/v1/statement/executing/partialCancel/"
                                        f"{q.id}/0/{slug}/{nxt}")
            head["nextUri"] = self._executing_uri(q, base, nxt)
        q.has_next = not final
        if q.columns is not None:
            head["columns"] = q.columns
        tail: dict[str, Any] = {"stats": self._stats(q, q.state)}
        if q.state == FAILED:
            tail["error"] = q.error
            data = None
        tail["warnings"] = []
        if q.update_type and q.state != FAILED:
            tail["updateType"] = q.update_type
            if final and q.update_count is not None:
                tail["updateCount"] = q.update_count
        if data is not None and q.encoding:
            data = self._segment(q, base, data, rows)
        headers = self._headers(q) + (extra or [])
        return Reply(200, proto.results_body(head, data, tail), headers=headers)

    def _segment(self, q: SimQuery, base: str, data: bytes, rows: int) -> bytes:
        """The spooled `data` object for one page of `rows` rows (COORDINATOR_PROXY style)."""
        meta: dict[str, Any] = {"rowOffset": q.rows_out - rows, "rowsCount": rows,
                                "segmentSize": len(data)}
        if len(data) <= self.control.spool_inline_bytes:
            segment = {"type": "inline", "data": base64.b64encode(data).decode(), "metadata": meta}
        else:
            sid = secrets.token_hex(16)
            expires = time.time() + SPOOL_SECONDS
            self.spool[sid] = (data, expires)
            meta["expiresAt"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(expires))
            segment = {"type": "spooled", "uri": f"{base}/v1/spooled/download/{sid}",
                       "ackUri": f"{base}/v1/spooled/ack/{sid}", "metadata": meta}
        return proto.dumps({"encoding": q.encoding, "segments": [segment]})

    def _error_for(self, q: SimQuery, exc: BaseException | None) -> dict[str, Any]:
        if q.ctx.fail_message is not None:
            return proto.query_error("GENERIC_USER_ERROR", q.ctx.fail_message)
        if exc is None or isinstance(exc, QueryInterrupted):
            return proto.query_error("USER_CANCELED", "Query was canceled")
        message = str(exc)
        if isinstance(exc, sqlite3.Error) and any(
                s in message for s in ("syntax error", "incomplete input", "unrecognized token")):
            return proto.query_error("SYNTAX_ERROR", f"line 1:1: {message}", line=1, column=1)
        if isinstance(exc, (sqlite3.Error, ValueError, OverflowError)):
            return proto.query_error("GENERIC_USER_ERROR", message)
        return proto.query_error("GENERIC_INTERNAL_ERROR", f"{type(exc).__name__}: {message}")

    # ------------------------------------------------------------ cancel, heartbeat

    def delete(self, qid: str, slug: str, token: int, context: str) -> Reply:
        q = self.lookup(qid, slug, context, token)
        if q is None:
            return NOT_FOUND
        q.touch()
        self.cancel(q)
        return Reply(204, content_type=None)

    def cancel(self, q: SimQuery) -> bool:
        return self._fail(q, proto.query_error("USER_CANCELED", "Query was canceled"))

    def head(self, qid: str, slug: str, token: int, context: str) -> Reply:
        if not self.control.head_supported:
            return text_reply(405, "Method Not Allowed")
        q = self.lookup(qid, slug, context, token)
        if q is None:
            return NOT_FOUND
        q.touch()
        return Reply(200, content_type=None)

    def _fail(self, q: SimQuery, error: dict[str, Any]) -> bool:
        """End `q` FAILED with `error`; False if it had already ended."""
        if q.state in DONE:
            return False
        q.state, q.error, q.ended = FAILED, error, time.time()
        self.active.pop(q.id, None)
        q.ctx.cancel.set()
        if q.pending is not None:
            q.pending.add_done_callback(_consume)
        if q.runner is not None:
            q.runner.interrupt()
            try:
                self.pool.submit(q.runner.close)
            except RuntimeError:  # the pool is shut down: the cluster is stopping
                pass
        return True

    # ------------------------------------------------------------ housekeeping, views

    def sweep(self) -> None:
        """Abandon silent queries, expire spool segments, drop big cached final pages."""
        now, mono = time.time(), time.monotonic()
        for q in list(self.active.values()):
            if mono - q.last_seen > self.control.client_timeout:
                self._fail(q, proto.query_error(
                    "ABANDONED_QUERY",
                    f"Query {q.id} was abandoned by the client, as it may have exited or "
                    f"stopped checking for query results. Query results have not been "
                    f"accessed since {self.control.client_timeout:.0f}s"))
        for sid, (_, expires) in list(self.spool.items()):
            if expires < now:
                self.spool.pop(sid, None)
        for q in list(self.queries.values()):
            if (q.ended and now - q.ended > BIG_REPLY_SECONDS and q.exec_reply is not None
                    and len(q.exec_reply.body) > BIG_REPLY_BYTES):
                q.exec_reply = None

    def _evict(self) -> None:
        if len(self.queries) <= MAX_QUERIES + EVICT_BATCH:
            return
        for qid in [qid for qid, q in self.queries.items() if q.state in DONE][
                :len(self.queries) - MAX_QUERIES]:
            del self.queries[qid]

    def shutdown(self) -> None:
        for q in list(self.active.values()):
            self._fail(q, proto.query_error("GENERIC_INTERNAL_ERROR", "cluster stopped"))

    def counts(self) -> tuple[int, int]:
        """(queued, running) as the cluster reports them, control overrides applied."""
        queued = sum(1 for q in self.active.values() if q.state == QUEUED)
        running = sum(1 for q in self.active.values() if q.state == RUNNING)
        queued += sum(self.control.user_queued.values())
        c = self.control
        return (c.queued if c.queued is not None else queued,
                c.running if c.running is not None else running)

    def _stats(self, q: SimQuery, state: str) -> dict[str, Any]:
        return proto.statement_stats(state=state, created=q.created, dispatched=q.dispatched,
                                     ended=q.ended, now=time.time(), nodes=self.control.workers,
                                     rows=q.rows_out, nbytes=q.bytes_out)

    def _headers(self, q: SimQuery) -> list[tuple[str, str]]:
        return [("X-Trino-Query-Data-Encoding", q.encoding)] if q.encoding else []

    @staticmethod
    def _info_uri(q: SimQuery, base: str) -> str:
        return f"{base}/ui/query.html?{q.id}"

    @staticmethod
    def _queued_uri(q: SimQuery, base: str, token: int) -> str:
        slug = proto.make_slug(q.key, proto.QUEUED, token)
        return f"{base}/v1/statement/queued/{q.id}/{slug}/{token}"

    @staticmethod
    def _executing_uri(q: SimQuery, base: str, token: int) -> str:
        slug = proto.make_slug(q.key, proto.EXECUTING, token)
        return f"{base}/v1/statement/executing/{q.id}/{slug}/{token}"

    def describe(self, q: SimQuery, base: str = "") -> dict[str, Any]:
        """A BasicQueryInfo-like summary (also carries the UI's `sessionUser`)."""
        s = q.session
        info: dict[str, Any] = {
            "queryId": q.id, "state": q.state, "scheduled": q.dispatched is not None,
            "session": {k: v for k, v in (("user", s.user), ("source", s.source),
                                          ("catalog", s.catalog), ("schema", s.schema))
                        if v is not None},
            "sessionUser": s.user, "resourceGroupId": ["global"], "query": q.sql,
            "self": f"{base}/v1/query/{q.id}",
            "queryStats": {"createTime": _iso(q.created),
                           "elapsedTime": proto.format_duration((q.ended or time.time()) - q.created),
                           "processedRows": q.rows_out},
            "queryType": _query_type(q.update_type),
        }
        if s.source:
            info["sessionSource"] = s.source
        if q.error:
            info["errorType"] = q.error["errorType"]
            info["errorCode"] = {"code": q.error["errorCode"], "name": q.error["errorName"],
                                 "type": q.error["errorType"]}
        return info


def _query_type(update_type: str | None) -> str:
    """Trino's QueryType for a statement with this updateType."""
    if update_type is None:
        return "SELECT"
    first = update_type.split()[0]
    return first if first in ("INSERT", "DELETE", "UPDATE", "MERGE") else "DATA_DEFINITION"


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts % 1 * 1000):03d}Z"
