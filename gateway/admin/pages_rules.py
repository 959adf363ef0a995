"""Routing rules page: the ruleset in force, the rules files editor, and the explain form.

The editor validates as you type through ``/trino-gateway/api/rules/check`` (the script) and
saves through ``/trino-gateway/api/rules/file``, then polls ``/trino-gateway/api/rules/status``
until the watcher has loaded the new version. Without the script the form posts here, the save
waits up to a few seconds for the reload and the rules page shows the result.
"""
from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import TYPE_CHECKING, Any

from gateway.admin.api import ApiError, explain
from gateway.admin.api_rules import offloaded
from gateway.admin.pages import BASE, PageHandler
from gateway.admin.rules_files import (
    RulesFileError, file_version, read_rules_file, rules_file_choices,
)
from gateway.routing.rules import RuleProblem

if TYPE_CHECKING:
    from gateway.admin.parts import AdminParts
    from gateway.routing.reload import RulesWatcher

log = logging.getLogger("gateway.admin")

RELOAD_WAIT = 3.0
EXPLAIN_FIELDS = ("user", "source", "clientTags", "catalog", "schema", "headers", "query")


def parse_header_lines(text: str) -> dict[str, str]:
    """``Name: value`` lines (blank lines skipped) as a mapping; a bad line raises ValueError."""
    out: dict[str, str] = {}
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        name, sep, value = line.partition(":")
        if not sep or not name.strip() or " " in name.strip():
            raise ValueError(f"headers, line {i}: expected 'Name: value', got {line.strip()!r}")
        out[name.strip()] = value.strip()
    return out


def explain_request(form: dict[str, str]) -> dict[str, Any]:
    """The explain API's body from the form's text fields."""
    data: dict[str, Any] = {k: form[k].strip() for k in ("user", "source", "catalog", "schema")
                            if form.get(k, "").strip()}
    tags = [t.strip() for t in form.get("clientTags", "").split(",") if t.strip()]
    if tags:
        data["clientTags"] = tags
    headers = parse_header_lines(form.get("headers", ""))
    if headers:
        data["headers"] = headers
    data["query"] = form.get("query", "")
    return data


def folders(paths: list[str]) -> list[str]:
    return [p for p in paths if os.path.isdir(p)]


class RulesHandler(PageHandler):
    nav = "rules"

    def get(self) -> None:
        self.show()

    def show(self, status: int = 200, **extra: Any) -> None:
        w = self.parts.rules
        rs = w.current
        loaded = set(rs.files) if rs else set()
        ctx = {
            "ruleset": rs,
            "last_error": w.last_error,
            "last_error_at": getattr(w, "last_error_at", None),
            "reloads_ok": getattr(w, "reloads_ok", 0),
            "reloads_failed": getattr(w, "reloads_failed", 0),
            "paths": w.paths,
            "files": [(f, exists, f in loaded) for f, exists in rules_file_choices(w.paths)],
            "folders": folders(w.paths),
            "explain_form": {k: "" for k in EXPLAIN_FIELDS},
            "explained": None,
            "explain_error": None,
        }
        ctx.update(extra)
        self.render_page("rules.html", status=status, **ctx)


class ExplainHandler(RulesHandler):
    """Explain from the form. The form is sent with GET (explaining changes nothing), so a
    result has a URL to bookmark or share; POST is still accepted."""

    async def get(self) -> None:
        form = {k: self.get_argument(k, "", strip=k not in ("query", "headers")) for k in EXPLAIN_FIELDS}
        if not any(form.values()):
            return self.show()
        await self.explain_form(form)

    async def post(self) -> None:
        await self.explain_form({k: self.get_body_argument(k, "", strip=k not in ("query", "headers"))
                                 for k in EXPLAIN_FIELDS})

    async def explain_form(self, form: dict[str, str]) -> None:
        try:
            p = self.parts
            result = await explain(p.router, p.sql_facts, explain_request(form), self.request.remote_ip or "")
        except (ApiError, ValueError) as exc:
            return self.show(400, explain_form=form, explain_error=str(exc))
        self.show(explain_form=form, explained=result)


class RulesEditHandler(PageHandler):
    nav = "rules"

    async def get(self) -> None:
        w = self.parts.rules
        file = self.get_argument("file", "")
        if not file and self.get_argument("name", ""):   # the "new file" form: folder + name
            file = os.path.join(self.get_argument("folder", ""), self.get_argument("name", ""))
        try:
            name, data = read_rules_file(w.paths, file)
        except RulesFileError as exc:
            return self.render_page("rules_edit.html", status=exc.code, file=None, content="",
                                    base_version="", problems=[], error=str(exc), is_new=False)
        content = "" if data is None else data.decode("utf-8", "replace")
        problems: list[RuleProblem] = []
        if data is not None:
            try:
                problems = _problems(await offloaded(self.parts, "rules_check", name, content, w.missing_ok))
            except ApiError as exc:
                problems = [RuleProblem(name, None, str(exc))]
        self.render_page("rules_edit.html", file=name, content=content, error=None,
                         base_version=file_version(data) or "", problems=problems, is_new=data is None)

    async def post(self) -> None:
        if not self.access.write:
            return self.render_page("error.html", status=403, code=403, message=self.access.reason)
        w = self.parts.rules
        file = self.get_body_argument("file", "")
        content = self.get_body_argument("content", "", strip=False)   # YAML: whitespace matters
        base = self.get_body_argument("baseVersion", "") or None
        started = time.time()
        try:
            result = await offloaded(self.parts, "rules_save", file, content, base, True, w.missing_ok)
        except ApiError as exc:
            result = {"error": str(exc), "code": exc.code, "check": None}
        if "error" in result:
            return self.render_page("rules_edit.html", status=result["code"], file=file, content=content,
                                    base_version=base or "", problems=_problems(result["check"]),
                                    error=result["error"], is_new=base is None)
        who = self.session.user if self.session else f"loopback caller {self.request.remote_ip}"
        log.info("rules file %s saved by %s", result["file"], who)
        w.trigger()
        ok, message = await wait_for_reload(w, result["version"], started)
        self.flash(f"Saved {result['file']}. {message}", "ok" if ok else "error")
        self.redirect(BASE + "/rules")


def _problems(check: dict[str, Any] | None) -> list[RuleProblem]:
    """The problems of a check answer (``offloaded``) as the template shows them."""
    return [RuleProblem(p["file"], p["line"], p["message"]) for p in (check or {}).get("problems", [])]


async def wait_for_reload(w: "RulesWatcher", version: str | None, since: float) -> tuple[bool, str]:
    """Wait briefly for the watcher to load ``version``; (reloaded, what happened)."""
    deadline = time.monotonic() + RELOAD_WAIT
    while time.monotonic() < deadline:
        rs = w.current
        if rs is not None and rs.version == version:
            return True, f"Rules reloaded: version {version}."
        at = getattr(w, "last_error_at", None)
        if w.last_error and at is not None and at >= since:
            return False, f"The reload failed: {w.last_error}"
        await asyncio.sleep(0.05)
    return False, f"The reload has not happened yet (expected version {version}); refresh this page."


def routes(parts: "AdminParts") -> list[Any]:
    a = {"parts": parts}
    return [
        (BASE + r"/rules", RulesHandler, a),
        (BASE + r"/rules/explain", ExplainHandler, a),
        (BASE + r"/rules/edit", RulesEditHandler, a),
    ]
