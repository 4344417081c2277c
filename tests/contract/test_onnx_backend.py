"""The onnx backend on tiny random twins: chunked prefill, exact vendor shapes, KV save/restore."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from ax_llm_provider.model.loader import load_model
from ax_llm_provider.runtime.backends import BackendUnavailableError
from ax_llm_provider.runtime.onnx_backend import OnnxDecoderStack

FAMILIES = ["llama", "qwen2", "qwen3"]
HISTORIES = (0, 16, 32, 64)  # small windows so a short prompt spans several groups


def greedy(stack: OnnxDecoderStack, embed: Callable[[list[int]], np.ndarray], prompt: list[int], steps: int,
           *, one_by_one: bool = False) -> list[int]:
    if one_by_one:
        for pos, token in enumerate(prompt):
            logits = stack.decode(embed([token])[0], pos)
    else:
        logits = stack.prefill(embed(prompt), 0)
    out: list[int] = []
    pos = len(prompt)
    for _ in range(steps):
        token = int(np.argmax(logits))
        out.append(token)
        logits = stack.decode(embed([token])[0], pos)
        pos += 1
    return out


def open_stack(twin: Path, exact: bool) -> tuple[OnnxDecoderStack, Callable[[list[int]], np.ndarray]]:
    model = load_model(twin, backend="onnx")
    stack = OnnxDecoderStack(model.files.layers, model.files.post, threads=1, exact_shapes=exact)
    return stack, model.embeddings.lookup


@pytest.mark.parametrize("family", FAMILIES)
def test_chunked_prefill_equals_token_by_token(family: str, tiny_twin: Callable[..., Path]) -> None:
    twin = tiny_twin(family, decode_capacity=127, prefill_chunk=16, prefill_histories=HISTORIES)
    prompt = [int(t) for t in np.random.default_rng(1).integers(3, 200, size=70)]  # > 64: ends in the decode path
    results = []
    for exact in (True, False):
        stack, embed = open_stack(twin, exact)
        results.append(greedy(stack, embed, prompt, 8))
        results.append(greedy(stack, embed, prompt, 8, one_by_one=True))
    assert all(r == results[0] for r in results), results


@pytest.mark.parametrize("family", FAMILIES)
def test_exact_and_trimmed_shapes_give_the_same_logits(family: str, tiny_twin: Callable[..., Path]) -> None:
    twin = tiny_twin(family, decode_capacity=127, prefill_chunk=16, prefill_histories=HISTORIES)
    prompt = list(range(5, 45))
    logits = []
    for exact in (True, False):
        stack, embed = open_stack(twin, exact)
        logits.append(stack.prefill(embed(prompt), 0))
        logits.append(stack.decode(embed([7])[0], len(prompt)))
    np.testing.assert_allclose(logits[0], logits[2], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(logits[1], logits[3], rtol=1e-4, atol=1e-4)


def test_kv_snapshot_restore_reproduces_continuation(tiny_twin: Callable[..., Path]) -> None:
    twin = tiny_twin("llama", decode_capacity=127, prefill_chunk=16, prefill_histories=HISTORIES)
    stack, embed = open_stack(twin, exact=False)
    a, b = list(range(10, 40)), list(range(50, 90))
    stack.prefill(embed(a), 0)
    snap = stack.kv_save(len(a))
    expected = stack.decode(embed([3])[0], len(a))
    stack.prefill(embed(b), 0)  # another conversation overwrites the rows
    stack.kv_restore(snap)
    np.testing.assert_allclose(stack.decode(embed([3])[0], len(a)), expected, rtol=1e-5, atol=1e-5)
    assert snap.nbytes == 2 * stack.spec.layers * len(a) * stack.spec.kv_dim * 4


def test_spec_comes_from_graph_metadata(tiny_twin: Callable[..., Path]) -> None:
    twin = tiny_twin("qwen3", decode_capacity=127, prefill_chunk=16, prefill_histories=HISTORIES)
    with load_model(twin, backend="onnx") as model:
        spec = model.stack.spec
        assert spec.decode_capacity == 127 and spec.prefill_chunk == 16
        assert [g.history for g in spec.prefill_groups] == list(HISTORIES)
        assert spec.io_dtype == "float32" and model.embeddings.vocab == spec.vocab
        assert model.context_length == 127


def test_onnx_backend_refuses_vendor_bundle(tmp_path: Path) -> None:
    from tests.unit.test_model_layout import make_bundle

    root = make_bundle(tmp_path / "bundle")
    with pytest.raises(BackendUnavailableError, match="onnx backend runs CPU twins"):
        load_model(root, backend="onnx")
