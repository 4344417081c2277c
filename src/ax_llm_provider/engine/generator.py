"""Token generator: prefill the prompt in chunks, then decode one token at a time. Knows no text.

The caller hands in the sampler (logits, history -> token) and the position from which the
stack's KV rows are not valid yet (`start`, > 0 when a cached prefix is reused).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from ..model.embeddings import EmbeddingTable
from ..runtime.protocol import DecoderStack

Sampler = Callable[[np.ndarray, Sequence[int]], int]


def greedy(logits: np.ndarray, history: Sequence[int]) -> int:
    return int(np.argmax(logits))


@dataclass
class GenerationStats:
    """Counts and nanosecond durations, as Ollama reports them."""

    prompt_tokens: int = 0
    reused_tokens: int = 0
    prompt_ns: int = 0
    generated_tokens: int = 0
    decode_ns: int = 0
    finish: str | None = None  # "stop" (end token) or "length"


def generate_tokens(
    stack: DecoderStack,
    embeddings: EmbeddingTable,
    prompt_ids: Sequence[int],
    *,
    sampler: Sampler = greedy,
    max_new_tokens: int | None = None,
    end_ids: frozenset[int] = frozenset(),
    start: int = 0,
    stats: GenerationStats | None = None,
) -> Iterator[int]:
    """Yield generated token ids; end tokens are yielded too (the text layer hides them)."""
    stats = stats if stats is not None else GenerationStats()
    capacity = stack.spec.decode_capacity
    if not 0 <= start < len(prompt_ids):
        raise ValueError(f"start={start} must leave at least one of the {len(prompt_ids)} prompt tokens to run")
    stats.prompt_tokens, stats.reused_tokens = len(prompt_ids), start
    began = time.perf_counter_ns()
    logits = stack.prefill(embeddings.lookup(prompt_ids[start:]), start)
    assert logits is not None
    stats.prompt_ns = time.perf_counter_ns() - began
    history = list(prompt_ids)
    pos = len(prompt_ids)
    while True:
        began = time.perf_counter_ns()
        token = sampler(logits, history)
        history.append(token)
        stats.generated_tokens += 1
        stats.decode_ns += time.perf_counter_ns() - began  # time spent by the consumer is not ours
        yield token
        if token in end_ids:
            stats.finish = "stop"
            return
        if (max_new_tokens is not None and stats.generated_tokens >= max_new_tokens) or pos >= capacity:
            stats.finish = "length"
            return
        began = time.perf_counter_ns()
        logits = stack.decode(embeddings.lookup([token])[0], pos)
        stats.decode_ns += time.perf_counter_ns() - began
        pos += 1
