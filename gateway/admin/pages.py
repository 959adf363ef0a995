"""Admin pages: the base handler (sessions, roles, CSRF, rendering), login and logout, routes.

Pages are server-rendered Jinja2 templates from ``templates/``; ``gateway/admin/static`` holds
the stylesheet and a small script that adds live validation, confirmations and refreshes. Every
page works without the script. Each page module (``pages_dashboard``, ``pages_clusters``,
``pages_history``, ``pages_rules``) holds its handlers and the pure functions they use.

Access (see ``gateway.admin.auth.page_access``): with users configured, reading needs a session with
role ``user`` or ``admin`` and changing needs ``admin``; without users everyone reads and only
loopback callers change. Every POST needs the CSRF token (form field ``_csrf`` or header
``X-CSRF-Token``).
"""
from __future__ import annotations

import datetime as _dt
import logging
import os
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit

import jinja2
from markupsafe import Markup
from tornado.web import HTTPError, RequestHandler, StaticFileHandler

from gateway.admin.session import (
    COOKIE_PATH, CSRF_COOKIE, CSRF_FIELD, CSRF_HEADER, FLASH_COOKIE, SESSION_COOKIE, Session,
    host_is_ours, own_hosts, tokens_equal,
)
from gateway.admin.auth import Access, is_cross_site, is_loopback, page_access
from gateway.limits import MAX_USER_CHARS, control_chars, mask_credentials
from gateway.runtime.offload import Busy
from gateway.resources import resource_dir

if TYPE_CHECKING:
    from gateway.admin.parts import AdminParts

log = logging.getLogger("gateway.admin")

BASE = "/trino-gateway"
TEMPLATES = str(resource_dir("templates"))
STATIC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")

# Scripts and styles only from the gateway itself; no framing; no referrer to clusters' UIs.
_SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; "
                               "img-src 'self' data:; object-src 'none'; base-uri 'none'; "
                               "frame-ancestors 'none'; form-action 'self'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


def fmt_time(ts: float | None) -> str:
    if ts is None:
        return "–"
    return _dt.datetime.fromtimestamp(ts, _dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def time_tag(ts: float | None) -> Markup:
    """A time for the page body: UTC text the script may show in the browser's zone instead."""
    if ts is None:
        return Markup("–")
    iso = _dt.datetime.fromtimestamp(ts, _dt.timezone.utc).isoformat(timespec="seconds")
    return Markup('<time datetime="{}" data-ts="{}">{}</time>').format(iso, f"{ts:.3f}", fmt_time(ts))


def fmt_ago(ts: float | None, now: float | None = None) -> str:
    if ts is None:
        return "never"
    d = max(0.0, (now if now is not None else time.time()) - ts)
    if d < 1:
        return "just now"
    if d < 120:
        return f"{int(d)} s ago"
    if d < 7200:
        return f"{int(d // 60)} min ago"
    if d < 172800:
        return f"{int(d // 3600)} h ago"
    return f"{int(d // 86400)} days ago"


def count_or_unknown(n: int | None) -> Markup:
    """A count, or a marked "unknown" (never a 0 the gateway does not know)."""
    if n is None:
        return Markup('<span class="unknown" title="not known: the monitor cannot count '
                      'queries on this cluster (see docs/operations.md)">unknown</span>')
    return Markup(str(int(n)))


_env: jinja2.Environment | None = None


def template_env() -> jinja2.Environment:
    global _env
    if _env is None:
        env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES),
                                 autoescape=jinja2.select_autoescape(["html"], default=True),
                                 trim_blocks=True, lstrip_blocks=True,
                                 undefined=jinja2.StrictUndefined)
        env.filters["time"] = fmt_time
        env.filters["ago"] = fmt_ago
        env.filters["ts"] = time_tag
        env.filters["count_or_unknown"] = count_or_unknown
        env.filters["urlquote"] = lambda s: quote(str(s), safe="")
        env.filters["masked"] = lambda s: mask_credentials(str(s)) if s else s
        env.globals["BASE"] = BASE
        _env = env
    return _env


def safe_next(target: str | None) -> str:
    """Where to go after login: only a path of the admin pages (no open redirect)."""
    if not target:
        return BASE + "/"
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not parts.path.startswith(BASE + "/") or "\\" in target \
            or control_chars(target):
        return BASE + "/"
    return target


class PageHandler(RequestHandler):
    """Base of every admin page. Subclasses set ``need`` ("read", "write" or "none")."""

    need = "read"
    nav = ""

    def initialize(self, parts: "AdminParts") -> None:
        self.parts = parts
        self.sessions = parts.sessions
        self.session: Session | None = None
        self.access = Access(False, False)
        self._csrf: str | None = None

    # -- request checks ----------------------------------------------------------------------

    def prepare(self) -> None:
        for k, v in _SECURITY_HEADERS.items():
            self.set_header(k, v)
        if self.sessions.enabled:
            self.session = self.sessions.read(self.get_cookie(SESSION_COOKIE))
        self.access = page_access(self.sessions.enabled, self.session.roles if self.session else None,
                                  is_loopback(self.request.remote_ip))
        if self.request.method not in ("GET", "HEAD"):
            self.check_csrf()
            if not self.sessions.enabled and not host_is_ours(self.parts.config.server, self.request):
                raise HTTPError(403, reason="Host is not a name of this gateway (with no admin users, "
                                            "changes must name it by IP address, localhost, its host "
                                            "name or server.publicUrl)")
        if self.need == "none":
            return
        if not self.access.read:
            if self.session is None and self.request.method in ("GET", "HEAD") and self.is_page():
                self.redirect(f"{BASE}/login?next={quote(self.request.uri or BASE + '/', safe='')}")
                return
            raise HTTPError(401 if self.session is None else 403, reason=self.access.reason)
        if self.need == "write" and not self.access.write:
            raise HTTPError(403, reason=self.access.reason)

    def is_page(self) -> bool:
        """False for the JSON and fragment endpoints (they answer 401 instead of redirecting)."""
        return True

    def check_csrf(self) -> None:
        if is_cross_site(self.request.headers, own_hosts(self.parts.config.server, self.request)):
            raise HTTPError(403, reason="Cross-site request refused")
        sent = self.get_body_argument(CSRF_FIELD, None) or self.request.headers.get(CSRF_HEADER)
        if not tokens_equal(sent, self.csrf_token()):
            raise HTTPError(403, reason="Missing or expired form token (CSRF): reload the page and try again")

    def check_xsrf_cookie(self) -> None:
        return None   # our own check_csrf above

    def csrf_token(self) -> str:
        """The token forms must carry: the session's, else the one in the CSRF cookie."""
        if self.session is not None:
            return self.session.csrf
        if self._csrf is None:
            token = self.sessions.read_csrf_cookie(self.get_cookie(CSRF_COOKIE))
            if token is None:
                value, token = self.sessions.new_csrf_cookie()
                self.set_cookie(CSRF_COOKIE, value, path=COOKIE_PATH, httponly=True,
                                samesite="Strict", secure=self.request.protocol == "https")
            self._csrf = token
        return self._csrf

    # -- rendering ---------------------------------------------------------------------------

    def flash(self, message: str, kind: str = "ok") -> None:
        self.set_cookie(FLASH_COOKIE, self.sessions.flash(message, kind), path=COOKIE_PATH,
                        httponly=True, samesite="Strict", secure=self.request.protocol == "https")

    def take_flash(self) -> tuple[str, str] | None:
        value = self.get_cookie(FLASH_COOKIE)
        if not value:
            return None
        self.clear_cookie(FLASH_COOKIE, path=COOKIE_PATH)
        return self.sessions.read_flash(value)

    def render_page(self, template: str, status: int = 200, **ctx: Any) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.finish(self.render_html(template, **ctx))

    def render_html(self, template: str, **ctx: Any) -> str:
        base = {
            "nav": self.nav,
            "session": self.session,
            "auth_enabled": self.sessions.enabled,
            "access": self.access,
            "csrf": self.csrf_token(),
            "flash": self.take_flash() if "flash" not in ctx else ctx.pop("flash"),
            "now": time.time(),
        }
        base.update(ctx)
        return template_env().get_template(template).render(**base)

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        message = exc.reason if isinstance(exc, HTTPError) and exc.reason else self._reason
        self.clear_header("Content-Type")
        if not self.is_page():
            self.set_header("Content-Type", "application/json")
            import json
            return self.finish(json.dumps({"error": message}))
        try:
            self.render_page("error.html", status=status_code, code=status_code, message=message,
                             flash=None)
        except Exception:  # noqa: BLE001 - never fail while reporting a failure
            log.exception("cannot render the error page")
            self.finish(f"{status_code}: {message}")

    def send_download(self, filename: str, fmt: str, doc: Any, to_csv: Any) -> None:
        """``doc`` as a file to save: JSON, or CSV made by ``to_csv(doc)``; the name gets a
        UTC time stamp and the extension."""
        import json
        stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        self.set_header("Content-Disposition", f'attachment; filename="{filename}-{stamp}.{fmt}"')
        if fmt == "json":
            self.set_header("Content-Type", "application/json")
            return self.finish(json.dumps(doc, separators=(",", ":")))
        self.set_header("Content-Type", "text/csv; charset=utf-8")
        self.finish(to_csv(doc))

    def compute_etag(self) -> None:  # type: ignore[override]
        return None


class LoginHandler(PageHandler):
    need = "none"
    nav = "login"

    def get(self) -> None:
        self.render_page("login.html", next=safe_next(self.get_argument("next", None)), user="",
                         error=None)

    async def post(self) -> None:
        user = self.get_body_argument("user", "").strip()
        too_long = len(user) > MAX_USER_CHARS   # no configured user has such a name
        user = user[:MAX_USER_CHARS]
        password = self.get_body_argument("password", "", strip=False)
        nxt = safe_next(self.get_body_argument("next", None))
        if not self.sessions.enabled:
            return self.render_page("login.html", status=400, next=nxt, user=user,
                                    error="No admin users are configured, so there is nothing to log in to.")
        ip = self.request.remote_ip or ""
        limiter = self.sessions.limiter
        wait = limiter.retry_after(user, ip)
        if wait > 0:
            seconds = max(1, int(wait + 0.999))
            self.set_header("Retry-After", str(seconds))
            return self.render_page("login.html", status=429, next=nxt, user=user,
                                    error=f"Too many failed logins. Try again in {seconds} s.")
        auth = self.sessions.authenticator
        # PBKDF2 takes a good part of a second: not on the event loop (gateway.runtime.offload).
        try:
            roles = (await self.parts.passwords.run(auth.check, user, password)
                     if user and not too_long else None)
        except Busy:
            self.set_header("Retry-After", "1")
            return self.render_page("login.html", status=503, next=nxt, user=user,
                                    error="Too many logins at once. Try again in a second.")
        if roles is None:
            n = limiter.failed(user, ip)
            known = user in self.parts.config.auth.users
            log.warning("failed admin login for %s from %s (%d in the last minute)",
                        user if known else "an unknown user", ip, n)
            return self.render_page("login.html", status=401, next=nxt, user=user,
                                    error="Wrong user name or password.")
        limiter.succeeded(user, ip)
        value, session = self.sessions.issue(user)
        self.set_cookie(SESSION_COOKIE, value, path=COOKIE_PATH, httponly=True, samesite="Strict",
                        secure=self.request.protocol == "https",
                        expires=session.expires_at)
        log.info("admin login: %s (%s) from %s", user, ", ".join(session.roles), ip)
        self.redirect(nxt)


class LogoutHandler(PageHandler):
    need = "none"

    def post(self) -> None:
        if self.session is not None:
            log.info("admin logout: %s", self.session.user)
        self.clear_cookie(SESSION_COOKIE, path=COOKIE_PATH)
        self.redirect(f"{BASE}/login")


class NotFoundHandler(PageHandler):
    """Unknown paths under /trino-gateway/ are ours: never proxy them to a cluster."""

    def prepare(self) -> None:
        super().prepare()
        if not self._finished:
            raise HTTPError(404, reason="No such admin page")


def routes(parts: "AdminParts") -> list[Any]:
    from gateway.admin import (pages_clusters, pages_dashboard, pages_history, pages_metrics,
                               pages_rules)
    a = {"parts": parts}
    return [
        (BASE + r"/static/(.*)", StaticFileHandler, {"path": STATIC}),
        (BASE + r"/login", LoginHandler, a),
        (BASE + r"/logout", LogoutHandler, a),
        *pages_dashboard.routes(parts),
        *pages_clusters.routes(parts),
        *pages_history.routes(parts),
        *pages_rules.routes(parts),
        *pages_metrics.routes(parts),
        (BASE + r"(?:/.*)?", NotFoundHandler, a),
    ]
