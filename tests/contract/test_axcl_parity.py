"""The axcl backend over the simulated card computes what onnxruntime computes on the same CPU twin.

Twins come from the real converter (tiny random llama / qwen2 / qwen3 checkpoints). Two references:
  * CardReference: onnxruntime on the twin with the card's numerics (bf16 at every model boundary, the
    compiled group shapes): the axcl backend must match it bit for bit, logits included;
  * OnnxDecoderStack, the float32 `onnx` backend: equal up to bf16 rounding (same greedy tokens at first,
    near-identical logits when fed the same tokens).
Prompts span every prefill group (histories 0, 8, 16, 24 with 8-token chunks) and the decode-group fallback
past the largest prefill window; the cards fill fresh memory with NaN patterns and shuffle tensor order.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")

from ax_llm_provider.model.layout import ModelFiles, scan_model_dir  # noqa: E402
from ax_llm_provider.runtime.axcl_backend import AxclDecoderStack  # noqa: E402
from ax_llm_provider.runtime.bf16 import bf16_to_float32, float32_to_bf16  # noqa: E402
from ax_llm_provider.runtime.contract import ContextOverflowError, decode_mask  # noqa: E402
from ax_llm_provider.runtime.onnx_backend import OnnxDecoderStack  # noqa: E402
from ax_llm_provider.runtime.protocol import DecoderStack  # noqa: E402
from ax_llm_provider.runtime.simcard import SimCard  # noqa: E402
from ax_llm_provider.runtime.simcard.reference import CardReference  # noqa: E402

GEOMETRY = {"decode_capacity": 63, "prefill_chunk": 8, "prefill_histories": (0, 8, 16, 24)}
PROMPT = 37  # chunks at 0, 8, 16, 24 (one per prefill group), then 32..36 through the decode group
STEPS = 14


class Twin:
    def __init__(self, root: Path) -> None:
        self.files: ModelFiles = scan_model_dir(root)
        self.ref = CardReference(self.files.layers, self.files.post)
        bits = np.fromfile(self.files.embedding, dtype="<u2")
        self.table = bf16_to_float32(bits).reshape(-1, self.ref.spec.hidden)
        self.ids = np.random.default_rng(1).integers(0, len(self.table), PROMPT)

    def axcl(self, card: SimCard | None = None, **kwargs: object) -> AxclDecoderStack:
        card = card or SimCard(dirty_memory=True, shuffle_io_seed=7)
        return AxclDecoderStack(self.files.layers, self.files.post, card, **kwargs)  # type: ignore[arg-type]


@pytest.fixture(scope="module", params=["llama", "qwen2", "qwen3"])
def twin(request: pytest.FixtureRequest, tiny_twin: Callable[..., Path]) -> Twin:
    return Twin(tiny_twin(request.param, 0, **GEOMETRY))


def greedy(stack: DecoderStack, twin: Twin, steps: int = STEPS, start: int = 0,
           ids: np.ndarray | None = None) -> tuple[list[int], list[np.ndarray]]:
    ids = twin.ids if ids is None else ids
    logits = stack.prefill(twin.table[ids], start)
    assert logits is not None
    tokens, seen, pos = [], [logits], start + len(ids)
    for _ in range(steps):
        tokens.append(int(np.argmax(logits)))
        logits = stack.decode(twin.table[tokens[-1]], pos)
        seen.append(logits)
        pos += 1
    return tokens, seen


def continue_greedy(stack: DecoderStack, twin: Twin, first: int, pos: int, steps: int) -> list[np.ndarray]:
    out, token = [], first
    for i in range(steps):
        logits = stack.decode(twin.table[token], pos + i)
        out.append(logits)
        token = int(np.argmax(logits))
    return out


@pytest.mark.parametrize("kv_write", ["bind", "d2d"])
def test_bit_exact_with_card_reference(twin: Twin, kv_write: str) -> None:
    want_tokens, want = greedy(twin.ref, twin)
    with twin.axcl(kv_write=kv_write) as stack:
        assert stack.spec.groups == twin.ref.spec.groups
        tokens, got = greedy(stack, twin)
    assert tokens == want_tokens
    for step, (a, b) in enumerate(zip(got, want, strict=True)):
        assert a.dtype == np.float32 and a.shape == (twin.ref.spec.vocab,)
        assert np.array_equal(a, b), f"logits differ at step {step}"


def test_tracks_the_float32_onnx_backend(twin: Twin) -> None:
    onnx = OnnxDecoderStack(twin.files.layers, twin.files.post, threads=1)
    with twin.axcl() as stack:
        tokens, got = greedy(stack, twin)
    want_tokens, _ = greedy(onnx, twin, steps=8)
    assert tokens[:8] == want_tokens  # same greedy start; bf16 rounding may fork long runs
    # teacher-forced: feed the axcl tokens to the float32 backend and compare every distribution
    onnx_logits = [onnx.prefill(twin.table[twin.ids], 0)] + continue_forced(onnx, twin, tokens)
    agree = [int(np.argmax(a) == np.argmax(b)) for a, b in zip(got, onnx_logits, strict=True)]
    cosine = [float(a @ b / np.linalg.norm(a) / np.linalg.norm(b)) for a, b in zip(got, onnx_logits, strict=True)]
    assert sum(agree) >= len(agree) - 1 and min(cosine) > 0.999


def continue_forced(stack: DecoderStack, twin: Twin, tokens: list[int]) -> list[np.ndarray]:
    return [stack.decode(twin.table[t], PROMPT + i) for i, t in enumerate(tokens)]


def test_kv_save_restore_reuse_equals_fresh(twin: Twin) -> None:
    with twin.axcl() as stack:
        first = int(np.argmax(stack.prefill(twin.table[twin.ids], 0)))
        snapshot = stack.kv_save(PROMPT)
        assert snapshot.k[0].shape == (PROMPT, stack.spec.kv_dim) and snapshot.k[0].dtype == np.uint16
        fresh = continue_greedy(stack, twin, first, PROMPT, 8)
        stack.kv_restore(snapshot)  # rows past PROMPT now hold the continuation: they must not matter
        again = continue_greedy(stack, twin, first, PROMPT, 8)
    with twin.axcl(SimCard(dirty_memory=True)) as other:  # a fresh card, restored from the host copy
        other.kv_restore(snapshot)
        elsewhere = continue_greedy(other, twin, first, PROMPT, 8)
    twin.ref.prefill(twin.table[twin.ids], 0, want_logits=False)
    with twin.axcl() as cross:  # a snapshot from another backend (float32 rows)
        cross.kv_restore(twin.ref.kv_save(PROMPT))
        crossed = continue_greedy(cross, twin, first, PROMPT, 8)
    for a, b, c, d in zip(fresh, again, elsewhere, crossed, strict=True):
        assert np.array_equal(a, b) and np.array_equal(a, c) and np.array_equal(a, d)


def test_rewound_prefill_matches_reference(twin: Twin) -> None:
    """Prefix reuse: keep rows 0..19 of a longer sequence and prefill a different tail, as the prefix cache does.

    Bit-exact with the reference doing the same; equal to a fresh prefill of the whole sequence up to
    float rounding only, since the two chunk the sequence differently.
    """
    tail = np.random.default_rng(2).integers(0, len(twin.table), 21)
    runs = []
    for stack in (twin.axcl(), CardReference(twin.files.layers, twin.files.post)):
        greedy(stack, twin, steps=4)
        reused = stack.prefill(twin.table[tail], 20)
        assert reused is not None
        runs.append([reused, *continue_greedy(stack, twin, int(np.argmax(reused)), 41, 4)])
        stack.close()
    assert all(np.array_equal(a, b) for a, b in zip(*runs, strict=True))
    with twin.axcl() as fresh_stack:
        fresh = fresh_stack.prefill(twin.table[np.concatenate([twin.ids[:20], tail])], 0)
    assert fresh is not None and int(np.argmax(fresh)) == int(np.argmax(runs[0][0]))
    assert float(fresh @ runs[0][0] / np.linalg.norm(fresh) / np.linalg.norm(runs[0][0])) > 0.999


def test_device_mask_follows_the_contract(twin: Twin) -> None:
    card = SimCard()
    c = twin.ref.spec.decode_capacity
    with twin.axcl(card) as stack:
        def device_mask() -> np.ndarray:
            return card.memory.view(stack._masks[stack.spec.decode_group.index], 2 * (c + 1)).view(np.uint16)

        assert np.array_equal(device_mask(), float32_to_bf16(decode_mask(0, c)).ravel())
        stack.prefill(twin.table[twin.ids], 0, want_logits=False)
        assert np.array_equal(device_mask(), float32_to_bf16(decode_mask(PROMPT, c)).ravel())
        stack.decode(twin.table[3], PROMPT)
        stack.decode(twin.table[4], PROMPT + 1)
        stack.decode(twin.table[5], 10)  # a jump back closes the slots again
        assert np.array_equal(device_mask(), float32_to_bf16(decode_mask(10, c)).ravel())


def test_decode_from_another_thread(twin: Twin) -> None:
    _, want = greedy(twin.ref, twin, steps=3)
    with twin.axcl() as stack:
        stack.prefill(twin.table[twin.ids], 0)
        got: list[np.ndarray] = []
        worker = threading.Thread(target=lambda: got.extend(
            continue_greedy(stack, twin, int(np.argmax(want[0])), PROMPT, 3)))
        worker.start()
        worker.join(30)
    assert len(got) == 3 and all(np.array_equal(a, b) for a, b in zip(got, want[1:], strict=True))


def test_capacity_and_close(twin: Twin) -> None:
    card = SimCard()
    stack = twin.axcl(card)
    c = stack.spec.decode_capacity
    with pytest.raises(ContextOverflowError):
        stack.decode(twin.table[0], c)
    with pytest.raises(ContextOverflowError):
        stack.prefill(twin.table[np.arange(10)], c - 5)
    stack.close()
    stack.close()  # idempotent
    assert not card.models and not card.ios and card.memory.used == 0 and not card.inited
    with pytest.raises(RuntimeError, match="closed"):
        stack.decode(twin.table[0], 0)
