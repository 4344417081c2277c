"""Client.generate refuses unknown keyword arguments with TypeError, as ollama's does (issue 15, item 13)."""

from __future__ import annotations

import asyncio
import inspect

import ollama
import pytest

from ax_llm_provider import AsyncClient, Client


class NoEngine:
    """Any use of the engine fails the test: the call must be refused before reaching it."""

    def __getattr__(self, name: str) -> object:
        raise AssertionError(f"the engine was used ({name}) for a call that should have been refused")


def test_generate_refuses_unknown_keywords_like_ollama() -> None:
    client = Client(engine=NoEngine())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="temprature"):
        client.generate(model="smollm2:135m", prompt="hi", temprature=0.2)  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        ollama.Client().generate(model="smollm2:135m", prompt="hi", temprature=0.2)  # type: ignore[call-arg]


def test_async_generate_refuses_unknown_keywords() -> None:
    client = AsyncClient(engine=NoEngine())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="temprature"):
        asyncio.run(client.generate(model="smollm2:135m", prompt="hi", temprature=0.2))  # type: ignore[call-arg]


def test_generate_keeps_ollamas_parameters() -> None:
    ours = set(inspect.signature(Client.generate).parameters)
    assert set(inspect.signature(ollama.Client.generate).parameters) <= ours
    assert set(inspect.signature(ollama.AsyncClient.generate).parameters) <= set(
        inspect.signature(AsyncClient.generate).parameters)


# Image-generation parameters (width/height/steps) are covered with a real engine in
# tests/unit/test_model_management.py: the model is resolved first (404 for an unknown one, as Ollama).
