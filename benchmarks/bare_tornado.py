"""The reference for the gateway's POST throughput: a bare Tornado server answering the statement.

A plain ``tornado.web.Application`` with one ``RequestHandler`` that answers
``POST /v1/statement`` with the same QUEUED document the static backend sends (fresh query id
each time) and does nothing else: no routing, no backend. The gateway's target is at least 70 %
of its requests per second with one worker.

    python3 benchmarks/bare_tornado.py --port 0     # prints READY <port>
"""
from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import sys

import tornado.web
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import payloads  # noqa: E402


class StatementHandler(tornado.web.RequestHandler):
    def initialize(self, doc: bytes, counter: "itertools.count[int]") -> None:
        self.doc = doc
        self.counter = counter

    def post(self) -> None:
        n = next(self.counter)
        qid = f"20240101_000000_{n // 100000 % 100000:05d}_{n % 100000:05d}"
        self.set_header("Content-Type", "application/json")
        self.write(self.doc.replace(b"{QID}", qid.encode()))


async def serve(port: int) -> None:
    sockets = bind_sockets(port, "127.0.0.1")
    real = sockets[0].getsockname()[1]
    doc = payloads.statement_response().replace("{BASE}", f"http://127.0.0.1:{real}").encode()
    app = tornado.web.Application([(r"/v1/statement", StatementHandler,
                                    {"doc": doc, "counter": itertools.count(1)})])
    HTTPServer(app).add_sockets(sockets)
    print(f"READY {real}", flush=True)
    await asyncio.Event().wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, default=0)
    asyncio.run(serve(ap.parse_args().port))


if __name__ == "__main__":
    main()
