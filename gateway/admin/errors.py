"""The error the REST API and the admin pages raise for a request they refuse."""
from __future__ import annotations


class ApiError(Exception):
    """Refused: ``code`` is the HTTP status, the message says why (shown to the caller)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
