"""REST endpoints for the rules files: check, read, save, and the reload status.

| method and path | does |
|---|---|
| POST `/api/rules/check` | body `{"file", "content"}` → `{"ok", "problems": [{"file", "line", "message"}], "version", "rules"}` |
| GET `/api/rules/file?file=F` | `{"file", "content", "fileVersion"}` (`content` null for a new file) |
| PUT `/api/rules/file` | body `{"file", "content", "baseVersion"}` → saved atomically; 422 with problems, 409 when the file changed since `baseVersion`, 403 outside the rules paths |
| GET `/api/rules/status` | `{"version", "loadedAt", "error", "errorAt", "reloadsOk", "reloadsFailed"}` |

The same handlers answer under `/trino-gateway/api/...`, where the admin pages' session cookie
is sent (it is scoped to `/trino-gateway/`); there a call needs the `X-CSRF-Token` header.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from gateway.admin.api import ApiError, ApiHandler
from gateway.admin.rules_files import RulesFileError, file_version, read_rules_file
from gateway.runtime.offload import OverBudget

if TYPE_CHECKING:
    from gateway.admin.parts import AdminParts
    from gateway.routing.reload import RulesWatcher

log = logging.getLogger("gateway.api")


def rules_status(w: "RulesWatcher") -> dict[str, Any]:
    rs = w.current
    return {"version": rs.version if rs else None, "loadedAt": rs.loaded_at if rs else None,
            "rules": len(rs.rules) if rs else 0, "error": w.last_error,
            "errorAt": getattr(w, "last_error_at", None), "reloadsOk": getattr(w, "reloads_ok", 0),
            "reloadsFailed": getattr(w, "reloads_failed", 0)}


def _body(handler: ApiHandler) -> dict[str, Any]:
    data = handler.json_body()
    if not isinstance(data, dict):
        raise ApiError(400, 'Body must be a JSON object {"file": ..., "content": ...}')
    return data


async def offloaded(parts: "AdminParts", task: str, *args: Any) -> dict[str, Any]:
    """A rules check or save in the offload process (rule-engine compiles conditions in pure
    Python: an 800 KB condition took 15 s), within ``routing.rulesCheckTimeout``."""
    budget = parts.config.routing.rulesCheckTimeout
    try:
        result = await parts.offload.run(task, list(parts.rules.paths), *args, budget=budget)
    except OverBudget:
        raise ApiError(422, f"Checking these rules took longer than {budget:g}s "
                            "(routing.rulesCheckTimeout); simplify the conditions") from None
    except RuntimeError as exc:   # an unexpected failure in the offload process, with its reason
        raise ApiError(500, f"Checking the rules failed: {exc}") from None
    if "error" in result and result.get("check") is None:
        raise ApiError(result["code"], result["error"])
    return result


class RulesCheckHandler(ApiHandler):
    async def post(self) -> None:
        async def go() -> None:
            data = _body(self)
            self.send_json(await offloaded(self.parts, "rules_check", data.get("file"), data.get("content"),
                                           self.parts.rules.missing_ok))
        await self.run(False, go)


class RulesFileHandler(ApiHandler):
    async def get(self) -> None:
        async def go() -> None:
            try:
                name, data = read_rules_file(self.parts.rules.paths, self.get_argument("file", None))
            except RulesFileError as exc:
                raise ApiError(exc.code, str(exc)) from None
            self.send_json({"file": name, "fileVersion": file_version(data),
                            "content": None if data is None else data.decode("utf-8", "replace")})
        await self.run(False, go)

    async def put(self) -> None:
        async def go() -> None:
            data = _body(self)
            base = data.get("baseVersion")
            if base is not None and not isinstance(base, str):
                raise ApiError(400, "baseVersion must be the fileVersion the edit started from, or null")
            result = await offloaded(self.parts, "rules_save", data.get("file"), data.get("content"),
                                     base, "baseVersion" in data, self.parts.rules.missing_ok)
            if "error" in result:   # 422: the problems of the check come along
                return self.send_json({"error": result["error"], **result["check"]}, status=422)
            log.info("rules file %s saved by %s (ruleset version %s when reloaded)", result["file"],
                     getattr(self, "user", None) or self.request.remote_ip, result["version"])
            self.parts.rules.trigger()   # the watcher would notice anyway; this saves the poll delay
            _, saved = read_rules_file(self.parts.rules.paths, result["file"])
            self.send_json({**result, "fileVersion": file_version(saved)})
        await self.run(True, go)


class RulesStatusHandler(ApiHandler):
    async def get(self) -> None:
        async def go() -> None:
            self.send_json(rules_status(self.parts.rules))
        await self.run(False, go)


def routes(parts: "AdminParts") -> list[Any]:
    a = {"parts": parts}
    out: list[Any] = []
    for prefix in ("", "/trino-gateway"):
        out += [
            (prefix + r"/api/rules/check", RulesCheckHandler, a),
            (prefix + r"/api/rules/file", RulesFileHandler, a),
            (prefix + r"/api/rules/status", RulesStatusHandler, a),
        ]
    return out
