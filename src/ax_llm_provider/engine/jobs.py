"""The device half of /api/chat and /api/generate: what runs on the device thread once a request is queued.

The Engine (engine.py) validates a request at its edge (RequestEdge) and queues the job built here. One job
skeleton serves both endpoints: load (or only load / unload), fit the prompt (the endpoint's `prepare`), run
the model, turn parsed text into the endpoint's chunks, finish with the counters. The jobs touch the loaded
models only through ModelSlots and the idle prefill only through IdlePrefill.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Generic

from .context import fit_messages, truncate_tokens
from .decoding.constraints import GrammarSpec
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
from .errors import InvalidRequestError
from .idle_prefill import IdlePrefill
from .ops.guard import whole_reply
from .options import GenerationOptions
from .prompt_limit import check_prompt_size, prompt_byte_limit
from .requests import ChatRequest, GenerateRequest
from .responses import (
    ChatChunk,
    ChunkT,
    ExtraMetadata,
    FinalFields,
    GenerateChunk,
    Timings,
    chat_chunk,
    final_fields,
    generate_chunk,
)
from .runner import ModelRunner, RunStats
from .slots import ModelSlots
from .worker.scheduler import CancelToken

Job = Callable[[CancelToken], Iterator[ChunkT]]  # Job[ChatChunk] or Job[GenerateChunk]


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
class Endpoint(Generic[ChunkT]):
    """How chat and generate differ in the shared job: the empty chunk, the content chunks, and what the
    final chunk carries of the run's tokens (generate's `context`)."""

    empty: Callable[[str], ChunkT]
    chunks: Callable[[str, list[Part], list[dict[str, Any]] | None], Iterator[ChunkT]]
    with_tokens: Callable[[ChunkT, list[int]], None]


def _no_tokens(chunk: ChunkT, tokens: list[int]) -> None:
    """Chat's final chunk and a raw generate's carry no context."""


def _context(chunk: GenerateChunk, tokens: list[int]) -> None:
    chunk["context"] = tokens  # Ollama's /api/generate: the conversation so far, to send back as `context`


CHAT: Endpoint[ChatChunk] = Endpoint(chat_chunk, chat_chunks, _no_tokens)
GENERATE: Endpoint[GenerateChunk] = Endpoint(generate_chunk, generate_chunks, _context)
GENERATE_RAW: Endpoint[GenerateChunk] = Endpoint(generate_chunk, generate_chunks, _no_tokens)


def chat_job(req: ChatRequest, edge: RequestEdge, slots: ModelSlots,
             idle: IdlePrefill | None) -> Job[ChatChunk]:
    """/api/chat's device half; with `idle`, the next turn's known start is prefilled after the reply."""

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
    job = device_job(req, edge, slots, CHAT, load_only=not req.messages, prepare=prepare)
    if idle is not None and edge.opts.num_predict != 0:
        job = _then_idle_prefill(job, idle, edge.name, planned)
    return job


def _then_idle_prefill(job: Job[ChatChunk], idle: IdlePrefill, name: str,
                       planned: dict[str, Any]) -> Job[ChatChunk]:
    """Run a chat job; once its reply has ended (stop or length), queue the idle prefill of the next turn."""

    def then(cancel: CancelToken) -> Iterator[ChatChunk]:
        content: list[str] = []
        for chunk in job(cancel):
            message = chunk.get("message", {})
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


def generate_job(req: GenerateRequest, edge: RequestEdge, slots: ModelSlots) -> Job[GenerateChunk]:
    """/api/generate's device half; the final chunk carries `context` unless the prompt is raw."""

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
    return device_job(req, edge, slots, GENERATE_RAW if req.raw else GENERATE, load_only=load_only, prepare=prepare)


def device_job(req: ChatRequest | GenerateRequest, edge: RequestEdge, slots: ModelSlots, endpoint: Endpoint[ChunkT],
               *, load_only: bool, prepare: Callable[[ModelRunner], Prepared]) -> Job[ChunkT]:
    """The device half shared by chat and generate: load (or only load / unload), run, stream, finish."""
    name, keep_alive = edge.name, edge.keep_alive

    def job(cancel: CancelToken) -> Iterator[ChunkT]:
        started = time.perf_counter_ns()
        if load_only and keep_alive <= 0 and name not in slots:  # unload: nothing to load
            chunk = endpoint.empty(name)
            chunk.update(final_fields(Timings(started), "unload", time.perf_counter_ns()))
            yield chunk
            return
        entry, load_ns = slots.ensure_loaded(name)
        timings = Timings(started_ns=started, load_ns=load_ns)
        runner = entry.runner
        model_name = runner.model.name
        if load_only:  # Ollama: an empty request loads (or unloads with keep_alive 0)
            slots.after_request(entry, keep_alive)
            reason = "unload" if keep_alive <= 0 else "load"
            chunk = endpoint.empty(model_name)
            chunk.update(final_fields(timings, reason, time.perf_counter_ns()))
            yield chunk
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
            slots.after_request(entry, keep_alive)
        assert stats is not None  # a run that ends without raising ends with its stats
        final = endpoint.empty(model_name)
        final.update(_final_fields(timings, stats, meta))
        endpoint.with_tokens(final, stats.tokens)
        yield final

    return job if req.stream else whole_reply(job)  # nothing reaches the caller before done: re-runnable


def _final_fields(timings: Timings, stats: RunStats, meta: ExtraMetadata) -> FinalFields:
    if stats.closing_tokens:
        meta.warnings.append(f"the JSON was closed early to fit the token budget ({stats.closing_tokens} "
                             "tokens chosen by the closing policy); raise num_predict for a full answer")
    timings.prompt_eval_count, timings.prompt_eval_ns = stats.prompt_tokens, stats.prompt_ns
    timings.eval_count, timings.eval_ns = stats.eval_count, stats.eval_ns
    meta.reused_tokens = stats.reused_tokens
    fields = final_fields(timings, stats.done_reason, time.perf_counter_ns())
    fields["ax"] = meta.as_dict()
    return fields
