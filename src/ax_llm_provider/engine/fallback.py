"""Degraded mode's routing: chat and generate go to a CPU fallback engine while the card is lost.

The switching state, the prober and the probe are in engine/ops/degraded.py. Here:

* while degraded, a request for any model is answered by the fallback model on the CPU twin (a second Engine
  with backend "onnx" and the same store, made on first need); its chunks name the model that was asked for and
  its final chunk carries `ax.degraded` (which model answered, since when, why);
* a request sent to the card that fails because the card was just lost (the ladder went FATAL while it was
  queued or running) is answered by the fallback when nothing of it had reached the caller yet (a non-streamed
  request's chunks are held until it is done, so it always qualifies); a stream that had delivered chunks ends
  with its typed error, with a note that degraded mode now answers;
* embeddings are not routed (the embedding models run on the CPU already).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import AsyncIterator, Callable, Generator, Iterator
from typing import Any, Protocol

from ..model import derived as derived_models
from ..model.embedding_model import is_embedding_model_dir
from ..model.errors import ModelNotFoundError
from ..model.registry import lookup
from ..model.store import ModelStore, is_path_like, normalize_name
from ..runtime.errors import DeviceError
from .errors import EngineError
from .ops.degraded import CardProber, DegradedMode
from .ops.recovery import DeviceFatalError
from .requests import ChatRequest, GenerateRequest, parse_request
from .responses import Chunk, ChunkT, mark_degraded

log = logging.getLogger(__name__)
REQUESTS: dict[str, type[ChatRequest] | type[GenerateRequest]] = {"chat": ChatRequest, "generate": GenerateRequest}


class FallbackEngine(Protocol):
    """What the router uses of the fallback Engine."""

    worker: Any

    def chat(self, request: ChatRequest) -> Iterator[Chunk]: ...
    def generate(self, request: GenerateRequest) -> Iterator[Chunk]: ...
    def achat(self, request: ChatRequest) -> AsyncIterator[Chunk]: ...
    def agenerate(self, request: GenerateRequest) -> AsyncIterator[Chunk]: ...
    def unload(self, model: str) -> bool: ...
    def close(self) -> None: ...


def _requested_model(request: Any) -> str | None:
    model = request.get("model") if isinstance(request, dict) else getattr(request, "model", None)
    return model if isinstance(model, str) else None


class CardFallback:
    """Routes one Engine's chat and generate requests (see the module docstring)."""

    def __init__(self, mode: DegradedMode, store: ModelStore, make_engine: Callable[[], FallbackEngine], *,
                 resolve: Callable[[str], str], probe: Callable[[list[str]], None], max_models: int = 1,
                 poll_s: float | None = None) -> None:
        """make_engine: the CPU fallback engine (called once, on the first switch); resolve: the stored name of
        an asked model (Engine.resolve: unknown names fail as they would on the card); probe: raises while the
        card is unavailable, reloads the named models on it once it answers (ops/degraded.probe_card);
        max_models: how many of the most recently asked models the probe reloads."""
        self.mode, self._make_engine, self.resolve = mode, make_engine, resolve
        self.store = store
        self.max_models = max_models
        self._engine: FallbackEngine | None = None
        self._wanted: dict[str, None] = {}  # models the requests asked for, most recent last
        self._wanted_lock = threading.Lock()  # request threads note, the prober reads
        self._engine_lock = threading.Lock()
        self.prober = CardProber(mode, lambda: probe(self.wanted()), self._serving, poll_s=poll_s,
                                 on_back=self._back_on_card)
        self.closed = False

    # ---- the switches --------------------------------------------------------------------------------

    def card_lost(self, fatal: DeviceFatalError) -> None:
        """The ladder's on_fatal hook (device thread), or a request refused for a lost card."""
        cause = fatal.cause if fatal.cause is not None else fatal
        if self.mode.enter(f"the recovery ladder gave up; last error: {type(cause).__name__}: {cause}"):
            self.prober.start()

    def _back_on_card(self) -> None:
        engine = self._engine
        if engine is not None:  # queued behind the fallback's requests in flight, so none of them is cut
            try:
                engine.unload(self.mode.config.model)
            except Exception as exc:  # noqa: BLE001 -- the card serves already; a model left in RAM is only memory
                log.warning("could not unload the CPU fallback model %s: %s", self.mode.config.model, exc)

    def _serving(self) -> bool:
        return not self.closed and (self._engine is None or self._engine.worker.alive)

    def wanted(self) -> list[str]:
        with self._wanted_lock:
            return list(self._wanted)[-self.max_models:]

    def _note(self, model: str) -> None:
        with self._wanted_lock:
            self._wanted.pop(model, None)
            self._wanted[model] = None
            while len(self._wanted) > self.max_models:  # bounded, whatever names the requests use
                del self._wanted[next(iter(self._wanted))]

    # ---- sync ----------------------------------------------------------------------------------------

    def stream(self, endpoint: str, request: Any,
               primary: Callable[[], Iterator[ChunkT]]) -> Generator[ChunkT, None, None]:
        """`primary` (the card's request, started here) unless degraded; the fallback's answer otherwise."""
        if not self.mode.active:
            losses = self.mode.losses
            try:
                chunks = primary()
            except DeviceFatalError as exc:  # refused at admission: the card is lost
                self.card_lost(exc)
            else:
                self._note_asked(request)
                return self._watched(endpoint, request, chunks, primary, losses)
        return self._answer(endpoint, request)

    def _watched(self, endpoint: str, request: Any, chunks: Iterator[ChunkT], primary: Callable[[], Iterator[ChunkT]],
                 losses: int) -> Generator[ChunkT, None, None]:
        # a non-streamed request's job hands over nothing before it is done (jobs.py, whole_reply), so a card lost
        # mid-generation leaves `emitted` False and the request is answered whole by the fallback
        emitted = False
        try:
            try:
                for chunk in chunks:
                    emitted = True
                    yield chunk
            except (EngineError, DeviceError) as exc:
                if not self._rerun(exc, emitted, losses):
                    raise
            else:
                return
        finally:
            _close(chunks)
        rest: Iterator[ChunkT] = self._answer(endpoint, request) if self.mode.active else primary()  # card back?
        yield from rest

    def _answer(self, endpoint: str, request: Any) -> Generator[ChunkT, None, None]:
        asked, req = self._fallback_request(endpoint, request)
        chunks: Iterator[ChunkT] = getattr(self._engine_now(), endpoint)(req)
        return self._relabel(chunks, asked, self.mode.metadata())

    @staticmethod
    def _relabel(chunks: Iterator[ChunkT], asked: str, meta: dict[str, Any]) -> Generator[ChunkT, None, None]:
        try:
            for chunk in chunks:
                yield _marked(chunk, asked, meta)
        finally:
            _close(chunks)

    # ---- async ---------------------------------------------------------------------------------------

    def astream(self, endpoint: str, request: Any, primary: Callable[[], AsyncIterator[ChunkT]]
                ) -> AsyncIterator[ChunkT]:
        if not self.mode.active:
            losses = self.mode.losses
            try:
                chunks = primary()
            except DeviceFatalError as exc:
                self.card_lost(exc)
            else:
                self._note_asked(request)
                return self._awatched(endpoint, request, chunks, primary, losses)
        return self._aanswer(endpoint, request)

    async def _awatched(self, endpoint: str, request: Any, chunks: AsyncIterator[ChunkT],
                        primary: Callable[[], AsyncIterator[ChunkT]], losses: int) -> AsyncIterator[ChunkT]:
        emitted = False  # as in _watched
        try:
            try:
                async for chunk in chunks:
                    emitted = True
                    yield chunk
            except (EngineError, DeviceError) as exc:
                if not self._rerun(exc, emitted, losses):
                    raise
            else:
                return
        finally:
            await _aclose(chunks)
        rest: AsyncIterator[ChunkT] = self._aanswer(endpoint, request) if self.mode.active else primary()
        async for chunk in rest:
            yield chunk

    def _aanswer(self, endpoint: str, request: Any) -> AsyncIterator[ChunkT]:
        asked, req = self._fallback_request(endpoint, request)
        chunks: AsyncIterator[ChunkT] = getattr(self._engine_now(), "a" + endpoint)(req)
        return self._arelabel(chunks, asked, self.mode.metadata())

    @staticmethod
    async def _arelabel(chunks: AsyncIterator[ChunkT], asked: str, meta: dict[str, Any]) -> AsyncIterator[ChunkT]:
        try:
            async for chunk in chunks:
                yield _marked(chunk, asked, meta)
        finally:
            await _aclose(chunks)

    # ---- shared --------------------------------------------------------------------------------------

    def _rerun(self, exc: BaseException, emitted: bool, losses: int) -> bool:
        """Whether a request that failed on the card is run again: on the fallback, or on the card when it came
        back before the failure was seen here (the loss and the way back both happened while it waited)."""
        if not self.mode.active and self.mode.losses == losses:
            return False  # the card was not lost meanwhile: the request's own error stands
        if emitted:
            exc.add_note(f"the NPU card was lost while this request streamed; degraded mode now answers from the "
                         f"CPU fallback model {self.mode.config.model}: send the request again")
            return False
        log.warning("a request failed because the NPU card was lost before anything of it was streamed (%s: %s): "
                    "running it again (on the CPU fallback model %s while the card is lost)", type(exc).__name__, exc,
                    self.mode.config.model)
        return True

    def _note_asked(self, request: Any) -> None:
        model = _requested_model(request)
        if model is not None:  # the primary resolved it (it raises for an unknown model)
            self._note(model)

    def _fallback_request(self, endpoint: str, request: Any) -> tuple[str, ChatRequest | GenerateRequest]:
        """The request for the fallback model: a derived model's defaults applied, the model replaced."""
        req = parse_request(REQUESTS[endpoint], request)
        asked = req.model
        req, _ = derived_models.apply_derived(self.store, req)  # a derived model's system prompt and options
        self.resolve(asked)  # an unknown name fails here as it would on the card
        self._note(asked)
        return asked, req.model_copy(update={"model": self.mode.config.model})

    def _engine_now(self) -> FallbackEngine:
        if self.closed:
            raise EngineError("the engine is closed; create a new Engine")
        with self._engine_lock:  # two requests meeting a lost card at once make one fallback engine
            if self._engine is None:
                self._engine = self._make_engine()
            return self._engine

    def close(self) -> None:
        self.closed = True
        self.prober.stop()
        if self._engine is not None:
            self._engine.close()


def check_fallback_model(store: ModelStore, model: str, *, auto_pull: bool) -> None:
    """At start, not when the card is lost: the fallback must be an LLM in the store, or one `pull` knows."""
    try:
        stored = store.resolve(derived_models.base_name(store, model))
    except ModelNotFoundError as exc:
        if auto_pull and not is_path_like(model) and lookup(normalize_name(model)) is not None:
            log.warning("degraded mode's fallback model %s is not in the store yet: it will be pulled when the card "
                        "is first lost; pull it now (`ax-llm pull %s`) so that needs no network", model, model)
            return
        raise ModelNotFoundError(f"degraded mode's fallback model {model!r} is not in the store {store.root} ({exc}): "
                                 "pull or convert it first, or unset AX_LLM_FALLBACK_MODEL") from exc
    if is_embedding_model_dir(stored.path):
        raise ModelNotFoundError(f"degraded mode's fallback model {model!r} is an embedding model: it cannot answer "
                                 "chat or generate; name an LLM (for example smollm2:135m)")


def _marked(chunk: ChunkT, asked: str, meta: dict[str, Any]) -> ChunkT:
    relabelled = chunk.copy()
    relabelled["model"] = asked
    return mark_degraded(relabelled, meta) if relabelled.get("done") else relabelled


def _close(chunks: Iterator[ChunkT]) -> None:
    close = getattr(chunks, "close", None)
    if close is not None:
        close()


async def _aclose(chunks: AsyncIterator[ChunkT]) -> None:
    aclose = getattr(chunks, "aclose", None)
    if aclose is not None:
        await aclose()


__all__ = ["CardFallback", "FallbackEngine", "check_fallback_model"]
