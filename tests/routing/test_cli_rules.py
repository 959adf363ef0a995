"""`trino-gateway rules check` and `trino-gateway rules explain`: exit codes and output."""
from __future__ import annotations

import argparse
import io
import json
import re
from pathlib import Path

import pytest

from gateway.routing.cli_rules import add_rules_parser, cmd_check, cmd_explain
from tests.routing.examples import ISSUE_EXAMPLE

REPO = Path(__file__).resolve().parents[2]

GOOD = ISSUE_EXAMPLE + """\
---
name: no-interns
priority: 30
condition: user == "intern"
reject: not today
---
name: team
priority: 5
condition: headers["x-team"] == "ds"
routingGroup: ds
"""


@pytest.fixture
def rules_dir(tmp_path: Path) -> Path:
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "etl.yaml").write_text(GOOD)
    return tmp_path / "rules"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="trino-gateway")
    add_rules_parser(p.add_subparsers(dest="command"))
    return p


def explain(*argv: str) -> tuple[int, str]:
    args = parser().parse_args(["rules", "explain", *argv])
    out = io.StringIO()
    code = cmd_explain(args, out)
    return code, out.getvalue()


def test_check_valid_rules_exits_0(rules_dir: Path) -> None:
    out, err = io.StringIO(), io.StringIO()
    assert cmd_check([str(rules_dir)], out, err) == 0
    assert re.fullmatch(r"OK: 4 rules in 1 files \(version [0-9a-f]{12}\)\n", out.getvalue())
    assert err.getvalue() == ""


def test_check_invalid_rules_exits_1_with_file_line_message(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: a\ncondition: usr == 'x'\nroutingGroup: etl\n---\nname: b\nroutingGroup: etl\n")
    out, err = io.StringIO(), io.StringIO()
    assert cmd_check([str(bad), str(tmp_path / "missing")], out, err) == 1
    lines = err.getvalue().splitlines()
    assert lines[0] == f"{tmp_path / 'missing'}: no such file or folder"
    assert lines[1].startswith(f"{bad}:2: rule 'a': condition: unknown symbol 'usr'")
    assert lines[2] == f"{bad}:5: missing required key 'condition'"
    assert lines[-1] == "3 problems found"
    assert out.getvalue() == ""


def test_check_the_shipped_example_rules() -> None:
    out, err = io.StringIO(), io.StringIO()
    assert cmd_check([str(REPO / "rules")], out, err) == 0, err.getvalue()
    assert "(1 disabled)" in out.getvalue()


def test_check_through_the_parser_dispatch(rules_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = parser().parse_args(["rules", "check", str(rules_dir)])
    assert args.func(args) == 0
    assert capsys.readouterr().out.startswith("OK: 4 rules")


def test_explain_shows_context_trace_and_decision(rules_dir: Path) -> None:
    code, out = explain("--rules", str(rules_dir), "--user", "alice", "--source", "airflow",
                        "--catalog", "hive", "--schema", "raw", "--sql", "SELECT * FROM users")
    assert code == 0
    assert "  user: alice\n" in out and "  tables: hive.raw.users\n" in out
    assert "  no    big-scans (priority 20)\n" in out
    assert "  MATCH etl-tools (priority 10)\n" in out
    assert out.rstrip().endswith("decision: routing group etl (rule etl-tools)")


def test_explain_lists_every_rule_above_the_decision(rules_dir: Path) -> None:
    code, out = explain("--rules", str(rules_dir), "--user", "bob", "--header", "X-Team: ds")
    assert code == 0
    assert [m for m in re.findall(r"^  \w+\s+(\S+) \(priority", out, re.M)] == ["no-interns", "big-scans", "etl-tools", "team"]
    assert out.rstrip().endswith("decision: routing group ds (rule team)")


def test_explain_a_reject(rules_dir: Path) -> None:
    code, out = explain("--rules", str(rules_dir), "--user", "intern")
    assert code == 0
    assert "decision: reject with 'not today' (rule no-interns rejects the query)" in out


def test_explain_default_group_fallbacks_and_errors(rules_dir: Path) -> None:
    code, out = explain("--rules", str(rules_dir), "--user", "bob", "--default-group", "main")
    assert code == 0
    assert "error team (priority 5): no key 'x-team'" in out
    assert out.rstrip().endswith("decision: routing group main (default group)")
    code, out = explain("--rules", str(rules_dir), "--source", "dbt", "--group-with-backends", "adhoc,bi")
    assert out.rstrip().endswith("decision: routing group adhoc (rule etl-tools named group 'etl' which has "
                                 "no backends; fell back to default group)")
    code, out = explain("--rules", str(rules_dir), "--routing-group", "bi", "--group-with-backends", "bi",
                        "--group-with-backends", "adhoc")
    assert out.rstrip().endswith("decision: routing group bi (group header)")
    code, out = explain("--rules", str(rules_dir), "--routing-group", "bi", "--no-group-header")
    assert "routing group adhoc (default group (routing group header 'bi' is not allowed))" in out


def test_explain_json(rules_dir: Path) -> None:
    code, out = explain("--rules", str(rules_dir), "--client-tags", "etl, nightly", "--json",
                        "--sql", "INSERT INTO t SELECT 1", "--header", "Authorization: Basic c2VjcmV0OnB3")
    assert code == 0
    doc = json.loads(out)
    assert doc["routingGroup"] == "etl" and doc["rule"] == "big-scans"
    assert doc["context"]["clientTags"] == ["etl", "nightly"]
    assert doc["context"]["queryType"] == "INSERT"
    assert "authorization" not in doc["context"]["headers"]
    assert doc["trace"][-1] == {"rule": "big-scans", "priority": 20, "matched": True, "error": None}
    assert re.fullmatch(r"[0-9a-f]{12}", doc["version"])


def test_explain_sql_file(rules_dir: Path, tmp_path: Path) -> None:
    f = tmp_path / "q.sql"
    f.write_text("SELECT * FROM hive.raw.events")
    code, out = explain("--rules", str(rules_dir), "--sql-file", str(f))
    assert code == 0 and "(rule big-scans)" in out
    code, out = explain("--rules", str(rules_dir), "--sql-file", str(tmp_path / "none.sql"))
    assert code == 1 and "cannot read" in out


def test_explain_with_broken_rules_exits_1(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: a\ncondition: 'user =='\nroutingGroup: etl\n")
    code, out = explain("--rules", str(bad), "--user", "x")
    assert code == 1
    assert out.startswith(f"{bad}:2: rule 'a': condition: syntax error")


def test_explain_rejects_a_malformed_header(rules_dir: Path) -> None:
    code, out = explain("--rules", str(rules_dir), "--header", "no colon here")
    assert code == 2 and "expected 'Name: value'" in out


def test_sql_and_sql_file_are_exclusive(rules_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        parser().parse_args(["rules", "explain", "--rules", str(rules_dir), "--sql", "x", "--sql-file", "y"])
    assert exc.value.code == 2
    with pytest.raises(SystemExit):
        parser().parse_args(["rules", "explain", "--user", "x"])   # --rules is required
