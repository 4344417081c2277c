"""KV prefix reuse against a fake stack whose rows depend on the whole token prefix, like a real model's.

Row i of the fake KV encodes a rolling hash of tokens[0..i], and prefill at `start` continues the hash
from row start-1. A wrong restore, a stale row or a reuse count larger than what is valid therefore
changes every later row, and "KV after reuse + prefill of the rest" differs from a fresh prefill.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ax_llm_provider.engine.prefix_cache import PrefixCache, common_prefix
from ax_llm_provider.runtime.protocol import DecoderStack, KVSnapshot
from ax_llm_provider.runtime.spec import ShapeGroup, StackSpec

LAYERS, KV_DIM, CAPACITY, VOCAB = 2, 4, 1024, 50
BYTES_PER_TOKEN = 2 * LAYERS * KV_DIM * 4  # float32 K and V
MOD = (1 << 24) - 3  # the hash fits a float32 exactly


def _hash_step(h: int, token: int) -> int:
    return (h * 31 + token + 1) % MOD


def _rows(h: int, layer: int) -> tuple[np.ndarray, np.ndarray]:
    k = np.array([h, *np.sin(h * np.arange(1, KV_DIM) + layer)], dtype=np.float32)
    v = np.cos(h * np.arange(1, KV_DIM + 1) - layer).astype(np.float32)
    return k, v


def fresh_kv(tokens: Sequence[int]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The K/V a prefill from scratch would produce."""
    k = [np.zeros((len(tokens), KV_DIM), np.float32) for _ in range(LAYERS)]
    v = [np.zeros((len(tokens), KV_DIM), np.float32) for _ in range(LAYERS)]
    h = 0
    for i, t in enumerate(tokens):
        h = _hash_step(h, t)
        for layer in range(LAYERS):
            k[layer][i], v[layer][i] = _rows(h, layer)
    return k, v


class FakeStack:
    """A DecoderStack whose embeddings carry the token id in column 0."""

    def __init__(self) -> None:
        self.spec = StackSpec(layers=LAYERS, hidden=1, kv_dim=KV_DIM, vocab=VOCAB, io_dtype="float32",
                              groups=(ShapeGroup(0, 1, CAPACITY, CAPACITY), ShapeGroup(1, 128, 512, 512)))
        self.k = [np.full((CAPACITY, KV_DIM), np.nan, np.float32) for _ in range(LAYERS)]
        self.v = [np.full((CAPACITY, KV_DIM), np.nan, np.float32) for _ in range(LAYERS)]
        self.prefilled = 0
        self.saves: list[int] = []
        self.restores: list[int] = []

    def prefill(self, embeds: np.ndarray, start: int, want_logits: bool = True) -> np.ndarray | None:
        h = 0 if start == 0 else self.k[0][start - 1, 0]
        assert not np.isnan(h), f"prefill at {start} reads row {start - 1}, which was never written"
        h = int(h)
        for i, token in enumerate(embeds[:, 0].astype(int)):
            h = _hash_step(h, int(token))
            for layer in range(LAYERS):
                self.k[layer][start + i], self.v[layer][start + i] = _rows(h, layer)
        self.prefilled += len(embeds)
        logits = np.zeros(VOCAB, np.float32)
        logits[h % VOCAB] = 1.0
        return logits if want_logits else None

    def decode(self, embed: np.ndarray, pos: int) -> np.ndarray:
        logits = self.prefill(embed.reshape(1, -1), pos)
        assert logits is not None
        return logits

    def kv_save(self, length: int) -> KVSnapshot:
        self.saves.append(length)
        return KVSnapshot(length, tuple(a[:length].copy() for a in self.k), tuple(a[:length].copy() for a in self.v))

    def kv_restore(self, snapshot: KVSnapshot) -> None:
        self.restores.append(snapshot.length)
        for layer in range(LAYERS):
            self.k[layer][: snapshot.length] = snapshot.k[layer]
            self.v[layer][: snapshot.length] = snapshot.v[layer]

    def close(self) -> None:
        pass

    def wipe(self) -> None:
        for a in (*self.k, *self.v):
            a[:] = np.nan

    def assert_holds(self, tokens: Sequence[int]) -> None:
        k, v = fresh_kv(tokens)
        n = len(tokens)
        for layer in range(LAYERS):
            np.testing.assert_array_equal(self.k[layer][:n], k[layer])
            np.testing.assert_array_equal(self.v[layer][:n], v[layer])


def embeds(tokens: Sequence[int]) -> np.ndarray:
    return np.asarray(tokens, np.float32).reshape(-1, 1)


def run_request(stack: FakeStack, cache: PrefixCache, prompt: list[int], new_tokens: int) -> tuple[list[int], int]:
    """What the engine does: prepare, prefill the rest, decode, commit. Returns (conversation, reused)."""
    live_before = cache.live_tokens
    reused = cache.prepare(prompt)
    assert 0 <= reused <= max(len(prompt) - 1, 0)
    # Never worse than the live KV alone.
    assert reused >= min(common_prefix(np.array(live_before, np.int64), np.array(prompt, np.int64)),
                         max(len(prompt) - 1, 0))
    logits = stack.prefill(embeds(prompt[reused:]), reused)
    assert logits is not None
    stack.assert_holds(prompt)  # reuse equals fresh
    generated = []
    for _ in range(new_tokens):
        generated.append(int(np.argmax(logits)))
        if len(generated) < new_tokens:  # the last sampled token is never fed back
            logits = stack.decode(embeds(generated[-1:])[0], len(prompt) + len(generated) - 1)
    in_kv = prompt + generated[:-1]
    cache.commit(in_kv)
    stack.assert_holds(in_kv)
    return prompt + generated, reused


def make(max_bytes: int = 256 << 20, min_tokens: int = 8, max_snapshots: int = 8) -> tuple[FakeStack, PrefixCache]:
    stack = FakeStack()
    assert isinstance(stack, DecoderStack)
    return stack, PrefixCache(stack, max_snapshot_bytes=max_bytes, min_snapshot_tokens=min_tokens,
                              max_snapshots=max_snapshots)


def test_fake_stack_detects_a_wrong_restore() -> None:
    stack, _ = make()
    stack.prefill(embeds([1, 2, 3, 4]), 0)
    snapshot = stack.kv_save(2)
    stack.prefill(embeds([9, 9]), 0)
    stack.kv_restore(snapshot)
    stack.prefill(embeds([3, 5]), 2)
    stack.assert_holds([1, 2, 3, 5])
    stack.prefill(embeds([7]), 1)
    with pytest.raises(AssertionError):
        stack.assert_holds([1, 2, 3, 5])


def test_multi_turn_reuses_the_whole_history() -> None:
    stack, cache = make()
    conversation, reused = run_request(stack, cache, list(range(1, 41)), 10)
    assert reused == 0
    for turn in range(3):
        prompt = conversation + [turn + 1] * 12
        expected = len(conversation) - 1  # everything but the last sampled token is in the KV
        before = stack.prefilled
        conversation, reused = run_request(stack, cache, prompt, 10)
        assert reused == expected == cache.last_reused
        assert stack.prefilled - before == len(prompt) - expected + 9
    assert cache.hits == 3 and not stack.restores


@pytest.mark.parametrize("shared_system", [0, 30])
def test_alternating_conversations_both_stay_warm(shared_system: int) -> None:
    stack, cache = make(min_tokens=32)
    system = list(range(1, shared_system + 1))
    conversations = {"screen": system + [40] * 40, "visitor": system + [45] * 50}
    committed: dict[str, int] = {}
    rng = random.Random(3)
    for round_ in range(6):
        for name in ("screen", "visitor"):
            prompt = conversations[name] + [rng.randrange(1, VOCAB) for _ in range(rng.randrange(5, 20))]
            conversations[name], reused = run_request(stack, cache, prompt, rng.randrange(3, 12))
            if round_ == 0:
                assert reused == (shared_system if name == "visitor" else 0)
            else:
                assert reused == committed[name], f"{name} went cold in round {round_}"
            committed[name] = len(conversations[name]) - 1
    assert cache.snapshot_count <= 2  # one per conversation: newer snapshots replace the ones they cover
    assert len(stack.restores) == 10  # every request but the first two restores the other conversation


def test_reuse_is_at_most_len_minus_one() -> None:
    stack, cache = make()
    run_request(stack, cache, [5, 6, 7, 8], 1)
    assert cache.live_tokens == (5, 6, 7, 8)
    assert cache.prepare([5, 6, 7, 8]) == 3
    assert cache.prepare([5]) == 0
    assert cache.prepare([]) == 0


def test_a_failed_request_never_leaves_an_overclaim() -> None:
    stack, cache = make()
    history, _ = run_request(stack, cache, list(range(1, 30)), 5)
    prompt = history[:20] + [44] * 15
    reused = cache.prepare(prompt)
    assert reused == 20 and cache.live_tokens == tuple(prompt[:20])
    stack.prefill(embeds([9] * 5), reused)  # the request dies mid-prefill, with garbage rows, no commit
    run_request(stack, cache, prompt + [1, 2], 3)


def test_byte_bound_and_lru_order() -> None:
    stack, cache = make(max_bytes=100 * BYTES_PER_TOKEN, min_tokens=8)
    convs = {name: [first] * 40 for name, first in zip("ABCD", (1, 2, 3, 4), strict=True)}
    for name in "ABCD":
        run_request(stack, cache, convs[name], 1)  # each switch saves the previous conversation
    assert [k[0] for k in cache.snapshot_keys()] == [2, 3]  # A (least recently used) evicted
    assert cache.snapshot_bytes == 80 * BYTES_PER_TOKEN <= cache.max_snapshot_bytes
    assert cache.evictions == 1
    # Using B makes it the most recent, so saving D evicts C.
    assert run_request(stack, cache, convs["B"] + [7, 7], 1)[1] == 40
    assert [k[0] for k in cache.snapshot_keys()] == [2, 4]
    assert cache.snapshot_bytes <= cache.max_snapshot_bytes


def test_a_snapshot_larger_than_the_bound_is_not_kept() -> None:
    stack, cache = make(max_bytes=100 * BYTES_PER_TOKEN, min_tokens=8)
    run_request(stack, cache, [1] * 40, 1)
    run_request(stack, cache, [2] * 120, 1)  # saves A
    saves = len(stack.saves)
    run_request(stack, cache, [3] * 10, 1)  # 120 live tokens do not fit: not even copied off the device
    assert len(stack.saves) == saves
    assert [k[0] for k in cache.snapshot_keys()] == [1]
    big = KVSnapshot(101, tuple(np.zeros((101, KV_DIM), np.float32) for _ in range(LAYERS)),
                     tuple(np.zeros((101, KV_DIM), np.float32) for _ in range(LAYERS)))
    assert not cache.store([0] * 101, big)
    assert cache.snapshot_count == 1


def test_small_losses_are_not_snapshotted() -> None:
    stack, cache = make(min_tokens=32)
    history, _ = run_request(stack, cache, list(range(1, 60)), 5)
    run_request(stack, cache, history[:50] + [3], 4)  # loses 13 live tokens: not worth a copy
    assert not stack.saves and cache.snapshot_count == 0


def test_max_snapshots_bound() -> None:
    stack, cache = make(min_tokens=4, max_snapshots=2)
    for first in range(1, 6):
        run_request(stack, cache, [first] * 10, 1)
    assert [k[0] for k in cache.snapshot_keys()] == [3, 4]


def test_invalidate_forgets_everything() -> None:
    stack, cache = make(min_tokens=4)
    run_request(stack, cache, [1] * 10, 3)
    run_request(stack, cache, [2] * 10, 3)
    assert cache.snapshot_count == 1
    stack.wipe()  # a device reset loses the KV
    cache.invalidate()
    assert cache.live_tokens == () and cache.snapshot_count == 0 and cache.snapshot_bytes == 0
    assert run_request(stack, cache, [1] * 12, 2)[1] == 0


def test_store_rejects_a_mismatched_snapshot() -> None:
    stack, cache = make()
    stack.prefill(embeds([1, 2, 3]), 0)
    with pytest.raises(ValueError, match="3 rows but 2 tokens"):
        cache.store([1, 2], stack.kv_save(3))


# Conversations in a small alphabet, so prompts share and diverge often.
_op = st.tuples(st.integers(0, 2), st.sampled_from(["turn", "turn", "edit", "regenerate", "truncate"]),
                st.lists(st.integers(1, 4), min_size=1, max_size=12), st.integers(1, 6))


@settings(max_examples=60, deadline=None, derandomize=True)
@given(ops=st.lists(_op, min_size=1, max_size=14),
       bound=st.sampled_from([0, 30, 80, 1 << 20]), min_tokens=st.sampled_from([1, 4, 16]))
def test_reuse_equals_fresh_for_random_histories(ops: list, bound: int, min_tokens: int) -> None:
    stack, cache = make(max_bytes=bound * BYTES_PER_TOKEN, min_tokens=min_tokens, max_snapshots=3)
    histories: list[list[int]] = [[], [], []]
    for conv, action, tokens, new in ops:
        h = histories[conv]
        if action == "edit" and h:
            h = h.copy()
            h[len(h) // 2] = tokens[0]
        elif action == "truncate" and len(h) > 4:
            h = h[: len(h) // 3] + h[2 * len(h) // 3:]  # chat-level truncation drops middle messages
        prompt = h + tokens if action != "regenerate" or not h else h
        histories[conv], _ = run_request(stack, cache, prompt, new)
        assert cache.snapshot_bytes <= cache.max_snapshot_bytes
        assert cache.snapshot_count <= cache.max_snapshots


def test_reuse_equals_fresh_long_seeded_run() -> None:
    rng = random.Random(1234)
    stack, cache = make(max_bytes=400 * BYTES_PER_TOKEN, min_tokens=16, max_snapshots=4)
    histories: list[list[int]] = [[rng.randrange(1, 4)] * 20 for _ in range(4)]
    for _ in range(120):
        conv = rng.randrange(4)
        if len(histories[conv]) > 300:
            histories[conv] = histories[conv][:20]  # a new visitor: same system prompt, fresh history
        prompt = histories[conv] + [rng.randrange(1, VOCAB) for _ in range(rng.randrange(1, 25))]
        histories[conv], _ = run_request(stack, cache, prompt, rng.randrange(1, 15))
    assert cache.hits > 100 and cache.restores > 0 and cache.evictions > 0
