"""ASGI responses that run engine work while watching the connection: a client that goes away cancels it.

Ollama cancels a request when its client disconnects (the queued request is dropped, a running
generation stops). Here the response body runs in an anyio task group next to a task that waits for
`http.disconnect`; the disconnect cancels the body, and the engine's async stream is closed in a
shielded `finally`, which cancels the request on the device worker: the device is free again within
one token.

Ollama's streaming rules (server/routes.go `streamResponse`): an error before any content is sent with
its status code as `{"error": ...}`; once the NDJSON stream has started the status stays 200 and the
error is the last line. A load or unload answer (empty messages/prompt) is one JSON object.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Generic, TypeVar

import anyio
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from ..engine.responses import Chunk
from .errors import error_parts

log = logging.getLogger(__name__)

# the stream of one endpoint: chat chunks or generate chunks (a bound, so subclasses stay generic)
StreamedT = TypeVar("StreamedT", bound=Chunk)


NDJSON = "application/x-ndjson"
JSON = "application/json; charset=utf-8"


def dumps(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


async def send_json(send: Send, status: int, obj: Any) -> None:
    body = dumps(obj)
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", JSON.encode()), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def send_error(send: Send, exc: BaseException) -> None:
    status, message = error_parts(exc)
    await send_json(send, status, {"error": message})


class WatchedResponse(Response):
    """Runs `work(send)` and cancels it when the client disconnects; `cleanup()` always runs, shielded."""

    def __init__(self, work: Callable[[Send], Awaitable[None]],
                 cleanup: Callable[[], Awaitable[None]] | None = None) -> None:
        # Response.__init__ would render a body; this response writes its own messages.
        self.work, self.cleanup = work, cleanup
        self.status_code, self.background = 200, None
        self.disconnected = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            async with anyio.create_task_group() as group:

                async def watch() -> None:
                    while (await receive())["type"] != "http.disconnect":
                        pass
                    self.disconnected = True
                    log.debug("client disconnected from %s: cancelling the request", scope.get("path"))
                    group.cancel_scope.cancel()

                group.start_soon(watch)
                try:
                    await self.work(send)
                finally:
                    group.cancel_scope.cancel()  # the answer is complete (or abandoned): stop watching
        finally:
            if self.cleanup is not None:
                with anyio.CancelScope(shield=True):
                    await self.cleanup()


class EngineStreamResponse(WatchedResponse, Generic[StreamedT]):
    """Ollama's answer to /api/chat or /api/generate from the engine's async chunk iterator.

    stream=True: NDJSON, one chunk per line, flushed as produced (a load/unload answer is one JSON
    object, as Ollama sends it); stream=False: the chunks merged with ollama/merge.py into one object.
    """

    def __init__(self, chunks: AsyncIterator[StreamedT], *, stream: bool,
                 merge: Callable[[list[StreamedT]], StreamedT]) -> None:
        super().__init__(self._respond, self._close)
        self.chunks: AsyncIterator[StreamedT] | None = chunks
        self.stream, self.merge = stream, merge

    async def _close(self) -> None:
        # Closing the engine's iterator closes its request stream: a request still queued or running is
        # cancelled and the device worker moves on after the current token. An iterator that never
        # started has no frame to close; dropping the last reference finalizes its request stream,
        # which cancels the request just the same.
        chunks, self.chunks = self.chunks, None
        aclose = getattr(chunks, "aclose", None)
        if aclose is not None:
            await aclose()
        del chunks, aclose

    async def _next(self) -> StreamedT | None:
        if self.chunks is None:
            return None
        try:
            return await self.chunks.__anext__()
        except StopAsyncIteration:
            return None

    async def _respond(self, send: Send) -> None:
        try:
            first = await self._next()
        except Exception as exc:  # noqa: BLE001 -- an error before any content keeps its status code
            await send_error(send, exc)
            return
        if first is None:
            await send_json(send, 500, {"error": "the engine ended the request without a response"})
            return
        if not self.stream:
            await self._respond_single(first, send)
        elif first.get("done") and first.get("done_reason") in ("load", "unload"):
            await send_json(send, 200, first)
        else:
            await self._respond_stream(first, send)

    async def _respond_single(self, first: StreamedT, send: Send) -> None:
        chunks = [first]
        try:
            while (item := await self._next()) is not None:
                chunks.append(item)
        except Exception as exc:  # noqa: BLE001 -- Ollama answers a failed non-streaming request with its status
            await send_error(send, exc)
            return
        await send_json(send, 200, self.merge(chunks))

    async def _respond_stream(self, first: StreamedT, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", NDJSON.encode())]})
        chunk: StreamedT | None = first
        while chunk is not None:
            await send({"type": "http.response.body", "body": dumps(chunk) + b"\n", "more_body": True})
            try:
                chunk = await self._next()
            except Exception as exc:  # noqa: BLE001 -- mid-stream: status stays 200, the error is the last line
                status, message = error_parts(exc)
                log.warning("request failed mid-stream (%d): %s", status, message)
                await send({"type": "http.response.body", "body": dumps({"error": message}) + b"\n",
                            "more_body": True})
                break
        await send({"type": "http.response.body", "body": b"", "more_body": False})
