"""Ollama's /api/embed (and the legacy /api/embeddings) on the device worker thread.

Note for the card: no AXERA embedding bundle is in scope. Embedding models run on the host CPU (the
Pi's, on the card setup) through onnxruntime (model/embedding_model.py), whatever the engine's LLM
backend; all-MiniLM-L6-v2 is ~22.7M parameters. They still run on the device worker thread, one request
at a time with the LLM's, so the two never compete for the Pi's cores and the FIFO order holds.

Semantics follow Ollama's EmbedHandler:
- `input` is a string or a list of strings; "" or [] embeds nothing and returns `embeddings: []`
  (the model is still loaded, as a preload);
- each input is cut at the model's max_seq_length (or `options.num_ctx` when smaller) when `truncate`
  (the default); with `truncate: false` a longer input is a 400 "the input length exceeds the context
  length"; `prompt_eval_count` counts the tokens the model saw, special tokens included, and the `ax`
  key says which inputs were cut;
- vectors are L2-normalized; `dimensions` keeps the first d components and re-normalizes;
- the legacy /api/embeddings (`LegacyEmbeddingsRequest`, normalize=False) returns the pooled vector
  without normalization, as Ollama's EmbeddingsHandler does;
- `keep_alive` 0 unloads the model after the call; a finite value expires it at the next embed call after
  the deadline (no timer: the models are small); forever (the engine default) keeps it.
An LLM asked to embed is a 400 capability error: Ollama can embed with an LLM, but the compiled LLM
bundles here return logits only, not the hidden states an embedding needs.
"""

from __future__ import annotations

import logging
import math
import time
from typing import TYPE_CHECKING, Any

import numpy as np

from ..model.embedding_model import (
    EmbeddingModel,
    Tokenized,
    is_embedding_model_dir,
    l2_normalize,
    truncate_dimensions,
)
from .errors import CapabilityError, EngineError, InvalidRequestError
from .requests import EmbedRequest
from .slots import CachedEmbedder

if TYPE_CHECKING:
    from .options import GenerationOptions
    from .slots import ModelSlots

log = logging.getLogger(__name__)
MAX_CACHED = 2  # embedding models kept loaded at once (LRU); each is tens of MB of host memory
BACKEND = "onnx-cpu"


class LegacyEmbeddingsRequest(EmbedRequest):
    """/api/embeddings mapped onto run_embed: one prompt, and the vector is returned without L2 norm."""

    normalize: bool = False


def _expire(cache: dict[str, CachedEmbedder], now: float) -> None:
    for name, entry in list(cache.items()):
        if entry.expires_at is not None and entry.expires_at <= now:
            cache.pop(name).model.close()
            log.info("embedding model %s expired (keep_alive)", name)


def _load(slots: ModelSlots, name: str) -> tuple[CachedEmbedder, int]:
    """The cached model for a stored name, loading it now if needed; (entry, nanoseconds spent loading)."""
    cache = slots.embedders
    _expire(cache, time.time())
    entry = cache.pop(name, None)
    if entry is not None:
        cache[name] = entry  # most recently used last
        return entry, 0
    stored = slots.store.resolve(name)
    if not is_embedding_model_dir(stored.path):
        raise CapabilityError(
            f"{name} does not support embedding: it is an LLM, and the compiled LLM bundles (and their CPU "
            "twins) return logits only, not the hidden states an embedding needs (Ollama can embed with LLMs, "
            "this engine cannot); use an embedding model such as all-minilm"
        )
    while len(cache) >= MAX_CACHED:
        slots.unload_embedders(next(iter(cache)))
    started = time.perf_counter_ns()
    entry = CachedEmbedder(EmbeddingModel(stored.path, name=name))
    cache[name] = entry
    return entry, time.perf_counter_ns() - started


def _texts(value: str | list[str]) -> list[str]:
    if isinstance(value, str):
        return [value] if value else []
    return list(value)


def _truncation_report(tokens: list[Tokenized], limit: int) -> dict[str, Any] | None:
    cut = [{"index": i, "tokens": t.length, "kept": len(t.ids)} for i, t in enumerate(tokens) if t.truncated]
    if not cut:
        return None
    return {"limit": limit, "inputs": cut, "truncated_tokens": sum(c["tokens"] - c["kept"] for c in cut)}


def run_embed(slots: ModelSlots, req: EmbedRequest, *, name: str, opts: GenerationOptions, warnings: list[str],
              keep_alive: float) -> dict[str, Any]:
    """One /api/embed request, on the device worker thread; returns Ollama's response body as a dict.

    name: the stored name (Engine.resolve); opts, warnings, keep_alive: the request's, validated by the Engine.
    """
    started = time.perf_counter_ns()
    entry, load_ns = _load(slots, name)
    model = entry.model
    try:
        tokens, vectors, limit = _embed(model, req, opts.context_size(model.max_length))
    finally:
        _after_request(slots, name, entry, keep_alive)
    ax: dict[str, Any] = {"backend": BACKEND}
    report = _truncation_report(tokens, limit)
    if report:
        ax["truncation"] = report
    if warnings:
        ax["warnings"] = list(warnings)
    body: dict[str, Any] = {"model": req.model, "embeddings": vectors.tolist(),
                            "total_duration": max(time.perf_counter_ns() - started, 1)}
    if load_ns:
        body["load_duration"] = load_ns  # Ollama omits zero counters
    prompt_tokens = sum(len(t.ids) for t in tokens)
    if prompt_tokens:
        body["prompt_eval_count"] = prompt_tokens
    body["ax"] = ax
    return body


def _embed(model: EmbeddingModel, req: EmbedRequest, window: int) -> tuple[list[Tokenized], np.ndarray, int]:
    """Tokens, vectors and the per-input token limit of one request (its keep_alive is applied by the caller)."""
    limit = model.clamp_limit(window)  # num_ctx may lower max_seq_length, never raise it
    tokens = model.tokenize(_texts(req.input), limit)
    if not req.truncate:
        too_long = [(i, t.length) for i, t in enumerate(tokens) if t.truncated]
        if too_long:
            i, n = too_long[0]
            raise InvalidRequestError(
                f"the input length exceeds the context length: input {i} is {n} tokens, {model.name} takes "
                f"{limit} (pass truncate=true to cut it)"
            )
    try:
        vectors = model.encode(tokens) if tokens else np.zeros((0, model.dimension), np.float32)
    except RuntimeError as exc:  # onnxruntime's failures are RuntimeErrors
        raise EngineError(f"embedding with {model.name} failed: {exc}") from exc
    if getattr(req, "normalize", True):  # False only for the legacy /api/embeddings
        vectors = truncate_dimensions(l2_normalize(vectors), req.dimensions)
    return tokens, vectors, limit


def _after_request(slots: ModelSlots, name: str, entry: CachedEmbedder, keep_alive: float) -> None:
    if keep_alive <= 0:
        slots.unload_embedders(name)
    else:
        entry.expires_at = time.time() + keep_alive if math.isfinite(keep_alive) else None
