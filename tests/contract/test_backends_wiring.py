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
    with load_model(twin, backend="simulated") as sim, load_model(twin, backend="onnx") as cpu:
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
