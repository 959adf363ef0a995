"""The ``nextUri`` of a query held in the gateway queue: polls, heartbeats and cancels.

It behaves like a coordinator's queued endpoint (§1.3 of the protocol notes): a poll waits up
to a second for news, answers QUEUED with the next token, and a repeated token gets the same
answer; once the query is dispatched, the next poll returns the cluster's own first answer
(its query id and ``nextUri`` from then on are the cluster's, through the gateway).
"""
from __future__ import annotations

import asyncio
import json
import time
from typing import TYPE_CHECKING, Callable

from tornado.httputil import HTTPHeaders
from tornado.web import RequestHandler

from gateway.admission import shared as S
from gateway import protocol as P
from gateway.admission.control import HELD_ID_SUFFIX, Held
from gateway.backends.state import Backend
from gateway.proxy import exchange as X
from gateway.store import HeldRow

if TYPE_CHECKING:
    from tornado.httputil import HTTPServerRequest

    from gateway.admission.control import Admission
    from gateway.backends.state import Registry
    from gateway.routing.tokens import TokenKeys

HELD_PATH = rf"/v1/statement/queued/(\d{{8}}_\d{{6}}_\d{{5}}{HELD_ID_SUFFIX})/([^/]+)/(\d+)"


class HeldQueryHandler(RequestHandler):
    def initialize(self, admission: "Admission", registry: "Registry", tokens: "TokenKeys | None",
                   base_url: "Callable[[HTTPServerRequest], str]") -> None:
        """``admission`` holds the queries; ``registry`` names the backend of a dispatched one;
        ``tokens`` mint the routing tokens of its URIs; ``base_url`` is the gateway's URL for
        a request (``gateway.app.Gateway.base_url``)."""
        self.admission = admission
        self.registry = registry
        self.tokens = tokens
        self.base_url = base_url

    def compute_etag(self) -> None:  # type: ignore[override]
        return None

    def _plain(self, code: int, text: str) -> None:
        self.set_status(code)
        self.set_header("Content-Type", "text/plain; charset=utf-8")
        self.finish(text)

    def _find(self, qid: str, slug: str, token: str) -> Held | None:
        """The held query if this process holds it (None: answered 410, or not held here)."""
        h = self.admission.held.get(qid)
        if h is None or slug != h.slug:
            return None
        t = _token(token)
        # Other processes answer polls too and hand out later tokens: accept those, and
        # continue from the newest; a token older than the previous one is invalid.
        if t < h.token - 1:
            self._plain(410, "Invalid token\n")
            return None
        h.token = max(h.token, t)
        h.last_poll = time.time()
        return h

    async def get(self, qid: str, slug: str, token: str) -> None:
        h = self._find(qid, slug, token)
        if h is None:
            if self._finished:
                return
            # Not held here: another worker or replica holds it (gateway/admission/shared.py).
            found = await self.admission.shared.answer(qid, slug, _token(token),
                                                       _max_wait(self.get_argument("maxWait", None)))
            if found is None:
                return self._plain(404, "Query not found\n")
            if isinstance(found, HeldRow):
                return self._from_row(found, _token(token))
            h = found        # adopted: its holder stopped; this process holds it now
        if h.state in ("QUEUED", "DISPATCHING") and _token(token) == h.token:
            wait = _max_wait(self.get_argument("maxWait", None))
            try:
                await asyncio.wait_for(h.changed.wait(), timeout=wait)
            except asyncio.TimeoutError:
                pass
            h.last_poll = time.time()
            if h.state in ("QUEUED", "DISPATCHING"):
                h.token += 1
        base = self.base_url(self.request)
        if h.state in ("QUEUED", "DISPATCHING"):
            return self._json(self.admission.document(h, base))
        if h.state == "DISPATCHED" and h.response is not None:
            return self._deliver(h, base)
        if h.failure is not None:
            message, name = h.failure
        elif h.state == "ABANDONED":
            message, name = "Query was abandoned: its client stopped polling", "ABANDONED_QUERY"
        else:
            message, name = "Query was canceled", "USER_CANCELED"
        self._json(P.failed_query(message, gateway_base=base, error_name=name, query_id=h.id))

    def _from_row(self, row: HeldRow, token: int) -> None:
        base = self.base_url(self.request)
        if row.state in ("QUEUED", "DISPATCHING"):
            if row.state == "DISPATCHING" and row.holder_seen < time.time() - S.HEARTBEAT_STALE:
                return self._json(S.lost_document(row, base))
            return self._json(S.queued_document(row.query_id, row.slug, token + 1, row.routing_group,
                                                time.time() - row.enqueued_at, base, None))
        if row.state == "DISPATCHED":
            a = S.dispatched_answer(row)
            backend = self.registry.get(a["backend"])
            if backend is None:
                return self._json(P.failed_query(f"Backend {a['backend']} was removed", gateway_base=base,
                                                 query_id=row.query_id))
            return self._send_answer(a["code"], a["headers"], a["body"], backend, a["transaction"], base)
        message, name = json.loads(row.answer or "{}").get("failure", ["Query ended", "GENERIC_INTERNAL_ERROR"])
        self._json(P.failed_query(message, gateway_base=base, error_name=name, query_id=row.query_id))

    def _json(self, body: bytes) -> None:
        self.set_header("Content-Type", "application/json")
        self.finish(body)

    def _deliver(self, h: Held, base: str) -> None:
        """The cluster's first answer, pointed at the gateway like any proxied response (the
        same header and URI rewriting, routing tokens included, as gateway/proxy/exchange.py)."""
        code, _, headers, body = h.response  # type: ignore[misc]
        assert h.backend is not None
        self._send_answer(code, headers, body, h.backend, h.transaction, base)

    def _send_answer(self, code: int, headers: HTTPHeaders, body: bytes, backend: Backend,
                     transaction: str | None, base: str) -> None:
        self.set_status(code)
        minter = X.TokenMinter(self.tokens, backend.name) if self.tokens is not None else None
        out = X.translate_response_headers(
            headers.get_all(), backend_base=backend.proxyTo, gateway_base=base,
            request_transaction=transaction, route=minter, connection=headers.get_list("Connection"))
        for name, value in out.headers:
            self.add_header(name, value)
        rw = P.UriRewriter(base, minter)
        self.finish(rw.page(body))

    async def head(self, qid: str, slug: str, token: str) -> None:
        if self._find(qid, slug, token) is not None or (
                not self._finished and await self.admission.shared.exists(qid, slug)):
            self.set_status(200)
            return self.finish()
        if not self._finished:
            self._plain(404, "Query not found\n")

    async def delete(self, qid: str, slug: str, token: str) -> None:
        h = self.admission.held.get(qid)
        if h is not None and slug == h.slug:
            self.admission.cancel(h)
        elif not await self.admission.shared.cancel(qid, slug):   # its holder cancels it
            return self._plain(404, "Query not found\n")
        self.set_status(204)
        self.finish()


def _token(text: str) -> int:
    return int(text) if len(text) <= 18 else -1   # int() of 4,300+ digits raises


def _max_wait(value: str | None) -> float:
    """``maxWait`` as a coordinator reads it (a duration, capped at 1 s)."""
    if not value:
        return 1.0
    try:
        from gateway.config import parse_duration
        return max(0.0, min(1.0, parse_duration(value)))
    except ValueError:
        return 1.0
