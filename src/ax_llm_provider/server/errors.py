"""Ollama's status code and `{"error": ...}` message for an exception, as the in-process Client maps it."""

from __future__ import annotations

import logging

from ..ollama.errors import response_error

log = logging.getLogger(__name__)


class BadRequest(ValueError):
    """A request the server refuses before it reaches the engine (body missing or not JSON, no model)."""


def error_parts(exc: BaseException) -> tuple[int, str]:
    """(status, message): 404 model not found, 400 bad request / capability, 503 busy, 499 canceled, 500."""
    if not isinstance(exc, Exception):
        return 500, str(exc) or type(exc).__name__
    error = response_error(exc)
    if error.status_code >= 500 and error.status_code != 501:  # 501: a known limit, not a failure
        log.error("request failed (%d): %s", error.status_code, exc, exc_info=exc)
    return error.status_code, str(error.error)
