"""Every statement reaches the query history: refused ones as REJECTED with the reason,
cancelled ones as CANCELED, and queries whose client went away resolved by asking their
cluster instead of staying "not finished"."""
from __future__ import annotations

import threading

import pytest
import requests
import trino

from gateway.backends.resolver import decide
from tests.conftest import gateway_config, wait_for

RULES = ('name: no-drop\ncondition: query =~ "(?i)\\\\s*drop.*"\nreject: "DROP is frozen until Monday"\n'
         '---\nname: to-ghost\ncondition: source == "ghost"\nroutingGroup: ghost\n')


def _row(gw, **params):
    rows = gw.api("GET", "/api/queries", params=params).json()
    return rows[0] if rows and rows[0]["finalState"] else None


def test_cluster_answers_decide_the_recorded_state() -> None:
    assert decide("b", 200, b'{"state": "RUNNING"}') is None
    assert decide("b", 503, b"") is None
    state, error = decide("b", 200, b'{"state": "FINISHED"}')
    assert state == "FINISHED" and "final state from b" in error
    state, error = decide("b", 200, b'{"state": "FAILED", "errorCode": {"name": "USER_CANCELED"}}')
    assert state == "CANCELED" and error.startswith("USER_CANCELED")
    state, error = decide("b", 200, b'{"state": "FAILED", "failureInfo": {"message": "boom"}}')
    assert state == "FAILED" and error.startswith("boom")
    assert decide("b", 410, b"gone")[0] == "UNKNOWN"


def test_refused_statements_are_recorded_as_rejected(fresh_clusters, gateway_factory, tmp_path):
    (tmp_path / "rules").mkdir(exist_ok=True)
    (tmp_path / "rules" / "r.yaml").write_text(RULES)
    cfg = gateway_config(tmp_path, fresh_clusters, groups={"adhoc-1": "adhoc"})
    gw = gateway_factory(dict(cfg, groups={"ghost": {"fallback": "none"}}))
    with pytest.raises(trino.exceptions.TrinoUserError):
        gw.connect(user="dropper").cursor().execute("DROP TABLE nation")
    row = wait_for(lambda: _row(gw, user="dropper"), message="the rejected statement's row")
    assert row["finalState"] == "REJECTED" and row["rule"] == "no-drop" and row["backend"] is None
    assert "DROP is frozen until Monday" in row["error"] and row["sql"] == "DROP TABLE nation"
    # no backend in a strict group: refused with the reason, recorded the same way
    with pytest.raises(trino.exceptions.TrinoQueryError, match="strict isolation"):
        gw.connect(user="ghostly", source="ghost").cursor().execute("SELECT 1")
    row = wait_for(lambda: _row(gw, user="ghostly"), message="the no-backend row")
    assert row["finalState"] == "REJECTED" and "ghost" in row["error"]
    # the history page offers exactly the states that are written
    page = gw.api("GET", "/trino-gateway/history", params={"state": "REJECTED"}).text
    assert "dropper" in page and "ghostly" in page


def test_cancelled_query_is_recorded_as_canceled(gateway):
    cur = gateway.connect(user="canceller").cursor()
    t = threading.Thread(target=lambda: pytest.raises(Exception, cur.execute, "SELECT sleep(5)"))
    t.start()
    wait_for(lambda: cur.query_id, message="the query id")
    wait_for(lambda: gateway.api("GET", "/api/queries", params={"user": "canceller"}).json(),
             message="the running query's row")
    cur.cancel()
    t.join(20)
    row = wait_for(lambda: _row(gateway, user="canceller"), message="the cancelled row")
    assert row["finalState"] == "CANCELED" and "canceled" in row["error"].lower()


def test_a_query_whose_client_went_away_is_resolved_by_its_cluster(fresh_clusters, gateway_factory, tmp_path):
    gw = gateway_factory(gateway_config(tmp_path, fresh_clusters, groups={"adhoc-1": "adhoc"},
                                        store={"resolveAfter": "4s"}))
    fresh_clusters["adhoc-1"].control(client_timeout=1)     # Trino abandons silent queries
    r = requests.post(gw.url + "/v1/statement", data="SELECT sleep(1)",
                      headers={"X-Trino-User": "leaver"}, timeout=10)
    qid = r.json()["id"]                                     # ... and the client never polls again
    state = "/api/public/backends/adhoc-1/state"
    wait_for(lambda: gw.api("GET", state).json()["unfinished"] == 1, message="counted as unfinished")
    row = wait_for(lambda: _row(gw, user="leaver"), timeout=20, message="the resolved row")
    assert row["queryId"] == qid and row["finalState"] == "FAILED"
    assert "ABANDONED_QUERY" in row["error"] and "client went away" in row["error"]
    wait_for(lambda: gw.api("GET", state).json()["unfinished"] == 0, message="no longer holds a drain")


def test_long_running_queries_do_not_hide_abandoned_ones_from_the_resolver() -> None:
    """More queries still running than one round asks about: the next round goes on after
    them, so an abandoned query behind them is resolved too."""
    import asyncio

    from gateway.backends import resolver as R
    from gateway.backends.state import Backend, Registry
    from gateway.config import MonitorConfig
    from gateway.store import HistoryRow
    from gateway.store.writer import AsyncStore, HistoryWriter

    async def run() -> list[tuple[str, str | None]]:
        store = await AsyncStore.open("sqlite:///:memory:")
        running = [HistoryRow(f"q{i:03d}", float(i), backend="b1") for i in range(R.BATCH + 5)]
        gone = HistoryRow("q999", 500.0, backend="b1")
        await store.call("insert_history", [*running, gone])

        class Client:
            async def fetch(self, base, method, target, headers, body, sink, **kw):
                qid = target.rsplit("/", 1)[1]
                sink.on_chunk(b'{"state": "FINISHED"}' if qid == "q999" else b'{"state": "RUNNING"}')
                return 200

        writer = HistoryWriter(store)
        res = R.Resolver(60.0, store=store, writer=writer, registry=Registry([Backend("b1", "http://x:1")]),
                         client=Client(), monitor=MonitorConfig())
        assert await res.resolve_once(now=10_000.0) == 0          # the first 50: all still running
        assert await res.resolve_once(now=10_000.0) == 1          # then the ones after them
        rows = await store.call("query_history", query_id="q999")
        await store.close()
        return [(r.final_state, r.error) for r in rows]

    [(state, error)] = asyncio.run(run())
    assert state == "FINISHED" and "client went away" in error
