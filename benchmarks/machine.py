"""The machine and software a benchmark ran on, for the report's first table."""
from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
import sys
from importlib import metadata
from typing import Any


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory_gb() -> float | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) / 1024 / 1024
    except OSError:
        pass
    return None


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _tool_version(argv: list[str], pattern: str) -> str | None:
    if shutil.which(argv[0]) is None:
        return None
    out = subprocess.run(argv, capture_output=True, text=True)
    m = re.search(pattern, out.stdout + out.stderr)
    return m.group(1) if m else "unknown"


def _gateway_loop() -> str:
    """The event loop the gateways this benchmark starts will run on (gateway/runtime/loop.py:
    uvloop when installed, unless TRINO_GATEWAY_LOOP says otherwise)."""
    try:
        import importlib.util

        from gateway.runtime import loop as L
        return L.choose(os.environ.get(L.ENV), importlib.util.find_spec("uvloop") is not None)
    except Exception as exc:  # noqa: BLE001 - an older tree, or a bad setting: say so
        return f"unknown ({exc})"


def describe() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "memory_gb": _memory_gb(),
        "kernel": platform.release(),
        "python": sys.version.split()[0],
        "tornado": _version("tornado"),
        "sqlglot": _version("sqlglot"),
        "sqlglotc": _version("sqlglotc"),
        "uvloop": _version("uvloop"),
        "gateway_loop": _gateway_loop(),
        "trino_client": _version("trino"),
        "wrk": _tool_version(["wrk", "--version"], r"wrk (\S+)"),
        "nginx": _tool_version(["nginx", "-v"], r"nginx/(\S+)"),
        "load_average": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }
