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
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
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
from .context import fit_messages, truncate_tokens
from .decoding.constraints import GrammarSpec, format_grammar
from .decoding.response_parser import (
    Decoding,
    Part,
    chat_chunks,
    chat_decoding,
    generate_chunks,
    generate_decoding,
)
from .decoding.thinking import think_requested
from .decoding.toolcalls import request_key
from .errors import (
    EngineError,
    InvalidRequestError,
)
from .idle_prefill import IdlePrefill, idle_prefill_from_env
from .keepalive import parse_keep_alive
from .ops.guard import whole_reply
from .ops.health import HealthConfig, HealthSnapshot
from .ops.recovery import RecoveryPolicy
from .ops.supervisor import Supervisor
from .options import GenerationOptions, InvalidOptionError, parse_options
from .prompt_limit import check_prompt_size, prompt_byte_limit
from .requests import ChatRequest, EmbedRequest, GenerateRequest, parse_request
from .responses import (
    Chunk,
    ExtraMetadata,
    Timings,
    chat_chunk,
    final_fields,
    generate_chunk,
)
from .runner import ModelRunner, RunStats
from .slots import ModelSlots
from .state import ModelInfo
from .worker.scheduler import (
    CancelToken,
    DeviceWorker,
    SchedulerError,
)

log = logging.getLogger(__name__)
Job = Callable[[CancelToken], Iterator[Chunk]]


@dataclass(frozen=True)
class RequestEdge:
    """A chat or generate request's fields, validated once at the engine's edge (before queueing)."""

    opts: GenerationOptions
    warnings: list[str]
    keep_alive: float
    format_spec: GrammarSpec | None
    name: str  # the stored model name


@dataclass(frozen=True)
class Prepared:
    """What the device half of a job runs: the fitted prompt, its window, decoding, and any truncation."""

    tokens: list[int]
    window: int
    decoding: Decoding
    truncation: dict[str, Any] | None


@dataclass(frozen=True)
class Endpoint:
    """How chat and generate differ in the shared job: the empty chunk and the content chunks."""

    empty: Callable[[str], Chunk]
    chunks: Callable[[str, list[Part], list[dict[str, Any]] | None], Iterator[Chunk]]


ENDPOINTS = {"chat": Endpoint(chat_chunk, chat_chunks), "generate": Endpoint(generate_chunk, generate_chunks)}


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
                 idle_prefill: bool | None = None, clock: Clock | None = None) -> None:
        """card: the `axcl` module or SimCard to drive (default: `import axcl`, or a new SimCard for the
        simulated backend); health / recovery: monitor thresholds and the recovery ladder's bounds
        (engine/ops/health.py, engine/ops/recovery.py); device_lock: take the single-owner card lock (default: for
        the axcl and axengine backends); idle_prefill: after a chat reply, evaluate the next prompt's known
        start while the device is idle (engine/idle_prefill.py; default: on when AX_LLM_IDLE_PREFILL=1); clock: the
        time keep_alive, health and recovery read (engine/clock.py; tests run simulated hours with it)."""
        clock = clock or SYSTEM_CLOCK
        self.store = store if isinstance(store, ModelStore) else ModelStore(store)
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

    def _submit(self, job: Job, asynchronous: bool) -> Any:
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

    def _stream(self, job: Job) -> Iterator[Chunk]:
        """Run a job on the device worker; map scheduler errors to Ollama-like ones; close frees the device."""
        return mapped(self._submit(job, asynchronous=False))

    def _astream(self, job: Job) -> AsyncIterator[Chunk]:
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

    def chat(self, request: ChatRequest | dict[str, Any]) -> Iterator[Chunk]:
        """Ollama's /api/chat, streamed as response dicts (the last one has done=True)."""
        return self._stream(self._chat_job(request))

    def achat(self, request: ChatRequest | dict[str, Any]) -> AsyncIterator[Chunk]:
        return self._astream(self._chat_job(request))

    def generate(self, request: GenerateRequest | dict[str, Any]) -> Iterator[Chunk]:
        """Ollama's /api/generate, streamed as response dicts."""
        return self._stream(self._generate_job(request))

    def agenerate(self, request: GenerateRequest | dict[str, Any]) -> AsyncIterator[Chunk]:
        return self._astream(self._generate_job(request))

    def _chat_job(self, request: ChatRequest | dict[str, Any]) -> Job:
        req = parse_request(ChatRequest, request)
        req, shown_as = derived_models.apply_derived(self.store, req)  # derived-model hook: base + defaults
        edge = self._edge(req)

        def prepare(runner: ModelRunner) -> Prepared:
            check_prompt_size((t for m in req.messages for t in (m.content, m.thinking)),
                              prompt_byte_limit(runner.capacity), runner.capacity)
            plan = runner.prompts.chat_plan(req)
            window = edge.opts.context_size(runner.capacity)
            fit = fit_messages(plan.messages, plan.render, window, num_keep=edge.opts.num_keep,
                               truncate=req.truncate, cuts=runner.cuts)
            key = request_key(runner.model.name, [m.model_dump(exclude_none=True) for m in req.messages], plan.tools)
            decoding = chat_decoding(plan, fit.tokens, decode=runner.model.tokenizer.decode,
                                     grammars=runner.grammars if plan.forced else None, format_spec=edge.format_spec,
                                     call_key=key, builder_family=runner.prompts.family)
            planned.update(runner=runner, render=plan.render, messages=fit.messages, window=window)
            return Prepared(fit.tokens, window, decoding, fit.report.as_metadata() if fit.report.truncated else None)

        planned: dict[str, Any] = {}  # what prepare decided, for the idle prefill after the reply
        job = self._job(req, edge, ENDPOINTS["chat"], load_only=not req.messages, prepare=prepare)
        if self.idle is not None and edge.opts.num_predict != 0:
            job = self._then_idle_prefill(job, edge.name, planned)
        return derived_models.renamed(job, shown_as)

    def _then_idle_prefill(self, job: Job, name: str, planned: dict[str, Any]) -> Job:
        """Run a chat job; once its reply has ended (stop or length), queue the idle prefill of the next turn."""
        idle = self.idle
        assert idle is not None

        def then(cancel: CancelToken) -> Iterator[Chunk]:
            content: list[str] = []
            for chunk in job(cancel):
                message = chunk.get("message") or {}
                if message.get("tool_calls"):
                    planned.clear()  # a tool round: the next message is the tool's, not the visitor's
                content.append(message.get("content") or "")
                if chunk.get("done") and chunk.get("done_reason") in ("stop", "length") and planned:
                    reply = {"role": "assistant", "content": "".join(content)}  # as the client will resend it
                    # queued before the last chunk is delivered, so the client's next request supersedes it
                    idle.schedule(name, planned["runner"], planned["render"], planned["messages"], reply,
                                  planned["window"])
                yield chunk

        return then

    def _generate_job(self, request: GenerateRequest | dict[str, Any]) -> Job:
        req = parse_request(GenerateRequest, request)
        req, shown_as = derived_models.apply_derived(self.store, req)  # derived-model hook: base + defaults
        edge = self._edge(req)

        def prepare(runner: ModelRunner) -> Prepared:
            check_prompt_size((req.system, req.prompt, req.suffix), prompt_byte_limit(runner.capacity), runner.capacity)
            window = edge.opts.context_size(runner.capacity)
            tokens = runner.prompts.generate_tokens(req)
            truncation = None
            if len(tokens) > window:
                if not req.truncate:
                    raise InvalidRequestError(f"the prompt is {len(tokens)} tokens, "
                                              f"longer than the context length {window}")
                tokens, dropped = truncate_tokens(tokens, window, edge.opts.num_keep)
                truncation = {"window": window, "prompt_tokens": len(tokens), "dropped_messages": 0,
                              "truncated_tokens": dropped}
            prompts = runner.prompts
            decoding = generate_decoding(think=think_requested(req.think, prompts.thinking_model),
                                         thinking_model=prompts.thinking_model, raw=req.raw, prompt=tokens,
                                         decode=runner.model.tokenizer.decode, format_spec=edge.format_spec)
            return Prepared(tokens, window, decoding, truncation)

        load_only = not (req.prompt or req.suffix or req.context)
        job = self._job(req, edge, ENDPOINTS["generate"], load_only=load_only, prepare=prepare,
                        with_context=not req.raw)
        return derived_models.renamed(job, shown_as)

    def _edge(self, req: ChatRequest | GenerateRequest) -> RequestEdge:
        """Everything checked before queueing: options, keep_alive, the format's grammar, the model's name."""
        opts, warnings = self._options(req.options)
        return RequestEdge(opts, warnings, self._keep_alive(req.keep_alive), format_grammar(req.format),
                           self._resolve(req.model))  # model not found is raised here, before queueing

    def _job(self, req: ChatRequest | GenerateRequest, edge: RequestEdge, endpoint: Endpoint, *, load_only: bool,
             prepare: Callable[[ModelRunner], Prepared], with_context: bool = False) -> Job:
        """The device half shared by chat and generate: load (or only load / unload), run, stream, finish."""
        name, keep_alive = edge.name, edge.keep_alive

        def job(cancel: CancelToken) -> Iterator[Chunk]:
            started = time.perf_counter_ns()
            if load_only and keep_alive <= 0 and name not in self.slots:  # unload: nothing to load
                yield {**endpoint.empty(name), **final_fields(Timings(started), "unload", time.perf_counter_ns())}
                return
            entry, load_ns = self.slots.ensure_loaded(name)
            timings = Timings(started_ns=started, load_ns=load_ns)
            runner = entry.runner
            model_name = runner.model.name
            if load_only:  # Ollama: an empty request loads (or unloads with keep_alive 0)
                self.slots.after_request(entry, keep_alive)
                reason = "unload" if keep_alive <= 0 else "load"
                yield {**endpoint.empty(model_name), **final_fields(timings, reason, time.perf_counter_ns())}
                return
            run = prepare(runner)
            meta = ExtraMetadata(warnings=edge.warnings + run.decoding.warnings, backend=runner.model.backend,
                                 truncation=run.truncation)
            parser = run.decoding.parser
            stats: RunStats | None = None
            try:
                for step in runner.run(run.tokens, edge.opts, cancel, window=run.window, logprobs=req.logprobs,
                                       top_logprobs=req.top_logprobs, constraint=run.decoding.constraint):
                    if step.text or step.logprobs:
                        yield from endpoint.chunks(model_name, parser.feed(step.text), step.logprobs)
                    stats = step.final or stats
                yield from endpoint.chunks(model_name, parser.finish(), None)
            finally:
                self.slots.after_request(entry, keep_alive)
            assert stats is not None  # a run that ends without raising ends with its stats
            final = self._final(endpoint.empty(model_name), timings, stats, meta)
            if with_context:
                final["context"] = stats.tokens
            yield final

        return job if req.stream else whole_reply(job)  # nothing reaches the caller before done: re-runnable

    @staticmethod
    def _final(chunk: Chunk, timings: Timings, stats: RunStats, meta: ExtraMetadata) -> Chunk:
        if stats.closing_tokens:
            meta.warnings.append(f"the JSON was closed early to fit the token budget ({stats.closing_tokens} "
                                 "tokens chosen by the closing policy); raise num_predict for a full answer")
        timings.prompt_eval_count, timings.prompt_eval_ns = stats.prompt_tokens, stats.prompt_ns
        timings.eval_count, timings.eval_ns = stats.eval_count, stats.eval_ns
        meta.reused_tokens = stats.reused_tokens
        return {**chunk, **final_fields(timings, stats.done_reason, time.perf_counter_ns()), "ax": meta.as_dict()}

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
        return self._supervisor.health(closed=self._closed)

    def close(self, timeout: float | None = 30.0, *, cancel_running: bool = False) -> None:
        """Fail queued work, let the running request finish (cancel it with cancel_running; a model load
        always finishes), unload every model, finalize the device, release the card lock. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self.slots.close()
        self._supervisor.close(timeout, cancel_running=cancel_running)

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
