"""What AXOllama and AXOllamaEmbedding share: engine calls with Ollama's errors, and model facts from show().

No HTTP: requests go straight to the process-wide Engine (or the one passed as `engine=`), as the
ollama-compatible Client does, so engine and model failures surface as `ollama.ResponseError` with
Ollama's status codes, exactly what llama-index-llms-ollama users already catch.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import ollama

from ..engine.default import get_engine
from ..engine.engine import Engine
from ..engine.responses import ChatChunk
from ..model.errors import ModelNotFoundError
from ..ollama.errors import aiterate, iterate, ollama_errors
from ..ollama.merge import merge_chat


def resolve_engine(engine: Engine | None, client: Any, what: str) -> Engine | None:
    """The engine= argument, or the engine of an ax Client passed as `client=` (the reference's injection)."""
    if client is None:
        return engine
    if not hasattr(client, "engine") or isinstance(client, ollama.Client | ollama.AsyncClient):
        raise TypeError(
            f"{what}: `client`/`async_client` must be an ax_llm_provider Client or AsyncClient (the model runs in "
            f"this process; an HTTP ollama client has nothing to talk to), not {type(client).__name__}")
    return engine or getattr(client, "_engine", None)


def chat_stream(engine: Engine, body: dict[str, Any]) -> Iterator[ChatChunk]:
    """The engine's /api/chat stream; closing it early cancels the request and frees the device."""
    return iterate(lambda: engine.chat(body))


def achat_stream(engine: Engine, body: dict[str, Any]) -> AsyncIterator[ChatChunk]:
    return aiterate(lambda: engine.achat(body))


def chat_once(engine: Engine, body: dict[str, Any]) -> ChatChunk:
    """A non-streaming /api/chat response: the stream's content, thinking and calls, the final counters."""
    return merge_chat(list(chat_stream(engine, body)))


async def achat_once(engine: Engine, body: dict[str, Any]) -> ChatChunk:
    return merge_chat([chunk async for chunk in achat_stream(engine, body)])


def call_engine(start: Callable[[], Any]) -> Any:
    with ollama_errors():
        return start()


@dataclass(frozen=True)
class ModelFacts:
    """What show() says about a loaded model: the usable context and the template's capabilities."""

    context_length: int | None  # the compiled KV capacity (`<arch>.context_length`), None if unknown
    trained_context_length: int | None
    capabilities: tuple[str, ...]
    tool_format: str | None = None  # "template": the template's own tool syntax; "prompt": the generic prompt

    @property
    def tools(self) -> bool:
        """The template has its own tool syntax (a template-less model's generic tools prompt does not count:
        the small models that have one cannot judge when to call, so "auto" stays emulated for them)."""
        return "tools" in self.capabilities and self.tool_format != "prompt"

    @property
    def thinking(self) -> bool:
        return "thinking" in self.capabilities


def _facts(show: dict[str, Any]) -> ModelFacts:
    info = show.get("model_info") or {}
    arch = info.get("general.architecture") or ""
    context = info.get(f"{arch}.context_length")
    trained = info.get(f"{arch}.trained_context_length")
    return ModelFacts(context_length=int(context) if context else None,
                      trained_context_length=int(trained) if trained else None,
                      capabilities=tuple(show.get("capabilities") or ()), tool_format=info.get("ax.tool_format"))


def model_facts(engine: Engine, model: str, keep_alive: float | str | None) -> ModelFacts:
    """show() for `model`, loading it first when it is not loaded (capacity and tools come from the loaded
    model). The first call may pull the embedded default and load it, as the first chat would."""

    def run() -> ModelFacts:
        facts = None
        with contextlib.suppress(ModelNotFoundError):  # not in the store yet: the load below pulls it
            facts = _facts(engine.show(model))
        if facts is None or facts.context_length is None:
            engine.load(model, keep_alive=keep_alive)
            facts = _facts(engine.show(model))
        return facts

    return call_engine(run)


def shared_engine(engine: Engine | None) -> Engine:
    return engine if engine is not None else get_engine()
