"""Logging: one line per routed statement and per gateway error, text or JSON, secrets redacted."""
from __future__ import annotations

import base64
import json
import logging
import re
import sys

import pytest
import requests

from gateway.logs import JsonFormatter, TextFormatter, redact
from tests.conftest import gateway_config, wait_for
from tests.ops.support import statement

RULE = "name: etl-tag\npriority: 10\ncondition: '\"etl\" in clientTags'\nroutingGroup: etl\n"


def _lines(gw) -> list[dict]:
    out = []
    for line in gw.log().splitlines():
        assert line.startswith("{"), f"not a JSON log line: {line!r}"
        out.append(json.loads(line))
    return out


def _ghost_config(tmp_path, clusters, **overrides):
    cfg = gateway_config(tmp_path, clusters, groups={"adhoc-1": "adhoc", "etl-1": "etl"}, **overrides)
    cfg["groups"] = {"ghost": {"fallback": "none"}}
    (tmp_path / "rules").mkdir(exist_ok=True)
    (tmp_path / "rules" / "r.yaml").write_text(
        RULE + "---\nname: to-ghost\npriority: 5\ncondition: source == \"ghost\"\nroutingGroup: ghost\n")
    return cfg


def test_text_lines_for_routed_statements_and_gateway_errors(fresh_clusters, gateway_factory, tmp_path):
    gw = gateway_factory(_ghost_config(tmp_path, fresh_clusters))
    doc = statement(gw.url, "SELECT 1", user="bob", **{"X-Trino-Source": "my-tool", "X-Trino-Client-Tags": "etl"})
    qid = doc["id"]
    statement(gw.url, "SELECT 1", user="carol", **{"X-Trino-Source": "ghost"})
    assert requests.get(gw.url + "/v1/statement/executing/20200101_000000_00000_aaaaa/x/1",
                        headers={"X-Trino-User": "dave"}, timeout=10).status_code == 404
    # the response can reach us a moment before the gateway has written its log line
    wait_for(lambda: "-> 404 from the gateway" in gw.log(), message="the 404 logged")
    log = gw.log()
    routed = [line for line in log.splitlines() if "gateway.routing: query " in line]
    assert len(routed) == 1, routed        # one line per routed statement
    assert re.search(rf"\[\d+\] INFO gateway.routing: query {qid} user=bob source=my-tool group=etl "
                     rf"backend=etl-1 rule=etl-tag decision=\d+\.\d+ms \(", routed[0]), routed[0]
    assert re.search(r"WARNING gateway.errors: statement failed at the gateway \(no-backend\): "
                     r"user=carol source=ghost remote=127.0.0.1", log), log[-2000:]
    assert re.search(r"WARNING gateway.errors: GET /v1/statement/executing/20200101_000000_00000_aaaaa/x/1 "
                     r"-> 404 from the gateway", log)


def test_json_lines_carry_the_fields_separately(fresh_clusters, gateway_factory, tmp_path):
    gw = gateway_factory(_ghost_config(tmp_path, fresh_clusters, logging={"format": "json"}))
    qid = statement(gw.url, "SELECT 1", user="bob", **{"X-Trino-Source": "my-tool", "X-Trino-Client-Tags": "etl"})["id"]
    statement(gw.url, "SELECT 1", user="carol", **{"X-Trino-Source": "ghost"})
    wait_for(lambda: '"statement_failed"' in gw.log(), message="the failure logged")
    lines = _lines(gw)   # every line is one JSON object
    assert all({"time", "level", "logger", "pid", "message"} <= set(d) for d in lines)
    routed = [d for d in lines if d.get("event") == "statement_routed"]
    assert len(routed) == 1
    r = routed[0]
    assert (r["query_id"], r["user"], r["source"], r["group"], r["backend"], r["rule"]) == \
        (qid, "bob", "my-tool", "etl", "etl-1", "etl-tag")
    assert isinstance(r["decision_ms"], float) and r["decision_ms"] >= 0
    assert r["logger"] == "gateway.routing" and r["level"] == "INFO" and qid in r["message"]
    failed = [d for d in lines if d.get("event") == "statement_failed"]
    assert len(failed) == 1 and failed[0]["reason"] == "no-backend" and failed[0]["user"] == "carol"
    assert failed[0]["level"] == "WARNING" and failed[0]["logger"] == "gateway.errors"
    # monitor transitions carry their fields too
    assert any(d.get("backend") == "adhoc-1" and d.get("health_to") == "HEALTHY" for d in lines)


def test_secrets_never_reach_the_log(fresh_clusters, gateway_factory, tmp_path, pg_database):
    secrets = {"store": "pw-S3cret-store", "basic": "pw-S3cret-basic", "bearer": "tok-S3cret-bearer",
               "monitor": "pw-S3cret-monitor", "url": "pw-S3cret-url", "ui": "tok-S3cret-ui"}
    store_url = pg_database.replace("postgres@", f"postgres:{secrets['store']}@", 1)
    assert secrets["store"] in store_url
    cfg = gateway_config(tmp_path, fresh_clusters, groups={"adhoc-1": "adhoc"}, store_url=store_url,
                         logging={"level": "DEBUG"},
                         monitor={"password": secrets["monitor"]})
    # a backend whose URL carries credentials and that cannot be reached: errors get logged
    cfg["backends"].append({"name": "dead-1", "proxyTo": f"http://u:{secrets['url']}@127.0.0.1:9",
                            "routingGroup": "spare"})
    gw = gateway_factory(cfg, wait_ready=False)
    wait_for(lambda: gw.api("GET", "/trino-gateway/readyz").status_code == 200, timeout=20, message="readyz")
    basic = base64.b64encode(f"alice:{secrets['basic']}".encode()).decode()
    statement(gw.url, "SELECT 1", Authorization=f"Basic {basic}")
    statement(gw.url, "SELECT 1", Authorization=f"Bearer {secrets['bearer']}",
              Cookie=f"Trino-UI-Token={secrets['ui']}")
    statement(gw.url, "SELECT 1", **{"X-Trino-Routing-Group": "spare"})   # tries the dead backend
    requests.get(gw.url + "/ui/api/stats", headers={"Cookie": f"Trino-UI-Token={secrets['ui']}"}, timeout=10)
    gw.stop()
    log = gw.log()
    assert "postgres:***@" in log   # the store URL was logged, redacted
    for what, secret in secrets.items():
        assert secret not in log, f"the {what} secret leaked into the log"
        assert base64.b64encode(secret.encode()).decode()[:12] not in log
    assert basic not in log


# -- the formatters themselves -------------------------------------------------------------------

def _record(msg: str, *args, exc: bool = False, **extra) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise RuntimeError("connect to postgresql://u:pw-in-exc@h/db failed")
        except RuntimeError:
            exc_info = sys.exc_info()
    rec = logging.LogRecord("gateway.test", logging.WARNING, __file__, 1, msg, args, exc_info)
    for k, v in extra.items():
        setattr(rec, k, v)
    return rec


@pytest.mark.parametrize("formatter", [TextFormatter("%(message)s"), JsonFormatter()])
def test_formatters_redact_message_extra_fields_and_tracebacks(formatter):
    rec = _record("headers %s url %s", {"Authorization": "Basic c2VjcmV0"}, "https://a:pw-in-url@h:1",
                  exc=True, target="postgresql://u:pw-in-extra@h/db", count=3)
    out = formatter.format(rec)
    for leaked in ("c2VjcmV0", "pw-in-url", "pw-in-exc"):
        assert leaked not in out
    if isinstance(formatter, JsonFormatter):
        doc = json.loads(out)
        assert doc["target"] == "postgresql://u:***@h/db" and doc["count"] == 3
        assert "pw-in-exc" not in doc["exception"] and "RuntimeError" in doc["exception"]


@pytest.mark.parametrize("text,secret", [
    ("Authorization: Basic YWxpY2U6cHc=", "YWxpY2U6cHc="),
    ("{'authorization': 'Bearer eyJhbGciOi.x.y'}", "eyJhbGciOi"),
    ('{"password": "hunter2"}', "hunter2"),
    ("monitor.password=hunter2&x=1", "hunter2"),
    ("postgresql://gw:hunter2@db:5432/gw", "hunter2"),
    ("Cookie: __Secure-Trino-UI-Token=abc123; other=1", "abc123"),
    ("X-Trino-Extra-Credential: s3.key=hunter2", "hunter2"),
    ("sessionSecret: hunter2", "hunter2"),
])
def test_redact(text, secret):
    assert secret not in redact(text)
    assert "***" in redact(text)


@pytest.fixture
def text_setup():
    """The gateway's own text logging, writing into a buffer; restored afterwards."""
    import io
    from gateway.config import LoggingConfig
    from gateway.logs import setup_logging, text_lines
    root = logging.getLogger()
    saved = (root.handlers[:], root.level, text_lines.handler)
    setup_logging(LoggingConfig(level="INFO", format="text"))
    buf = io.StringIO()
    root.handlers[0].stream = buf
    yield buf, text_lines
    root.handlers[:], root.level, text_lines.handler = saved[0], saved[1], saved[2]


def test_statement_lines_written_directly_equal_the_logging_modules_lines(text_setup):
    buf, text_lines = text_setup
    log = logging.getLogger("gateway.routing")
    root = logging.getLogger()
    pytest_handlers = root.handlers[:]
    root.handlers[:] = [text_lines.handler]     # as in the gateway: pytest adds its own per phase
    try:
        _write_both(log, text_lines)
    finally:
        root.handlers[:] = pytest_handlers
    _check_both(buf)


def _write_both(log, text_lines):
    msg = "query q1 user=alice source=None group=adhoc backend=b1 rule=- decision=0.027ms (default group)"
    secret = "query q2 user=bob Authorization: Bearer abc.def (x)"
    for m in (msg, secret):
        assert text_lines.info(log, m)
        log.info("%s", m)


def _check_both(buf):
    direct_1, standard_1, direct_2, standard_2 = buf.getvalue().splitlines()
    # same line apart from the clock (the milliseconds may differ between the two calls)
    for direct, standard in ((direct_1, standard_1), (direct_2, standard_2)):
        assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} \[\d+\] INFO gateway\.routing: .*", direct)
        assert direct.split(" ", 2)[2] == standard.split(" ", 2)[2]
    assert "abc.def" not in direct_2 and "Bearer ***" in direct_2


def test_any_other_logging_setup_gets_ordinary_records(text_setup):
    buf, text_lines = text_setup
    log = logging.getLogger("gateway.routing")
    root = logging.getLogger()
    pytest_handlers = root.handlers[:]
    root.handlers[:] = [text_lines.handler]
    try:
        assert text_lines.info(log, "query q0")           # the gateway's own setup: direct
        other = logging.NullHandler()
        root.addHandler(other)                            # a second destination (e.g. caplog)
        assert not text_lines.info(log, "query q3")
        root.removeHandler(other)
        nothing = logging.Filter("nothing")
        log.addFilter(nothing)                            # a filter on the way
        assert not text_lines.info(log, "query q4")
        log.removeFilter(nothing)
        logging.getLogger("gateway").addHandler(other)    # a handler on a parent logger
        assert not text_lines.info(log, "query q5")
        logging.getLogger("gateway").removeHandler(other)
        handler, text_lines.handler = text_lines.handler, None   # the JSON format
        assert not text_lines.info(log, "query q6")
        text_lines.handler = handler
    finally:
        root.handlers[:] = pytest_handlers
    assert [line.split(": ", 1)[1] for line in buf.getvalue().splitlines()] == ["query q0"]
