"""The fused CPU serving layout against the per-layer vendor-contract layout, on tiny random twins."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest

from ax_llm_provider.model.loader import load_model
from ax_llm_provider.runtime.backends import DEFAULT_ONNX_LAYOUT, ONNX_LAYOUT_ENV
from ax_llm_provider.runtime.onnx_backend import OnnxDecoderStack
from ax_llm_provider.runtime.onnx_fused import FusedOnnxDecoderStack, fuse_layer_models

FAMILIES = ["llama", "qwen2", "qwen3"]
HISTORIES = (0, 16, 32, 64)


def greedy(stack: OnnxDecoderStack, embed: Callable[[list[int]], np.ndarray], prompt: list[int],
           steps: int) -> tuple[list[int], np.ndarray]:
    logits = stack.prefill(embed(prompt), 0)
    first = logits.copy()
    out, pos = [], len(prompt)
    for _ in range(steps):
        out.append(int(np.argmax(logits)))
        logits = stack.decode(embed([out[-1]])[0], pos)
        pos += 1
    return out, first


def both_layouts(twin: Path) -> tuple[OnnxDecoderStack, FusedOnnxDecoderStack, Callable[[list[int]], np.ndarray]]:
    model = load_model(twin, backend="onnx", onnx_layout="per-layer")
    fused = FusedOnnxDecoderStack(model.files.layers, model.files.post, threads=1)
    return model.stack, fused, model.embeddings.lookup  # type: ignore[return-value]


@pytest.mark.parametrize("weights", [None, "q4"])
@pytest.mark.parametrize("family", FAMILIES)
def test_fused_layout_gives_the_per_layer_tokens(family: str, weights: str | None,
                                                 tiny_twin: Callable[..., Path]) -> None:
    options = {"weights": weights} if weights else {}
    twin = tiny_twin(family, decode_capacity=127, prefill_chunk=16, prefill_histories=HISTORIES, **options)
    per_layer, fused, embed = both_layouts(twin)
    prompt = [int(t) for t in np.random.default_rng(3).integers(3, 200, size=53)]  # 4 chunks, the last short
    tokens, first = greedy(per_layer, embed, prompt, 12)
    fused_tokens, fused_first = greedy(fused, embed, prompt, 12)
    assert fused_tokens == tokens
    np.testing.assert_allclose(fused_first, first, rtol=1e-4, atol=1e-4)
    fused.close()


@pytest.mark.parametrize("family", FAMILIES)
def test_fused_prefix_reuse_equals_fresh(family: str, tiny_twin: Callable[..., Path]) -> None:
    twin = tiny_twin(family, decode_capacity=127, prefill_chunk=16, prefill_histories=HISTORIES)
    with load_model(twin, backend="onnx", onnx_layout="fused") as model:
        stack, embed = model.stack, model.embeddings.lookup
        assert isinstance(stack, FusedOnnxDecoderStack)
        prompt = list(range(7, 47))
        fresh, _ = greedy(stack, embed, prompt, 8)
        stack.prefill(embed(prompt[:30]), 0, want_logits=False)
        snapshot = stack.kv_save(30)
        stack.prefill(embed(list(range(100, 140))), 0, want_logits=False)  # overwrite the live cache
        stack.kv_restore(snapshot)
        logits = stack.prefill(embed(prompt[30:]), 30)
        reused, pos = [], len(prompt)
        for _ in range(8):
            reused.append(int(np.argmax(logits)))
            logits = stack.decode(embed([reused[-1]])[0], pos)
            pos += 1
        assert reused == fresh


def test_layout_is_selectable_by_argument_and_environment(tiny_twin: Callable[..., Path],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    twin = tiny_twin("llama")
    monkeypatch.delenv(ONNX_LAYOUT_ENV, raising=False)
    with load_model(twin, backend="onnx") as model:
        assert type(model.stack).__name__ == {"fused": "FusedOnnxDecoderStack", "per-layer": "OnnxDecoderStack",
                                              "serving": "ServingOnnxDecoderStack"}[DEFAULT_ONNX_LAYOUT]
    with load_model(twin, backend="onnx", onnx_layout="fused") as model:
        assert isinstance(model.stack, FusedOnnxDecoderStack)
    monkeypatch.setenv(ONNX_LAYOUT_ENV, "fused")
    with load_model(twin, backend="onnx") as model:
        assert isinstance(model.stack, FusedOnnxDecoderStack)
    monkeypatch.setenv(ONNX_LAYOUT_ENV, "per-layer")
    with load_model(twin, backend="onnx") as model:
        assert type(model.stack) is OnnxDecoderStack
    monkeypatch.setenv(ONNX_LAYOUT_ENV, "sideways")
    with pytest.raises(ValueError, match="per-layer"):
        load_model(twin, backend="onnx")


def test_fused_graph_names_every_layer_cache(tiny_twin: Callable[..., Path]) -> None:
    twin = tiny_twin("qwen3")
    with load_model(twin, backend="onnx", onnx_layout="per-layer") as model:
        layers = [onnx.load(str(p)) for p in model.files.layers]
    fused = fuse_layer_models(layers)
    n = len(layers)
    assert [v.name for v in fused.graph.input] == ["input", "indices", "mask"] + [
        f"{kind}_{i}" for i in range(n) for kind in ("K_cache", "V_cache")]
    assert sorted(v.name for v in fused.graph.output) == sorted(
        ["output"] + [f"{kind}_out_{i}" for i in range(n) for kind in ("K_cache", "V_cache")])
    assert len(fused.graph.node) == sum(len(m.graph.node) for m in layers)
    with pytest.raises(ValueError, match="no layer graphs"):
        fuse_layer_models([])


def test_closed_fused_stack_refuses_work(tiny_twin: Callable[..., Path]) -> None:
    model = load_model(tiny_twin("llama"), backend="onnx", onnx_layout="fused")
    model.close()
    model.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        model.stack.decode(np.zeros(model.stack.spec.hidden, np.float32), 0)
