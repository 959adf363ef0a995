"""Packaging hook (everything else is in pyproject.toml).

The store's migrations live in ``sql/`` at the repository root, where the code finds them in a
checkout; an installed package looks in ``gateway/sql/`` instead (``gateway.store.sql.
migrations_dir``). This build step copies them there, so a wheel, ``pip install .`` and the
Docker image carry them. The same holds for the admin page templates (``templates/`` →
``gateway/templates/``) and the example rules the demo routes with (``rules/`` →
``gateway/rules/``; the top-level folder stays the one place to edit them, and docs and
docker/ point at it). MANIFEST.in puts the folders in the source distribution.
"""
from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
# Folders outside gateway/ that the installed package needs: source -> destination in the package.
BUNDLED = {"sql": "sql", "templates": "templates", "rules": "rules"}


class BuildPyWithData(build_py):
    def run(self) -> None:
        super().run()
        for src, dst in BUNDLED.items():
            source = ROOT / src
            if source.is_dir():
                shutil.copytree(source, Path(self.build_lib) / "gateway" / dst, dirs_exist_ok=True,
                                ignore=shutil.ignore_patterns("__pycache__", "*.pyc", ".*"))


setup(cmdclass={"build_py": BuildPyWithData})
