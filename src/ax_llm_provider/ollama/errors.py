"""The one error boundary: engine and model failures become `ollama.ResponseError` with Ollama's status.

Every error the engine and the model layer raise carries its status as `status_code`. The
in-process Client, both framework adapters and the HTTP server translate through this module only:
`ollama_errors()` around a call, `iterate` / `aiterate` around a stream.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Iterator
from typing import TypeVar

import ollama

from ..engine.errors import EngineError
from ..model.errors import ModelError

T = TypeVar("T")
# What a caller can fix or retry; anything else (a bug, a device error) propagates as it is.
ENGINE_ERRORS: tuple[type[Exception], ...] = (EngineError, ModelError, ValueError)


def status_of(exc: BaseException) -> int:
    """The HTTP status Ollama would answer: an engine or model error's own `status_code` (400-503; 404 for a
    missing model), 400 for any other ValueError, else 500."""
    if isinstance(exc, EngineError | ModelError):
        return exc.status_code
    return 400 if isinstance(exc, ValueError) else 500


def response_error(exc: BaseException) -> ollama.ResponseError:
    """Ollama's error for an engine or model failure, with the HTTP status Ollama would send."""
    if isinstance(exc, ollama.ResponseError):
        return exc
    return ollama.ResponseError(str(exc), status_of(exc))


@contextlib.contextmanager
def ollama_errors() -> Iterator[None]:
    """Raise engine and model errors of the block as ollama.ResponseError (the cause is kept)."""
    try:
        yield
    except ENGINE_ERRORS as exc:
        raise response_error(exc) from exc


def iterate(start: Callable[[], Iterable[T]]) -> Iterator[T]:
    """`start()`'s items with Ollama's errors; closing the iterator closes the stream (frees the device)."""
    with ollama_errors():
        stream = start()
        try:
            yield from stream
        finally:
            close = getattr(stream, "close", None)
            if close is not None:
                close()


async def aiterate(start: Callable[[], AsyncIterable[T]]) -> AsyncIterator[T]:
    with ollama_errors():
        stream = start()
        try:
            async for item in stream:
                yield item
        finally:
            aclose = getattr(stream, "aclose", None)
            if aclose is not None:
                await aclose()


__all__ = ["ENGINE_ERRORS", "aiterate", "iterate", "ollama_errors", "response_error", "status_of"]
