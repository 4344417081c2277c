"""What every route of the server shares: the JSON body reader, the compact JSON response and the wrapper
that answers an error raised before the response starts, in the shape of the API the route belongs to
(Ollama's `{"error": ...}` or OpenAI's error object), with the status code from server/errors.py."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from .errors import BadRequest, error_parts
from .streaming import dumps

Handler = Callable[[Request], Awaitable[Response]]
ErrorShape = Callable[[int, str], Any]  # (status, message) -> the error body


class CompactJSON(Response):
    media_type = "application/json; charset=utf-8"

    def render(self, content: Any) -> bytes:
        return dumps(content)


def ollama_error_body(status: int, message: str) -> dict[str, str]:
    return {"error": message}


def answering_errors(handler: Handler, shape: ErrorShape = ollama_error_body) -> Handler:
    """`handler` with its errors answered as `shape(status, message)` and the status code Ollama would send."""

    async def wrapped(request: Request) -> Response:
        try:
            return await handler(request)
        except Exception as exc:  # noqa: BLE001 -- every failure is answered in the API's error shape
            status, message = error_parts(exc)
            return CompactJSON(shape(status, message), status_code=status)

    wrapped.__name__ = handler.__name__
    wrapped.__doc__ = handler.__doc__
    return wrapped


async def read_json_body(request: Request) -> dict[str, Any]:
    """The request's JSON object, or BadRequest (400) saying what is wrong with it."""
    raw = await request.body()
    if not raw.strip():
        raise BadRequest("missing request body")
    try:
        body = json.loads(raw)
        # Lone surrogates ("\ud800") parse but are not text: refuse them here, not deep in the tokenizer.
        json.dumps(body, ensure_ascii=False).encode("utf-8")
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadRequest(f"invalid JSON in the request body: {exc}") from exc
    except RecursionError as exc:
        raise BadRequest("invalid JSON in the request body: nested too deeply") from exc
    except UnicodeEncodeError as exc:
        raise BadRequest(f"invalid text in the request body: {exc.reason} (a lone UTF-16 surrogate escape)") from exc
    if not isinstance(body, dict):
        raise BadRequest(f"the request body must be a JSON object, got {type(body).__name__}")
    return body
