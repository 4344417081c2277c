"""Golden: on the real SmolLM2 twin each CPU layout (fused, serving) gives the per-layer layout's greedy tokens."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ax_llm_provider.model.loader import load_model
from ax_llm_provider.runtime.onnx_fused import FusedOnnxDecoderStack
from ax_llm_provider.runtime.onnx_serving import ServingOnnxDecoderStack
from tests.golden.test_engine_golden import GOLDEN

pytestmark = pytest.mark.golden


def greedy(stack, lookup, prompt: list[int], steps: int, eos: set[int]) -> list[int]:  # noqa: ANN001
    logits = stack.prefill(lookup(prompt), 0)
    out: list[int] = []
    for pos in range(len(prompt), len(prompt) + steps):
        out.append(int(np.argmax(logits)))
        if out[-1] in eos:
            break
        logits = stack.decode(lookup([out[-1]])[0], pos)
    return out


@pytest.mark.parametrize("layout", [FusedOnnxDecoderStack, ServingOnnxDecoderStack], ids=["fused", "serving"])
def test_layout_matches_per_layer_on_the_golden_prompts(smollm2_dir: Path, layout: type) -> None:
    with load_model(smollm2_dir, backend="onnx", onnx_layout="per-layer") as model:
        other = layout(model.files.layers, model.files.post)
        tok, eos = model.tokenizer, {2}
        try:
            for messages, expected in GOLDEN:
                prompt = tok.encode(tok.render_chat(messages))
                tokens = greedy(model.stack, model.embeddings.lookup, prompt, 48, eos)
                assert greedy(other, model.embeddings.lookup, prompt, 48, eos) == tokens
                assert tok.decode(tokens, skip_special_tokens=True) == expected
        finally:
            other.close()
