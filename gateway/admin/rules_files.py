"""Reading, checking and saving the rules files from the admin pages and the REST API.

Only files inside the configured ``routing.rules`` paths can be read or written: a configured
file itself, or a ``*.yaml`` / ``*.yml`` file directly inside a configured folder (new files
too). Anything else, including ``..`` tricks, other folders, hidden names and symlinks (a
Kubernetes ConfigMap mount is managed elsewhere), is refused with a message saying why.

A check runs the same parser as ``trino-gateway rules check`` over the whole ruleset with the
edited file's new text in place, so duplicate names across files are found too. A save writes a
temporary file in the same folder, fsyncs it and renames it over the old one (``os.replace``),
so the rules watcher never sees a half-written file; it refuses text with problems and text
written against an older version of the file (someone else saved meanwhile).
"""
from __future__ import annotations

import hashlib
import os
import re
import tempfile
from dataclasses import dataclass
from typing import Any, Iterable

from gateway.routing.rules import (
    RULE_FILE_SUFFIXES, RuleProblem, RulesError, parse_ruleset, read_sources, sources_version,
)

__all__ = ["RulesFileError", "CheckResult", "resolve_rules_file", "rules_file_choices",
           "read_rules_file", "check_rules_file", "save_rules_file", "file_version",
           "MAX_RULES_FILE_BYTES"]

MAX_RULES_FILE_BYTES = 1024 * 1024
_FILE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,200}$")


class RulesFileError(Exception):
    """A refused read or write; ``code`` is the HTTP status to answer with."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class CheckResult:
    problems: list[RuleProblem]        # every problem of the ruleset with the new text
    file: str                          # the checked file, as the ruleset names it
    version: str | None                # the ruleset version these files give (None: invalid)
    rules: int                         # rules in the ruleset (0 when invalid)

    @property
    def file_problems(self) -> list[RuleProblem]:
        return [p for p in self.problems if p.file == self.file]

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        return {"file": self.file, "ok": self.ok, "version": self.version, "rules": self.rules,
                "problems": [{"file": p.file, "line": p.line, "message": p.message}
                             for p in self.problems]}


def file_version(data: bytes | None) -> str | None:
    """A short hash of a file's bytes, for "changed since you opened it" checks."""
    return None if data is None else hashlib.sha256(data).hexdigest()[:16]


def _is_folder(path: str) -> bool:
    return os.path.isdir(path) or path.endswith(("/", os.sep))


def resolve_rules_file(paths: Iterable[str], file: Any) -> str:
    """The file as the ruleset names it, if it is (or may become) one of the rules files."""
    paths = [str(p) for p in paths]
    if not isinstance(file, str) or not file.strip():
        raise RulesFileError(400, "file: the rules file's path is required")
    if "\0" in file:
        raise RulesFileError(400, "file: the path contains a NUL byte")
    target = os.path.abspath(file)
    for p in paths:
        if not _is_folder(p) and os.path.abspath(p) == target:
            return p
    for p in paths:
        if not _is_folder(p):
            continue
        name = os.path.basename(target)
        if os.path.abspath(p) != os.path.dirname(target):
            continue
        if not _FILE_NAME.match(name) or not name.endswith(RULE_FILE_SUFFIXES):
            raise RulesFileError(400, f"file: {name!r} is not a rules file name: use letters, digits, "
                                      "'.', '_' or '-', ending in .yaml or .yml")
        if not os.path.isdir(p):
            raise RulesFileError(404, f"the rules folder {p} does not exist")
        return os.path.join(p, name)
    configured = ", ".join(paths) or "none"
    raise RulesFileError(403, f"{file!r} is not inside the configured rules paths ({configured})")


def rules_file_choices(paths: Iterable[str]) -> list[tuple[str, bool]]:
    """(file, exists) for every configured file and every rules file in configured folders."""
    out: list[tuple[str, bool]] = []
    for p in (str(x) for x in paths):
        if os.path.isdir(p):
            try:
                names = sorted(n for n in os.listdir(p)
                               if n.endswith(RULE_FILE_SUFFIXES) and not n.startswith("."))
            except OSError:
                continue
            out.extend((os.path.join(p, n), True) for n in names if os.path.isfile(os.path.join(p, n)))
        elif not _is_folder(p):
            out.append((p, os.path.isfile(p)))
    return out


def read_rules_file(paths: Iterable[str], file: Any) -> tuple[str, bytes | None]:
    """(file, bytes) of a rules file; bytes is None for a new file in a configured folder."""
    name = resolve_rules_file(paths, file)
    try:
        with open(name, "rb") as fh:
            return name, fh.read(MAX_RULES_FILE_BYTES + 1)
    except FileNotFoundError:
        return name, None
    except IsADirectoryError:
        raise RulesFileError(400, f"{name} is a folder, not a rules file") from None
    except OSError as exc:
        raise RulesFileError(500, f"cannot read {name}: {exc.strerror}") from None


def _text_bytes(content: Any) -> bytes:
    if not isinstance(content, str):
        raise RulesFileError(400, "content: the file's text is required (a string)")
    # Browsers send textarea text with CRLF line ends; the files keep LF.
    data = content.replace("\r\n", "\n").encode("utf-8", "surrogatepass")
    if len(data) > MAX_RULES_FILE_BYTES:
        raise RulesFileError(413, f"content: {len(data)} bytes is over the {MAX_RULES_FILE_BYTES} byte limit")
    return data


def _with_file(paths: list[str], sources: list[tuple[str, bytes]], name: str,
               data: bytes) -> list[tuple[str, bytes]]:
    """The sources as the watcher will read them once ``name`` holds ``data``."""
    if any(f == name for f, _ in sources):
        return [(f, data if f == name else d) for f, d in sources]
    # A new file: in a folder, files load sorted by name, after the earlier paths' files.
    def order(f: str) -> tuple[int, str]:
        for i, p in enumerate(paths):
            if (not _is_folder(p) and f == p) or (_is_folder(p) and os.path.dirname(f) ==
                                                  os.path.dirname(os.path.join(p, "x"))):
                return i, os.path.basename(f)
        return len(paths), f
    return sorted(sources + [(name, data)], key=lambda s: order(s[0]))


def check_rules_file(paths: Iterable[str], file: Any, content: Any, *,
                     missing_ok: bool = False) -> CheckResult:
    """Check the whole ruleset as it would be with ``file`` holding ``content``."""
    paths = [str(p) for p in paths]
    name = resolve_rules_file(paths, file)
    data = _text_bytes(content)
    sources, problems = read_sources(paths, missing_ok=True)
    problems = [p for p in problems if p.file != name]   # "no such file": it is about to exist
    if not missing_ok:
        problems += [RuleProblem(p, None, "no such file or folder") for p in paths
                     if not os.path.exists(p) and p != name]
    sources = _with_file(paths, sources, name, data)
    try:
        ruleset = parse_ruleset(sources, problems)
    except RulesError as exc:
        return CheckResult(exc.errors, name, None, 0)
    return CheckResult([], name, sources_version(sources), len(ruleset.rules))


def save_rules_file(paths: Iterable[str], file: Any, content: Any, *, base_version: str | None = None,
                    check_base: bool = True, missing_ok: bool = False) -> CheckResult:
    """Validate, then write atomically. ``base_version`` is ``file_version`` of the text the
    editor started from (None for a new file); a mismatch means someone else saved meanwhile."""
    paths = [str(p) for p in paths]
    result = check_rules_file(paths, file, content, missing_ok=missing_ok)
    name = result.file
    if result.file_problems:
        raise RulesFileError(422, f"{name} has {len(result.file_problems)} problem(s); not saved")
    if os.path.islink(name):
        raise RulesFileError(409, f"{name} is a symlink (managed elsewhere, e.g. a ConfigMap); "
                                  "edit its source instead")
    if check_base:
        _, current = read_rules_file(paths, name)
        if file_version(current) != base_version:
            raise RulesFileError(409, f"{name} changed since it was opened (someone saved it, or it "
                                      "was created); reload it and apply your change again")
    write_atomically(name, _text_bytes(content))
    return result


def write_atomically(name: str, data: bytes) -> None:
    """Temp file in the same folder, fsync, rename over, fsync the folder."""
    folder = os.path.dirname(os.path.abspath(name))
    try:
        mode = os.stat(name).st_mode & 0o777
    except FileNotFoundError:
        mode = 0o644
    try:
        fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(name) + ".", suffix=".tmp", dir=folder)
    except OSError as exc:
        raise RulesFileError(500, f"cannot write in {folder}: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, name)
    except OSError as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise RulesFileError(500, f"cannot save {name}: {exc.strerror}") from None
    try:
        dfd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass   # some file systems cannot fsync a folder; the rename itself is done
