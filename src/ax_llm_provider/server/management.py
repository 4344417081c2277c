"""Ollama's model-management endpoints over the engine's store (the work is in model/manage.py).

    POST   /api/pull            {model, insecure?, stream?}    progress records (NDJSON), last {"status":"success"}
    POST   /api/create          {model, from, system?, parameters?, messages?, template?, license?, stream?}
    POST   /api/copy            {source, destination}          200, empty body
    DELETE /api/delete          {model}                        200, empty body; 404 when there is no such model
    POST   /api/push            501: there is no registry to push to
    HEAD   /api/blobs/:digest   404: no blob is ever stored here
    POST   /api/blobs/:digest   501: models are not built from uploaded files (convert instead)

As in Ollama, `stream` defaults to true; with stream=false the answer is the last record. A request
that cannot be done fails before the first record with its status code (404 unknown model, 400 bad
request, 501 not supported); a failure while pulling is the stream's last line `{"error": ...}`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, Any

import anyio
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from ..model import manage
from ..ollama.management import BLOB_UNSUPPORTED, PUSH_UNSUPPORTED
from .errors import BadRequest, error_parts
from .streaming import NDJSON, dumps

if TYPE_CHECKING:
    from ..engine.engine import Engine

Handler = Callable[[Request], Awaitable[Response]]
Records = Iterator[dict[str, Any]]


def _name(body: dict[str, Any], key: str = "model") -> str:
    value = body.get(key) or (body.get("name") if key == "model" else None)  # "name": the older spelling
    if not isinstance(value, str) or not value:
        raise BadRequest(f"{key} is required")
    return value


def _lines(records: Records) -> Iterator[bytes]:
    try:
        for record in records:
            yield dumps(record) + b"\n"
    except Exception as exc:  # noqa: BLE001 -- mid-stream: status stays 200, the error is the last line
        yield dumps({"error": error_parts(exc)[1]}) + b"\n"


def _last(records: Records) -> dict[str, Any]:
    final: dict[str, Any] = {"status": "success"}
    for record in records:
        final = record
    return final


async def _respond(records: Records, stream: bool) -> Response:
    if stream:
        return StreamingResponse(_lines(records), media_type=NDJSON)  # a sync iterator runs in a thread
    final = await anyio.to_thread.run_sync(_last, records)
    return JSONResponse(final)


class ManagementAPI:
    def __init__(self, engine: Callable[[], Engine], read_body: Callable[[Request], Awaitable[dict[str, Any]]]) -> None:
        self._engine, self._read_body = engine, read_body

    async def pull(self, request: Request) -> Response:
        body = await self._read_body(request)
        model = _name(body)
        await anyio.to_thread.run_sync(manage.check_pullable, model)  # 404 before any record
        return await _respond(manage.pull_progress(model, self._engine().store), body.get("stream", True) is not False)

    async def create(self, request: Request) -> Response:
        body = await self._read_body(request)
        store = self._engine().store

        def plan() -> tuple[Any, bool]:
            return manage.plan_create(
                store, _name(body), from_=body.get("from"), system=body.get("system"),
                parameters=body.get("parameters"), messages=body.get("messages"), template=body.get("template"),
                license=body.get("license"), adapters=body.get("adapters"), files=body.get("files"),
                quantize=body.get("quantize"))

        derived, needs_pull = await anyio.to_thread.run_sync(plan)
        return await _respond(manage.create_progress(store, derived, needs_pull),
                              body.get("stream", True) is not False)

    async def copy(self, request: Request) -> Response:
        body = await self._read_body(request)
        source, destination = _name(body, "source"), _name(body, "destination")
        await anyio.to_thread.run_sync(manage.copy_model, self._engine().store, source, destination)
        return Response(status_code=200)

    async def delete(self, request: Request) -> Response:
        body = await self._read_body(request)
        model = _name(body)
        engine = self._engine()

        def delete() -> None:
            base = manage.delete_model(engine.store, model)
            if base is not None and any(m["name"] == base for m in engine.ps()["models"]):
                engine.unload(base)

        await anyio.to_thread.run_sync(delete)
        return Response(status_code=200)

    async def push(self, request: Request) -> Response:
        return JSONResponse({"error": PUSH_UNSUPPORTED}, status_code=501)

    async def blob(self, request: Request) -> Response:
        if request.method == "HEAD":
            return Response(status_code=404)  # Ollama's answer for a blob it does not have
        return JSONResponse({"error": BLOB_UNSUPPORTED}, status_code=501)


def management_routes(engine: Callable[[], Engine], read_body: Callable[[Request], Awaitable[dict[str, Any]]],
                      wrap: Callable[[Handler], Handler]) -> list[Route]:
    """The routes, with the app's body reader and error wrapper (Ollama's `{"error": ...}` and status codes)."""
    api = ManagementAPI(engine, read_body)
    return [
        Route("/api/pull", wrap(api.pull), methods=["POST"]),
        Route("/api/create", wrap(api.create), methods=["POST"]),
        Route("/api/copy", wrap(api.copy), methods=["POST"]),
        Route("/api/delete", wrap(api.delete), methods=["DELETE"]),
        Route("/api/push", wrap(api.push), methods=["POST"]),
        Route("/api/blobs/{digest}", wrap(api.blob), methods=["HEAD", "POST"]),
    ]

