"""``trino-gateway healthcheck``: is the gateway on this machine live?

A container health check must follow the configuration (``server.port``, TLS on that port),
not hard-code ``http://127.0.0.1:8080``; this reads the same file ``serve`` reads.
"""
from __future__ import annotations

import ssl
import urllib.error
import urllib.request

from gateway.config import Config

LIVEZ = "/trino-gateway/livez"


def livez_url(config: Config) -> str:
    """The livez URL of the gateway ``config`` describes, as seen from the same machine."""
    s = config.server
    # server.port is HTTPS only when TLS is configured without a separate tls.port.
    scheme = "https" if s.tls.certFile and not s.tls.port else "http"
    host = s.host
    if host in ("", "0.0.0.0", "::"):  # listening everywhere: loopback is one of them
        host = "127.0.0.1" if host != "::" else "::1"
    if ":" in host:
        host = f"[{host}]"
    return f"{scheme}://{host}:{s.port}{LIVEZ}"


def check_live(config: Config, timeout: float = 2.0) -> tuple[bool, str]:
    """(live, message). The certificate is not checked: it names the public host, and a
    liveness probe on the same machine only asks whether the process answers."""
    url = livez_url(config)
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        with urllib.request.urlopen(url, timeout=timeout, context=context) as resp:
            return True, f"{url}: {resp.status}"
    except urllib.error.HTTPError as exc:
        return False, f"{url}: {exc.code}"
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        return False, f"{url}: {reason}"
