"""Shared by the browser tests and the screenshots script: Debian's chromium, a gateway with
admin users and rules, and page helpers."""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from gateway.admin.auth import hash_password
from tests.conftest import ClusterProcess, gateway_config

CHROMIUM = os.environ.get("TRINO_GATEWAY_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]

# name -> (password, roles); hashed with few iterations: tests need speed, not strength
USERS = {
    "ops": ("ops-secret", ["admin"]),
    "analyst": ("analyst-secret", ["user"]),
    "robot": ("robot-secret", ["api"]),
}

RULES = """\
name: nightly-to-etl
description: The nightly jobs run on the ETL cluster
priority: 10
condition: source == "nightly"
routingGroup: etl
---
name: big-scans
priority: 5
condition: query =~ ".*numbers.*" and user != "ops"
routingGroup: etl
---
name: no-drops
priority: 100
condition: queryType == "DATA_DEFINITION" and user != "ops"
reject: "DDL is frozen this week"
"""


def chromium_available() -> bool:
    return os.path.exists(CHROMIUM) or shutil.which("chromium") is not None


def launch(playwright: Any) -> Any:
    path = CHROMIUM if os.path.exists(CHROMIUM) else shutil.which("chromium")
    return playwright.chromium.launch(executable_path=path, args=CHROMIUM_ARGS)


def admin_config(tmp: Path, clusters: dict[str, ClusterProcess], groups: dict[str, str], **extra: Any) -> dict[str, Any]:
    rules = tmp / "rules"
    rules.mkdir(exist_ok=True)
    if not (rules / "main.yaml").exists():
        (rules / "main.yaml").write_text(RULES)
    users = {n: {"password": hash_password(pw, iterations=1000), "roles": roles}
             for n, (pw, roles) in USERS.items()}
    return gateway_config(tmp, clusters, groups=groups, rules=[str(rules)],
                          auth={"users": users, "sessionSecret": "browser-tests-secret"}, **extra)


def login(page: Any, base: str, user: str) -> None:
    page.goto(f"{base}/trino-gateway/login")
    page.fill("input[name=user]", user)
    page.fill("input[name=password]", USERS[user][0])
    page.click("button[type=submit]")
    page.wait_for_url(f"{base}/trino-gateway/")


def logout(page: Any) -> None:
    page.click("header .who button")
    page.wait_for_url("**/trino-gateway/login")
