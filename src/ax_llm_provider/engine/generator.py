"""Token generator: prefill the prompt in chunks, then decode one token at a time. Knows no text.

The caller hands in the sampler (logits, history -> token) and the position from which the
stack's KV rows are not valid yet (`start`, > 0 when a cached prefix is reused).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from ..model.embeddings import EmbeddingTable
from ..runtime.protocol import DecoderStack

Sampler = Callable[[np.ndarray, Sequence[int]], int]


def greedy(logits: np.ndarray, history: Sequence[int]) -> int:
    return int(np.argmax(logits))


@dataclass(frozen=True, slots=True)
class TokenStep:
    """One generated token; the last step of a generation says why it ended."""

    token: int
    ns: int  # this step's time: decoding the previous token (not on the first step), then sampling this one
    prefill_ns: int = 0  # the prompt's prefill, on the first step only
    finish: Literal["stop", "length"] | None = None  # last step only: an end token, or max_new_tokens / capacity


def generate_tokens(
    stack: DecoderStack,
    embeddings: EmbeddingTable,
    prompt_ids: Sequence[int],
    *,
    sampler: Sampler = greedy,
    max_new_tokens: int | None = None,
    end_ids: frozenset[int] = frozenset(),
    start: int = 0,
) -> Iterator[TokenStep]:
    """Yield one step per generated token; end tokens are yielded too (the text layer hides them).

    The one place that decides "length": `max_new_tokens` (num_predict, and the room left in the context
    window) or the compiled decode capacity.
    """
    capacity = stack.spec.decode_capacity
    if not 0 <= start < len(prompt_ids):
        raise ValueError(f"start={start} must leave at least one of the {len(prompt_ids)} prompt tokens to run")
    began = time.perf_counter_ns()
    logits = stack.prefill(embeddings.lookup(prompt_ids[start:]), start)
    assert logits is not None
    prefill_ns = time.perf_counter_ns() - began
    history = list(prompt_ids)
    pos = len(prompt_ids)
    generated = 0
    decode_ns = 0  # the decode of the previous token, counted in the next step
    while True:
        began = time.perf_counter_ns()
        token = sampler(logits, history)
        history.append(token)
        generated += 1
        ns = decode_ns + time.perf_counter_ns() - began  # time spent by the consumer is not ours
        if token in end_ids:
            yield TokenStep(token, ns, prefill_ns, "stop")
            return
        if (max_new_tokens is not None and generated >= max_new_tokens) or pos >= capacity:
            yield TokenStep(token, ns, prefill_ns, "length")
            return
        yield TokenStep(token, ns, prefill_ns)
        prefill_ns = 0
        began = time.perf_counter_ns()
        logits = stack.decode(embeddings.lookup([token])[0], pos)
        decode_ns = time.perf_counter_ns() - began
        pos += 1
