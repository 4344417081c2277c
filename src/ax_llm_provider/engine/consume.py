"""Consuming device requests: scheduler errors become the engine's typed errors; closing cancels."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Generator
from typing import TypeVar

from .errors import EngineBusyError, EngineError, RequestCanceledError, RequestTimedOutError
from .ops.recovery import HangCancelled
from .worker.scheduler import (
    AsyncRequestStream,
    QueueFullError,
    RequestCancelled,
    RequestStream,
    RequestTimeoutError,
    SchedulerError,
)

T = TypeVar("T")


def engine_error(exc: SchedulerError) -> Exception:
    if isinstance(exc, HangCancelled):  # the NPU stopped answering: the typed device error
        return exc.device_error()
    if isinstance(exc, QueueFullError):
        return EngineBusyError(str(exc))
    if isinstance(exc, RequestTimeoutError):
        return RequestTimedOutError(str(exc))
    if isinstance(exc, RequestCancelled):
        return RequestCanceledError(str(exc))
    return EngineError(str(exc))


def mapped(stream: RequestStream[T]) -> Generator[T, None, None]:
    """Iterate a RequestStream, turning scheduler errors into the engine's; closing cancels the request."""
    try:
        yield from stream
    except SchedulerError as exc:
        raise engine_error(exc) from exc
    finally:
        stream.close()


async def amapped(stream: AsyncRequestStream[T]) -> AsyncGenerator[T, None]:
    try:
        async for chunk in stream:
            yield chunk
    except SchedulerError as exc:
        raise engine_error(exc) from exc
    finally:
        await stream.aclose()
