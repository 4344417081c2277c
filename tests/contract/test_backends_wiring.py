"""open_stack / load_model pick and build every backend; the simulated card runs the axcl code path."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from ax_llm_provider.model.loader import load_model
from ax_llm_provider.runtime.axcl_backend import AxclDecoderStack
from ax_llm_provider.runtime.backends import BackendUnavailableError, resolve_backend
from ax_llm_provider.runtime.onnx_backend import OnnxDecoderStack

HISTORIES = (0, 16, 32, 64)


def greedy(model, prompt: list[int], steps: int) -> list[int]:  # noqa: ANN001 - LoadedModel
    logits = model.stack.prefill(model.embeddings.lookup(prompt), 0)
    out, pos = [], len(prompt)
    for _ in range(steps):
        token = int(np.argmax(logits))
        out.append(token)
        logits = model.stack.decode(model.embeddings.lookup([token])[0], pos)
        pos += 1
    return out


def test_simulated_backend_runs_the_axcl_stack_and_agrees_with_onnx(tiny_twin: Callable[..., Path]) -> None:
    twin = tiny_twin("qwen2", decode_capacity=127, prefill_chunk=16, prefill_histories=HISTORIES)
    prompt = list(range(3, 50))
    with load_model(twin, backend="simulated") as sim, \
            load_model(twin, backend="onnx", onnx_layout="per-layer") as cpu:  # the card path's reference
        assert isinstance(sim.stack, AxclDecoderStack) and isinstance(cpu.stack, OnnxDecoderStack)
        assert sim.stack.spec.io_dtype == "bfloat16" and sim.backend == "simulated"
        assert greedy(sim, prompt, 6) == greedy(cpu, prompt, 6)


def test_auto_backend_runs_twins_on_onnx(tiny_twin: Callable[..., Path]) -> None:
    with load_model(tiny_twin("llama")) as model:
        assert model.backend == "onnx"


def test_vendor_bundle_without_sdk_says_what_to_install(tmp_path: Path) -> None:
    from ax_llm_provider.model.layout import scan_model_dir
    from tests.unit.test_model_layout import make_bundle

    files = scan_model_dir(make_bundle(tmp_path / "bundle"))
    with pytest.raises(BackendUnavailableError, match="vendor wheels"):
        resolve_backend(files, "auto")
    with pytest.raises(BackendUnavailableError, match="simulated card executes CPU twins"):
        load_model(files.root, backend="simulated")
    with pytest.raises(ValueError, match="unknown backend"):
        resolve_backend(files, "cuda")


def test_open_stack_attaches_the_prefill_planner_on_the_card_only(tiny_twin: Callable[..., Path],
                                                                  tmp_path: Path) -> None:
    from ax_llm_provider.calibration.record import CalibrationRecord, GroupCost, runtime_of, save_record
    from ax_llm_provider.model.layout import scan_model_dir
    from ax_llm_provider.runtime.backends import open_stack
    from ax_llm_provider.runtime.simcard import SimCard

    files = scan_model_dir(tiny_twin("qwen2", decode_capacity=127, prefill_chunk=16, prefill_histories=HISTORIES))
    stacks = [open_stack(files, "simulated"), open_stack(files, "simulated", prefill_planner=False),
              open_stack(files, "onnx")]
    try:
        assert [s.planner is not None for s in stacks] == [True, False, False]  # type: ignore[attr-defined]
        assert len(stacks[0].planner(stacks[0].spec, 20, 3)) == 3  # type: ignore[attr-defined]  # 3 decode steps
    finally:
        for s in stacks:
            s.close()
    # A real card (here the simulated card driven as `axcl`): costs only from a stored calibration.
    card = SimCard()
    uncalibrated = open_stack(files, "axcl", axcl=card)
    assert uncalibrated.planner is None  # type: ignore[attr-defined]
    runtime = runtime_of(card, "axcl")
    assert runtime is not None
    spec = uncalibrated.spec
    uncalibrated.close()
    costs = [GroupCost(group=g.index, kind="prefill", tokens=g.tokens, history=g.history, call_ms=100.0,
                       ms_per_token=100.0 / g.tokens, samples=3) for g in spec.prefill_groups]
    costs.append(GroupCost(group=spec.decode_group.index, kind="decode", tokens=1, history=spec.decode_capacity,
                           call_ms=30.0, ms_per_token=30.0, samples=3))
    save_record(CalibrationRecord(model="tiny", model_dir=str(files.root), runtime=runtime, kv_write="copy",
                                  kv_write_reason="test", head_ms=10.0, group_costs=costs))
    calibrated = open_stack(files, "axcl", axcl=card)
    try:
        planner = calibrated.planner  # type: ignore[attr-defined]
        assert planner is not None
        assert len(planner(spec, 20, 4)) == 4  # 4 steps of 30 - 10 (lm-head) ms are cheaper than a 100 ms chunk
        assert len(planner(spec, 20, 5)) == 1  # a tie keeps the chunk
    finally:
        calibrated.close()
