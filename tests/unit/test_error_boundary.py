"""The one error boundary (ollama/errors.py): every engine and model error reaches the Client, the adapters
and the server as ollama.ResponseError with the status Ollama would answer."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import ollama
import pytest

from ax_llm_provider.engine.errors import (
    CapabilityError,
    EngineBusyError,
    EngineError,
    InvalidRequestError,
    RequestCanceledError,
    RequestTimedOutError,
)
from ax_llm_provider.engine.ops.recovery import DeviceFatalError
from ax_llm_provider.model.errors import ModelDirectoryError, ModelError, ModelNotFoundError
from ax_llm_provider.ollama.errors import aiterate, iterate, ollama_errors, response_error, status_of
from ax_llm_provider.process import DeviceInUseError


@pytest.mark.parametrize(("error", "status"), [
    (ModelNotFoundError("no such model"), 404), (ModelDirectoryError("broken"), 400), (ModelError("bad"), 400),
    (InvalidRequestError("bad field"), 400), (CapabilityError("no tools"), 400), (EngineBusyError("full"), 503),
    (RequestCanceledError("gone"), 499), (RequestTimedOutError("late"), 500), (EngineError("other"), 500),
    (DeviceFatalError("lost"), 503), (DeviceInUseError("taken"), 503), (ValueError("plain"), 400),
    (RuntimeError("a bug"), 500),
])
def test_every_error_carries_its_ollama_status(error: Exception, status: int) -> None:
    assert status_of(error) == status
    mapped = response_error(error)
    assert isinstance(mapped, ollama.ResponseError) and mapped.status_code == status and mapped.error == str(error)


def test_the_context_manager_maps_engine_errors_and_keeps_the_cause() -> None:
    cause = ModelNotFoundError("model 'x' not found")
    with pytest.raises(ollama.ResponseError) as info, ollama_errors():
        raise cause
    assert info.value.status_code == 404 and info.value.__cause__ is cause


def test_other_exceptions_pass_through_unchanged() -> None:
    with pytest.raises(KeyError), ollama_errors():
        raise KeyError("a bug is not an Ollama error")


class Stream:
    def __init__(self, fail_after: int) -> None:
        self.fail_after, self.closed = fail_after, False

    def __iter__(self) -> Iterator[int]:
        yield from range(self.fail_after)
        raise EngineBusyError("queue full")

    def close(self) -> None:
        self.closed = True


def test_iterate_maps_errors_raised_mid_stream_and_closes_the_stream() -> None:
    stream = Stream(fail_after=2)
    seen = []
    with pytest.raises(ollama.ResponseError) as info:
        for item in iterate(lambda: stream):
            seen.append(item)
    assert seen == [0, 1] and info.value.status_code == 503 and stream.closed


def test_iterate_maps_errors_raised_when_the_stream_starts() -> None:
    def start() -> Stream:
        raise InvalidRequestError("options.temperature must be >= 0")

    with pytest.raises(ollama.ResponseError) as info:
        list(iterate(start))
    assert info.value.status_code == 400


def test_closing_early_closes_the_stream() -> None:
    stream = Stream(fail_after=5)
    items = iterate(lambda: stream)
    assert next(items) == 0
    items.close()
    assert stream.closed


def test_aiterate_maps_errors_and_closes() -> None:
    class AStream:
        closed = False

        async def __aiter__(self) -> AsyncIterator[int]:  # type: ignore[override]
            yield 1
            raise ModelNotFoundError("gone")

        async def aclose(self) -> None:
            AStream.closed = True

    async def run() -> list[int]:
        return [item async for item in aiterate(AStream)]

    with pytest.raises(ollama.ResponseError) as info:
        asyncio.run(run())
    assert info.value.status_code == 404 and AStream.closed
