"""The same REST call sequence against trino-gateway (Java) and ours, compared call by call.

Each step is sent to both gateways (each with its own store, the same backends: a simulated
cluster that answers and an address nothing listens on). For every step the status codes must
be equal, and where trino-gateway answers JSON, every field it sends must be in ours with the
same value (lists compared by backend name; ours may add fields). The differences we keep on
purpose are in ``KEPT``, each with its reason, and are listed in docs/migrating.md; a kept
difference that disappears fails too, so the list stays true.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pytest
import requests

from tests.conftest import REPO, ClusterProcess, gateway_config, wait_for
from tests.javagw import launcher

pytestmark = pytest.mark.javagw

SIM, DEAD = "{SIM}", "{DEAD}"


@dataclass
class Step:
    name: str
    method: str
    path: str
    body: Any = None                 # sent as JSON
    raw: bytes | None = None         # sent as is, with ``ctype``
    ctype: str | None = None


def backend(name: str, url: str, group: str = "adhoc", active: bool = True, **extra: Any) -> dict[str, Any]:
    return {"name": name, "proxyTo": url, "externalUrl": url, "routingGroup": group, "active": active, **extra}


ADD, UPDATE, DELETE = "/gateway/backend/modify/add", "/gateway/backend/modify/update", "/gateway/backend/modify/delete"
STEPS: list[Step | str] = [
    Step("list all, empty", "GET", "/gateway/backend/all"),
    Step("list active, empty", "GET", "/gateway/backend/active"),
    Step("add b1", "POST", ADD, backend("b1", SIM)),
    Step("add b2 inactive in etl", "POST", ADD, backend("b2", DEAD, "etl", False)),
    Step("add b3 without externalUrl, routingGroup, active", "POST", ADD, {"name": "b3", "proxyTo": SIM}),
    Step("add duplicate name", "POST", ADD, backend("b1", SIM)),
    Step("add without proxyTo", "POST", ADD, {"name": "b9"}),
    Step("add without name", "POST", ADD, {"proxyTo": SIM}),
    Step("add empty object", "POST", ADD, {}),
    Step("add body not JSON", "POST", ADD, raw=b"not json", ctype="application/json"),
    Step("list all", "GET", "/gateway/backend/all"),
    Step("list active", "GET", "/gateway/backend/active"),
    Step("update b2: group and active", "POST", UPDATE, backend("b2", DEAD, "batch", True)),
    Step("update missing b4 inserts it", "POST", UPDATE, backend("b4", DEAD)),
    Step("deactivate b1", "POST", "/gateway/backend/deactivate/b1"),
    Step("list active after deactivate", "GET", "/gateway/backend/active"),
    Step("activate b1", "POST", "/gateway/backend/activate/b1"),
    Step("activate unknown", "POST", "/gateway/backend/activate/nope"),
    Step("deactivate unknown", "POST", "/gateway/backend/deactivate/nope"),
    "probed",   # wait until both monitors have probed b1 (HEALTHY) and b2 (UNHEALTHY)
    Step("public list", "GET", "/api/public/backends"),
    Step("public b1", "GET", "/api/public/backends/b1"),
    Step("public unknown", "GET", "/api/public/backends/nope"),
    Step("public b1 state", "GET", "/api/public/backends/b1/state"),
    Step("public b2 state (unreachable)", "GET", "/api/public/backends/b2/state"),
    Step("public unknown state", "GET", "/api/public/backends/nope/state"),
    Step("delete b4 (text body)", "POST", DELETE, raw=b"b4", ctype="text/plain"),
    Step("delete unknown", "POST", DELETE, raw=b"nope", ctype="text/plain"),
    Step("list all after delete", "GET", "/gateway/backend/all"),
    Step("livez", "GET", "/trino-gateway/livez"),
    Step("readyz", "GET", "/trino-gateway/readyz"),
    # last, since trino-gateway adds b8 and ours does not:
    Step("add with an unknown field", "POST", ADD, backend("b8", SIM, bogus=1)),
]

# Differences kept on purpose: step -> why. Each is in docs/migrating.md ("REST API differences").
KEPT: dict[str, str] = {
    "public b1 state": "counts the monitor cannot see (the default info-api monitor) are null here, "
                       "0 there: a drain that waits for 0 must not restart a coordinator mid-query",
    "public b2 state (unreachable)": "same: unknown counts are null, not 0",
    "add duplicate name": "trino-gateway answers 500 with an HTML page (the database's unique-key "
                          "error); ours 409 with a JSON error naming the backend",
    "add without proxyTo": "trino-gateway answers 500 (an IllegalArgumentException page); ours 400 "
                           "with a JSON error naming the field",
    "add without name": "same: 500 there, 400 here",
    "add empty object": "same: 500 there, 400 here",
    "add with an unknown field": "trino-gateway ignores unknown fields; ours refuses them (400) so that a "
                                 "typo such as routinggroup does not silently put a backend in the "
                                 "default group",
    "add body not JSON": "both 400; trino-gateway's body is {\"code\", \"message\"}, ours "
                         "{\"error\"} like every other error of our API",
    "delete unknown": "trino-gateway answers 200 whether or not the backend existed; ours 404, so "
                      "a misspelt name is not mistaken for a deletion",
}


def _norm(value: Any) -> Any:
    """Order-free form: lists of backends sorted by name (trino-gateway lists in table order)."""
    if isinstance(value, list):
        items = [_norm(v) for v in value]
        return sorted(items, key=lambda v: json.dumps(v, sort_keys=True))
    if isinstance(value, dict):
        return {k: _norm(v) for k, v in value.items()}
    return value


def _json(r: requests.Response) -> Any:
    if "json" not in r.headers.get("Content-Type", "") or not r.content:
        return None
    return r.json()


def _missing_or_different(java: Any, ours: Any, path: str = "") -> list[str]:
    """Fields trino-gateway sends that ours lacks or sends with another value."""
    if isinstance(java, dict) and isinstance(ours, dict):
        out = []
        for k, v in java.items():
            if k not in ours:
                out.append(f"{path}.{k}: missing in ours (trino-gateway: {v!r})")
            else:
                out += _missing_or_different(v, ours[k], f"{path}.{k}")
        return out
    if isinstance(java, list) and isinstance(ours, list):
        if len(java) != len(ours):
            return [f"{path}: {len(java)} items there, {len(ours)} here"]
        return [d for i, (a, b) in enumerate(zip(java, ours)) for d in _missing_or_different(a, b, f"{path}[{i}]")]
    return [] if java == ours else [f"{path or 'body'}: trino-gateway {java!r}, ours {ours!r}"]


def compare(java: requests.Response, ours: requests.Response) -> list[str]:
    diffs = []
    if java.status_code != ours.status_code:
        diffs.append(f"status: trino-gateway {java.status_code}, ours {ours.status_code}")
    jbody = _json(java)
    if jbody is not None:
        obody = _json(ours)
        if obody is None:
            diffs.append(f"body: trino-gateway JSON, ours {ours.headers.get('Content-Type')} {ours.text[:100]!r}")
        else:
            diffs += _missing_or_different(_norm(jbody), _norm(obody))
    return diffs


def send(base: str, step: Step, urls: dict[str, str]) -> requests.Response:
    def fill(v: Any) -> Any:
        if isinstance(v, str):
            return urls.get(v, v)
        if isinstance(v, dict):
            return {k: fill(x) for k, x in v.items()}
        return v
    kw: dict[str, Any] = {"timeout": 15}
    if step.raw is not None:
        kw["data"] = step.raw
        kw["headers"] = {"Content-Type": step.ctype or "text/plain"}
    elif step.body is not None:
        kw["json"] = fill(step.body)
    return requests.request(step.method, base + step.path, **kw)


def health(base: str, name: str) -> str | None:
    r = requests.get(f"{base}/api/public/backends/{name}/state", timeout=5)
    if r.status_code != 200:
        return None
    doc = r.json()
    return doc.get("trinoStatus") or doc.get("health")


def test_rest_api_side_by_side(java_gateway_factory: Callable[..., launcher.JavaGateway],
                               fresh_clusters: dict[str, ClusterProcess],
                               gateway_factory: Callable[..., Any], tmp_path: Path) -> None:
    java = java_gateway_factory(monitor_interval="1s")
    ours = gateway_factory(gateway_config(tmp_path, None))
    urls = {SIM: fresh_clusters["adhoc-1"].url, DEAD: f"http://127.0.0.1:{launcher.free_port()}"}
    bases = {"trino-gateway": java.url, "ours": ours.url}
    unexpected, vanished, table = [], [], []
    for step in STEPS:
        if step == "probed":
            for base in bases.values():
                wait_for(lambda: health(base, "b1") == "HEALTHY" and health(base, "b2") == "UNHEALTHY",
                         timeout=60, message=f"{base} to probe b1 and b2")
            continue
        assert isinstance(step, Step)
        rj = send(java.url, step, urls)
        ro = send(ours.url, step, urls)
        diffs = compare(rj, ro)
        table.append(f"{step.name:50} {rj.status_code} {ro.status_code} {'; '.join(diffs)[:200]}")
        if diffs and step.name not in KEPT:
            unexpected.append(f"{step.method} {step.path} ({step.name}): " + "; ".join(diffs)
                              + f"\n    trino-gateway: {rj.text[:300]!r}\n    ours: {ro.text[:300]!r}")
        if not diffs and step.name in KEPT:
            vanished.append(step.name)
    print("\n".join(table))
    assert not unexpected, "differences from trino-gateway:\n" + "\n".join(unexpected)
    assert not vanished, f"kept differences that are gone (update KEPT and docs/migrating.md): {vanished}"


def test_kept_differences_are_documented() -> None:
    doc = (REPO / "docs" / "migrating.md").read_text()
    missing = [name for name in KEPT if f"| {name} |" not in doc]
    assert not missing, f"docs/migrating.md does not list these kept REST differences: {missing}"
