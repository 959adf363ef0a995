"""Reading, checking and atomically saving rules files (gateway/admin/rules_files.py)."""
from __future__ import annotations

import os

import pytest

from gateway.admin.rules_files import (
    RulesFileError, check_rules_file, file_version, read_rules_file, resolve_rules_file,
    rules_file_choices, save_rules_file,
)
from gateway.routing.rules import load_ruleset

GOOD = 'name: a\ncondition: user == "x"\nroutingGroup: etl\n'


@pytest.fixture
def rules(tmp_path):
    d = tmp_path / "rules"
    d.mkdir()
    (d / "a.yaml").write_text(GOOD)
    (d / "b.yml").write_text('name: b\ncondition: source == "y"\nroutingGroup: adhoc\n')
    (tmp_path / "single.yaml").write_text('name: s\ncondition: "true"\nroutingGroup: adhoc\n')
    (tmp_path / "outside.yaml").write_text(GOOD)
    return tmp_path, [str(d), str(tmp_path / "single.yaml")]


@pytest.mark.parametrize("bad, code", [
    ("{d}/../outside.yaml", 403),                 # .. out of the folder
    ("{t}/outside.yaml", 403),                    # a file next to the rules, not configured
    ("/etc/passwd", 403),
    ("{d}/sub/x.yaml", 403),                      # folders are not recursive
    ("{d}/notes.txt", 400),                       # not a rules file name
    ("{d}/.hidden.yaml", 400),
    ("{d}/", 403),                                # the folder itself
    ("", 400),
    (None, 400),
    ("{d}/a.yaml\0.txt", 400),
])
def test_paths_outside_the_rules_are_refused(rules, bad, code):
    tmp, paths = rules
    file = bad.format(d=paths[0], t=tmp) if isinstance(bad, str) else bad
    with pytest.raises(RulesFileError) as err:
        save_rules_file(paths, file, GOOD, check_base=False)
    assert err.value.code == code
    assert str(err.value)
    assert (tmp / "outside.yaml").read_text() == GOOD
    assert not (tmp / "rules" / "notes.txt").exists()


def test_resolve_names_files_as_the_ruleset_does(rules):
    tmp, paths = rules
    assert resolve_rules_file(paths, f"{paths[0]}/a.yaml") == os.path.join(paths[0], "a.yaml")
    assert resolve_rules_file(paths, f"{paths[0]}/./new.yaml") == os.path.join(paths[0], "new.yaml")
    assert resolve_rules_file(paths, str(tmp / "single.yaml")) == paths[1]
    files = load_ruleset(paths).files
    assert [f for f, _ in rules_file_choices(paths)] == list(files)


def test_check_reports_lines_and_cross_file_duplicates(rules):
    _, paths = rules
    r = check_rules_file(paths, f"{paths[0]}/a.yaml", 'name: a\ncondition: usr == "x"\nroutingGroup: etl\n')
    assert not r.ok and r.version is None
    assert [(p.line, "usr" in p.message) for p in r.file_problems] == [(2, True)]
    dup = check_rules_file(paths, f"{paths[0]}/c.yaml", 'name: b\ncondition: "true"\nroutingGroup: x\n')
    assert any("duplicate rule name 'b'" in p.message for p in dup.problems)
    ok = check_rules_file(paths, f"{paths[0]}/a.yaml", GOOD.replace("etl", "adhoc"))
    assert ok.ok and ok.rules == 3 and ok.to_json()["problems"] == []


def test_save_is_atomic_validated_and_gives_the_reloaded_version(rules):
    tmp, paths = rules
    name = f"{paths[0]}/a.yaml"
    os.chmod(name, 0o640)
    _, before = read_rules_file(paths, name)
    new = GOOD.replace("etl", "adhoc").replace("\n", "\r\n")     # a browser's textarea
    result = save_rules_file(paths, name, new, base_version=file_version(before))
    assert (tmp / "rules" / "a.yaml").read_text() == GOOD.replace("etl", "adhoc")
    assert os.stat(name).st_mode & 0o777 == 0o640
    assert sorted(os.listdir(tmp / "rules")) == ["a.yaml", "b.yml"]      # no temp file left
    assert result.version == load_ruleset(paths).version                 # what the watcher will load


def test_save_refuses_invalid_text_and_stale_base(rules):
    tmp, paths = rules
    name = f"{paths[0]}/a.yaml"
    with pytest.raises(RulesFileError) as err:
        save_rules_file(paths, name, "name: a\ncondition: (\n", check_base=False)
    assert err.value.code == 422
    with pytest.raises(RulesFileError) as err:
        save_rules_file(paths, name, GOOD, base_version="0123456789abcdef")
    assert err.value.code == 409
    assert (tmp / "rules" / "a.yaml").read_text() == GOOD


def test_new_file_in_a_folder_and_refusing_a_symlink(rules, tmp_path):
    tmp, paths = rules
    new = f"{paths[0]}/c.yaml"
    assert read_rules_file(paths, new) == (new, None)
    save_rules_file(paths, new, 'name: c\ncondition: "true"\nroutingGroup: etl\n', base_version=None)
    assert len(load_ruleset(paths).rules) == 4
    with pytest.raises(RulesFileError) as err:   # created meanwhile by someone else
        save_rules_file(paths, new, GOOD.replace("name: a", "name: c2"), base_version=None)
    assert err.value.code == 409
    os.symlink(tmp / "outside.yaml", tmp / "rules" / "link.yaml")
    os.unlink(tmp / "rules" / "a.yaml")   # the link's rule 'a' would clash otherwise
    with pytest.raises(RulesFileError) as err:
        save_rules_file(paths, f"{paths[0]}/link.yaml", GOOD, check_base=False)
    assert err.value.code == 409 and "symlink" in str(err.value)
    assert (tmp / "outside.yaml").read_text() == GOOD


def test_oversized_content_is_refused(rules):
    _, paths = rules
    with pytest.raises(RulesFileError) as err:
        check_rules_file(paths, f"{paths[0]}/a.yaml", "#" * (1024 * 1024 + 1))
    assert err.value.code == 413
