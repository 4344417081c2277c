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
from _common import median_ms, model_dir, rss_mb

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
    script = f"""
import json, time
from llama_cpp import Llama
llm = Llama(model_path={gguf!r}, n_ctx=2048, n_threads=2, verbose=False)
prompt = "<|im_start|>user\\nTell me a long story about a dragon.<|im_end|>\\n<|im_start|>assistant\\n"
t = time.perf_counter(); out = llm(prompt, max_tokens=64, temperature=0); total = time.perf_counter() - t
timings = llm._ctx.get_timings() if hasattr(llm, "_ctx") else None
print(json.dumps({{"tokens": out["usage"]["completion_tokens"], "seconds": total}}))
"""
    result = subprocess.run([python, "-c", script], capture_output=True, text=True, check=True)
    data = json.loads(result.stdout.strip().splitlines()[-1])
    return {"llama_cpp_tok_s_incl_prefill": data["tokens"] / data["seconds"]}


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
    model.embeddings.lookup(list(range(0, 49152, 97)))  # touch ~500 rows: pages come in one by one
    after_lookup = rss_mb()
    table_mb = model.embeddings.vocab * model.embeddings.hidden * 2 / 1e6
    results: dict[str, object] = {
        "model": str(path), "load_s": round(load_s, 2),
        "rss_mb_before_load": round(before), "rss_mb_after_load": round(after),
        "rss_mb_after_500_lookups": round(after_lookup), "embedding_table_mb": round(table_mb, 1),
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
        gguf = fetch_gguf(entry.source, path.parent.parent / "_downloads")
        results |= llama_cpp_figures(args.llama_cpp, str(gguf))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    sys.exit(main())
