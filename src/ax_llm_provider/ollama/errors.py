"""The one error boundary: engine and model failures become `ollama.ResponseError` with Ollama's status.

Every error the engine and the model layer raise carries its status as `status_code`. The
in-process Client, both framework adapters and the HTTP server translate through this module only:
`ollama_errors()` around a call, `iterate` / `aiterate` around a stream.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Iterator
from typing import Any, TypeVar

import ollama

from ..engine.errors import EngineError
from ..model.errors import ModelError
from ..runtime.errors import DeviceError

log = logging.getLogger(__name__)

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


class ClientClosedError(RuntimeError):
    """A request on a closed Client (ollama's closed httpx client raises RuntimeError too)."""


# What ollama's own Client raises; the public boundary lets these through unchanged.
OLLAMA_ERRORS: tuple[type[Exception], ...] = (ollama.ResponseError, ollama.RequestError, ClientClosedError)


@contextlib.contextmanager
def public_errors() -> Iterator[None]:
    """The public Client's boundary: only ollama's error types leave it. Engine, model and argument errors get
    their status (bad arguments 400); a device error or anything unexpected is a logged 500; the cause is kept."""
    try:
        yield
    except OLLAMA_ERRORS:
        raise
    except ENGINE_ERRORS as exc:  # pydantic's ValidationError is a ValueError
        raise response_error(exc) from exc
    except (TypeError, AttributeError) as exc:  # an argument of the wrong type met the request models
        raise ollama.ResponseError(f"invalid argument: {exc}", 400) from exc
    except Exception as exc:  # noqa: BLE001 - the documented contract: callers catch ollama.ResponseError
        if not isinstance(exc, DeviceError):
            log.exception("unexpected error behind the public Client")
        raise ollama.ResponseError(f"{type(exc).__name__}: {exc}", 500) from exc


def _guarded(method: Callable[..., Any]) -> Callable[..., Any]:
    signature = inspect.signature(method)
    if inspect.iscoroutinefunction(method):
        @functools.wraps(method)
        async def call_async(*args: Any, **kwargs: Any) -> Any:
            signature.bind(*args, **kwargs)  # a wrong keyword stays Python's TypeError, as with ollama
            with public_errors():
                return await method(*args, **kwargs)
        return call_async

    @functools.wraps(method)
    def call(*args: Any, **kwargs: Any) -> Any:
        signature.bind(*args, **kwargs)
        with public_errors():
            return method(*args, **kwargs)
    return call


C = TypeVar("C", bound=type)


def public_api(cls: C) -> C:
    """Class decorator: every public method of a client (its own and its bases') runs inside public_errors.
    Streams they return translate their own errors (see `iterate`)."""
    for name in dir(cls):
        method = getattr(cls, name)
        if not name.startswith("_") and inspect.isfunction(method) and name != "create_blob":
            setattr(cls, name, _guarded(method))
    return cls


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


__all__ = ["ENGINE_ERRORS", "ClientClosedError", "aiterate", "iterate", "ollama_errors", "public_api",
           "public_errors", "response_error", "status_of"]
