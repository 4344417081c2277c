"""`Client` and `AsyncClient` with ollama.Client's method names, parameters and return types, in process.

Requests are normalized by the `ollama` package's own request models (so messages, Message objects,
Python functions as tools and Options objects behave exactly as with `ollama`), then run by the
shared Engine. Errors are `ollama.ResponseError` with Ollama's status codes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from typing import Any

import ollama
from ollama._client import _copy_messages, _copy_tools
from ollama._types import ChatRequest as OllamaChatRequest
from ollama._types import EmbeddingsRequest as OllamaEmbeddingsRequest
from ollama._types import EmbedRequest as OllamaEmbedRequest
from ollama._types import GenerateRequest as OllamaGenerateRequest

from ..engine.default import get_engine
from ..engine.embedder import LegacyEmbeddingsRequest
from ..engine.engine import Engine
from ..engine.requests import parse_request
from ..engine.responses import ChunkT
from ..model.tokenizer_info import verbose_show
from .errors import ClientClosedError, ollama_errors, public_api, public_errors
from .management import AsyncManagementMethods, ManagementMethods
from .merge import merge_chat, merge_generate
from .types import ChatResponse, GenerateResponse


def _require_model(model: str) -> None:
    if not model:
        raise ollama.RequestError("must provide a model")


def _chat_body(model: str, messages: Any, tools: Any, stream: bool, think: Any, logprobs: Any, top_logprobs: Any,
               format: Any, options: Any, keep_alive: Any, tool_choice: str | None) -> dict[str, Any]:
    _require_model(model)
    body = OllamaChatRequest(
        model=model, messages=list(_copy_messages(messages)), tools=list(_copy_tools(tools)), stream=stream,
        think=think, logprobs=logprobs, top_logprobs=top_logprobs, format=format, options=options,
        keep_alive=keep_alive,
    ).model_dump(exclude_none=True)
    if tool_choice is not None:
        body["tool_choice"] = tool_choice
    return body


def _generate_body(model: str, prompt: Any, suffix: Any, system: Any, template: Any, context: Any, stream: bool,
                   think: Any, logprobs: Any, top_logprobs: Any, raw: Any, format: Any, images: Any, options: Any,
                   keep_alive: Any) -> dict[str, Any]:
    _require_model(model)
    from ollama._client import _copy_images

    return OllamaGenerateRequest(
        model=model, prompt=prompt, suffix=suffix, system=system, template=template, context=context,
        stream=stream, think=think, logprobs=logprobs, top_logprobs=top_logprobs, raw=raw, format=format,
        images=list(_copy_images(images)) if images else None, options=options, keep_alive=keep_alive,
    ).model_dump(exclude_none=True)


def reject_image_generation(engine: Engine, model: str, width: Any, height: Any, steps: Any) -> None:
    """Ollama's answer to image-generation parameters on a model that cannot make images (none here can)."""
    if width is None and height is None and steps is None:
        return
    with ollama_errors():
        engine.resolve(model)  # a missing model is still 404 first
    raise ollama.ResponseError(f'"{model}" does not support image generation', 400)


def _embed_body(model: str, input: Any, truncate: Any, options: Any, keep_alive: Any,
                dimensions: Any) -> dict[str, Any]:
    _require_model(model)
    body = OllamaEmbedRequest(model=model, input=input, truncate=truncate, options=options, keep_alive=keep_alive,
                              dimensions=dimensions).model_dump(exclude_none=True)
    if not isinstance(body["input"], str):
        body["input"] = list(body["input"])
    return body


def _embeddings_request(model: str, prompt: Any, options: Any, keep_alive: Any) -> LegacyEmbeddingsRequest:
    """The legacy /api/embeddings body as an embed request whose vector is not normalized (as Ollama)."""
    _require_model(model)
    body = OllamaEmbeddingsRequest(model=model, prompt=prompt, options=options,
                                   keep_alive=keep_alive).model_dump(exclude_none=True)
    body["input"] = [body.pop("prompt")] if body.get("prompt") else []
    return parse_request(LegacyEmbeddingsRequest, body)


def _embed_response(result: dict[str, Any]) -> ollama.EmbedResponse:
    return ollama.EmbedResponse(**{k: v for k, v in result.items() if k != "ax"})


def _embeddings_response(result: dict[str, Any]) -> ollama.EmbeddingsResponse:
    return ollama.EmbeddingsResponse(embedding=result["embeddings"][0] if result["embeddings"] else [])


class _Base:
    def __init__(self, host: str | None = None, *, engine: Engine | None = None, **kwargs: Any) -> None:
        # host, headers, timeout, follow_redirects ... belong to the HTTP client this package removes:
        # accepted so ollama code runs unchanged, and ignored.
        self.host = host
        self._engine = engine
        self._closed = False

    @property
    def engine(self) -> Engine:
        if self._closed:  # as ollama's (httpx's) closed client
            raise ClientClosedError("Cannot send a request, as the client has been closed.")
        return self._engine or get_engine()


@public_api
class Client(_Base, ManagementMethods):
    """Drop-in for `ollama.Client`: `from ax_llm_provider import Client` and nothing else changes."""

    def close(self) -> None:
        """Ends this client; the engine stays (it is shared by the process: `Engine.close()` frees the device)."""
        self._closed = True

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _iterate(self, start: Callable[[], Iterator[ChunkT]], cls: type[Any]) -> Iterator[Any]:
        with public_errors():
            for chunk in start():
                yield cls(**chunk)

    def _collect(self, start: Callable[[], Iterator[ChunkT]], merge: Callable[[list[ChunkT]], ChunkT],
                 cls: type[Any]) -> Any:
        with ollama_errors():
            return cls(**merge(list(start())))

    def chat(self, model: str = "", messages: Sequence[Mapping[str, Any] | ollama.Message] | None = None, *,
             tools: Sequence[Mapping[str, Any] | ollama.Tool | Callable[..., Any]] | None = None, stream: bool = False,
             think: bool | str | None = None, logprobs: bool | None = None, top_logprobs: int | None = None,
             format: str | dict[str, Any] | None = None, options: Mapping[str, Any] | ollama.Options | None = None,
             keep_alive: float | str | None = None, tool_choice: str | None = None) -> Any:
        body = _chat_body(model, messages, tools, stream, think, logprobs, top_logprobs, format, options, keep_alive,
                          tool_choice)
        start = lambda: self.engine.chat(body)  # noqa: E731 - deferred so errors surface where ollama raises them
        return self._iterate(start, ChatResponse) if stream else self._collect(start, merge_chat, ChatResponse)

    def generate(self, model: str = "", prompt: str | None = None, suffix: str | None = None, *,
                 system: str | None = None, template: str | None = None, context: Sequence[int] | None = None,
                 stream: bool = False, think: bool | str | None = None, logprobs: bool | None = None,
                 top_logprobs: int | None = None, raw: bool | None = None, format: str | dict[str, Any] | None = None,
                 images: Sequence[Any] | None = None, options: Mapping[str, Any] | ollama.Options | None = None,
                 keep_alive: float | str | None = None, width: int | None = None, height: int | None = None,
                 steps: int | None = None) -> Any:
        body = _generate_body(model, prompt, suffix, system, template, context, stream, think, logprobs,
                              top_logprobs, raw, format, images, options, keep_alive)
        reject_image_generation(self.engine, model, width, height, steps)
        start = lambda: self.engine.generate(body)  # noqa: E731
        return self._iterate(start, GenerateResponse) if stream else self._collect(
            start, merge_generate, GenerateResponse)

    def embed(self, model: str = "", input: str | Sequence[str] = "", truncate: bool | None = None,
              options: Mapping[str, Any] | ollama.Options | None = None, keep_alive: float | str | None = None,
              dimensions: int | None = None) -> ollama.EmbedResponse:
        """Ollama's /api/embed: one L2-normalized vector per input (see engine/embedder.py)."""
        body = _embed_body(model, input, truncate, options, keep_alive, dimensions)
        with ollama_errors():
            return _embed_response(self.engine.embed(body))

    def embeddings(self, model: str = "", prompt: str | None = None,
                   options: Mapping[str, Any] | ollama.Options | None = None,
                   keep_alive: float | str | None = None) -> ollama.EmbeddingsResponse:
        """Deprecated in favor of `embed`, as in ollama. The vector is not normalized (Ollama's /api/embeddings)."""
        with ollama_errors():
            return _embeddings_response(self.engine.embed(_embeddings_request(model, prompt, options, keep_alive)))

    def list(self) -> ollama.ListResponse:
        return ollama.ListResponse(**self.engine.list())

    def show(self, model: str, verbose: bool | None = None) -> ollama.ShowResponse:
        """verbose=True adds the tokenizer arrays to `modelinfo` (as Ollama's /api/show)."""
        with ollama_errors():
            shown = self.engine.show(model)
            return ollama.ShowResponse(**(verbose_show(self.engine.store, model, shown) if verbose else shown))

    def ps(self) -> ollama.ProcessResponse:
        return ollama.ProcessResponse(**self.engine.ps())


@public_api
class AsyncClient(_Base, AsyncManagementMethods):
    """Drop-in for `ollama.AsyncClient`; safe to use from several event loops."""

    async def close(self) -> None:
        """Ends this client; the engine stays (it is shared by the process)."""
        self._closed = True

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _aiterate(self, chunks: AsyncIterator[ChunkT], cls: type[Any]) -> AsyncIterator[Any]:
        with public_errors():
            async for chunk in chunks:
                yield cls(**chunk)

    async def _acollect(self, chunks: AsyncIterator[ChunkT], merge: Callable[[list[ChunkT]], ChunkT],
                        cls: type[Any]) -> Any:
        with ollama_errors():
            return cls(**merge([c async for c in chunks]))

    async def chat(self, model: str = "", messages: Sequence[Mapping[str, Any] | ollama.Message] | None = None, *,
                   tools: Sequence[Mapping[str, Any] | ollama.Tool | Callable[..., Any]] | None = None,
                   stream: bool = False, think: bool | str | None = None, logprobs: bool | None = None,
                   top_logprobs: int | None = None, format: str | dict[str, Any] | None = None,
                   options: Mapping[str, Any] | ollama.Options | None = None, keep_alive: float | str | None = None,
                   tool_choice: str | None = None) -> Any:
        body = _chat_body(model, messages, tools, stream, think, logprobs, top_logprobs, format, options, keep_alive,
                          tool_choice)
        with ollama_errors():
            chunks = self.engine.achat(body)
        return self._aiterate(chunks, ChatResponse) if stream else await self._acollect(
            chunks, merge_chat, ChatResponse)

    async def generate(self, model: str = "", prompt: str | None = None, suffix: str | None = None, *,
                       system: str | None = None, template: str | None = None, context: Sequence[int] | None = None,
                       stream: bool = False, think: bool | str | None = None, logprobs: bool | None = None,
                       top_logprobs: int | None = None, raw: bool | None = None,
                       format: str | dict[str, Any] | None = None, images: Sequence[Any] | None = None,
                       options: Mapping[str, Any] | ollama.Options | None = None,
                       keep_alive: float | str | None = None, width: int | None = None,
                       height: int | None = None, steps: int | None = None) -> Any:
        body = _generate_body(model, prompt, suffix, system, template, context, stream, think, logprobs,
                              top_logprobs, raw, format, images, options, keep_alive)
        if width is not None or height is not None or steps is not None:
            import anyio

            await anyio.to_thread.run_sync(reject_image_generation, self.engine, model, width, height, steps)
        with ollama_errors():
            chunks = self.engine.agenerate(body)
        if stream:
            return self._aiterate(chunks, GenerateResponse)
        return await self._acollect(chunks, merge_generate, GenerateResponse)

    async def embed(self, model: str = "", input: str | Sequence[str] = "", truncate: bool | None = None,
                    options: Mapping[str, Any] | ollama.Options | None = None,
                    keep_alive: float | str | None = None, dimensions: int | None = None) -> ollama.EmbedResponse:
        body = _embed_body(model, input, truncate, options, keep_alive, dimensions)
        with ollama_errors():
            return _embed_response(await self.engine.aembed(body))

    async def embeddings(self, model: str = "", prompt: str | None = None,
                         options: Mapping[str, Any] | ollama.Options | None = None,
                         keep_alive: float | str | None = None) -> ollama.EmbeddingsResponse:
        with ollama_errors():
            return _embeddings_response(await self.engine.aembed(
                _embeddings_request(model, prompt, options, keep_alive)))

    async def list(self) -> ollama.ListResponse:
        return ollama.ListResponse(**self.engine.list())

    async def show(self, model: str, verbose: bool | None = None) -> ollama.ShowResponse:
        with ollama_errors():
            shown = self.engine.show(model)
            return ollama.ShowResponse(**(verbose_show(self.engine.store, model, shown) if verbose else shown))

    async def ps(self) -> ollama.ProcessResponse:
        return ollama.ProcessResponse(**self.engine.ps())
