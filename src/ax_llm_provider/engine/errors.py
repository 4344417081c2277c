"""Request-level errors with the HTTP status Ollama would answer (ollama/errors.py maps them to ResponseError)."""

from __future__ import annotations


class EngineError(RuntimeError):
    status_code = 500


class InvalidRequestError(EngineError, ValueError):
    """Bad input: the message says which field and what to do."""

    status_code = 400


class CapabilityError(InvalidRequestError):
    """The model cannot do what was asked (tools, thinking, insert, vision, embedding)."""


class EngineBusyError(EngineError):
    status_code = 503


class RequestCanceledError(EngineError):
    status_code = 499


class RequestTimedOutError(EngineError):
    status_code = 500
