"""The Engine: one per process, owns the device through one worker thread, serves Ollama's requests.

Public methods take Ollama's request bodies (dicts or the pydantic models in engine/requests.py) and
return Ollama's response bodies as dicts, streamed as iterators; ollama/client.py wraps them in the
`ollama` package's types, the optional HTTP server writes them as NDJSON.
"""

from __future__ import annotations

import logging
import math
import os
import threading
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Generator
from pathlib import Path
from typing import Any

from ..model import derived as derived_models  # hook: models made by `create` / `copy` (model/derived.py)
from ..model.embedding_model import is_embedding_model_dir
from ..model.errors import ModelNotFoundError
from ..model.loader import LoadedModel
from ..model.pull import pull
from ..model.registry import lookup
from ..model.store import ModelStore, is_path_like, normalize_name
from .clock import SYSTEM_CLOCK, Clock
from .consume import amapped, engine_error, mapped
from .decoding.constraints import format_grammar
from .errors import EngineError, InvalidRequestError
from .fallback import CardFallback, check_fallback_model
from .idle_prefill import IdlePrefill, idle_prefill_from_env
from .jobs import Job, RequestEdge, chat_job, generate_job
from .keepalive import parse_keep_alive
from .ops.degraded import DegradedMode, FallbackConfig, probe_card
from .ops.health import HealthConfig, HealthSnapshot
from .ops.recovery import RecoveryPolicy
from .ops.supervisor import Supervisor
from .options import InvalidOptionError, parse_options
from .requests import ChatRequest, EmbedRequest, GenerateRequest, parse_request
from .responses import ChatChunk, ChunkT, GenerateChunk
from .slots import ModelSlots
from .state import ModelInfo
from .worker.scheduler import DeviceWorker, SchedulerError

log = logging.getLogger(__name__)


def _default_keep_alive() -> float:
    """Forever unless AX_LLM_KEEP_ALIVE says otherwise: reloading a model on the card takes 10-130 s."""
    return parse_keep_alive(os.environ.get("AX_LLM_KEEP_ALIVE"), default=math.inf)


class Engine:
    """Loads models on first use, runs one request at a time on the device, FIFO, thread-safe."""

    def __init__(self, store: ModelStore | str | None = None, *, backend: str = "auto", device: int = 0,
                 keep_alive: float | str | None = None, max_queue: int = 512,
                 request_timeout: float | None = None, stall_timeout: float | None = 60.0,
                 snapshot_bytes: int = 256 << 20, max_loaded_models: int = 1, auto_pull: bool = True,
                 card: Any | None = None, health: HealthConfig | None = None,
                 recovery: RecoveryPolicy | None = None, device_lock: bool | None = None,
                 idle_prefill: bool | None = None, fallback_model: str | FallbackConfig | None = None,
                 clock: Clock | None = None) -> None:
        """card: the `axcl` module or SimCard to drive (default: `import axcl`, or a new SimCard for the
        simulated backend); health / recovery: monitor thresholds and the recovery ladder's bounds
        (engine/ops/health.py, engine/ops/recovery.py); device_lock: take the single-owner card lock (default: for
        the axcl and axengine backends); idle_prefill: after a chat reply, evaluate the next prompt's known
        start while the device is idle (engine/idle_prefill.py; default: on when AX_LLM_IDLE_PREFILL=1);
        fallback_model: degraded mode, the CPU model that answers while the card is lost (engine/fallback.py;
        default: AX_LLM_FALLBACK_MODEL, off when unset or ""); clock: the time keep_alive, health, recovery and
        degraded mode's probe schedule read (engine/clock.py; tests run simulated hours with it)."""
        clock = clock or SYSTEM_CLOCK
        self.store = store if isinstance(store, ModelStore) else ModelStore(store)
        fallback = FallbackConfig.resolve(fallback_model)
        if fallback is not None:  # before any thread starts: a typo fails the start, not the first card loss
            check_fallback_model(self.store, fallback.model, auto_pull=auto_pull)
        self.backend, self.device = backend, device
        self.default_keep_alive = parse_keep_alive(keep_alive, default=_default_keep_alive())
        self.request_timeout, self.stall_timeout = request_timeout, stall_timeout
        self.snapshot_bytes, self.max_loaded_models = snapshot_bytes, max_loaded_models
        self.worker = DeviceWorker(max_queue=max_queue)  # the device thread: one request at a time, FIFO
        self.slots = ModelSlots(self.store, self.worker, self._load_model, snapshot_bytes=snapshot_bytes,
                                max_loaded=max_loaded_models,
                                check=lambda path: self._supervisor.check(path), clock=clock)  # lent to ops
        self.idle = IdlePrefill(self.worker, self.slots) if (
            idle_prefill if idle_prefill is not None else idle_prefill_from_env()) else None
        self.auto_pull = auto_pull  # fetch registry models (the embedded default) on first use
        self._pull_lock = threading.Lock()
        self._closed = False
        self._supervisor = Supervisor(self.slots, self.worker, self, backend=backend, device=device, card=card,
                                      health=health, recovery=recovery, device_lock=device_lock, clock=clock)
        self.fallback = None if fallback is None else CardFallback(
            DegradedMode(fallback, clock=clock.monotonic, wall=clock.wall), self.store, lambda: Engine(
                self.store, backend="onnx", keep_alive=keep_alive, max_queue=max_queue, request_timeout=request_timeout,
                stall_timeout=stall_timeout, snapshot_bytes=snapshot_bytes, auto_pull=auto_pull, device_lock=False,
                idle_prefill=False, fallback_model="", clock=clock),
            resolve=self.resolve, probe=lambda names: probe_card(self._supervisor, [self.resolve(n) for n in names]),
            max_models=max_loaded_models)
        if self.fallback is not None:
            self._supervisor.on_card_lost = self.fallback.card_lost

    def _load_model(self, path: Path, name: str) -> LoadedModel:
        return self._supervisor.load(path, name)  # lock, retries, progress, recovery hooks

    # ---- request plumbing ----------------------------------------------------------------------

    def resolve(self, model: str) -> str:
        """The stored name of `model` (a name or a model directory); pulls a registry model on first use.

        Blocking (a first pull downloads and converts): async callers run it in a thread.
        """
        return self._resolve(model)

    def _resolve(self, model: str) -> str:
        """The stored name of `model`; the embedded default is pulled on first use, as `ollama run` would."""
        model = derived_models.base_name(self.store, model)  # derived-model hook: its base's weights
        if is_path_like(model):
            return self.store.resolve(model).name
        name = normalize_name(model)
        try:
            return self.store.resolve(name).name
        except ModelNotFoundError:
            if not self.auto_pull or lookup(name) is None:
                raise
        with self._pull_lock:
            log.info("%s is not in the store yet: pulling it once", name)
            pull(name, self.store)
        return self.store.resolve(name).name

    def _submit(self, job: Job[ChunkT], asynchronous: bool) -> Any:
        if self._closed:
            raise EngineError("the engine is closed; create a new Engine")
        if self.idle is not None:
            self.idle.yield_to_real_work()  # a real request never waits behind idle-time work
        job, request_id = self._supervisor.wrap(job)  # fatal check, thermal gate, recovery, request log
        submit = self.worker.asubmit if asynchronous else self.worker.submit
        try:
            return submit(job, timeout=self.request_timeout, stall_timeout=self.stall_timeout, request_id=request_id)
        except SchedulerError as exc:  # a full queue, a stopped worker: mapped where every scheduler error is
            raise engine_error(exc) from exc

    def _stream(self, job: Job[ChunkT]) -> Generator[ChunkT, None, None]:
        """Run a job on the device worker; map scheduler errors to the engine's; close() cancels the request."""
        return mapped(self._submit(job, asynchronous=False))

    def _astream(self, job: Job[ChunkT]) -> AsyncGenerator[ChunkT, None]:
        return amapped(self._submit(job, asynchronous=True))

    def _options(self, raw: dict[str, Any] | None) -> tuple[Any, list[str]]:
        try:
            return parse_options(raw)
        except InvalidOptionError as exc:
            raise InvalidRequestError(str(exc)) from exc

    def _keep_alive(self, value: float | str | None) -> float:
        try:
            return parse_keep_alive(value, default=self.default_keep_alive)
        except ValueError as exc:
            raise InvalidRequestError(str(exc)) from exc

    # ---- /api/chat and /api/generate ----------------------------------------------------------

    def chat(self, request: ChatRequest | dict[str, Any]) -> Generator[ChatChunk, None, None]:
        """Ollama's /api/chat, streamed as response dicts (the last one has done=True)."""
        primary = lambda: self._stream(self._chat_job(request))  # noqa: E731
        return primary() if self.fallback is None else self.fallback.stream("chat", request, primary)

    def achat(self, request: ChatRequest | dict[str, Any]) -> AsyncIterator[ChatChunk]:
        primary = lambda: self._astream(self._chat_job(request))  # noqa: E731
        return primary() if self.fallback is None else self.fallback.astream("chat", request, primary)

    def generate(self, request: GenerateRequest | dict[str, Any]) -> Generator[GenerateChunk, None, None]:
        """Ollama's /api/generate, streamed as response dicts."""
        primary = lambda: self._stream(self._generate_job(request))  # noqa: E731
        return primary() if self.fallback is None else self.fallback.stream("generate", request, primary)

    def agenerate(self, request: GenerateRequest | dict[str, Any]) -> AsyncIterator[GenerateChunk]:
        primary = lambda: self._astream(self._generate_job(request))  # noqa: E731
        return primary() if self.fallback is None else self.fallback.astream("generate", request, primary)

    def _chat_job(self, request: ChatRequest | dict[str, Any]) -> Job[ChatChunk]:
        req = parse_request(ChatRequest, request)
        req, shown_as = derived_models.apply_derived(self.store, req)  # derived-model hook: base + defaults
        return derived_models.renamed(chat_job(req, self._edge(req), self.slots, self.idle), shown_as)

    def _generate_job(self, request: GenerateRequest | dict[str, Any]) -> Job[GenerateChunk]:
        req = parse_request(GenerateRequest, request)
        req, shown_as = derived_models.apply_derived(self.store, req)  # derived-model hook: base + defaults
        return derived_models.renamed(generate_job(req, self._edge(req), self.slots), shown_as)

    def _edge(self, req: ChatRequest | GenerateRequest) -> RequestEdge:
        """Everything checked before queueing: options, keep_alive, the format's grammar, the model's name."""
        opts, warnings = self._options(req.options)
        return RequestEdge(opts, warnings, self._keep_alive(req.keep_alive), format_grammar(req.format),
                           self._resolve(req.model))  # model not found is raised here, before queueing

    # ---- /api/embed -----------------------------------------------------------------------------

    def embed(self, request: EmbedRequest | dict[str, Any]) -> dict[str, Any]:
        """Ollama's /api/embed: L2-normalized vectors, one per input (see engine/embedder.py)."""
        work = self._embed_work(request)  # a first-use pull happens here, not while holding the device queue
        try:
            return self.worker.call(work, timeout=self.request_timeout)
        except SchedulerError as exc:
            raise engine_error(exc) from exc

    async def aembed(self, request: EmbedRequest | dict[str, Any]) -> dict[str, Any]:
        work = self._embed_work(request)
        try:
            return await self.worker.acall(work, timeout=self.request_timeout)
        except SchedulerError as exc:
            raise engine_error(exc) from exc

    def _embed_work(self, request: EmbedRequest | dict[str, Any]) -> Callable[[], dict[str, Any]]:
        from .embedder import run_embed

        req = parse_request(EmbedRequest, request)
        req, shown_as = derived_models.apply_derived(self.store, req)  # derived-model hook
        opts, warnings = self._options(req.options)
        keep_alive = self._keep_alive(req.keep_alive)
        name = self._resolve(req.model)  # pulls a known model (all-minilm) on first use
        def work() -> dict[str, Any]:
            result = run_embed(self.slots, req, name=name, opts=opts, warnings=warnings, keep_alive=keep_alive)
            return {**result, "model": shown_as} if shown_as else result

        return work

    # ---- models: list / show / ps / load / unload ----------------------------------------------

    def list(self) -> dict[str, Any]:
        bases = [ModelInfo.from_path(m.name, m.path).list_entry() for m in self.store.list()]
        return {"models": bases + derived_models.list_entries(self.store, bases)}  # derived-model hook

    def show(self, model: str) -> dict[str, Any]:
        derived = derived_models.find_derived(self.store, model)  # derived-model hook
        stored = self.store.resolve(derived.base if derived else model)
        entry = self.slots.get(stored.name)
        shown = ModelInfo.from_path(stored.name, stored.path, entry.runner if entry else None).show()
        return derived_models.show_fields(derived, shown) if derived else shown

    def ps(self) -> dict[str, Any]:
        entries = self.slots.entries()
        return {"models": [ModelInfo.from_path(name, e.path, e.runner).ps_entry(e.expires_at) for name, e in entries]}

    def load(self, model: str, keep_alive: float | str | None = None) -> None:
        """Preload a model (service start-up): load everything before the first request.

        An embedding model is loaded by an embed call without input (Ollama's load request for /api/embed)."""
        stored = self.store.resolve(self._resolve(model))
        if is_embedding_model_dir(stored.path):
            self.embed({"model": model, "input": [], "keep_alive": keep_alive})
            return
        list(self.chat({"model": model, "messages": [], "keep_alive": keep_alive}))

    def unload(self, model: str) -> bool:
        name = self.store.resolve(derived_models.base_name(self.store, model)).name  # derived-model hook
        return bool(self.worker.call(lambda: self.slots.unload(name)))

    def health(self) -> HealthSnapshot:
        """The card's and the engine's health now (engine/ops/health.py); `.to_dict()` for JSON."""
        return self._supervisor.health(closed=self._closed,
                                       degraded=self.fallback.mode.status() if self.fallback else None)

    def close(self, timeout: float | None = 30.0, *, cancel_running: bool = False) -> None:
        """Fail queued work, let the running request finish (cancel it with cancel_running; a model load
        always finishes), unload every model, finalize the device, release the card lock. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self.fallback is not None:
            self.fallback.close()
        self.slots.close()
        self._supervisor.close(timeout, cancel_running=cancel_running)

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
