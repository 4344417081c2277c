"""What the serving layout's exact decode costs: its grid/remainder int8 rows against int8 rows as they are.

The serving layout's decode graph feeds each 4-bit projection two rows (the input on the int8 grid of its
32-value blocks, and the remainder), so the int8-compute kernel's result stays within ~1e-5 of the float
product. llama.cpp instead rounds the activations to 8 bits per 32-value block (its Q8_1 dot products), which
is what the kernel does to one row as it is. This builds both decode graphs from SmolLM2's twin, runs them
through one IOBinding runner with the same session options (the serving layout's: decode workers spin inside
a run), alternating round by round, and prints per variant the median ms per decoded token, the number of
graph nodes, the largest logit difference from the per-layer layout along its greedy replies to a few chat
prompts (fed the same tokens), and how many of the variant's own greedy replies equal the per-layer layout's.

    python benchmarks/bench_decode_precision.py --threads 2 --rounds 8
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable

import numpy as np
import onnx
from _common import model_dir

from ax_llm_provider.model.loader import load_model
from ax_llm_provider.runtime.onnx_backend import import_onnxruntime, session_options
from ax_llm_provider.runtime.onnx_serving import spin_decode
from ax_llm_provider.runtime.onnx_serving_graph import build_serving_graph

PROMPTS = ["What is the capital of France?", "Name the primary colors.", "Write a short poem about the sea.",
           "Explain in two sentences why the sky is blue."]
CAPACITY = 2047
STEPS = 32  # greedy tokens per prompt


def as_they_are(graph: onnx.ModelProto) -> onnx.ModelProto:
    """The chunk graph's 4-bit projections switched to the int8-compute kernel on one row (no remainder)."""
    for node in graph.graph.node:
        bits = next((a.i for a in node.attribute if a.name == "bits"), None)
        if node.op_type == "MatMulNBits" and bits == 4:
            kept = [a for a in node.attribute if a.name != "accuracy_level"]
            del node.attribute[:]
            node.attribute.extend([*kept, onnx.helper.make_attribute("accuracy_level", 4)])
    return graph


class Runner:
    """One decode graph in one session, its KV cache bound in place (as the serving layout binds it)."""

    def __init__(self, graph: onnx.ModelProto, heads: int, head_dim: int, layers: int, vocab: int,
                 weights: dict[str, np.ndarray], names: list[str], threads: int) -> None:
        ort = import_onnxruntime()
        options = session_options(ort, threads, spin=spin_decode())
        self._values = [ort.OrtValue.ortvalue_from_numpy(weights[n]) for n in names]
        options.add_external_initializers(names, self._values)
        self.nodes = len(graph.graph.node)
        self._session = ort.InferenceSession(graph.SerializeToString(), options, providers=["CPUExecutionProvider"])
        self._caches = [np.zeros((1, heads, CAPACITY, head_dim), np.float32) for _ in range(2 * layers)]
        self._rows = np.zeros((1, 1, graph.graph.input[0].type.tensor_type.shape.dim[-1].dim_value), np.float32)
        self._seqlens, self._total = np.zeros(1, np.int32), np.zeros((), np.int32)
        self.logits = np.zeros((1, 1, vocab), np.float32)
        self._binding = binding = self._session.io_binding()
        for name, array in (("input", self._rows), ("seqlens_k", self._seqlens),
                            ("total_sequence_length", self._total)):
            binding.bind_cpu_input(name, array)
        binding.bind_output("logits", "cpu", 0, np.float32, list(self.logits.shape), self.logits.ctypes.data)
        for i, cache in enumerate(self._caches):
            kind, layer = ("key", "value")[i % 2], i // 2
            binding.bind_cpu_input(f"past_{kind}_{layer}", cache)
            binding.bind_output(f"present_{kind}_{layer}", "cpu", 0, np.float32, list(cache.shape), cache.ctypes.data)

    def step(self, row: np.ndarray, pos: int) -> np.ndarray:
        """One row at position pos (a prompt is fed row by row: the decode graph is the one measured)."""
        self._rows[0, 0] = row
        self._seqlens[0], self._total[()] = pos, pos + 1
        self._session.run_with_iobinding(self._binding)
        return self.logits.reshape(-1)


def run(step: Callable[[np.ndarray, int], np.ndarray], lookup: Callable, prompt: list[int], steps: int,
        forced: list[int] | None = None) -> tuple[list[int], list[np.ndarray]]:
    """Greedy tokens and the logits before each; with `forced`, those tokens are fed instead (teacher forcing)."""
    for pos, row in enumerate(lookup(prompt)):
        logits = step(row, pos)
    tokens, seen = [], []
    for i, pos in enumerate(range(len(prompt), len(prompt) + steps)):
        seen.append(logits.copy())
        tokens.append(int(np.argmax(logits)) if forced is None else forced[i])
        logits = step(lookup([tokens[-1]])[0], pos)
    return tokens, seen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=8, help="alternating rounds (medians over rounds)")
    parser.add_argument("--steps", type=int, default=25, help="decode steps per round")
    args = parser.parse_args()
    path = model_dir()
    with load_model(path, backend="onnx", onnx_layout="per-layer", threads=args.threads) as reference:
        layers = [onnx.load(str(p)) for p in reference.files.layers]
        post = onnx.load(str(reference.files.post))
        vocab = int(post.graph.output[0].type.tensor_type.shape.dim[-1].dim_value)
        weights: dict[str, np.ndarray] = {}
        exact, geo, names = build_serving_graph(layers, post, CAPACITY, True, weights)
        plain, _, plain_names = build_serving_graph(layers, post, CAPACITY, False, weights)
        shape = (geo.kv_heads, geo.head_dim, len(layers), vocab)
        runners = {"exact rows (shipped)": Runner(exact, *shape, weights, names, args.threads),
                   "int8 rows as they are": Runner(as_they_are(plain), *shape, weights, plain_names, args.threads)}
        del layers, post
        tok, lookup = reference.tokenizer, reference.embeddings.lookup
        results: dict[str, object] = {"model": str(path), "threads": args.threads, "spin_decode": spin_decode()}
        accuracy = {label: {"max_abs_logit_diff": 0.0, "same_greedy_reply": 0} for label in runners}
        for text in PROMPTS:
            prompt = tok.encode(tok.render_chat([{"role": "user", "content": text}]))
            ref_tokens, ref_logits = run(reference.stack.decode, lookup, prompt, STEPS)
            for label, runner in runners.items():
                _, logits = run(runner.step, lookup, prompt, STEPS, forced=ref_tokens)  # along the same tokens
                accuracy[label]["max_abs_logit_diff"] = max(
                    accuracy[label]["max_abs_logit_diff"],
                    max(float(np.abs(a - b).max()) for a, b in zip(logits, ref_logits, strict=True)))
                accuracy[label]["same_greedy_reply"] += run(runner.step, lookup, prompt, STEPS)[0] == ref_tokens
        timings: dict[str, list[float]] = {label: [] for label in runners}
        row = lookup([500])[0]
        for _ in range(args.rounds):
            for label, runner in runners.items():
                started = time.perf_counter()
                for pos in range(64, 64 + args.steps):
                    runner.step(row, pos)
                timings[label].append((time.perf_counter() - started) / args.steps * 1000)
        for label, runner in runners.items():
            ms = statistics.median(timings[label])
            results[label] = {"decode_ms_per_token": round(ms, 2), "decode_tok_s": round(1000 / ms, 1),
                              "graph_nodes": runner.nodes, "rounds_ms": [round(v, 2) for v in timings[label]],
                              "max_abs_logit_diff_vs_per_layer": float(f"{accuracy[label]['max_abs_logit_diff']:.3g}"),
                              "greedy_replies_equal_to_per_layer": f"{accuracy[label]['same_greedy_reply']} of "
                                                                   f"{len(PROMPTS)} ({STEPS} tokens each)"}
        exact_ms, plain_ms = (statistics.median(v) for v in timings.values())
        results["ratio_exact_to_as_they_are_decode_speed"] = round(plain_ms / exact_ms, 2)
        results["load_average_1min"] = round(os.getloadavg()[0], 1)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
