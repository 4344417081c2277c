"""The axcl backend on a real card (`-m npu`): the same checks as on the simulated card.

Set AX_LLM_TEST_MODEL_DIR to a vendor bundle directory (e.g. AXERA-TECH/Qwen2.5-0.5B-Instruct-GPTQ-Int4).
Skipped without a card; loading a bundle takes 10-40 s on a Pi 5.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import numpy as np
import pytest

from ax_llm_provider.runtime.axcl_backend import AxclDecoderStack

pytestmark = pytest.mark.npu


@pytest.fixture(scope="module")
def stack() -> Iterator[AxclDecoderStack]:
    model_dir = os.environ.get("AX_LLM_TEST_MODEL_DIR")
    if not model_dir:
        pytest.skip("set AX_LLM_TEST_MODEL_DIR to a vendor bundle to run the card tests")
    from ax_llm_provider.model.layout import scan_model_dir

    files = scan_model_dir(model_dir, kind="axmodel")
    opened = AxclDecoderStack(files.layers, files.post)  # the real `import axcl`
    yield opened
    opened.close()


def test_spec_is_read_from_the_card(stack: AxclDecoderStack) -> None:
    spec = stack.spec
    assert spec.decode_group.kv_rows == spec.decode_capacity
    assert spec.prefill_chunk in (1, 128)


def test_decode_is_finite_and_reuse_equals_fresh(stack: AxclDecoderStack) -> None:
    rng = np.random.default_rng(0)
    embeds = (rng.standard_normal((20, stack.spec.hidden)) * 0.02).astype(np.float32)
    logits = stack.prefill(embeds, 0)
    assert logits is not None and np.isfinite(logits).all()
    snapshot = stack.kv_save(20)
    first = stack.decode(embeds[0], 20)
    stack.kv_restore(snapshot)
    assert np.array_equal(stack.decode(embeds[0], 20), first)


def test_ten_decode_steps_return_finite_logits_and_report_their_time(stack: AxclDecoderStack) -> None:
    embed = np.zeros(stack.spec.hidden, np.float32)
    started = time.perf_counter()
    outputs = [stack.decode(embed, pos) for pos in range(21, 31)]
    per_token_ms = (time.perf_counter() - started) * 100
    print(f"decode: {per_token_ms:.2f} ms/token ({1000 / per_token_ms:.2f} tok/s)")  # noqa: T201 (test report)
    assert all(o.shape == (stack.spec.vocab,) and np.isfinite(o).all() for o in outputs)
