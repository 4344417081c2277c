"""OpenAI-compatible endpoints beside Ollama's, over the same engine (as `ollama serve` offers them):

    POST /v1/chat/completions   chat.completion, or SSE chat.completion.chunk events ending `data: [DONE]`
    POST /v1/completions        text_completion (legacy completions), same streaming
    POST /v1/embeddings         embedding list (float or base64)
    GET  /v1/models             the stored models
    GET  /v1/models/{model}     one model (404 not_found_error when missing)

Bodies are validated and translated to Ollama's requests (openai_requests.py), answered by the engine's
chat / generate / embed, and shaped back (openai_responses.py). Errors use OpenAI's error object with
the status Ollama's endpoints would use (400, 404, 499, 500, 503). A failure after the event stream has
started is sent as a last `data: {"error": ...}` event (the openai client raises it), without [DONE].
These routes live in the same app as Ollama's, so they pass through the same middleware.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol, TypeVar

import anyio
from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Send

from ..engine.engine import Engine
from ..engine.requests import ChatRequest, EmbedRequest, GenerateRequest, parse_request
from ..engine.responses import Chunk
from ..ollama.merge import merge_chat, merge_generate
from .errors import error_parts
from .handlers import CompactJSON, Handler, answering_errors, read_json_body
from .openai_requests import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    chat_body,
    embed_body,
    generate_body,
)
from .openai_responses import (
    ChatShaper,
    CompletionShaper,
    embedding_list,
    error_body,
    model_list,
    model_object,
)
from .streaming import EngineStreamResponse, StreamedT, WatchedResponse, dumps, send_json

log = logging.getLogger(__name__)

SSE = "text/event-stream"


# what a shaper reads: chat chunks (ChatShaper) or generate chunks (CompletionShaper)
_ShapedT = TypeVar("_ShapedT", bound=Chunk, contravariant=True)


class _Shaper(Protocol[_ShapedT]):
    def completion(self, merged: _ShapedT) -> dict[str, Any]: ...

    def events(self, chunk: _ShapedT) -> list[dict[str, Any]]: ...


class _EngineSource(Protocol):
    @property
    def engine(self) -> Engine: ...


async def _send_error(send: Send, exc: BaseException) -> None:
    status, message = error_parts(exc)
    await send_json(send, status, error_body(status, message))


class OpenAIStreamResponse(EngineStreamResponse[StreamedT]):
    """The engine's chunks as one OpenAI object (stream false) or as server-sent events (stream true)."""

    def __init__(self, chunks: AsyncIterator[StreamedT], *, stream: bool, merge: Callable[[list[StreamedT]], StreamedT],
                 shaper: _Shaper[StreamedT]) -> None:
        super().__init__(chunks, stream=stream, merge=merge)
        self.shaper = shaper

    async def _respond(self, send: Send) -> None:
        chunks: list[StreamedT] = []
        try:
            first = await self._next()
            if first is None:
                raise RuntimeError("the engine ended the request without a response")
            if not self.stream:
                chunks.append(first)
                while (item := await self._next()) is not None:
                    chunks.append(item)
        except Exception as exc:  # noqa: BLE001 -- nothing sent yet: the error keeps its status code
            await _send_error(send, exc)
            return
        if not self.stream:
            await send_json(send, 200, self.shaper.completion(self.merge(chunks)))
            return
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", SSE.encode()), (b"cache-control", b"no-cache")]})
        chunk: StreamedT | None = first
        while chunk is not None:
            for event in self.shaper.events(chunk):
                await send({"type": "http.response.body",
                            "body": b"data: " + dumps(event) + b"\n\n", "more_body": True})
            try:
                chunk = await self._next()
            except Exception as exc:  # noqa: BLE001 -- mid-stream: the error is the last event
                status, message = error_parts(exc)
                log.warning("OpenAI request failed mid-stream (%d): %s", status, message)
                error = dumps(error_body(status, message))
                await send({"type": "http.response.body", "body": b"data: " + error + b"\n\n", "more_body": False})
                return
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": False})


def _openai_errors(handler: Handler) -> Handler:
    """Errors raised before the response starts become OpenAI's error object with Ollama's status code."""
    return answering_errors(handler, error_body)


async def _parse(request: Request, schema: type[BaseModel]) -> Any:
    return parse_request(schema, await read_json_body(request))


class OpenAIAPI:
    """The /v1 handlers over the engine of `source` (the Ollama API object, which resolves it lazily)."""

    def __init__(self, source: _EngineSource) -> None:
        self.source = source

    async def chat_completions(self, request: Request) -> Response:
        openai_request: ChatCompletionRequest = await _parse(request, ChatCompletionRequest)
        engine = self.source.engine

        def start() -> OpenAIStreamResponse:
            req = parse_request(ChatRequest, chat_body(openai_request))  # off the loop: resolution, queueing
            return OpenAIStreamResponse(engine.achat(req), stream=req.stream, merge=merge_chat,
                                        shaper=ChatShaper(openai_request.include_usage))

        return await anyio.to_thread.run_sync(start)

    async def completions(self, request: Request) -> Response:
        openai_request: CompletionRequest = await _parse(request, CompletionRequest)
        engine = self.source.engine

        def start() -> OpenAIStreamResponse:
            req = parse_request(GenerateRequest, generate_body(openai_request))
            return OpenAIStreamResponse(engine.agenerate(req), stream=req.stream, merge=merge_generate,
                                        shaper=CompletionShaper(openai_request.include_usage))

        return await anyio.to_thread.run_sync(start)

    async def embeddings(self, request: Request) -> Response:
        openai_request: EmbeddingRequest = await _parse(request, EmbeddingRequest)
        engine = self.source.engine
        req = parse_request(EmbedRequest, embed_body(openai_request))
        await anyio.to_thread.run_sync(engine.resolve, req.model)  # a first-use pull happens off the loop

        async def work(send: Send) -> None:
            try:
                result = await engine.aembed(req)
            except Exception as exc:  # noqa: BLE001 -- answered in OpenAI's error shape
                await _send_error(send, exc)
                return
            await send_json(send, 200, embedding_list(req.model, result, openai_request.encoding_format))

        return WatchedResponse(work)

    async def models(self, request: Request) -> Response:
        return CompactJSON(model_list(await anyio.to_thread.run_sync(self.source.engine.list)))

    async def model(self, request: Request) -> Response:
        name = request.path_params["model"]
        shown = await anyio.to_thread.run_sync(self.source.engine.show, name)
        return CompactJSON(model_object(name, shown.get("modified_at")))

    def routes(self) -> list[Route]:
        return [
            Route("/v1/chat/completions", _openai_errors(self.chat_completions), methods=["POST"]),
            Route("/v1/completions", _openai_errors(self.completions), methods=["POST"]),
            Route("/v1/embeddings", _openai_errors(self.embeddings), methods=["POST"]),
            Route("/v1/models", _openai_errors(self.models), methods=["GET"]),
            Route("/v1/models/{model:path}", _openai_errors(self.model), methods=["GET"]),
        ]
