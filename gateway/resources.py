"""Where the folders that live beside the package are: ``sql/``, ``templates/``, ``rules/``.

In a checkout (and an editable install) they are at the repository root; a wheel carries
copies inside the package (``setup.py`` copies them at build time).
"""
from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def resource_dir(name: str) -> Path:
    """``<repo>/<name>`` if it exists, else ``gateway/<name>``; FileNotFoundError if neither.

    The repository root counts only in a checkout (it has pyproject.toml): installed, the
    package's parent is site-packages, where a folder of that name belongs to someone else
    (a package called ``rules``, say)."""
    candidates = [_PACKAGE / name]
    if (_PACKAGE.parent / "pyproject.toml").is_file():
        candidates.insert(0, _PACKAGE.parent / name)
    for path in candidates:
        if path.is_dir():
            return path
    raise FileNotFoundError(f"{name}/ not found (looked in {', '.join(str(p) for p in candidates)})")
