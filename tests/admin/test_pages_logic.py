"""Pure parts of the admin pages: charts, history filters and paging, explain form, redirects,
the start-up auth line."""
from __future__ import annotations

import logging
import re

import pytest

from gateway.admin import auth_mode_message, log_auth_mode
from gateway.admin.charts import bucket_counts, bucket_seconds, distribution_chart, queries_chart
from gateway.admin.pages import fmt_ago, safe_next
from gateway.admin.pages_history import (
    FilterError, encode_cursor, parse_cursor, parse_history_args, parse_time,
)
from gateway.admin.pages_rules import explain_request, parse_header_lines
from gateway.config import config_from_dict
from gateway.store.base import HistoryRow


def test_buckets_fill_gaps_and_sum_minutes():
    since, now = 600.0, 600.0 + 3600
    per_minute = [(600.0, 2), (660.0, 3), (1200.0, 1), (99999.0, 7), (0.0, 9)]
    b = bucket_counts(per_minute, since, now, 300)
    assert b[0] == (600.0, 5) and b[2] == (1200.0, 1)
    assert sum(c for _, c in b) == 6            # rows outside the period are left out
    assert [t for t, _ in b] == [600.0 + 300 * i for i in range(len(b))]
    assert bucket_seconds(1) == 60 and bucket_seconds(3) == 60 and bucket_seconds(24) == 600


def test_queries_chart_draws_one_bar_per_nonempty_bucket():
    svg = queries_chart([(0.0, 0), (60.0, 4), (120.0, 10)], 60)
    assert svg.startswith("<svg") and svg.endswith("</svg>")
    assert len(re.findall(r'<rect class="bar"', svg)) == 2
    assert "14 in total" in svg


def test_distribution_chart_escapes_names_and_shows_shares():
    svg = distribution_chart({"<b>x</b>": 1, "adhoc-1": 3})
    assert "<b>x</b>" not in svg and "&lt;b&gt;x&lt;/b&gt;" in svg
    assert "3 (75%)" in svg and "1 (25%)" in svg
    assert "No queries" in distribution_chart({})


def test_history_filters_parse_and_narrow_text_search_for_plain_users():
    q = parse_history_args({"user": "bob", "since": "2024-05-01T13:30", "text": "orders"},
                           viewer="ops", can_see_all=True)
    assert q.filters == {"user": "bob", "text": "orders", "since": 1714570200.0} and not q.own_only
    q = parse_history_args({"text": "orders"}, viewer="ann", can_see_all=False)
    assert q.filters["user"] == "ann" and q.own_only
    with pytest.raises(FilterError, match="own queries"):
        parse_history_args({"text": "x", "user": "bob"}, viewer="ann", can_see_all=False)
    with pytest.raises(FilterError, match="since"):
        parse_history_args({"since": "yesterday"}, viewer=None, can_see_all=True)
    with pytest.raises(FilterError, match="before until"):
        parse_history_args({"since": "200", "until": "100"}, viewer=None, can_see_all=True)


def test_cursor_round_trip_keeps_exact_time():
    row = HistoryRow(query_id="20240501_000001_00001_abcde", submitted_at=1714570200.123456789)
    assert parse_cursor(encode_cursor(row)) == (row.submitted_at, row.query_id)
    assert parse_cursor("") is None
    for bad in ("nope", "1.5~", "x~q"):
        with pytest.raises(FilterError):
            parse_cursor(bad)
    assert parse_time("2024-05-01T13:30:00Z", "since") == 1714570200.0


@pytest.mark.parametrize("target, expected", [
    (None, "/trino-gateway/"),
    ("/trino-gateway/history?user=x", "/trino-gateway/history?user=x"),
    ("https://evil.example/trino-gateway/", "/trino-gateway/"),
    ("//evil.example/trino-gateway/", "/trino-gateway/"),
    ("/v1/statement", "/trino-gateway/"),
    ("/trino-gateway/\\evil", "/trino-gateway/"),
])
def test_login_redirects_only_inside_the_admin_pages(target, expected):
    assert safe_next(target) == expected


def test_explain_form_to_request():
    data = explain_request({"user": " bob ", "source": "", "clientTags": "a, b,,", "catalog": "hive",
                            "schema": "", "headers": "X-Trino-Client-Info: nightly\n\n", "query": "SELECT 1"})
    assert data == {"user": "bob", "catalog": "hive", "clientTags": ["a", "b"],
                    "headers": {"X-Trino-Client-Info": "nightly"}, "query": "SELECT 1"}
    with pytest.raises(ValueError, match="line 2"):
        parse_header_lines("A: b\nno colon here")


def test_ago_wording():
    assert fmt_ago(None) == "never"
    assert fmt_ago(100.0, 100.5) == "just now"
    assert fmt_ago(100.0, 130.0) == "30 s ago"
    assert fmt_ago(0.0, 3600.0) == "60 min ago"




def test_auth_mode_line_without_users_warns_read_only(caplog):
    with caplog.at_level(logging.INFO, logger="gateway.admin"):
        log_auth_mode(config_from_dict({}))
    rec = caplog.records[-1]
    assert rec.levelno == logging.WARNING
    assert "read-only" in rec.getMessage() and "loopback" in rec.getMessage()


def test_auth_mode_line_names_users_and_roles_but_no_secret(caplog):
    from gateway.admin.auth import hash_password
    ops_hash, ann_hash = hash_password("a", iterations=1), hash_password("b", iterations=1)
    cfg = {"auth": {"users": {"ops": {"password": ops_hash, "roles": ["admin"]},
                              "ann": {"password": ann_hash}},
                    "sessionSecret": "TOPSECRET"}}
    msg = auth_mode_message(config_from_dict(cfg))
    assert "admin: ops" in msg and "user: ann" in msg and "auth.sessionSecret" in msg
    assert ops_hash.split("$")[3] not in msg and ann_hash.split("$")[3] not in msg and "TOPSECRET" not in msg
    with caplog.at_level(logging.INFO, logger="gateway.admin"):
        log_auth_mode(config_from_dict({**cfg, "server": {"workers": 2},
                                       "auth": {**cfg["auth"], "sessionSecret": None}}))
    assert caplog.records[-1].levelno == logging.WARNING
    assert "random secret" in caplog.records[-1].getMessage()


def test_dashboard_groups_from_the_parts_alone_with_gateway_queue_counts():
    """The dashboard needs only its parts (no Gateway): every group with backends, the default
    and configured ones even when empty; the held count of a capped group is its queue's
    length (0 with no queue yet), and None (no gateway queue at all) for an uncapped group."""
    from types import SimpleNamespace

    from gateway.admin.pages_dashboard import group_views
    from gateway.backends.state import Backend, Health, Registry

    cfg = config_from_dict({"routing": {"defaultGroup": "adhoc"},
                            "groups": {"etl": {"maxRunningQueries": 1}, "bi": {"maxQueriesPerUser": 2},
                                       "empty": {}}})
    registry = Registry([Backend("a1", "http://a1:8080", None, "adhoc", True),
                         Backend("e1", "http://e1:8080", None, "etl", True),
                         Backend("e2", "http://e2:8080", None, "etl", False)])
    registry.state("e1").health = Health.HEALTHY

    class Queue:
        queues = {"etl": ["h1", "h2"]}

        def capped(self, group):
            return bool(cfg.groups.get(group) and (cfg.groups[group].maxRunningQueries
                                                   or cfg.groups[group].maxQueriesPerUser))

    unfinished = SimpleNamespace(of=lambda name: {"e1": 3}.get(name))
    parts = SimpleNamespace(config=cfg, registry=registry, queue=Queue(), unfinished=unfinished)
    views = {g.name: g for g in group_views(parts)}
    assert list(views) == ["adhoc", "bi", "empty", "etl"]           # the default group first
    assert views["adhoc"].is_default and views["adhoc"].held is None
    assert views["etl"].held == 2 and views["bi"].held == 0 and views["empty"].held is None
    assert [b.backend.name for b in views["etl"].backends] == ["e1", "e2"]
    assert views["etl"].healthy == 1 and views["etl"].unfinished is None   # e2: not known
    assert views["empty"].backends == [] and views["empty"].css == "bad"
