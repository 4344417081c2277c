"""The Starlette app: Ollama's REST API over the process's one Engine.

Endpoints (Ollama's paths, bodies, status codes and error bodies):

    GET|HEAD /                "Ollama is running" (clients probe it)
    GET  /api/version         {"version": OLLAMA_VERSION}
    GET  /api/tags            stored models                    (Engine.list)
    GET  /api/ps              loaded models                    (Engine.ps)
    POST /api/show            model details                    (Engine.show)
    POST /api/chat            NDJSON stream, or one object with "stream": false   (Engine.achat)
    POST /api/generate        same                                                (Engine.agenerate)
    POST /api/embed           {"embeddings": [[...]]}                             (Engine.aembed)
    POST /api/embeddings      legacy {"embedding": [...]}
    POST /api/pull, /api/create, /api/copy, /api/push, DELETE /api/delete, HEAD|POST /api/blobs/:digest
                              model management (server/management.py)
    /v1/...                   OpenAI-compatible chat/completions/embeddings/models (openai_compat.py)

Nothing here blocks the event loop: request parsing, model resolution (a first-use pull) and the
model listings run in worker threads; generation is awaited through the engine's async iterators.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import anyio
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import Send

from ..engine.embedder import LegacyEmbeddingsRequest
from ..engine.engine import Engine
from ..engine.requests import ChatRequest, EmbedRequest, GenerateRequest, parse_request
from ..model.errors import ModelNotFoundError
from ..model.tokenizer_info import verbose_show
from ..ollama.client import reject_image_generation
from ..ollama.merge import merge_chat, merge_generate
from .errors import BadRequest, error_parts
from .guard import GuardConfig, RequestGuard, origin_pattern
from .handlers import CompactJSON, answering_errors, read_json_body
from .management import management_routes
from .openai_compat import OpenAIAPI
from .streaming import EngineStreamResponse, WatchedResponse, send_json

log = logging.getLogger(__name__)

# The Ollama release whose REST API this server follows (clients gate features on /api/version).
OLLAMA_VERSION = "0.12.11"


def _model(body: dict[str, Any], *keys: str) -> str:
    for key in keys or ("model",):
        value = body.get(key)
        if isinstance(value, str) and value:
            return value
    raise BadRequest("model is required")


class OllamaAPI:
    """The handlers, bound to one engine (or to the process's shared engine, resolved on first use)."""

    def __init__(self, engine: Engine | None = None) -> None:
        self._engine = engine

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            from ..engine.default import get_engine

            self._engine = get_engine()
        return self._engine

    # ---- probes and listings ---------------------------------------------------------------------

    async def root(self, request: Request) -> Response:
        return PlainTextResponse("Ollama is running")

    async def version(self, request: Request) -> Response:
        return CompactJSON({"version": OLLAMA_VERSION})

    async def tags(self, request: Request) -> Response:
        return CompactJSON(await anyio.to_thread.run_sync(self.engine.list))

    async def ps(self, request: Request) -> Response:
        return CompactJSON(await anyio.to_thread.run_sync(self.engine.ps))

    async def show(self, request: Request) -> Response:
        body = await read_json_body(request)
        model = _model(body, "model", "name")  # "name" is the older spelling
        shown = await anyio.to_thread.run_sync(self.engine.show, model)
        if body.get("verbose"):  # the tokenizer arrays (model/tokenizer_info.py)
            shown = await anyio.to_thread.run_sync(verbose_show, self.engine.store, model, shown)
        return CompactJSON(shown)

    # ---- generation ------------------------------------------------------------------------------

    async def chat(self, request: Request) -> Response:
        body = await read_json_body(request)
        _model(body)
        engine = self.engine

        def start() -> EngineStreamResponse:
            # Off the loop: validation, format grammar, model resolution (a first-use pull) and queueing.
            # A full queue is EngineBusyError (503) here, model not found 404, bad options 400.
            req = parse_request(ChatRequest, body)
            return EngineStreamResponse(engine.achat(req), stream=req.stream, merge=merge_chat)

        return await anyio.to_thread.run_sync(start)

    async def generate(self, request: Request) -> Response:
        body = await read_json_body(request)
        if not isinstance(body.get("model"), str) or not body["model"]:
            raise ModelNotFoundError(f"model '{body.get('model') or ''}' not found")  # Ollama: 404, not 400
        engine = self.engine

        def start() -> EngineStreamResponse:
            req = parse_request(GenerateRequest, body)
            reject_image_generation(engine, req.model, body.get("width"), body.get("height"), body.get("steps"))
            return EngineStreamResponse(engine.agenerate(req), stream=req.stream, merge=merge_generate)

        return await anyio.to_thread.run_sync(start)

    # ---- embeddings ------------------------------------------------------------------------------

    async def _embed_response(self, req: EmbedRequest, shape: Callable[[dict[str, Any]], Any]) -> Response:
        engine = self.engine
        # A first-use pull (all-minilm) happens while resolving: do it off the loop, before queueing.
        await anyio.to_thread.run_sync(engine.resolve, req.model)

        async def work(send: Send) -> None:
            try:
                result = await engine.aembed(req)
            except Exception as exc:  # noqa: BLE001 -- answered in Ollama's error shape
                status, message = error_parts(exc)
                await send_json(send, status, {"error": message})
                return
            await send_json(send, 200, shape(result))

        return WatchedResponse(work)

    async def embed(self, request: Request) -> Response:
        body = await read_json_body(request)
        _model(body)
        req = await anyio.to_thread.run_sync(parse_request, EmbedRequest, body)
        return await self._embed_response(req, lambda result: result)

    async def embeddings(self, request: Request) -> Response:
        """Legacy /api/embeddings: {model, prompt} -> {embedding}; the vector is not normalized (as Ollama)."""
        body = await read_json_body(request)
        _model(body)
        prompt = body.get("prompt")
        legacy = {"model": body["model"], "input": [prompt] if prompt else [], "options": body.get("options"),
                  "keep_alive": body.get("keep_alive")}
        req = await anyio.to_thread.run_sync(parse_request, LegacyEmbeddingsRequest, legacy)
        return await self._embed_response(
            req, lambda result: {"embedding": result["embeddings"][0] if result["embeddings"] else []})

    # ---- routes ------------------------------------------------------------------------------------

    def routes(self) -> list[Route]:
        return [
            Route("/", answering_errors(self.root), methods=["GET", "HEAD"]),
            Route("/api/version", answering_errors(self.version), methods=["GET", "HEAD"]),
            Route("/api/tags", answering_errors(self.tags), methods=["GET", "HEAD"]),
            Route("/api/ps", answering_errors(self.ps), methods=["GET"]),
            Route("/api/show", answering_errors(self.show), methods=["POST"]),
            Route("/api/chat", answering_errors(self.chat), methods=["POST"]),
            Route("/api/generate", answering_errors(self.generate), methods=["POST"]),
            Route("/api/embed", answering_errors(self.embed), methods=["POST"]),
            Route("/api/embeddings", answering_errors(self.embeddings), methods=["POST"]),
            *management_routes(lambda: self.engine, read_json_body, answering_errors),
        ]


async def _not_found(request: Request, exc: Exception) -> Response:
    if isinstance(exc, HTTPException) and exc.status_code != 404:
        return PlainTextResponse(str(exc.detail), status_code=exc.status_code)
    return PlainTextResponse("404 page not found", status_code=404)  # Ollama's (gin's) answer


def create_app(engine: Engine | None = None, *, origins: Sequence[str] = (),
               guard: GuardConfig | None = None) -> Starlette:
    """Ollama's REST API over `engine` (default: the process's shared engine from `get_engine()`).

    One engine owns the device per process, so pass the engine the rest of the process uses, or none.
    Every request first passes RequestGuard (server/guard.py): browser origins allowed as Ollama
    allows them (pages on this machine, app://, file://, tauri://, vscode-webview://, plus
    OLLAMA_ORIGINS and `origins`; others get 403), the Host header checked on loopback connections
    (DNS rebinding), the body size and arrival time capped, and model names that are paths refused.
    `guard` replaces the whole configuration (its origins are used instead of OLLAMA_ORIGINS).
    """
    api = OllamaAPI(engine)
    config = guard or GuardConfig.from_env(origins)
    cors = Middleware(CORSMiddleware, allow_origin_regex="(?i)" + origin_pattern(config.all_origins).pattern,
                      allow_methods=["GET", "HEAD", "POST", "DELETE", "OPTIONS"], allow_headers=["*"])
    # The guard is the outermost layer: it sees every route, including ones added to the app later.
    routes = [*api.routes(), *OpenAIAPI(api).routes()]
    app = Starlette(routes=routes, middleware=[Middleware(RequestGuard, config=config), cors],
                    exception_handlers={404: _not_found})
    app.state.api = api
    app.state.guard = config
    return app
