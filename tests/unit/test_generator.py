"""The token generator is the one place that decides "length": num_predict, the room in the window, the
compiled capacity. Each step is typed; the last one says why the generation ended."""

from __future__ import annotations

from collections.abc import Sequence
from types import SimpleNamespace

import numpy as np

from ax_llm_provider.engine.generator import TokenStep, generate_tokens

VOCAB, END = 8, 7


class CountingStack:
    """Logits that make token (pos % 7) the argmax; records the positions it decoded."""

    def __init__(self, capacity: int) -> None:
        self.spec = SimpleNamespace(decode_capacity=capacity)
        self.decoded: list[int] = []

    def _logits(self, pos: int) -> np.ndarray:
        logits = np.zeros(VOCAB, np.float32)
        logits[pos % 7] = 1.0
        return logits

    def prefill(self, embeds: np.ndarray, start: int) -> np.ndarray:
        return self._logits(start + len(embeds))

    def decode(self, embed: np.ndarray, pos: int) -> np.ndarray:
        self.decoded.append(pos)
        return self._logits(pos + 1)


class Embeddings:
    def lookup(self, ids: Sequence[int]) -> np.ndarray:
        return np.zeros((len(ids), 2), np.float32)


def argmax(logits: np.ndarray, history: Sequence[int]) -> int:
    return int(np.argmax(logits))


def test_max_new_tokens_ends_with_length_on_the_last_step() -> None:
    steps = list(generate_tokens(CountingStack(100), Embeddings(), [0, 1, 2], sampler=argmax, max_new_tokens=4))
    assert [s.token for s in steps] == [3, 4, 5, 6]
    assert [s.finish for s in steps] == [None, None, None, "length"]
    assert all(isinstance(s, TokenStep) and s.ns >= 0 for s in steps)
    assert steps[0].prefill_ns > 0 and all(s.prefill_ns == 0 for s in steps[1:])


def test_the_compiled_capacity_ends_with_length() -> None:
    stack = CountingStack(capacity=5)
    steps = list(generate_tokens(stack, Embeddings(), [0, 1, 2], sampler=argmax))
    assert [s.finish for s in steps][-1] == "length" and len(steps) == 3  # positions 3 and 4 are decoded
    assert stack.decoded == [3, 4]


def test_an_end_token_ends_with_stop_and_is_yielded() -> None:
    def end_at_third(logits: np.ndarray, history: Sequence[int]) -> int:
        return END if len(history) == 5 else argmax(logits, history)

    steps = list(generate_tokens(CountingStack(100), Embeddings(), [0, 1, 2], sampler=end_at_third,
                                 end_ids=frozenset({END}), max_new_tokens=10))
    assert [s.token for s in steps] == [3, 4, END] and steps[-1].finish == "stop"


def test_a_reused_prefix_prefills_only_the_rest() -> None:
    steps = list(generate_tokens(CountingStack(100), Embeddings(), [0, 1, 2, 3], sampler=argmax, start=3,
                                 max_new_tokens=1))
    assert [(s.token, s.finish) for s in steps] == [(4, "length")]
