"""The CPU serving layout (the onnx default) against the per-layer vendor-contract layout, on tiny random twins."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest

from ax_llm_provider.model.loader import load_model
from ax_llm_provider.runtime.backends import DEFAULT_ONNX_LAYOUT, ONNX_LAYOUT_ENV
from ax_llm_provider.runtime.contract import ContextOverflowError
from ax_llm_provider.runtime.onnx_backend import OnnxDecoderStack
from ax_llm_provider.runtime.onnx_serving import ServingOnnxDecoderStack
from ax_llm_provider.runtime.onnx_serving_graph import ServingGraphError, build_serving_graph
from tests.contract.test_onnx_fused import greedy  # one greedy loop for every layout test

FAMILIES = ["llama", "qwen2", "qwen3"]  # plain, q/k/v biases, per-head q/k norms
HISTORIES = (0, 16, 32, 64)
GEOMETRY = {"decode_capacity": 127, "prefill_chunk": 16, "prefill_histories": HISTORIES}


@pytest.mark.parametrize("weights", [None, "q4"])
@pytest.mark.parametrize("family", FAMILIES)
def test_serving_layout_gives_the_per_layer_tokens(family: str, weights: str | None,
                                                   tiny_twin: Callable[..., Path]) -> None:
    options = {"weights": weights} if weights else {}
    twin = tiny_twin(family, **GEOMETRY, **options)
    prompt = [int(t) for t in np.random.default_rng(3).integers(3, 200, size=53)]  # 4 chunks, the last short
    with load_model(twin, backend="onnx", onnx_layout="per-layer") as model:
        tokens, first = greedy(model.stack, model.embeddings.lookup, prompt, 12)
    with load_model(twin, backend="onnx", onnx_layout="serving") as model:
        assert isinstance(model.stack, ServingOnnxDecoderStack)
        serving_tokens, serving_first = greedy(model.stack, model.embeddings.lookup, prompt, 12)
    assert serving_tokens == tokens
    np.testing.assert_allclose(serving_first, first, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("family", FAMILIES)
def test_serving_prefix_reuse_equals_fresh(family: str, tiny_twin: Callable[..., Path]) -> None:
    with load_model(tiny_twin(family, **GEOMETRY, weights="q4"), backend="onnx", onnx_layout="serving") as model:
        stack, embed = model.stack, model.embeddings.lookup
        prompt = list(range(7, 47))
        fresh, fresh_first = greedy(stack, embed, prompt, 8)
        stack.prefill(embed(prompt[:30]), 0, want_logits=False)
        snapshot = stack.kv_save(30)
        stack.prefill(embed(list(range(100, 140))), 0, want_logits=False)  # overwrite the live cache
        stack.kv_restore(snapshot)
        logits = stack.prefill(embed(prompt[30:]), 30)
        # a 10-row chunk against a 40-row one: on aarch64 onnxruntime's fp32 kernels sum in another order (3e-5)
        np.testing.assert_allclose(logits, fresh_first, rtol=1e-4, atol=1e-4)
        reused, pos = [], len(prompt)
        for _ in range(8):
            reused.append(int(np.argmax(logits)))
            logits = stack.decode(embed([reused[-1]])[0], pos)
            pos += 1
        assert reused == fresh


def test_snapshots_are_rows_by_position_as_on_the_per_layer_layout(tiny_twin: Callable[..., Path]) -> None:
    """kv_save converts the head-major cache to [length, kv_dim]: a snapshot moves between layouts."""
    twin = tiny_twin("qwen2", **GEOMETRY)
    prompt, rest = list(range(5, 35)), list(range(60, 70))
    with load_model(twin, backend="onnx", onnx_layout="per-layer") as per_layer, \
            load_model(twin, backend="onnx", onnx_layout="serving") as serving:
        embed = per_layer.embeddings.lookup
        per_layer.stack.prefill(embed(prompt), 0, want_logits=False)
        serving.stack.prefill(embed(prompt), 0, want_logits=False)
        expected, got = per_layer.stack.kv_save(len(prompt)), serving.stack.kv_save(len(prompt))
        for want, have in zip(expected.k + expected.v, got.k + got.v, strict=True):
            assert have.shape == want.shape == (len(prompt), serving.stack.spec.kv_dim)
            np.testing.assert_allclose(have, want, rtol=1e-4, atol=1e-5)
        serving.stack.prefill(embed(list(range(100, 140))), 0, want_logits=False)
        serving.stack.kv_restore(expected)  # the per-layer layout's snapshot
        np.testing.assert_allclose(serving.stack.prefill(embed(rest), len(prompt)),
                                   per_layer.stack.prefill(embed(rest), len(prompt)), rtol=1e-4, atol=1e-4)


def test_serving_graph_is_few_fused_nodes(tiny_twin: Callable[..., Path]) -> None:
    twin = tiny_twin("llama", **GEOMETRY, weights="q4")
    with load_model(twin, backend="onnx", onnx_layout="per-layer") as model:
        layers = [onnx.load(str(p)) for p in model.files.layers]
        post = onnx.load(str(model.files.post))
    head_bits = {a.i for n in post.graph.node if n.op_type == "MatMulNBits" for a in n.attribute if a.name == "bits"}
    assert head_bits == {8} and "Round" in [n.op_type for n in post.graph.node]  # the converter's split, rewritten
    for int8_rows in (False, True):
        graph, geo, _ = build_serving_graph(layers, post, 127, int8_rows, {})
        ops = [n.op_type for n in graph.graph.node]
        assert ops.count("GroupQueryAttention") == len(layers)
        assert (geo.heads, geo.kv_heads, geo.head_dim) == (4, 2, 16)
        assert not {"Softmax", "Transpose", "Sqrt", "Cos"} & set(ops)  # attention, norms and rotary are fused
        projections = [n for n in graph.graph.node if n.op_type == "MatMulNBits" and not n.name.endswith(".grid_node")]
        levels = {a.i for n in projections for a in n.attribute
                  if a.name == "accuracy_level" and any(b.name == "bits" and b.i == 4 for b in n.attribute)}
        assert levels == ({4} if int8_rows else {0})
        # the 8-bit lm head takes the kernel's grid and sums its two rows without the strided ReduceSum
        assert "ReduceSum" not in [n.op_type for n in graph.graph.node if n.name.startswith("post.")]
        assert {"Round", "Abs"}.isdisjoint(ops)
    assert len(ops) < sum(len(m.graph.node) for m in layers) + len(post.graph.node)
    assert [v.name for v in graph.graph.input][:3] == ["input", "seqlens_k", "total_sequence_length"]
    assert [v.name for v in graph.graph.output][0] == "logits"


def _strip_anchor(twin: Path, dest: Path) -> Path:
    """A copy of the twin whose layer graphs lack the `q_flat` split the serving rewrite looks for."""
    import shutil

    shutil.copytree(twin, dest)
    (dest / "ax_checksums.json").unlink(missing_ok=True)
    for path in dest.glob("*_l*_together.onnx"):
        model = onnx.load(str(path))
        for node in model.graph.node:
            node.output[:] = ["q_other" if o == "q_flat" else o for o in node.output]
            node.input[:] = ["q_other" if i == "q_flat" else i for i in node.input]
        onnx.save(model, str(path))
    return dest


def test_default_falls_back_to_per_layer_only_when_not_asked(tiny_twin: Callable[..., Path], tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    twin = _strip_anchor(tiny_twin("llama", **GEOMETRY), tmp_path / "twin")
    monkeypatch.delenv(ONNX_LAYOUT_ENV, raising=False)
    with caplog.at_level(logging.WARNING), load_model(twin, backend="onnx") as model:
        assert type(model.stack) is OnnxDecoderStack
    assert "serving layout does not apply" in caplog.text
    with pytest.raises(ServingGraphError, match="q_flat"):
        load_model(twin, backend="onnx", onnx_layout="serving")


def test_serving_is_the_default_and_selectable(tiny_twin: Callable[..., Path], monkeypatch: pytest.MonkeyPatch) -> None:
    twin = tiny_twin("llama")
    monkeypatch.delenv(ONNX_LAYOUT_ENV, raising=False)
    assert DEFAULT_ONNX_LAYOUT == "serving"
    with load_model(twin, backend="onnx") as model:
        assert isinstance(model.stack, ServingOnnxDecoderStack)
    monkeypatch.setenv(ONNX_LAYOUT_ENV, "per-layer")
    with load_model(twin, backend="onnx") as model:
        assert type(model.stack) is OnnxDecoderStack
    with load_model(twin, backend="onnx", onnx_layout="serving") as model:
        assert isinstance(model.stack, ServingOnnxDecoderStack)


def test_serving_capacity_and_closed_errors(tiny_twin: Callable[..., Path]) -> None:
    model = load_model(tiny_twin("llama", **GEOMETRY), backend="onnx", onnx_layout="serving")
    stack, embed = model.stack, model.embeddings.lookup
    with pytest.raises(ContextOverflowError):
        stack.prefill(embed(list(range(20))), 120)
    with pytest.raises(ContextOverflowError):
        stack.decode(embed([5])[0], 127)
    with pytest.raises(ValueError, match="nothing to prefill"):
        stack.prefill(np.zeros((0, stack.spec.hidden), np.float32), 0)
    model.close()
    model.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        stack.decode(np.zeros(stack.spec.hidden, np.float32), 0)


def config_entry(session: Any, key: str) -> str | None:
    try:
        return str(session.get_session_options().get_session_config_entry(key))
    except RuntimeError:  # onnxruntime's answer for a key never set
        return None


def test_decode_steps_spin_by_default_only_inside_a_run_and_give_the_same_tokens(
        tiny_twin: Callable[..., Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """By default only the decode session's workers spin, and they stop when its run returns; AX_LLM_ONNX_SPIN=0
    never spins. The tokens do not change."""
    twin = tiny_twin("llama", **GEOMETRY, weights="q4")
    prompt = [int(t) for t in np.random.default_rng(5).integers(3, 200, size=21)]
    runs, entries = {}, {}
    for setting in (None, "0", "1"):
        if setting is None:
            monkeypatch.delenv("AX_LLM_ONNX_SPIN", raising=False)
        else:
            monkeypatch.setenv("AX_LLM_ONNX_SPIN", setting)
        with load_model(twin, backend="onnx", onnx_layout="serving", threads=2) as model:
            stack = model.stack
            assert isinstance(stack, ServingOnnxDecoderStack)
            entries[setting] = [(config_entry(bound._session, "session.intra_op.allow_spinning"),
                                 config_entry(bound._session, "session.force_spinning_stop"))
                                for bound in (stack._chunk, stack._step)]
            runs[setting] = greedy(stack, model.embeddings.lookup, prompt, 8)[0]
    never, inside_runs = ("0", None), ("1", "1")
    assert entries == {None: [never, inside_runs], "1": [never, inside_runs], "0": [never, never]}, entries
    assert runs[None] == runs["0"] == runs["1"]


def test_an_unknown_spin_setting_is_refused_before_loading(tiny_twin: Callable[..., Path],
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    twin = tiny_twin("llama", **GEOMETRY, weights="q4")
    monkeypatch.setenv("AX_LLM_ONNX_SPIN", "sometimes")
    with pytest.raises(ValueError, match="AX_LLM_ONNX_SPIN='sometimes' is not understood"):
        load_model(twin, backend="onnx", onnx_layout="serving")
