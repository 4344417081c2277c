"""Golden outputs and option semantics on the real SmolLM2-135M twin (the embedded default model)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from ax_llm_provider.engine.engine import Engine
from ax_llm_provider.engine.generator import generate_tokens

pytestmark = pytest.mark.golden
MODEL = "smollm2:135m"

# Greedy outputs recorded from this engine on the twin; the first two agree with llama.cpp's greedy
# output on the same GGUF as reported in docs (".. Paris.").
GOLDEN = [
    ([{"role": "user", "content": "What is the capital city of France? Answer with one word."}],
     "The capital city of France is Paris."),
    ([{"role": "system", "content": "You are a helpful assistant."},
      {"role": "user", "content": "What is the capital of France?"}],
     "The capital of France is Paris."),
    ([{"role": "user", "content": "List three primary colors."}],
     "The primary colors are:\n\nRed: YELLOW\nBlue: WHITE"),
    ([{"role": "user", "content": "Write a haiku about the sea."}],
     "The waves of the sea, a silent beauty,\nA gentle lapping of the shore,\nA reminder of the beauty that lies "
     "beneath,\nA reminder of the ocean's power."),
]


def run_chat(engine: Engine, messages: list[dict[str, Any]], **options: Any) -> tuple[str, dict[str, Any]]:
    chunks = list(engine.chat({"model": MODEL, "messages": messages, "options": options}))
    return "".join(c["message"]["content"] for c in chunks), chunks[-1]


def run_generate(engine: Engine, prompt: str, **options: Any) -> tuple[str, dict[str, Any]]:
    chunks = list(engine.generate({"model": MODEL, "prompt": prompt, "options": options}))
    return "".join(c["response"] for c in chunks), chunks[-1]


@pytest.mark.parametrize(("messages", "expected"), GOLDEN)
def test_greedy_chat_matches_golden(smollm2_engine: Engine, messages: list[dict[str, Any]], expected: str) -> None:
    text, final = run_chat(smollm2_engine, messages, temperature=0, num_predict=48)
    assert text == expected
    assert final["done_reason"] == "stop"


def test_temperature_zero_is_the_argmax_path(smollm2_engine: Engine) -> None:
    messages = GOLDEN[0][0]
    text, _ = run_chat(smollm2_engine, messages, temperature=0, num_predict=12)
    runner = smollm2_engine.slots.entries()[0][1].runner
    model = runner.model
    prompt = model.tokenizer.encode(model.tokenizer.render_chat(messages))
    ids = []
    for step in generate_tokens(model.stack, model.embeddings, prompt, max_new_tokens=12,
                                end_ids=model.tokenizer.eos_ids, sampler=lambda logits, _: int(np.argmax(logits))):
        if step.token in model.tokenizer.eos_ids:
            break
        ids.append(step.token)
    runner.cache.invalidate()  # the raw loop above overwrote the KV rows behind the cache's back
    assert text == model.tokenizer.decode(ids, skip_special_tokens=True)


def test_num_predict_is_exact(smollm2_engine: Engine) -> None:
    for n in (1, 7, 20):
        _, final = run_generate(smollm2_engine, "Tell me a long story about a dragon.", temperature=0, num_predict=n)
        assert final["eval_count"] == n and final["done_reason"] == "length"


def test_stop_strings_never_leak(smollm2_engine: Engine) -> None:
    prompt = "Count from 1 to 30, separated by commas."
    full, _ = run_generate(smollm2_engine, prompt, temperature=0, num_predict=60)
    for stop in ("5", "\n1", "0. 1"):
        assert stop in full, f"the test needs {stop!r} in the unstopped output {full!r}"
        text, final = run_generate(smollm2_engine, prompt, temperature=0, num_predict=60, stop=[stop])
        assert stop not in text and final["done_reason"] == "stop"
        assert full.startswith(text) and len(text) == full.index(stop)


def test_seed_reproduces_and_differs(smollm2_engine: Engine) -> None:
    opts = {"temperature": 1.0, "top_k": 100, "top_p": 1.0, "num_predict": 24}
    a, _ = run_generate(smollm2_engine, "Describe a color.", seed=42, **opts)
    b, _ = run_generate(smollm2_engine, "Describe a color.", seed=42, **opts)
    others = {run_generate(smollm2_engine, "Describe a color.", seed=s, **opts)[0] for s in (1, 2, 3)}
    assert a == b
    assert len(others | {a}) >= 3


def test_repetition_penalties_change_a_repetitive_output(smollm2_engine: Engine) -> None:
    prompt = "Repeat the word hello forever: hello hello hello hello hello"
    plain, _ = run_generate(smollm2_engine, prompt, temperature=0, num_predict=30)
    penalized, _ = run_generate(smollm2_engine, prompt, temperature=0, num_predict=30, repeat_penalty=1.5)
    frequency, _ = run_generate(smollm2_engine, prompt, temperature=0, num_predict=30, frequency_penalty=1.0)
    assert plain.lower().count("hello") > penalized.lower().count("hello")
    assert frequency != plain


def test_generate_context_continues_the_conversation(smollm2_engine: Engine) -> None:
    first = list(smollm2_engine.generate({"model": MODEL, "prompt": "My name is Ada.",
                                          "options": {"temperature": 0, "num_predict": 16}}))
    context = first[-1]["context"]
    assert isinstance(context, list) and len(context) == first[-1]["prompt_eval_count"] + first[-1]["eval_count"]
    second = list(smollm2_engine.generate({"model": MODEL, "prompt": "What is my name?", "context": context,
                                           "options": {"temperature": 0, "num_predict": 16}}))
    assert second[-1]["prompt_eval_count"] > len(context)
    assert second[-1]["ax"]["prompt_cache_reused_tokens"] >= len(context) - 1


def test_raw_mode_rejects_system(smollm2_engine: Engine) -> None:
    from ax_llm_provider.engine.errors import InvalidRequestError

    with pytest.raises(InvalidRequestError, match="raw mode does not support"):
        list(smollm2_engine.generate({"model": MODEL, "prompt": "x", "raw": True, "system": "y"}))
