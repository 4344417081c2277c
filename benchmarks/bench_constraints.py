"""Grammar mask cost per token at vocab 151936, with and without overlapping the device step.

    python benchmarks/bench_constraints.py [--device-ms 20] [--tokens 200] [--runs 3]

The vocabulary: SmolLM2's byte-level BPE (from the model store, pulled if absent) padded to 151936
tokens (Qwen2.5's size) with merges of existing tokens ("Ġfoo" + "bar"), so llguidance's token trie has
the size and shape of a real large vocabulary. The "model" gives random logits and its decode step
sleeps `--device-ms` (the NPU running the layers; sleeping releases the GIL as a device call does).

Per token: "mask fill" is the worker's (or the inline) time to fill a mask (llguidance, plus the
closing policy's rollouts when num_predict is set); "critical path" the wall time of the sampling step,
which the device waits for (mask wait + masking + sampling + consuming the token), its p95, the mask
wait inside it, and the main thread's CPU time in it (what remains when other processes compete for
the cores), with overlap off and on, for a JSON schema with num_predict unset and set.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from ax_llm_provider.engine.decoding.constraints import GrammarCompiler, format_grammar
from ax_llm_provider.engine.decoding.grammar_sampler import GuidedSampler
from ax_llm_provider.engine.sampler import make_sampler

TARGET_VOCAB = 151936
SCHEMA = {"type": "object", "properties": {
    "name": {"type": "string", "maxLength": 40},
    "age": {"type": "integer", "minimum": 0, "maximum": 150},
    "role": {"enum": ["admin", "user", "guest"]},
    "tags": {"type": "array", "items": {"type": "string", "maxLength": 20}, "maxItems": 4},
    "home": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 30}, "lat": {"type": "number"},
                                              "lon": {"type": "number"}},
             "required": ["city", "lat", "lon"], "additionalProperties": False},
    "bio": {"type": "string", "maxLength": 200}},
    "required": ["name", "age", "role", "tags", "home", "bio"], "additionalProperties": False}


def smollm2_tokenizer_json() -> str:
    from ax_llm_provider.model.pull import pull
    from ax_llm_provider.model.store import ModelStore

    store = ModelStore()
    try:
        path = store.resolve("smollm2:135m").path
    except Exception:  # noqa: BLE001 - not in the store yet
        path = pull("smollm2:135m", store)
    found = next(Path(path).rglob("tokenizer.json"))
    return found.read_text(encoding="utf-8")


def padded_tokenizer(target: int = TARGET_VOCAB, seed: int = 0) -> Any:
    """SmolLM2's BPE with merges appended until the vocabulary has `target` tokens."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    data = json.loads(smollm2_tokenizer_json())
    vocab: dict[str, int] = data["model"]["vocab"]
    merges: list[Any] = data["model"]["merges"]
    as_pairs = bool(merges) and isinstance(merges[0], list)
    size = max(len(vocab), 1 + max(t["id"] for t in data.get("added_tokens", [])))
    words = [t for t in vocab if t.startswith("Ġ") and len(t) > 2]
    tails = [t for t in vocab if t.isalpha() and not t.startswith("Ġ") and 2 <= len(t) <= 6]
    rng = np.random.default_rng(seed)
    while size < target:
        for a, b in zip(rng.choice(words, 4096), rng.choice(tails, 4096), strict=True):
            token = a + b
            if token in vocab or size >= target:
                continue
            vocab[token] = size
            merges.append([a, b] if as_pairs else f"{a} {b}")
            size += 1
    tok = Tokenizer.from_str(json.dumps(data))
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>")


def run(compiler: GrammarCompiler, *, overlap: bool, device_s: float, tokens: int, max_tokens: int | None,
        seed: int) -> dict[str, float]:
    rng = np.random.default_rng(seed)
    pool = (rng.standard_normal((8, compiler.vocab)) * 3).astype(np.float32)  # logits "from the device"
    base = make_sampler(temperature=1.0, top_k=40, top_p=0.9, seed=seed)
    sampler = GuidedSampler(compiler, format_grammar(SCHEMA), lambda lg, h: base(lg), max_tokens=max_tokens,
                            overlap=overlap)
    history: list[int] = []
    step_ns: list[int] = []
    cpu_ns: list[int] = []
    logits = pool[0].copy()
    sampler.start()
    time.sleep(device_s)  # the prefill
    for n in range(tokens):
        began, cpu = time.perf_counter_ns(), time.thread_time_ns()
        token = sampler(logits, history)
        sampled = time.perf_counter_ns()
        cpu_ns.append(time.thread_time_ns() - cpu)
        history.append(token)
        step_ns.append(sampled - began)
        if token in compiler.eos_ids or sampler.finished:
            break
        np.copyto(logits, pool[(n + 1) % len(pool)])
        time.sleep(device_s)  # stack.decode: the worker fills the next mask meanwhile
    sampler.close()
    st = sampler.stats
    return {"tokens": len(step_ns), "mask_us": st.mask_ns / max(st.masks, 1) / 1e3,
            "critical_us": statistics.mean(step_ns) / 1e3,
            "critical_p50_us": float(np.percentile(step_ns, 50)) / 1e3,
            "critical_p95_us": float(np.percentile(step_ns, 95)) / 1e3,
            "wait_us": st.wait_ns / max(len(step_ns), 1) / 1e3,
            "cpu_us": statistics.mean(cpu_ns) / 1e3,
            "closing": st.closing_tokens}


def baseline(compiler: GrammarCompiler, tokens: int, seed: int) -> float:
    """The unconstrained sampling step on the same logits (what the grammar adds is the difference)."""
    rng = np.random.default_rng(seed)
    pool = (rng.standard_normal((8, compiler.vocab)) * 3).astype(np.float32)
    base = make_sampler(temperature=1.0, top_k=40, top_p=0.9, seed=seed)
    times = []
    for n in range(tokens):
        logits = pool[n % len(pool)].copy()
        began = time.perf_counter_ns()
        base(logits)
        times.append(time.perf_counter_ns() - began)
    return statistics.mean(times) / 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device-ms", type=float, default=20.0)
    parser.add_argument("--tokens", type=int, default=200)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()

    began = time.perf_counter()
    hf = padded_tokenizer()
    print(f"vocab {len(hf)} tokens (padded SmolLM2 BPE) built in {time.perf_counter() - began:.1f}s")
    compiler = GrammarCompiler(hf, vocab=TARGET_VOCAB, eos_ids=[hf.eos_token_id], key="bench-151936")
    began = time.perf_counter()
    _ = compiler.tokenizer
    print(f"llguidance tokenizer built in {time.perf_counter() - began:.2f}s (once per model, cached)")
    began = time.perf_counter()
    compiler.matcher(format_grammar(SCHEMA))
    print(f"schema compiled in {(time.perf_counter() - began) * 1e3:.1f} ms (once per schema, LRU-cached)")
    device_s = args.device_ms / 1e3
    print(f"\nsimulated device step {args.device_ms:.1f} ms; per token, over {args.runs} runs of up to "
          f"{args.tokens} tokens after a warm-up run (lexer states are built lazily, once per schema)")
    print(f"{'num_predict':>11} {'overlap':>8} {'mask fill':>10} {'critical path':>14} {'p50':>9} {'p95':>9} "
          f"{'mask wait':>10} {'main CPU':>9} {'tokens':>7} {'closing':>8}")
    plain = statistics.mean(baseline(compiler, args.tokens, s) for s in range(args.runs))
    print(f"{'no grammar':>20} {'':>10} {plain:>12.0f}us   (the sampler alone: top_k 40, top_p 0.9)")
    for max_tokens in (None, args.tokens):
        run(compiler, overlap=True, device_s=device_s, tokens=args.tokens, max_tokens=max_tokens, seed=99)  # warm
        for overlap in (False, True):
            rows = [run(compiler, overlap=overlap, device_s=device_s, tokens=args.tokens, max_tokens=max_tokens,
                        seed=s) for s in range(args.runs)]
            mean = {k: statistics.mean(r[k] for r in rows) for k in rows[0]}
            print(f"{max_tokens or '-':>11} {('on' if overlap else 'off'):>8} {mean['mask_us']:>8.0f}us "
                  f"{mean['critical_us']:>12.0f}us {mean['critical_p50_us']:>7.0f}us {mean['critical_p95_us']:>7.0f}us "
                  f"{mean['wait_us']:>8.0f}us "
                  f"{mean['cpu_us']:>7.0f}us {mean['tokens']:>7.0f} {mean['closing']:>8.1f}")


if __name__ == "__main__":
    main()
