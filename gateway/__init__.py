"""trino-gateway: one URL in front of many Trino clusters."""

__version__ = "0.1.0"  # the package version (pyproject.toml reads it from here)
